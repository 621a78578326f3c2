//! The HTTP server: metrics, probes and the small admin API.
//!
//! This module owns every HTTP route and what the API may ask of the worker
//! ([`Control`]). It reads only the last [`Snapshot`] and the readiness
//! flags, so no request waits for the consumer loop except the ones that
//! must (a capture, a reload, one model's bins). Routes:
//!
//! | route | what |
//! |---|---|
//! | `GET /metrics` | Prometheus text format: the registry, and the gauges of the last evaluation |
//! | `GET /livez` | 200 while the process serves HTTP; never depends on Kafka |
//! | `GET /readyz` | 200 when baselines are loaded, partitions assigned and a broker reachable; 503 with the reasons otherwise |
//! | `GET /api/v1/drift[?model=M]` | current scores, states and sample counts per model and feature (with `model`, also every bin's baseline and window counts); error rates, deploys, latency percentiles and batch statistics (`health`); feedback per arm and arm comparisons (`experiments`); realized and estimated accuracy per model and arm (`quality`) and the label join (`label_join`) (JSON) |
//! | `GET /[?q=NAME&page=N]` | the drift page: every model, what fires first, 50 a page, filtered by name; refreshes itself (HTML) |
//! | `GET /model/<name>` | one model's page: health, then each distribution's scores, thresholds, the bins that moved, and its baseline and window shares side by side (HTML and SVG) |
//! | `GET /api/v1/status` | consumption counters: messages, events per model, partitions, lag (small JSON; what `driftd bench` polls) |
//! | `GET /api/v1/baselines` | the loaded baselines: model, version, creation time, samples |
//! | `POST /api/v1/baselines` `{"model": M}` | capture M's current window as its new baseline (bearer token) |
//! | `POST /api/v1/baselines/reload` | reload the baseline directory (bearer token) |
//!
//! Admin routes need `Authorization: Bearer <http.admin_token>`, compared in
//! constant time; with no token configured they answer 403, never open.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::daemon::metrics::Exposition;
use crate::daemon::readiness::Readiness;
use crate::daemon::snapshot::{Snapshot, Watched};
use crate::engine::Report;
use crate::view;

/// Where the HTTP server listens and who may use the admin API (`[http]`).
#[derive(Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// A second address serving only /metrics, /livez and /readyz.
    pub metrics_listen: Option<SocketAddr>,
    /// Bearer token for the admin endpoints; `None` disables them.
    pub admin_token: Option<String>,
}

impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConfig")
            .field("listen", &self.listen)
            .field("metrics_listen", &self.metrics_listen)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9400".parse().expect("valid"),
            metrics_listen: None,
            admin_token: None,
        }
    }
}

/// What the API asks of the worker, the one owner of the engine. Answers
/// come back on the oneshot; a request the worker never answers (it
/// stopped) is a 503, never a hang.
#[derive(Debug)]
pub enum Control {
    /// Reload baselines from the directory (SIGHUP, or a file change).
    Reload {
        reply: Option<oneshot::Sender<Result<Vec<String>, String>>>,
    },
    /// Make the current window of `model` its new baseline.
    Capture {
        model: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// The detailed report (bins and counts) of one model, now: the
    /// per-evaluation snapshot leaves those out.
    Detail {
        model: String,
        reply: oneshot::Sender<Report>,
    },
}

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct AdminState {
    pub exposition: Exposition,
    pub readiness: Arc<Readiness>,
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    /// The models whose pages are open (their details are in snapshots).
    pub watched: Arc<Watched>,
    pub control: mpsc::Sender<Control>,
    pub admin_token: Option<Arc<str>>,
}

pub(crate) fn router(state: AdminState) -> Router {
    probes()
        .route("/", get(page_index))
        .route("/model/{name}", get(page_model))
        .route("/api/v1/drift", get(drift))
        .route("/api/v1/status", get(status))
        .route("/api/v1/baselines", get(baselines).post(capture))
        .route("/api/v1/baselines/reload", post(reload))
        .with_state(state)
}

/// What Prometheus and the kubelet need, and nothing else: the router of
/// `http.metrics_listen`, an address that can be opened wider than the API.
pub(crate) fn probes_router(state: AdminState) -> Router {
    probes().with_state(state)
}

fn probes() -> Router<AdminState> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
}

/// Serves `app` until `cancel`, then finishes in-flight requests.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

/// Binds the listener; a bind failure names the address and a likely fix.
pub(crate) async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {addr}: {e} (is another process using the port? set {key})"
        )
    })
}

