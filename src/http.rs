//! The HTTP listener: `/health`, `/ready`, `/metrics`, and bridges' own routes under
//! `/bridges/{domain}/…`. Every route has a body size limit and a timeout.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, State},
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::{any, get},
};
use jabbridge_sdk::Bridge;
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::{limit::RequestBodyLimitLayer, timeout::TimeoutLayer};

use crate::config::HttpConfig;
use crate::metrics;
use crate::store::Queue;
use crate::store::Store;
use crate::xmpp::session::LinkHandle;

/// One bridge as the HTTP side sees it.
pub struct HttpBridge {
    /// The bridge, for its routes.
    pub bridge: Arc<dyn Bridge>,
    /// Its link, for readiness and queue depth.
    pub link: LinkHandle,
}

/// What the handlers share.
pub struct HttpState {
    /// The database, for readiness.
    pub store: Store,
    /// Bridges by domain.
    pub bridges: BTreeMap<String, HttpBridge>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
}

/// The application's routes with their limits.
pub fn app(state: Arc<HttpState>, config: &HttpConfig) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .route("/bridges/{domain}/{*path}", any(bridge_route))
        .with_state(state)
        .layer(DefaultBodyLimit::max(config.body_limit))
        .layer(RequestBodyLimitLayer::new(config.body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            config.request_timeout,
        ))
}

async fn health() -> &'static str {
    "ok\n"
}

/// 200 when every component is connected and the database answers; 503 otherwise, with a
/// JSON body saying what is not.
async fn ready(State(state): State<Arc<HttpState>>) -> Response {
    let database = match state.store.ping().await {
        Ok(()) => serde_json::Value::String("ok".into()),
        Err(error) => serde_json::Value::String(error.to_string()),
    };
    let mut all_ready = database == "ok";
    let mut bridges = serde_json::Map::new();
    for (domain, bridge) in &state.bridges {
        let connected = bridge.link.state.is_connected();
        all_ready &= connected;
        bridges.insert(
            domain.clone(),
            serde_json::json!({
                "connected": connected,
                "error": bridge.link.state.last_error(),
            }),
        );
    }
    let status = if all_ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({ "ready": all_ready, "database": database, "bridges": bridges });
    (status, axum::Json(body)).into_response()
}

async fn render_metrics(State(state): State<Arc<HttpState>>) -> Response {
    for (domain, bridge) in &state.bridges {
        metrics::queue_depth(domain, bridge.link.queue_depth());
        for (queue, name) in [(Queue::Outbox, "outbox"), (Queue::Inbox, "inbox")] {
            // A database that does not answer shows in /ready; the gauge keeps its value.
            if let Ok(pending) = state.store.pending(queue, domain).await {
                metrics::pending(domain, name, pending);
            }
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn bridge_route(
    State(state): State<Arc<HttpState>>,
    Path((domain, path)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(bridge) = state.bridges.get(&domain) else {
        return (StatusCode::NOT_FOUND, "no such bridge\n").into_response();
    };
    let path_and_query = match uri.query() {
        Some(query) => format!("/{path}?{query}"),
        None => format!("/{path}"),
    };
    let mut request = jabbridge_sdk::HttpRequest::new(body);
    *request.method_mut() = method;
    *request.headers_mut() = headers;
    match path_and_query.parse() {
        Ok(uri) => *request.uri_mut() = uri,
        Err(_) => return (StatusCode::BAD_REQUEST, "bad path\n").into_response(),
    }
    let response = bridge.bridge.handle_http(request).await;
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, axum::body::Body::from(body))
}
