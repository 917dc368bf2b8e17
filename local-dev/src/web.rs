//! The reference client (`web/`), compiled into the harness and served at `/`: plain
//! HTML, CSS and JavaScript modules, nothing fetched from elsewhere at run time. It talks
//! to this harness's REST routes and WebSocket, or to a deployed stack given `?api=`.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// Every file of the client: its name under `/web/`, its type and its bytes.
const FILES: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/api.js"),
    ),
    (
        "board.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/board.js"),
    ),
    (
        "voice.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/voice.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../web/style.css"),
    ),
    // The generated types, for frontend developers to fetch or copy.
    (
        "protocol.d.ts",
        "application/typescript; charset=utf-8",
        include_str!("../../web/protocol.d.ts"),
    ),
];

const INDEX: &str = include_str!("../../web/index.html");

/// The page may call any HTTP(S) API and WebSocket (`?api=` names a deployed stack), and
/// runs only its own scripts and styles.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self' http: https: ws: wss:; media-src 'self' blob: data:; \
    object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

pub fn router() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/web/{file}", get(asset))
}

async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX)
}

async fn asset(Path(file): Path<String>) -> Response {
    match FILES.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => page(content_type, body),
        None => seance::error::ApiError::NotFound("no such file").into_response(),
    }
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Compiled in, so always current for this binary; revalidate rather than go stale.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