/// The exposition as a stream of its chunks: the gauges' text is built
/// once per evaluation and shared by the scrapes, so a scrape of 40 MB
/// costs no copy of it. Built on a blocking thread: for a hundred models
/// it takes tens of milliseconds, which would stall the runtime's thread.
async fn metrics(State(s): State<AdminState>) -> Response {
    let exposition = s.exposition.clone();
    let chunks = match tokio::task::spawn_blocking(move || exposition.chunks()).await {
        Ok(chunks) => chunks,
        Err(e) => {
            tracing::error!(error = %e, "could not build the exposition");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let body = axum::body::Body::from_stream(futures_util::stream::iter(
        chunks.into_iter().map(Ok::<_, std::convert::Infallible>),
    ));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn readyz(State(s): State<AdminState>) -> Response {
    match s.readiness.ready() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reasons": why})),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct DriftQuery {
    model: Option<String>,
}

/// One model's report with its bins and counts, asked of the consumer loop
/// (the per-evaluation snapshot leaves them out): one model's report is
/// built between two batches, in microseconds.
async fn detail(s: &AdminState, model: &str) -> Option<Report> {
    let (tx, rx) = oneshot::channel();
    let asked = s
        .control
        .send(Control::Detail {
            model: model.to_owned(),
            reply: tx,
        })
        .await;
    match asked {
        Ok(()) => rx.await.ok(),
        Err(_) => None,
    }
}

/// The page refreshes itself this often: about an evaluation or two.
const PAGE_REFRESH_S: u32 = 30;

#[derive(Deserialize)]
struct PageQuery {
    q: Option<String>,
    page: Option<usize>,
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn page_index(State(s): State<AdminState>, Query(q): Query<PageQuery>) -> Response {
    let snap = s.snapshot.borrow().clone();
    let mut body = format!(
        "<h1>driftd</h1><p>evaluated at {}</p>",
        crate::engine::time::rfc3339(snap.at_ms)
    );
    let filter = q.q.as_deref().filter(|f| !f.is_empty());
    view::index(
        &snap.report.models,
        filter,
        q.page.unwrap_or(0),
        &view::Links::Pages,
        &mut body,
    );
    html(
        StatusCode::OK,
        view::document("driftd", Some(PAGE_REFRESH_S), &body),
    )
}

/// A model's page, drawn from the last snapshot: with its bars and score
/// history once the worker has put its detail there (the evaluation after
/// the first view), with its scores and states until then.
async fn page_model(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    let snap = s.snapshot.borrow().clone();
    let known = snap.report.models.iter().find(|m| m.model == name);
    if known.is_none() {
        let body = format!(
            "<p>no model {} is being tracked. <a href=\"/\">every model</a></p>",
            view::esc(&name)
        );
        return html(StatusCode::NOT_FOUND, view::document("driftd", None, &body));
    }
    s.watched.watch(&name);
    let detail = snap.details.iter().find(|m| m.model == name);
    let health = snap.report.health.iter().find(|h| h.model == name);
    let mut body = format!(
        "<p><a href=\"/\">every model</a> · evaluated at {}</p>",
        crate::engine::time::rfc3339(snap.at_ms)
    );
    if detail.is_none() {
        body.push_str("<p id=\"waiting\"><small>bins and score history appear with the next evaluation (a model whose bins would pass 256 KiB shows its scores only)</small></p>");
    }
    let m = detail.or(known).expect("known");
    let beside = view::Beside {
        health,
        experiments: &snap.report.experiments,
        quality: &snap.report.quality,
    };
    view::model(m, beside, &mut body);
    // Until the bars are there, look again soon.
    let refresh = if detail.is_some() { PAGE_REFRESH_S } else { 2 };
    html(
        StatusCode::OK,
        view::document(&format!("driftd: {name}"), Some(refresh), &body),
    )
}

async fn drift(State(s): State<AdminState>, Query(q): Query<DriftQuery>) -> Response {
    let snap = s.snapshot.borrow().clone();
    // One model: its bins and counts too; every model: the snapshot.
    let detail = match &q.model {
        Some(model) => detail(&s, model).await,
        None => None,
    };
    let models: Vec<_> = detail
        .as_ref()
        .unwrap_or(&snap.report)
        .models
        .iter()
        .filter(|m| q.model.as_ref().is_none_or(|want| *want == m.model))
        .collect();
    let wanted = |m: &str| q.model.as_ref().is_none_or(|want| want == m);
    let health: Vec<_> = snap
        .report
        .health
        .iter()
        .filter(|h| wanted(&h.model))
        .collect();
    let x = &snap.report.experiments;
    let arms: Vec<_> = x.arms.iter().filter(|a| wanted(&a.model)).collect();
    let comparisons: Vec<_> = x.comparisons.iter().filter(|c| wanted(&c.model)).collect();
    let quality: Vec<_> = snap
        .report
        .quality
        .iter()
        .filter(|r| wanted(&r.model))
        .collect();
    if let (Some(want), true) = (
        &q.model,
        models.is_empty() && health.is_empty() && arms.is_empty() && quality.is_empty(),
    ) {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no model {want:?} is being tracked")})),
        )
            .into_response();
    }
    Json(json!({
        "evaluated_at": crate::engine::time::rfc3339(snap.at_ms),
        "models": models,
        "health": health,
        "experiments": {"arms": arms, "comparisons": comparisons},
        "quality": quality,
        "label_join": {
            "outcomes": snap.report.label_stats,
            "waiting": {"predictions": snap.report.label_waiting.0, "labels": snap.report.label_waiting.1},
            "sample_rate": snap.report.label_sample_rate,
        },
    }))
    .into_response()
}

async fn status(State(s): State<AdminState>) -> Response {
    let snap = s.snapshot.borrow().clone();
    let events: serde_json::Map<String, serde_json::Value> = snap
        .report
        .models
        .iter()
        .map(|m| (m.model.clone(), m.events.into()))
        .collect();
    Json(json!({
        "evaluated_at": crate::engine::time::rfc3339(snap.at_ms),
        "evaluated_at_ms": snap.at_ms,
        "messages": snap.kafka.messages,
        "events": events,
        "assigned_partitions": snap.kafka.assigned_partitions,
        "lag": snap.kafka.lag.iter().map(|l| l.2.max(0)).sum::<i64>(),
    }))
    .into_response()
}

async fn baselines(State(s): State<AdminState>) -> Response {
    let snap = s.snapshot.borrow().clone();
    let list: Vec<_> = snap
        .report
        .models
        .iter()
        .map(|m| json!({"model": m.model, "version": m.baseline_version}))
        .collect();
    Json(json!({"baselines": list})).into_response()
}

/// Constant-time comparison: the time taken does not reveal how much of a
/// guessed token was right.
fn token_matches(given: &[u8], want: &[u8]) -> bool {
    let mut diff = given.len() ^ want.len();
    for (i, w) in want.iter().enumerate() {
        diff |= usize::from(given.get(i).copied().unwrap_or(0) ^ w);
    }
    diff == 0
}

fn authorize(s: &AdminState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let Some(want) = &s.admin_token else {
        return Err(Box::new(
            (
                StatusCode::FORBIDDEN,
                Json(json!({"error": "admin endpoints are disabled: set http.admin_token to enable them"})),
            )
                .into_response(),
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if token_matches(given.as_bytes(), want.as_bytes()) {
        Ok(())
    } else {
        Err(Box::new(
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(json!({"error": "missing or wrong bearer token"})),
            )
                .into_response(),
        ))
    }
}

#[derive(Deserialize)]
struct CaptureBody {
    model: String,
}

async fn capture(
    State(s): State<AdminState>,
    headers: HeaderMap,
    body: Option<Json<CaptureBody>>,
) -> Response {
    if let Err(r) = authorize(&s, &headers) {
        return *r;
    }
    let Some(Json(body)) = body else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "send a JSON body {\"model\": \"<model id>\"}"})),
        )
            .into_response();
    };
    let (tx, rx) = oneshot::channel();
    if s.control
        .send(Control::Capture {
            model: body.model.clone(),
            reply: tx,
        })
        .await
        .is_err()
    {
        return unavailable();
    }
    match rx.await {
        Ok(Ok(version)) => Json(json!({"model": body.model, "version": version})).into_response(),
        Ok(Err(e)) => (StatusCode::CONFLICT, Json(json!({"error": e}))).into_response(),
        Err(_) => unavailable(),
    }
}

async fn reload(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &headers) {
        return *r;
    }
    let (tx, rx) = oneshot::channel();
    if s.control
        .send(Control::Reload { reply: Some(tx) })
        .await
        .is_err()
    {
        return unavailable();
    }
    match rx.await {
        Ok(Ok(models)) => Json(json!({"reloaded": models})).into_response(),
        Ok(Err(e)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error": e, "kept": "the baselines in force"})),
        )
            .into_response(),
        Err(_) => unavailable(),
    }
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": "the consumer loop is not running"})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(token_matches(b"secret-token-123", b"secret-token-123"));
        assert!(!token_matches(b"secret-token-12", b"secret-token-123"));
        assert!(!token_matches(b"secret-token-1234", b"secret-token-123"));
        assert!(!token_matches(b"", b"secret-token-123"));
        assert!(!token_matches(b"Secret-token-123", b"secret-token-123"));
    }
}
