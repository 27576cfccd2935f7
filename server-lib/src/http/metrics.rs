//! Metrics on every route, as middleware: `trailmark_http_requests_total{route,method,status}`
//! and `trailmark_http_request_duration_seconds{route,method}` (a histogram), where `route` is
//! the matched path template (`/c/{code}`, `/v1/reports/funnel`, …; `unmatched` for paths no
//! route knows, so scanners cannot mint series). The domain series (events accepted, installs
//! by match type, …) are counted where they happen. `GET /metrics` renders them all.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::AppState;

/// The process-wide Prometheus recorder. The first server built installs it; when the host
/// already installed another recorder, our metrics go to that one and `/metrics` stays empty.
pub(crate) fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])
                .expect("static buckets are valid");
            match builder.install_recorder() {
                Ok(handle) => handle,
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// The method as a label: the standard ones by name, anything else as `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts and times one request under its route template.
pub async fn track(request: Request, next: Next) -> Response {
    let route = match request.extensions().get::<MatchedPath>() {
        Some(path) => path.as_str().to_owned(),
        None => "unmatched".to_owned(),
    };
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics::histogram!("trailmark_http_request_duration_seconds", "route" => route.clone(), "method" => method)
        .record(started.elapsed());
    metrics::counter!(
        "trailmark_http_requests_total",
        "route" => route,
        "method" => method,
        "status" => response.status().as_str().to_owned()
    )
    .increment(1);
    response
}

/// `GET /metrics` (Prometheus text format).
pub async fn render(State(state): State<Arc<AppState>>) -> Response {
    metrics::gauge!("trailmark_writer_backlog").set(state.storage.backlog() as f64);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}
