//! The built-in live dashboard served at `GET /`: one HTML page (inline CSS, vanilla JS, SVG
//! sparklines) embedded in the binary. It polls `GET /api/status` once a second; nothing is
//! downloaded from elsewhere when it is viewed. What it reads is the typed document
//! `control::api::Status`; `tests/dashboard.rs` checks every field the page's script reads
//! against that document as it serializes.

use crate::http::Resp;

/// The page, compiled into the binary.
pub const INDEX_HTML: &str = include_str!("index.html");

/// `GET /`: the dashboard page.
pub fn index() -> Resp {
    Resp {
        status: 200,
        content_type: "text/html; charset=utf-8",
        body: INDEX_HTML.to_string(),
    }
}
