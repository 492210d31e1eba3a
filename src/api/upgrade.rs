//! `POST /upgrade`: the daemon replaced in place by the binary now at its
//! path (admin keys; audited like every mutating request).

use super::UpgradeRequest;
use super::agents::state;
use super::error::ApiError;
use crate::wire::UpgradeStarted;
use salvo::http::StatusCode;
use salvo::oapi::{Components, EndpointOutRegister, Operation, ToSchema};
use salvo::prelude::*;

/// Upgrade the daemon in place, without restarting any agent.
///
/// The binary now at the path the daemon was started from is first run in
/// its check mode on the running config and state; if that fails (missing,
/// not executable, exits non-zero, refuses the config or the state) the
/// answer is 409 `upgrade_refused` with the reason and nothing changes.
/// Otherwise the answer is 202 and the handover follows: the same pid,
/// every agent still running; `/health`'s `upgraded_at` tells when the new
/// image answers. Event streams end meanwhile; resume them by cursor.
#[endpoint(tags("health"))]
pub async fn upgrade(depot: &mut Depot) -> Result<Started, ApiError> {
    let state = state(depot)?;
    let (reply, answer) = tokio::sync::oneshot::channel();
    let gone = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the daemon is shutting down",
        )
    };
    state
        .upgrades
        .send(UpgradeRequest { reply })
        .await
        .map_err(|_| gone())?;
    match answer.await.map_err(|_| gone())? {
        Ok(to) => Ok(Started(UpgradeStarted {
            from: env!("CARGO_PKG_VERSION").into(),
            to,
            pid: std::process::id(),
        })),
        Err(why) => Err(ApiError::new(StatusCode::CONFLICT, "upgrade_refused", why)),
    }
}

/// 202 and what is being upgraded to (its 409 is described in
/// `api::openapi`: the shared errors of `ApiError` come after this).
pub struct Started(UpgradeStarted);

#[async_trait]
impl Writer for Started {
    async fn write(self, _req: &mut Request, _depot: &mut Depot, res: &mut Response) {
        res.status_code(StatusCode::ACCEPTED);
        // The connection ends with the old image: the client asks the new
        // one on another.
        let _ = res.add_header(salvo::http::header::CONNECTION, "close", true);
        res.render(Json(self.0));
    }
}

impl EndpointOutRegister for Started {
    fn register(components: &mut Components, operation: &mut Operation) {
        operation.responses.insert(
            "202",
            salvo::oapi::Response::new(
                "The check passed; the handover is under way (poll /health for upgraded_at)",
            )
            .add_content("application/json", UpgradeStarted::to_schema(components)),
        );
        operation.responses.insert(
            "409",
            salvo::oapi::Response::new(
                "upgrade_refused: the new binary's check failed (the reason in the message); nothing changed",
            )
            .add_content("application/json", crate::wire::ErrorBody::to_schema(components)),
        );
    }
}
