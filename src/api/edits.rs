//! `GET`, `PUT` and `DELETE /agents/{id}/config`: agents added, changed
//! and removed over the API (admin keys, `[server] api_edits = true`).
//! The config file stays the one source of truth: every edit is made to
//! it (by the daemon's main loop, which owns the running config), checked
//! like `config check`, written atomically, then applied as a reload.

use super::agents::{agent_id, state};
use super::error::ApiError;
use crate::config::edit::{Action, Applied, ApplyError, Change, EditError, WriteError};
use crate::supervisor::Change as Event;
use crate::wire::ConfigEdit;
use salvo::http::StatusCode;
use salvo::http::header::{ETAG, IF_MATCH};
use salvo::oapi::extract::PathParam;
use salvo::prelude::*;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// An edit asked over the API, for the daemon's main loop.
pub struct EditRequest {
    pub id: String,
    pub change: Change,
    /// The `If-Match` header (a read: empty).
    pub if_match: String,
    pub reply: oneshot::Sender<Result<Applied, EditFailure>>,
}

/// Why an edit asked over the API did not happen, or not wholly.
#[derive(Debug, thiserror::Error)]
pub enum EditFailure {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The file was written, but the reload that follows failed.
    #[error("the config file was written, but not applied: {0}")]
    NotApplied(String),
}

/// Where edits go: `None` when they are off.
pub type Edits = Option<mpsc::Sender<EditRequest>>;

/// How long a `DELETE` waits for the agent to stop and go; longer (a long
/// `stop_timeout`), it answers 202 while the agent is still stopping.
const REMOVE_WAIT: Duration = Duration::from_secs(60);
/// How long an edit waits for the daemon's main loop (a stalled disk):
/// then 503, and the edit may still be made.
const EDIT_WAIT: Duration = Duration::from_secs(60);

impl From<EditFailure> for ApiError {
    fn from(e: EditFailure) -> ApiError {
        let message = e.to_string();
        match e {
            EditFailure::Apply(ApplyError::NotFound { .. }) => ApiError::not_found(message),
            EditFailure::Apply(ApplyError::Stale { .. }) => {
                ApiError::new(StatusCode::PRECONDITION_FAILED, "precondition_failed", message)
            }
            EditFailure::Apply(ApplyError::Write(WriteError::Changed)) => {
                ApiError::new(StatusCode::PRECONDITION_FAILED, "precondition_failed", message)
            }
            EditFailure::Apply(ApplyError::Invalid(_))
            | EditFailure::Apply(ApplyError::Edit(EditError::Value(_)))
            | EditFailure::Apply(ApplyError::Edit(EditError::Unparsable(_)))
            | EditFailure::Apply(ApplyError::Edit(EditError::Shape(_))) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_config", message)
            }
            EditFailure::Apply(ApplyError::Write(WriteError::Io { .. })) | EditFailure::NotApplied(_) => {
                ApiError::internal(message)
            }
        }
    }
}

/// Sends `change` to the main loop and waits for its answer.
async fn ask(depot: &Depot, id: String, change: Change, if_match: String) -> Result<Applied, ApiError> {
    ask_edit(depot, id, change, if_match)
        .await?
        .map_err(ApiError::from)
}

/// [`ask`], with the edit's own failure apart.
async fn ask_edit(
    depot: &Depot,
    id: String,
    change: Change,
    if_match: String,
) -> Result<Result<Applied, EditFailure>, ApiError> {
    let state = state(depot)?;
    let Some(edits) = &state.edits else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "edits_disabled",
            "editing agents over the API is off: set api_edits = true in [server] (the daemon then writes its config file)",
        ));
    };
    let gone = || ApiError::unavailable("the daemon is shutting down");
    let (reply, answer) = oneshot::channel();
    edits
        .send(EditRequest {
            id,
            change,
            if_match,
            reply,
        })
        .await
        .map_err(|_| gone())?;
    match tokio::time::timeout(EDIT_WAIT, answer).await {
        Ok(answer) => answer.map_err(|_| gone()),
        Err(_) => Err(ApiError::unavailable(format!(
            "the edit was not made within {} s (the config file's disk?); it may still be: GET the config to see",
            EDIT_WAIT.as_secs()
        ))),
    }
}

