//! `/metrics` and `/healthz` over HTTP/1, and the batch-timeline page ([`crate::ui`]) where
//! the process runs the batch loop; on a thread of its own so a busy batch never delays a
//! scrape and a scrape never touches the batch loop's runtime.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::{Role, RuntimeMetrics};

/// The content type of the OpenMetrics text.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `addr` and serves `metrics` there until the process ends; returns the bound
/// address (port 0 picks a free one).
pub fn spawn(addr: SocketAddr, metrics: Arc<RuntimeMetrics>) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let page = metrics.role() != Role::Worker;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || runtime.block_on(serve(listener, metrics)))?;
    if page {
        tracing::info!("batch timeline on http://{bound}/, metrics on http://{bound}/metrics");
    } else {
        tracing::info!("metrics on http://{bound}/metrics");
    }
    Ok(bound)
}

async fn serve(listener: std::net::TcpListener, metrics: Arc<RuntimeMetrics>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "the metrics endpoint cannot listen");
            return;
        }
    };
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file handles, say: wait instead of spinning on the same error.
                tracing::warn!(error = %e, "the metrics endpoint cannot accept a connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(answer(req.uri().path(), &metrics)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(path: &str, metrics: &RuntimeMetrics) -> Response<Full<Bytes>> {
    let page = metrics.role() != Role::Worker;
    let html = "text/html; charset=utf-8";
    let (status, content_type, body) = match path {
        "/metrics" => (StatusCode::OK, OPENMETRICS, Bytes::from(metrics.render())),
        "/healthz" => (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n")),
        "/" if page => (
            StatusCode::OK,
            html,
            Bytes::from_static(crate::ui::PAGE.as_bytes()),
        ),
        "/uplot.js" if page => (
            StatusCode::OK,
            "text/javascript; charset=utf-8",
            Bytes::from_static(crate::ui::UPLOT_JS.as_bytes()),
        ),
        "/uplot.css" if page => (
            StatusCode::OK,
            "text/css; charset=utf-8",
            Bytes::from_static(crate::ui::UPLOT_CSS.as_bytes()),
        ),
        "/api/timeline" if page => (
            StatusCode::OK,
            "application/json",
            Bytes::from(metrics.timeline_json()),
        ),
        "/api/job" if page => (
            StatusCode::OK,
            "application/json",
            Bytes::from(metrics.job_json()),
        ),
        _ if page => (
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"not found: try /, /metrics or /healthz\n"),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"not found: try /metrics or /healthz\n"),
        ),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}
