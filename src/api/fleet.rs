//! `GET /fleet`: every host this daemon heard from over NATS (`[fleet]
//! view = true`), with its agent counts and whether it went quiet.

use super::agents::state;
use super::error::ApiError;
use crate::wire::FleetHost;
use salvo::prelude::*;

/// The view, or 404 on a daemon that has none.
pub(super) fn view(state: &super::AppState) -> Result<&crate::fleet::View, ApiError> {
    state
        .fleet
        .as_ref()
        .and_then(|f| f.view.as_ref())
        .ok_or_else(|| ApiError::not_found("this daemon has no fleet view: set view = true in [fleet]"))
}

/// Every host heard from over NATS, in name order: where its API is, its
/// version, its agents by status, its last heartbeat, and `stale` after 15
/// s without one. 404 unless `[fleet] view = true`.
#[endpoint(tags("fleet"), responses((status_code = 200, description = "The hosts, in name order", body = Vec<FleetHost>)))]
pub async fn list(depot: &mut Depot) -> Result<Json<Vec<FleetHost>>, ApiError> {
    let state = state(depot)?;
    let hosts = view(&state)?.hosts.borrow().clone();
    Ok(Json(hosts.values().cloned().collect()))
}
