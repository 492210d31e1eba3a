//! The audit trail: every mutating request made with a valid key (also
//! those its role refused), who made it and how it ended, kept in the
//! state database; `GET /audit` reads it back.

use super::agents::{page, state};
use super::auth;
use super::error::ApiError;
use crate::store::AuditRow;
use crate::wire::{AuditEntry, ErrorBody};
use salvo::http::{ResBody, StatusCode};
use salvo::oapi::extract::QueryParam;
use salvo::prelude::*;

/// Longest path kept in an entry.
const MAX_PATH: usize = 256;

/// Where a route leaves what its entry says beyond the path (see
/// [`detail`]).
const DETAIL: &str = "audit.detail";

/// What this request changed, for its audit entry (never a secret).
pub fn detail(depot: &mut Depot, what: String) {
    depot.insert(DETAIL, what);
}

/// Records a mutating request once it is answered. Reads pass through.
#[handler]
pub async fn record(req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
    // `POST /sse/logs` only reads (its body carries resume cursors).
    if auth::is_safe(req.method()) || req.uri().path() == "/sse/logs" {
        return;
    }
    ctrl.call_next(req, depot, res).await;
    let (Ok(state), Ok(caller)) = (state(depot), auth::caller(depot)) else {
        return;
    };
    let status = res.status_code.unwrap_or(StatusCode::OK);
    let agent = req
        .param::<String>("id")
        .filter(|id| crate::wire::is_agent_id(id));
    let path = req.uri().path();
    state
        .store
        .audit(AuditRow {
            at: crate::wire::rfc3339(std::time::SystemTime::now()),
            key: caller.name.clone(),
            role: caller.role,
            remote: caller.remote.to_string(),
            method: req.method().to_string(),
            path: path[..path.floor_char_boundary(MAX_PATH)].to_string(),
            agent,
            status: status.as_u16(),
            outcome: outcome(status, &res.body),
            detail: depot.get::<String>(DETAIL).ok().cloned(),
        })
        .await;
}

/// `ok` / `accepted`, or the error code the answer carried.
fn outcome(status: StatusCode, body: &ResBody) -> String {
    if status == StatusCode::ACCEPTED {
        return "accepted".into();
    }
    if status.is_success() {
        return "ok".into();
    }
    match body {
        ResBody::Once(bytes) => serde_json::from_slice::<ErrorBody>(bytes)
            .map(|b| b.error.code)
            .unwrap_or_else(|_| ApiError::from_status(status).code.to_string()),
        _ => ApiError::from_status(status).code.to_string(),
    }
}

/// The audit trail, newest first (`limit` default 100, at most 1,000;
/// `before` an entry's `id` to page on): every start, stop and restart
/// with the key that asked, also those refused. Admin keys only; kept up
/// to `[server] audit_keep` entries.
#[endpoint(tags("auth"), responses((status_code = 200, description = "Audit entries, newest first", body = Vec<AuditEntry>)))]
pub async fn list(
    limit: QueryParam<String, false>,
    before: QueryParam<String, false>,
    depot: &mut Depot,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let state = state(depot)?;
    let (limit, before) = page(limit.into_inner(), before.into_inner())?;
    let store = state.store.clone();
    let rows = tokio::task::spawn_blocking(move || store.read_audit(limit, before))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::unavailable(format!("cannot read the audit trail: {}", e.chain())))?;
    Ok(Json(rows.into_iter().map(entry).collect()))
}

/// An audit row as the API shows it.
fn entry(s: crate::store::StoredAudit) -> AuditEntry {
    let r = s.row;
    AuditEntry {
        id: s.id,
        at: r.at,
        key: r.key,
        role: r.role,
        remote: r.remote,
        method: r.method,
        path: r.path,
        agent: r.agent,
        status: r.status,
        outcome: r.outcome,
        count: s.count,
        last_at: s.last_at,
        detail: r.detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_name_the_error_code() {
        let body = ResBody::Once(r#"{"error":{"code":"conflict","message":"x"}}"#.into());
        assert_eq!(outcome(StatusCode::CONFLICT, &body), "conflict");
        assert_eq!(outcome(StatusCode::OK, &ResBody::None), "ok");
        assert_eq!(outcome(StatusCode::ACCEPTED, &ResBody::None), "accepted");
        assert_eq!(outcome(StatusCode::FORBIDDEN, &ResBody::None), "forbidden");
        assert_eq!(
            outcome(StatusCode::NOT_FOUND, &ResBody::Once("junk".into())),
            "not_found"
        );
    }
}
