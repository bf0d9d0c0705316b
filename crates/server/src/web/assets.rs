//! Static assets of the console, embedded in the binary and served by
//! certflow itself (never a CDN) under a URL carrying a hash of their content,
//! so they can be cached for a year and a new build is fetched at once.

use std::sync::LazyLock;

use aws_lc_rs::digest;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// One embedded file.
struct Asset {
    /// `/console/static/<stem>.<hash>.<ext>`.
    url: String,
    content_type: &'static str,
    bytes: &'static [u8],
}

fn asset(stem: &str, ext: &str, content_type: &'static str, bytes: &'static [u8]) -> Asset {
    let hash = hex::encode(&digest::digest(&digest::SHA256, bytes).as_ref()[..6]);
    Asset {
        url: format!("/console/static/{stem}.{hash}.{ext}"),
        content_type,
        bytes,
    }
}

/// Index 0: the stylesheet; 1: htmx (vendored from npm by scripts/vendor-assets.sh).
static ASSETS: LazyLock<[Asset; 2]> = LazyLock::new(|| {
    [
        asset(
            "console",
            "css",
            "text/css; charset=utf-8",
            include_bytes!("../../static/console.css"),
        ),
        asset(
            "htmx",
            "min.js",
            "text/javascript; charset=utf-8",
            include_bytes!("../../static/htmx.min.js"),
        ),
    ]
});

/// URL of the stylesheet.
pub(crate) fn css_url() -> &'static str {
    &ASSETS[0].url
}

/// URL of htmx.
pub(crate) fn htmx_url() -> &'static str {
    &ASSETS[1].url
}

/// `GET /console/static/{file}`: an embedded asset by its hashed name.
pub(super) async fn serve(Path(file): Path<String>) -> Response {
    let wanted = format!("/console/static/{file}");
    match ASSETS.iter().find(|a| a.url == wanted) {
        Some(a) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(a.content_type),
                ),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=31536000, immutable"),
                ),
            ],
            a.bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}
