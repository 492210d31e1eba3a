//! Request bodies. No route takes one but `POST /sse/logs` (resume
//! cursors, up to [`MAX_RESUME_BODY`]) and `PUT /agents/{id}/config` (an
//! agent's table, up to [`MAX_EDIT_BODY`]) and `POST
//! /agents/{id}/message` (a message, up to [`MAX_MESSAGE_BODY`]; its text
//! is held to 16 KiB by its route): whatever else is sent is refused
//! beyond [`MAX_BODY`] with a 413 that reaches the client.
//!
//! A length announced over the limit is refused before anything is read,
//! so no `100 Continue` is sent to a client that waits for one. A client
//! that sends its body at once (no `Expect`, or chunked past the limit) is
//! answered while what it still sends is read and thrown away in the
//! background, up to [`DISCARD_BYTES`] or [`DISCARD_TIME`], before the
//! connection closes: closing on unread data makes the kernel reset the
//! connection, and the client loses the answer with it. Over HTTP/2 the
//! same: a stream reset after the answer, even with `NO_ERROR`, makes
//! clients (curl) drop the answer.

use super::ApiError;
use salvo::http::header::{CONNECTION, CONTENT_LENGTH, EXPECT};
use salvo::http::{Body, HeaderValue, ReqBody, StatusCode, Version};
use salvo::prelude::*;
use std::pin::Pin;
use std::time::Duration;

/// Request bodies are never needed; anything larger than this is refused.
pub const MAX_BODY: u64 = 16 * 1024;
/// `POST /sse/logs` carries resume cursors: one per agent.
pub const MAX_RESUME_BODY: u64 = 1024 * 1024;
/// `PUT /agents/{id}/config` carries an agent's table.
pub const MAX_EDIT_BODY: u64 = 64 * 1024;
/// `POST /agents/{id}/message` carries a message of up to 16 KiB, as JSON
/// (where escapes may make it several times longer).
pub const MAX_MESSAGE_BODY: u64 = 128 * 1024;
/// What is read and thrown away of a refused body at most, so that the
/// client sees the answer before the connection closes.
const DISCARD_BYTES: u64 = 64 * 1024 * 1024;
/// For how long a refused body is read at most.
const DISCARD_TIME: Duration = Duration::from_secs(10);

/// The next data frame's length; `None` at the end; `Err` if the body
/// could not be read.
async fn next_len(body: &mut ReqBody) -> Option<Result<u64, std::io::Error>> {
    let frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await?;
    Some(frame.map(|f| f.data_ref().map_or(0, |d| d.len() as u64)))
}

/// Reads the body, keeping it if `keep`; `Ok(None)` once it passes `max`
/// (the rest unread).
async fn within(body: &mut ReqBody, max: u64, keep: bool) -> Result<Option<Vec<u8>>, std::io::Error> {
    let mut kept = Vec::new();
    let mut seen = 0u64;
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
        let Some(data) = frame?.into_data().ok() else {
            continue;
        };
        seen += data.len() as u64;
        if seen > max {
            return Ok(None);
        }
        if keep {
            kept.extend_from_slice(&data);
        }
    }
    Ok(Some(kept))
}

/// Reads what is left of a refused body and throws it away, within bounds.
async fn discard(mut body: ReqBody) {
    let _ = tokio::time::timeout(DISCARD_TIME, async {
        let mut left = DISCARD_BYTES;
        while let Some(Ok(n)) = next_len(&mut body).await {
            left = left.saturating_sub(n);
            if left == 0 {
                break;
            }
        }
    })
    .await;
}

#[handler]
pub async fn limit_body(req: &mut Request, res: &mut Response, ctrl: &mut FlowCtrl) {
    let path = req.uri().path();
    let resume = req.method() == salvo::http::Method::POST && path == "/sse/logs";
    let agent_route = |method: salvo::http::Method, last: &str| {
        req.method() == method && path.starts_with("/agents/") && path.ends_with(last)
    };
    let edit = agent_route(salvo::http::Method::PUT, "/config");
    let message = agent_route(salvo::http::Method::POST, "/message");
    // Kept for its route to read.
    let keep = resume || edit || message;
    let max = if resume {
        MAX_RESUME_BODY
    } else if edit {
        MAX_EDIT_BODY
    } else if message {
        MAX_MESSAGE_BODY
    } else {
        MAX_BODY
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    // Refused from its announced length, before a byte of it was asked for.
    let unread = declared.is_some_and(|n| n > max);
    let over = match declared {
        _ if unread => true,
        // Zero, or within the limit, or not announced (chunked, an HTTP/2
        // stream without a length): read it to see.
        Some(0) => false,
        _ => match within(req.body_mut(), max, keep).await {
            Ok(Some(kept)) => {
                if keep {
                    *req.body_mut() = ReqBody::from(kept);
                }
                false
            }
            Ok(None) => true,
            Err(e) => {
                ApiError::bad_request(format!("cannot read the request body: {e}")).render(res);
                ctrl.skip_rest();
                return;
            }
        },
    };
    if !over {
        return;
    }
    let body = req.take_body();
    let http1 = req.version() <= Version::HTTP_11;
    if http1 {
        res.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    // A client still waiting for `100 Continue` has sent nothing: there is
    // nothing to read.
    let waits = http1
        && unread
        && req
            .headers()
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if !waits {
        tokio::spawn(discard(body));
    }
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        if resume {
            format!("the resume cursors are limited to {max} bytes")
        } else if edit {
            format!("an agent's table is limited to {max} bytes")
        } else if message {
            format!("a message's body is limited to {max} bytes (its text to 16384)")
        } else {
            format!("request bodies are limited to {max} bytes (no route takes one)")
        },
    )
    .render(res);
    ctrl.skip_rest();
}
