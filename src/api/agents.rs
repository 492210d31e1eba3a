//! The REST routes under `/agents`.

use super::AppState;
use super::error::ApiError;
use crate::config::AgentConfig;
use crate::supervisor::Listed;
use crate::wire::{AgentConfigView, AgentDetail, AgentSummary, LogLine};
use salvo::oapi::extract::{PathParam, QueryParam};
use salvo::prelude::*;
use std::sync::Arc;
use std::time::Duration;

/// Most lines `?n=` may ask for.
pub const MAX_LINES: u64 = 10_000;
/// Lines in the detail view.
const DETAIL_LINES: usize = 200;
/// Slack on top of an agent's own timeouts before start/stop answer anyway.
const WAIT_SLACK: Duration = Duration::from_secs(5);

pub(super) fn state_ref(depot: &Depot) -> Result<&Arc<AppState>, ApiError> {
    depot
        .get_typed::<Arc<AppState>>()
        .map_err(|_| ApiError::internal("state missing"))
}

pub(super) fn state(depot: &Depot) -> Result<Arc<AppState>, ApiError> {
    depot
        .get_typed::<Arc<AppState>>()
        .cloned()
        .map_err(|_| ApiError::internal("state missing"))
}

/// A path id that cannot name an agent is simply not found.
pub(super) fn agent_id(id: PathParam<String>) -> Result<String, ApiError> {
    let id = id.into_inner();
    if crate::wire::is_agent_id(&id) {
        Ok(id)
    } else {
        Err(ApiError::not_found(format!("no agent named {id:?}")))
    }
}

/// `?n=` as a bounded line count.
pub(super) fn line_count(n: Option<String>, default: u64) -> Result<usize, ApiError> {
    match n {
        None => Ok(default as usize),
        Some(s) => match s.parse::<u64>() {
            Ok(n) if n <= MAX_LINES => Ok(n as usize),
            _ => Err(ApiError::bad_request(format!(
                "invalid n={s:?}: expected a whole number from 0 to {MAX_LINES}"
            ))),
        },
    }
}

pub(super) async fn with_stats(state: &AppState, listed: Vec<Listed>) -> Vec<AgentSummary> {
    let wanted = listed
        .iter()
        .filter_map(|l| l.stats.clone().map(|s| (l.summary.id.clone(), s)))
        .collect();
    let counts = state.stats.counts(wanted).await;
    listed
        .into_iter()
        .map(|l| {
            let mut s = l.summary;
            s.msg_count_24h = counts.get(&s.id).copied().flatten();
            s
        })
        .collect()
}

/// List every agent.
#[endpoint(tags("agents"), responses((status_code = 200, description = "Every agent", body = Vec<AgentSummary>)))]
pub async fn list(depot: &mut Depot) -> Result<Json<Vec<AgentSummary>>, ApiError> {
    let state = state(depot)?;
    let listed = state.handle.list().await?;
    Ok(Json(with_stats(&state, listed).await))
}

fn config_view(c: &AgentConfig) -> AgentConfigView {
    AgentConfigView {
        command: c.command.clone(),
        cwd: c.cwd.as_ref().map(|p| p.display().to_string()),
        env: c
            .env
            .keys()
            .map(|k| (k.clone(), "<redacted>".to_string()))
            .collect(),
        env_file: c.env_file.as_ref().map(|p| p.display().to_string()),
        user: c.user.clone(),
        autostart: c.autostart,
        restart: c.policy.restart.as_str().to_string(),
        stop_signal: c.policy.stop_signal.as_str().to_string(),
        stop_timeout_ms: c.policy.stop_timeout.as_millis() as u64,
        start_window_ms: c.policy.start_window.as_millis() as u64,
        backoff_initial_ms: c.policy.backoff_initial.as_millis() as u64,
        backoff_max_ms: c.policy.backoff_max.as_millis() as u64,
        max_restarts: c.policy.max_restarts,
        log_max_size: c.log.max_size,
        log_keep: c.log.keep,
        log_timestamps: c.log.timestamps,
        has_stats: c.stats.is_some(),
    }
}

/// One agent: summary, config (env values redacted) and its last 200 log lines.
#[endpoint(tags("agents"), responses((status_code = 200, description = "The agent", body = AgentDetail)))]
pub async fn show(id: PathParam<String>, depot: &mut Depot) -> Result<Json<AgentDetail>, ApiError> {
    let state = state(depot)?;
    let id = agent_id(id)?;
    let view = state.handle.get(&id).await?;
    let hub = view.hub.clone();
    let tail = tokio::task::spawn_blocking(move || hub.tail(DETAIL_LINES))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(format!("cannot read the log: {e}")))?;
    let listed = vec![Listed {
        summary: view.summary,
        stats: view.config.stats.clone(),
    }];
    let summary = with_stats(&state, listed).await.remove(0);
    Ok(Json(AgentDetail {
        summary,
        config: config_view(&view.config),
        logs: tail,
    }))
}

enum Control {
    Start,
    Stop,
    Restart,
}

async fn control(
    depot: &Depot,
    id: PathParam<String>,
    what: Control,
) -> Result<Json<AgentSummary>, ApiError> {
    let state = state(depot)?;
    let id = agent_id(id)?;
    let p = state.handle.get(&id).await?.config.policy;
    let up = p.start_window + WAIT_SLACK;
    let down = p.stop_timeout + WAIT_SLACK;
    let summary = match what {
        Control::Start => state.handle.start(&id, up).await?,
        Control::Stop => state.handle.stop(&id, down).await?,
        Control::Restart => state.handle.restart(&id, up + down).await?,
    };
    Ok(Json(summary))
}

/// Start an agent; answers once it is running or has failed.
///
/// Starting a running agent is not an error: it answers with its summary.
#[endpoint(tags("agents"), responses((status_code = 200, description = "The agent after the start", body = AgentSummary)))]
pub async fn start(id: PathParam<String>, depot: &mut Depot) -> Result<Json<AgentSummary>, ApiError> {
    control(depot, id, Control::Start).await
}

/// Stop an agent; answers once no process of it is left.
#[endpoint(tags("agents"), responses((status_code = 200, description = "The agent after the stop", body = AgentSummary)))]
pub async fn stop(id: PathParam<String>, depot: &mut Depot) -> Result<Json<AgentSummary>, ApiError> {
    control(depot, id, Control::Stop).await
}

/// Stop then start an agent; answers once it is up again (or failed).
#[endpoint(tags("agents"), responses((status_code = 200, description = "The agent after the restart", body = AgentSummary)))]
pub async fn restart(id: PathParam<String>, depot: &mut Depot) -> Result<Json<AgentSummary>, ApiError> {
    control(depot, id, Control::Restart).await
}

/// The last `n` log lines (default 200, at most 10,000), oldest first.
#[endpoint(tags("logs"), responses((status_code = 200, description = "Log lines with their resume cursors", body = Vec<LogLine>)))]
pub async fn logs(
    id: PathParam<String>,
    n: QueryParam<String, false>,
    depot: &mut Depot,
) -> Result<Json<Vec<LogLine>>, ApiError> {
    let state = state(depot)?;
    let id = agent_id(id)?;
    let n = line_count(n.into_inner(), DETAIL_LINES as u64)?;
    let hub = state.handle.get(&id).await?.hub;
    let lines = tokio::task::spawn_blocking(move || hub.tail(n))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(format!("cannot read the log: {e}")))?;
    Ok(Json(lines))
}
