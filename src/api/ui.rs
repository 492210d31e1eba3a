//! The dashboard's page and its assets (`/ui/`), compiled into the binary:
//! plain HTML, CSS and JavaScript modules, nothing fetched from anywhere
//! else. They need no key (they hold no secret); the page signs in with
//! `POST /session`. Every answer carries a strict Content-Security-Policy.

use salvo::http::HeaderValue;
use salvo::http::header::{self, HeaderName};
use salvo::prelude::*;

/// One file of the page.
struct Asset {
    path: &'static str,
    mime: &'static str,
    body: &'static str,
}

macro_rules! asset {
    ($path:literal, $mime:literal) => {
        Asset {
            path: $path,
            mime: $mime,
            body: include_str!(concat!("ui/", $path)),
        }
    };
}

/// Every file under `/ui/`; `index.html` is also `/ui/`.
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("util.js", "text/javascript; charset=utf-8"),
    asset!("agents.js", "text/javascript; charset=utf-8"),
    asset!("logs.js", "text/javascript; charset=utf-8"),
    asset!("messages.js", "text/javascript; charset=utf-8"),
    asset!("status.js", "text/javascript; charset=utf-8"),
    asset!("editor.js", "text/javascript; charset=utf-8"),
    asset!("fleet.js", "text/javascript; charset=utf-8"),
];

/// No inline script or style, nothing from another origin, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// `/` (a redirect) and `/ui/...`.
pub fn routes() -> Router {
    Router::new()
        .push(Router::new().get(to_ui).head(to_ui))
        .push(Router::with_path("ui/{**file}").get(file).head(file))
}

/// Relative, so that under a proxy that mounts the daemon at a prefix
/// (`/agentsd/` -> `/agentsd/ui/`) the page is found too.
#[handler]
async fn to_ui(res: &mut Response) {
    res.render(Redirect::found("ui/"));
}

#[handler]
async fn file(req: &mut Request, res: &mut Response) {
    // The page's links are relative to `/ui/`.
    if req.uri().path() == "/ui" {
        res.render(Redirect::permanent("ui/"));
        return;
    }
    let name = req.param::<String>("file").unwrap_or_default();
    let name = if name.is_empty() {
        "index.html"
    } else {
        name.as_str()
    };
    security_headers(res);
    match ASSETS.iter().find(|a| a.path == name) {
        Some(a) => {
            res.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(a.mime));
            // Always checked again: a new daemon serves its own page.
            res.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            res.render(a.body);
        }
        None => {
            res.status_code(StatusCode::NOT_FOUND);
        }
    }
}

fn security_headers(res: &mut Response) {
    let h = res.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_there_and_the_page_loads_no_inline_code() {
        let index = ASSETS.iter().find(|a| a.path == "index.html").unwrap().body;
        assert!(
            index.contains("<script type=\"module\" src=\"app.js\""),
            "{index}"
        );
        // No inline script or style attribute the CSP would block.
        assert!(!index.contains("<script>") && !index.contains(" style=") && !index.contains("onclick"));
        // Every module the page imports is served.
        for a in ASSETS.iter().filter(|a| a.path.ends_with(".js")) {
            for import in a.body.lines().filter_map(|l| l.split(" from \"./").nth(1)) {
                let imported = import.trim_end_matches("\";");
                assert!(
                    ASSETS.iter().any(|b| b.path == imported),
                    "{} imports {imported}, not served",
                    a.path
                );
            }
        }
        // Data is put in the page as text, never as markup.
        for a in ASSETS {
            assert!(
                !a.body.contains("innerHTML") && !a.body.contains("insertAdjacentHTML"),
                "{}",
                a.path
            );
        }
        for a in ASSETS {
            // The SVG namespace is a name, not an address anything is loaded from.
            let body = a.body.replace("\"http://www.w3.org/2000/svg\"", "");
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "{} loads from elsewhere",
                a.path
            );
        }
    }
}
