//! The web UI at `/ui/`: three static files embedded in the binary (no
//! build step, nothing fetched at run time). The page calls the client API
//! of this member with the token the user gives it; the files themselves
//! hold no data and need no credential. `--no-ui` (or `ui = false`) turns
//! it off.

use std::sync::Arc;

use axum::extract::Path;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response as HttpResponse};
use axum::routing::get;
use axum::Router;

use super::error::ApiError;
use crate::node::Node;

const INDEX: &str = include_str!("ui/index.html");
const APP: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

/// The page may load only its own files and talk only to this member; no
/// inline script, no framing by another site, no referrer.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
                      base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The UI's routes, added to the client API's router when it is on.
pub(crate) fn routes(router: Router<Arc<Node>>) -> Router<Arc<Node>> {
    router
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|| async { file("index.html") }))
        .route("/ui/{file}", get(|Path(name): Path<String>| async move { file(&name) }))
}

/// Whether `path` is one of the UI's (which need no credential).
pub(crate) fn is_ui(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

fn file(name: &str) -> HttpResponse {
    let (body, kind) = match name {
        "index.html" => (INDEX, "text/html; charset=utf-8"),
        "app.js" => (APP, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return ApiError::not_found("no such file of the UI").into_response(),
    };
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_files_and_puts_no_data_in_as_html() {
        // The policy forbids inline scripts, so the page must have none.
        assert!(!INDEX.contains("<script>") && INDEX.contains(r#"<script src="/ui/app.js""#), "{INDEX}");
        assert!(!INDEX.contains("style="), "inline styles are refused by the policy");
        // Values, keys and messages go into the page as text only.
        for unsafe_sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("] {
            assert!(!APP.contains(unsafe_sink), "app.js uses {unsafe_sink}");
        }
        // No other site is named: nothing is fetched from the internet.
        for text in [INDEX, APP, STYLE] {
            assert!(!text.contains("http://") && !text.contains("https://"), "an absolute URL in the UI");
        }
    }

    #[test]
    fn unknown_files_are_not_found() {
        assert_eq!(file("app.js").status(), 200);
        assert_eq!(file("../Cargo.toml").status(), 404);
        assert_eq!(file("secrets").status(), 404);
    }
}