/// The `If-Match` of a write: required (428 without it).
fn if_match(req: &Request) -> Result<String, ApiError> {
    match req.headers().get(IF_MATCH).map(|v| v.to_str()) {
        Some(Ok(v)) if !v.trim().is_empty() => Ok(v.to_string()),
        Some(_) => Err(ApiError::bad_request("If-Match is not a valid entity tag")),
        None => Err(ApiError::new(
            StatusCode::PRECONDITION_REQUIRED,
            "precondition_required",
            "If-Match is required: GET /agents/{id}/config (or any agent's) and send its ETag, so that an edit made since is never overwritten",
        )),
    }
}

fn set_etag(res: &mut Response, etag: &str) {
    if let Ok(v) = salvo::http::HeaderValue::from_str(etag) {
        res.headers_mut().insert(ETAG, v);
    }
}

/// Whether the request names TOML (`application/toml`) in `header`.
fn names_toml(req: &Request, header: salvo::http::header::HeaderName) -> bool {
    req.headers()
        .get(header)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/toml"))
}

/// An agent's table as written in the config file (JSON, or TOML with
/// `Accept: application/toml`; no defaults applied), with the file's
/// `ETag` for a `PUT` or `DELETE` to send as `If-Match`. An agent not in
/// the file: 404, with the `ETag` too (to create it).
#[endpoint(tags("agents"), responses(
    (status_code = 200, description = "The agent's table as JSON; the ETag header names the file's version"),
    (status_code = 403, description = "edits_disabled (`api_edits` is off), or not an admin key"),
    (status_code = 404, description = "No such agent in the file (the ETag header still names the file's version)"),
))]
pub async fn get_config(
    id: PathParam<String>,
    req: &mut Request,
    depot: &mut Depot,
    res: &mut Response,
) -> Result<(), ApiError> {
    let id = agent_id(id)?;
    match ask_edit(depot, id, Change::Read, String::new()).await? {
        Ok(applied) => {
            set_etag(res, &applied.etag);
            let table = applied.table.unwrap_or_default();
            if names_toml(req, salvo::http::header::ACCEPT) {
                let text = toml::to_string(&table)
                    .map_err(|e| ApiError::internal(format!("cannot write the table as TOML: {e}")))?;
                res.add_header(
                    salvo::http::header::CONTENT_TYPE,
                    "application/toml; charset=utf-8",
                    true,
                )
                .ok();
                res.render(text);
            } else {
                res.render(Json(table));
            }
            Ok(())
        }
        Err(e) => {
            if let EditFailure::Apply(ApplyError::NotFound { etag, .. }) = &e {
                set_etag(res, etag);
            }
            Err(e.into())
        }
    }
}

