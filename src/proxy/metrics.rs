//! The Prometheus endpoint: a minimal HTTP/1.0 responder for `GET /metrics` (off unless
//! `metrics.listen` is set). Kernel-side admissions are read from our table's named
//! counters at scrape time (a scrape is rare; this is not the hot path).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::firewall::table::BaseTable;
use crate::telemetry::{Telemetry, render_prometheus};

/// Serves `/metrics` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    telemetry: Arc<Telemetry>,
    table: Arc<BaseTable>,
    pinhole_timeout: Duration,
) {
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let telemetry = telemetry.clone();
        let table = table.clone();
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let read =
                tokio::time::timeout(Duration::from_secs(5), stream.read(&mut request)).await;
            let Ok(Ok(n)) = read else { return };
            let head = String::from_utf8_lossy(&request[..n]);
            let response = if head.starts_with("GET /metrics ") || head.starts_with("GET /metrics?")
            {
                let admitted = tokio::task::spawn_blocking(move || table.admitted())
                    .await
                    .ok()
                    .and_then(Result::ok);
                let body = render_prometheus(&telemetry.snapshot(pinhole_timeout), admitted);
                format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.0 404 Not Found\r\nContent-Length: 20\r\n\r\nonly /metrics here\r\n"
                    .to_string()
            };
            if let Err(e) = stream.write_all(response.as_bytes()).await {
                debug!(%peer, error = %e, "metrics client went away");
            }
            let _ = stream.shutdown().await;
        });
    }
}
