//! Following an event stream: reconnect with backoff after a network error
//! or a daemon restart, and resume where the stream was. `logs -f`,
//! `status --watch`, a start or stop the daemon could not wait for, and
//! `top` all follow their streams through [`follow`].

use super::{Client, ClientError, SseFrame};
use crate::wire::LogLine;
use futures_util::StreamExt;
use std::ops::ControlFlow;
use std::time::Duration;

/// The first wait before reconnecting; it doubles up to [`MAX_DELAY`].
pub const FIRST_DELAY: Duration = Duration::from_millis(200);
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// With keep-alives every 15 s, this long without a byte means the
/// connection is dead even if no error says so.
pub const STREAM_SILENCE: Duration = Duration::from_secs(45);

/// How long opening a stream may take, connecting included, until the
/// daemon's answer (the bound of every one-shot command with several
/// contexts): a host that accepts the connection and never answers is cut
/// off after it.
pub const OPEN_LIMIT: Duration = Duration::from_secs(10);

/// What one follower does with its stream.
pub trait Follow {
    type Error: From<ClientError>;
    /// The path to (re)connect to, and the `Last-Event-ID` to send.
    fn request(&self) -> (String, Option<String>);
    /// Handles one event; `Break` ends the follow.
    async fn event(&mut self, client: &Client, ev: SseFrame) -> Result<ControlFlow<()>, Self::Error>;
    /// A JSON body to POST to the path instead of a GET (`/sse/logs` with
    /// more resume cursors than a request line holds).
    fn body(&self) -> Option<String> {
        None
    }
    /// The stream is open (again).
    fn connected(&mut self) {}
    /// The stream broke, or could not be opened again: the next try comes
    /// after `delay`.
    fn reconnecting(&mut self, e: &ClientError, delay: Duration);
    /// Whether a first connection that fails for a transient reason is
    /// retried like a reconnection, instead of ending the follow (for a
    /// dashboard that already reached the daemon).
    fn retry_first(&self) -> bool {
        false
    }
    /// Whether a first connection the host accepted but did not answer
    /// within [`OPEN_LIMIT`] is retried with backoff instead of ending the
    /// follow (several hosts followed at once: that one may be busy, and
    /// the others go on regardless).
    fn retry_unanswered(&self) -> bool {
        false
    }
}

/// Follows an event stream until `f` is done. Once connected (or from the
/// start, if `f.retry_first()`), it reconnects with backoff after a network
/// error or a daemon restart; a first connection that fails, a refused
/// certificate or key, or an unknown agent end it with that error. Each
/// opening (connection and answer) gets at most [`OPEN_LIMIT`]; a first
/// one cut off so is retried if `f.retry_unanswered()`.
pub async fn follow<F: Follow>(client: &Client, f: &mut F) -> Result<(), F::Error> {
    let mut delay = FIRST_DELAY;
    let mut connected_once = f.retry_first();
    loop {
        let (path, last_id) = f.request();
        let open = async {
            match f.body() {
                Some(body) => client
                    .events_post(&path, body, last_id.as_deref())
                    .await
                    .map(futures_util::future::Either::Left),
                None => client
                    .events(&path, last_id.as_deref())
                    .await
                    .map(futures_util::future::Either::Right),
            }
        };
        let (opened, unanswered) = match tokio::time::timeout(OPEN_LIMIT, open).await {
            Ok(opened) => (opened, false),
            Err(_) => (
                Err(ClientError::Unreachable(format!(
                    "{} did not answer within {} s",
                    client.url(),
                    OPEN_LIMIT.as_secs()
                ))),
                true,
            ),
        };
        let mut events = match opened {
            Ok(s) => Box::pin(s),
            Err(e) if e.is_transient() && (connected_once || unanswered && f.retry_unanswered()) => {
                f.reconnecting(&e, delay);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_DELAY);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        connected_once = true;
        delay = FIRST_DELAY;
        f.connected();
        let ended = loop {
            match tokio::time::timeout(STREAM_SILENCE, events.next()).await {
                Err(_) => {
                    break ClientError::Unreachable(format!(
                        "nothing from {} for {} s",
                        client.url(),
                        STREAM_SILENCE.as_secs()
                    ));
                }
                Ok(None) => break ClientError::Unreachable(format!("{} closed the stream", client.url())),
                Ok(Some(Err(e))) => break e,
                Ok(Some(Ok(ev))) => {
                    if f.event(client, ev).await?.is_break() {
                        return Ok(());
                    }
                }
            }
        };
        f.reconnecting(&ended, delay);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_DELAY);
    }
}

/// Where one agent's log stream (`/sse/agents/{id}/logs`) stands: the
/// cursor of the last event handled. Every (re)connection resumes right
/// after it, so no line is missed or shown twice.
#[derive(Debug, Clone)]
pub struct LogCursor {
    id: String,
    cursor: String,
}

/// What an event of a log stream carries.
#[derive(Debug, PartialEq, Eq)]
pub enum LogItem {
    Line {
        cursor: u64,
        text: String,
    },
    /// Lines were rotated away before they could be sent (the event's data).
    Gap(String),
}

impl LogCursor {
    /// The agent's last `n` lines from the plain route, and the cursor just
    /// after them: following from there misses nothing written meanwhile.
    /// One line is always fetched, so that the cursor is known even with
    /// `n` = 0.
    pub async fn tail(client: &Client, id: &str, n: u64) -> Result<(Vec<LogLine>, LogCursor), ClientError> {
        let mut lines = client.logs(id, n.max(1)).await?;
        let cursor = lines.last().map_or(0, |l| l.cursor).to_string();
        if n == 0 {
            lines.clear();
        }
        Ok((
            lines,
            LogCursor {
                id: id.to_string(),
                cursor,
            },
        ))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The path and `Last-Event-ID` of the next connection.
    pub fn request(&self) -> (String, Option<String>) {
        (format!("/sse/agents/{}/logs", self.id), Some(self.cursor.clone()))
    }

    /// Moves past `ev`, and says what it carries.
    pub fn take(&mut self, ev: SseFrame) -> Option<LogItem> {
        let item = match ev.name.as_str() {
            "line" => Some(LogItem::Line {
                cursor: ev.id.parse().unwrap_or(0),
                text: ev.data,
            }),
            "gap" => Some(LogItem::Gap(ev.data)),
            _ => None,
        };
        if !ev.id.is_empty() {
            self.cursor = ev.id;
        }
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(name: &str, data: &str, id: &str) -> SseFrame {
        SseFrame {
            name: name.into(),
            data: data.into(),
            id: id.into(),
        }
    }

    #[test]
    fn a_log_stream_resumes_after_the_last_event_handled() {
        let mut c = LogCursor {
            id: "web".into(),
            cursor: "10".into(),
        };
        assert_eq!(
            c.request(),
            ("/sse/agents/web/logs".to_string(), Some("10".to_string()))
        );
        assert_eq!(
            c.take(ev("line", "hello", "16")),
            Some(LogItem::Line {
                cursor: 16,
                text: "hello".into()
            })
        );
        assert_eq!(c.request().1.as_deref(), Some("16"));
        assert_eq!(
            c.take(ev("gap", "{\"from\":16,\"to\":90}", "90")),
            Some(LogItem::Gap("{\"from\":16,\"to\":90}".into()))
        );
        assert_eq!(c.request().1.as_deref(), Some("90"));
        // An event without an id (none is sent so) keeps the cursor.
        assert_eq!(c.take(ev("other", "", "")), None);
        assert_eq!(c.request().1.as_deref(), Some("90"));
    }
}