/// Create (201) or replace (200) an agent: the body is its table as JSON
/// (the shape `GET` gives), or as TOML with `Content-Type:
/// application/toml` (its keys, as under `[agents.ID]`), `If-Match` the
/// file's `ETag` (428 without it,
/// 412 when the file changed since). The whole new file is checked like
/// `config check` (422 `invalid_config` with the same message), written
/// with every comment and the layout of the rest kept, and applied: the
/// answer comes once the daemon runs the new config (an agent whose table
/// changed is restarted).
#[endpoint(tags("agents"), responses(
    (status_code = 200, description = "Replaced (or unchanged); the new ETag in the header", body = ConfigEdit),
    (status_code = 201, description = "Created; the new ETag in the header", body = ConfigEdit),
    (status_code = 403, description = "edits_disabled (`api_edits` is off), or not an admin key"),
    (status_code = 412, description = "precondition_failed: the file changed since its ETag was read; nothing written"),
    (status_code = 422, description = "invalid_config: the file with this table would not be valid (the message is `config check`'s); nothing written"),
    (status_code = 428, description = "precondition_required: no If-Match"),
))]
pub async fn put_config(
    id: PathParam<String>,
    req: &mut Request,
    depot: &mut Depot,
    res: &mut Response,
) -> Result<(), ApiError> {
    let id = crate::wire::is_agent_id(&id)
        .then(|| id.into_inner())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_config",
                "invalid agent id: ids are 1 to 63 characters of a-z, 0-9, '_' and '-'",
            )
        })?;
    let wanted = if_match(req)?;
    let is_toml = names_toml(req, salvo::http::header::CONTENT_TYPE);
    let body = req
        .payload()
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
    let invalid = |m: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_config", m);
    let table = if is_toml {
        let text = std::str::from_utf8(body).map_err(|_| invalid("the table is not UTF-8".into()))?;
        toml::from_str::<toml::Table>(text)
            .map_err(|e| invalid(format!("the table is not valid TOML: {}", e.to_string().trim())))?
    } else {
        let json: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
        crate::config::edit::table_from_json(json).map_err(|e| invalid(e.to_string()))?
    };
    let applied = ask(depot, id.clone(), Change::Put(table), wanted).await?;
    super::audit::detail(depot, describe(&applied));
    set_etag(res, &applied.etag);
    if applied.action == Action::Created {
        res.status_code(StatusCode::CREATED);
    }
    res.render(Json(ConfigEdit {
        agent_id: id,
        action: applied.action.as_str().into(),
        changed: applied.changed,
    }));
    Ok(())
}

/// Remove an agent from the config file (`If-Match` as for `PUT`): it is
/// stopped (within its stop timeout) and gone when the answer comes (202
/// if it is still stopping after 60 s: it goes once stopped).
#[endpoint(tags("agents"), responses(
    (status_code = 200, description = "Removed and stopped; the new ETag in the header", body = ConfigEdit),
    (status_code = 202, description = "Removed from the file; still stopping after 60 s (it goes once stopped)", body = ConfigEdit),
    (status_code = 403, description = "edits_disabled (`api_edits` is off), or not an admin key"),
    (status_code = 412, description = "precondition_failed: the file changed since its ETag was read; nothing written"),
    (status_code = 428, description = "precondition_required: no If-Match"),
))]
pub async fn delete_config(
    id: PathParam<String>,
    req: &mut Request,
    depot: &mut Depot,
    res: &mut Response,
) -> Result<(), ApiError> {
    let id = agent_id(id)?;
    let wanted = if_match(req)?;
    let state = state(depot)?;
    // Watched before the change, so that its end is not missed.
    let mut events = state.handle.subscribe().await?;
    let applied = ask(depot, id.clone(), Change::Remove, wanted).await?;
    super::audit::detail(depot, describe(&applied));
    set_etag(res, &applied.etag);
    // Gone at once (it was not running), or once it stopped.
    let gone = async {
        use tokio::sync::broadcast::error::RecvError;
        while state.handle.get(&id).await.is_ok() {
            loop {
                match events.recv().await {
                    Ok(Event::Removed(r)) if r.agent_id == id => return,
                    Err(RecvError::Closed) => return,
                    // Events were missed: ask again.
                    Err(RecvError::Lagged(_)) => break,
                    Ok(_) => {}
                }
            }
        }
    };
    if tokio::time::timeout(REMOVE_WAIT, gone).await.is_err() {
        // Out of the file, still stopping (its stop timeout runs on).
        res.status_code(StatusCode::ACCEPTED);
    }
    res.render(Json(ConfigEdit {
        agent_id: id,
        action: applied.action.as_str().into(),
        changed: applied.changed,
    }));
    Ok(())
}

/// An edit as its audit entry says it: what happened and the keys.
fn describe(a: &Applied) -> String {
    if a.changed.is_empty() {
        a.action.as_str().to_string()
    } else {
        format!("{}: {}", a.action.as_str(), a.changed.join(", "))
    }
}
