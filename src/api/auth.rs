//! The bearer-key hoop in front of every route but `/health`.

use super::AppState;
use super::error::ApiError;
use salvo::http::header::AUTHORIZATION;
use salvo::prelude::*;
use std::sync::Arc;

#[handler]
pub async fn require_key(req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
    let Ok(state) = depot.get_typed::<Arc<AppState>>() else {
        ApiError::internal("state missing").render(res);
        ctrl.skip_rest();
        return;
    };
    if !presented_key_matches(req, state) {
        state.metrics.auth_failed();
        ApiError::unauthorized().render(res);
        ctrl.skip_rest();
    }
}

/// Whether the request carries the key.
pub fn presented_key_matches(req: &Request, state: &AppState) -> bool {
    req.headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .is_some_and(|k| state.key.matches(k))
}

/// The token of `Bearer <token>` (the scheme is case-insensitive).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn parses_bearer() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }
}
