//! The HTTP listener: `/health`, `/ready`, `/metrics`, and bridges' own routes under
//! `/bridges/{domain}/…`. Every connection has a header-read and idle timeout and a place
//! under `max_connections`; every request a body size limit and a timeout; every bridge's
//! routes a concurrency limit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, State},
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::{any, get},
};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use jabbridge_sdk::{Bridge, Shutdown};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower_http::{limit::RequestBodyLimitLayer, timeout::TimeoutLayer};

use crate::config::HttpConfig;
use crate::metrics;
use crate::store::Queue;
use crate::store::Store;
use crate::xmpp::session::LinkHandle;

/// One bridge as the HTTP side sees it.
pub struct HttpBridge {
    /// The bridge, for its routes.
    bridge: Arc<dyn Bridge>,
    /// Its link, for readiness and queue depth.
    link: LinkHandle,
    /// Its routes' requests in hand (`http.concurrency`).
    turns: Semaphore,
}

impl HttpBridge {
    /// A bridge whose routes handle at most `concurrency` requests at once.
    pub fn new(bridge: Arc<dyn Bridge>, link: LinkHandle, concurrency: usize) -> Self {
        Self {
            bridge,
            link,
            turns: Semaphore::new(concurrency),
        }
    }
}

/// What the handlers share.
pub struct HttpState {
    /// The database, for readiness.
    store: Store,
    /// Bridges by domain; a reload adds and removes them.
    bridges: std::sync::RwLock<BTreeMap<String, Arc<HttpBridge>>>,
    /// Renders `/metrics`.
    metrics: PrometheusHandle,
    /// `/ready` and `/metrics` requests in hand, together (`http.concurrency`).
    probes: Semaphore,
}

impl HttpState {
    /// The state of the listener's handlers.
    pub fn new(
        store: Store,
        bridges: BTreeMap<String, HttpBridge>,
        metrics: PrometheusHandle,
        concurrency: usize,
    ) -> Self {
        Self {
            store,
            bridges: std::sync::RwLock::new(
                bridges
                    .into_iter()
                    .map(|(domain, bridge)| (domain, Arc::new(bridge)))
                    .collect(),
            ),
            metrics,
            probes: Semaphore::new(concurrency),
        }
    }

    /// Adds (or replaces) the routes of the bridge at `domain`, or with `None` removes them.
    pub fn set_bridge(&self, domain: &str, bridge: Option<HttpBridge>) {
        let mut bridges = self
            .bridges
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match bridge {
            Some(bridge) => bridges.insert(domain.to_owned(), Arc::new(bridge)),
            None => bridges.remove(domain),
        };
    }

    /// The bridges now, by domain.
    fn bridges(&self) -> Vec<(String, Arc<HttpBridge>)> {
        self.bridges
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(domain, bridge)| (domain.clone(), bridge.clone()))
            .collect()
    }

    /// The bridge at `domain`.
    fn bridge(&self, domain: &str) -> Option<Arc<HttpBridge>> {
        self.bridges
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(domain)
            .cloned()
    }
}

/// How long shutdown waits for requests in progress.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` until `stopping`: HTTP/1.1, each connection closed when its
/// headers take longer than `http.header_timeout` or it idles that long between requests,
/// and at most `http.max_connections` open (one more is answered 503 and closed). At
/// shutdown it stops accepting and lets requests in progress finish.
pub async fn serve(listener: TcpListener, app: Router, config: &HttpConfig, stopping: Shutdown) {
    let open = Arc::new(Semaphore::new(config.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, typically: wait rather than spin.
                    tracing::warn!(%error, "cannot accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stopping.clone().wait() => break,
        };
        let Ok(place) = open.clone().try_acquire_owned() else {
            metrics::http_refused("connections");
            tokio::spawn(turn_away(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _place = place;
            if let Err(error) = connection.await {
                tracing::debug!(%error, "an HTTP connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some HTTP requests did not finish in time");
    }
}

/// Answers a connection over `max_connections` with 503 and closes it (after reading what
/// the client sent first, so that it sees the answer rather than a reset).
async fn turn_away(mut stream: TcpStream) {
    let answer = async {
        let mut request = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut request)).await;
        let _ = stream
            .write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n\
                  Content-Type: text/plain\r\nContent-Length: 21\r\n\r\ntoo many connections\n",
            )
            .await;
        let _ = stream.shutdown().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), answer).await;
}

/// 503 with `Retry-After` for a request over a concurrency limit.
fn busy() -> Response {
    metrics::http_refused("concurrency");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(axum::http::header::RETRY_AFTER, "1")],
        "busy; try again shortly\n",
    )
        .into_response()
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

/// `200 ok`, with this process's [`INSTANCE_HEADER`]: `jabbridge doctor` compares it as
/// seen through `http.public_url` and on the listener itself.
async fn health() -> Response {
    ([(INSTANCE_HEADER, instance())], "ok\n").into_response()
}

/// The header of `/health` that names this process (a random token, nothing else).
pub const INSTANCE_HEADER: &str = "jabbridge-instance";

