//! `POST /agents/{id}/message`: a line written to an agent's stdin (`stdin
//! = "pipe"`), whole or not at all, never waiting for the agent to read.

use super::agents::{agent_id, state};
use super::error::ApiError;
use crate::supervisor::Refused;
use crate::wire::{MessageIn, MessageSent};
use salvo::http::StatusCode;
use salvo::oapi::extract::PathParam;
use salvo::prelude::*;

/// The longest message, in bytes of UTF-8 (its newline not counted).
pub const MAX_MESSAGE: usize = 16 * 1024;

impl From<Refused> for ApiError {
    fn from(r: Refused) -> ApiError {
        let why = r.to_string();
        match r {
            Refused::NotFound(_) => ApiError::not_found(why),
            Refused::NoStdin(_) => ApiError::new(StatusCode::CONFLICT, "no_stdin", why),
            Refused::Busy(_) => ApiError {
                retry_after: Some(1),
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "agent_busy", why)
            },
            Refused::Unavailable(_) => ApiError::unavailable(why),
        }
    }
}

/// Write a message to the agent's stdin: the text and a newline (operate
/// keys; audited with its length, never its text). The agent must have
/// `stdin = "pipe"` and be running (409 `no_stdin`); a pipe without room
/// for the whole message (the agent is not reading) gives 503
/// `agent_busy` at once, and nothing of it is written.
#[endpoint(tags("agents"), responses(
    (status_code = 200, description = "Written", body = MessageSent),
    (status_code = 409, description = "no_stdin: the agent has no stdin pipe, is not running, or closed its stdin"),
    (status_code = 413, description = "payload_too_large: the text is over 16 KiB"),
    (status_code = 503, description = "agent_busy: its stdin pipe has no room for the message now (Retry-After)"),
))]
pub async fn message(
    id: PathParam<String>,
    body: salvo::oapi::extract::JsonBody<MessageIn>,
    depot: &mut Depot,
) -> Result<Json<MessageSent>, ApiError> {
    let id = agent_id(id)?;
    let text = body.into_inner().text;
    super::audit::detail(depot, format!("{} bytes", text.len()));
    if text.len() > MAX_MESSAGE {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "a message is at most {MAX_MESSAGE} bytes; this one is {}",
                text.len()
            ),
        ));
    }
    if text.contains('\0') {
        return Err(ApiError::bad_request("a message cannot contain a NUL byte"));
    }
    let bytes = text.len() + 1;
    state(depot)?.handle.message(&id, text.into_bytes()).await?;
    Ok(Json(MessageSent { agent_id: id, bytes }))
}
