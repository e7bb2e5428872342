//! The web portal: one page, its script and its style, compiled into the binary, so the
//! server needs nothing else and the browser loads nothing from anywhere else. They hold no
//! data and need no token: the page asks for the token, keeps it for the tab's session only,
//! and sends it with every API call, so without a valid token nothing is shown.

use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::Route;
use super::openapi::op;

const INDEX: &str = include_str!("portal/index.html");
const SCRIPT: &str = include_str!("portal/app.js");
const STYLE: &str = include_str!("portal/app.css");

/// The portal's routes (no token: they hold no data).
pub const ROUTES: [Route; 3] = [
    op("get", "The web portal (no token; it asks for one)")
        .text("text/html; charset=utf-8")
        .at("/"),
    op("get", "The web portal's script")
        .text("text/javascript; charset=utf-8")
        .at("/portal/app.js"),
    op("get", "The web portal's style")
        .text("text/css; charset=utf-8")
        .at("/portal/app.css"),
];

/// Scripts, styles and API calls from this server only; no framing by other sites.
const POLICY: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

pub(crate) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

pub(crate) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub(crate) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}