/// This process's random token.
fn instance() -> &'static str {
    static INSTANCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    INSTANCE.get_or_init(|| uuid::Uuid::new_v4().simple().to_string())
}

/// 200 when every component is connected and the database answers; 503 otherwise, with a
/// JSON body saying what is not, and which key to check, but no raw error text (that goes
/// to the log): anyone who reaches the listener may ask.
async fn ready(State(state): State<Arc<HttpState>>) -> Response {
    let Ok(_turn) = state.probes.try_acquire() else {
        return busy();
    };
    let database = match state.store.ping().await {
        Ok(()) => "ok",
        Err(error) => {
            tracing::warn!(%error, "readiness: the database does not answer");
            "unavailable (details in the log)"
        }
    };
    let mut all_ready = database == "ok";
    let mut bridges = serde_json::Map::new();
    for (domain, bridge) in state.bridges() {
        let connected = bridge.link.state.is_connected();
        // An external bridge's process, say: down while it restarts.
        let health = bridge.bridge.health();
        all_ready &= connected && health.is_ok();
        // The link keeps a summary of its last error for this, and logs the details.
        let mut entry = serde_json::json!({
            "connected": connected,
            "error": bridge.link.state.last_error(),
        });
        if let Err(why) = health {
            entry["bridge_error"] = serde_json::Value::String(why);
        }
        bridges.insert(domain.clone(), entry);
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
    let Ok(_turn) = state.probes.try_acquire() else {
        return busy();
    };
    for (domain, bridge) in state.bridges() {
        let domain = domain.as_str();
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
    let Some(bridge) = state.bridge(&domain) else {
        return (StatusCode::NOT_FOUND, "no such bridge\n").into_response();
    };
    let Ok(_turn) = bridge.turns.try_acquire() else {
        return busy();
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

#[cfg(test)]
mod tests {
    use jabbridge_sdk::{
        AddressError, BridgeInfo, ForeignId, HttpRequest, HttpResponse, OutgoingMessage, SendError,
        SendOutcome, async_trait, respond,
    };
    use metrics_exporter_prometheus::PrometheusBuilder;
    use secrecy::SecretString;
    use tokio::sync::{Notify, mpsc};

    use super::*;
    use crate::xmpp::session;

    /// A bridge whose route answers only when released.
    struct Held {
        entered: mpsc::UnboundedSender<()>,
        release: Arc<Notify>,
    }

    #[async_trait]
    impl Bridge for Held {
        fn info(&self) -> BridgeInfo {
            BridgeInfo {
                gateway_type: "held".into(),
                name: "Held".into(),
                capabilities: Default::default(),
                registration: None,
                prompt: Default::default(),
            }
        }

        fn parse_address(&self, localpart: &str) -> Result<ForeignId, AddressError> {
            Ok(ForeignId::new(localpart))
        }

        async fn send_message(&self, _: OutgoingMessage) -> Result<SendOutcome, SendError> {
            Ok(SendOutcome::Sent)
        }

        async fn handle_http(&self, _request: HttpRequest) -> HttpResponse {
            let _ = self.entered.send(());
            self.release.notified().await;
            respond(StatusCode::OK, "done\n")
        }
    }

    #[tokio::test]
    async fn a_route_over_its_concurrency_is_told_to_retry_and_others_are_not_held_up() {
        let store = Store::connect(&SecretString::from("sqlite::memory:"), 1)
            .await
            .expect("SQLite");
        let (link, _outgoing) = session::detached(8);
        let (entered, mut inside) = mpsc::unbounded_channel();
        let release = Arc::new(Notify::new());
        let held = Held {
            entered,
            release: release.clone(),
        };
        let bridges = BTreeMap::from([(
            "held.test".to_owned(),
            HttpBridge::new(Arc::new(held), link, 1),
        )]);
        let prometheus = PrometheusBuilder::new().build_recorder().handle();
        let state = Arc::new(HttpState::new(store, bridges, prometheus, 4));
        let config = HttpConfig::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let (_stop, stopping) = Shutdown::new();
        let router = app(state, &config);
        tokio::spawn(async move { serve(listener, router, &config, stopping).await });
        let client = reqwest::Client::new();
        let route = format!("{url}/bridges/held.test/x");
        let first = tokio::spawn(client.post(&route).send());
        inside
            .recv()
            .await
            .expect("the first request reached the bridge");
        let second = client.post(&route).send().await.expect("answered");
        assert_eq!(second.status(), 503);
        assert_eq!(
            second.headers().get("retry-after").map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        // Another route is not held up by this bridge's.
        let health = client.get(format!("{url}/health")).send().await;
        assert_eq!(health.expect("answered").status(), 200);
        release.notify_one();
        let first = first.await.expect("task").expect("answered");
        assert_eq!(first.status(), 200);
        let third = tokio::spawn(client.post(&route).send());
        inside
            .recv()
            .await
            .expect("the third request reached the bridge");
        release.notify_one();
        assert_eq!(third.await.expect("task").expect("answered").status(), 200);
    }
}
