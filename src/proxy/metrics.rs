//! The Prometheus endpoint: a minimal HTTP/1.0 responder for `GET /metrics` (off unless
//! `metrics.listen` is set). Kernel-side admissions are read from our table's named
//! counters at scrape time (a scrape is rare; this is not the hot path).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::firewall::table::BaseTable;
use crate::telemetry::{Telemetry, render_prometheus};

/// Scrapes served at once; more get `503` at once. A scraper needs one; the cap keeps
/// whoever reaches `metrics.listen` from holding file descriptors the FTP sessions need, or
/// from running a counter read (an `nft` child) per connection.
const MAX_SCRAPES: usize = 4;

/// How long reading the kernel's admission counters may take.
const COUNTER_READ_LIMIT: Duration = Duration::from_secs(2);

/// How long one scrape may take, read and write each.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `/metrics` until the task is dropped.
pub async fn serve(listener: TcpListener, telemetry: Arc<Telemetry>, table: Arc<BaseTable>) {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPES));
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "metrics: {MAX_SCRAPES} scrapes running; 503");
            // A fresh socket's send buffer is empty: the line always fits, nothing waits.
            let _ =
                stream.try_write(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
            continue;
        };
        let telemetry = telemetry.clone();
        let table = table.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let read = tokio::time::timeout(SCRAPE_TIMEOUT, read_head(&mut stream)).await;
            let Ok(Ok(request)) = read else { return };
            let head = String::from_utf8_lossy(&request);
            let response = if head.starts_with("GET /metrics ") || head.starts_with("GET /metrics?")
            {
                let admitted = match table.admitted(COUNTER_READ_LIMIT).await {
                    Ok(admitted) => Some(admitted),
                    Err(e) => {
                        debug!(error = %e, "metrics: admission counters not read");
                        None
                    }
                };
                let body = render_prometheus(&telemetry.counters(), admitted);
                format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.0 404 Not Found\r\nContent-Length: 20\r\n\r\nonly /metrics here\r\n"
                    .to_string()
            };
            match tokio::time::timeout(SCRAPE_TIMEOUT, stream.write_all(response.as_bytes())).await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%peer, error = %e, "metrics client went away"),
                Err(_) => debug!(%peer, "metrics client read nothing; dropped"),
            }
            let _ = stream.shutdown().await;
        });
    }
}

/// Longest request head read; the rest of a longer one is left unread.
const MAX_HEAD: usize = 8192;

/// Reads the request's head: up to its blank line, the end of the stream, or [`MAX_HEAD`]
/// bytes. A request split over segments is read whole, and one with long headers is not
/// closed with unread bytes, which would make the kernel answer the client with a reset that
/// can discard the response.
async fn read_head(stream: &mut tokio::net::TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while head.len() < MAX_HEAD {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break;
        }
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scrapes_beyond_the_cap_get_503_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let table = Arc::new(BaseTable {
            table: "ftp_alg_metrics_test".into(),
            lan_interfaces: Vec::new(),
            control_ports: vec![21],
            listen_port: 2121,
            ct_mark: 1,
            route_mark: 1,
            gc_interval_ms: 20,
        });
        let server = tokio::spawn(serve(listener, Arc::new(Telemetry::default()), table));
        // Connections that send nothing hold every slot (until their 5 s read timeout).
        let mut idle = Vec::new();
        for _ in 0..MAX_SCRAPES {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut late = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut reply = String::new();
        tokio::time::timeout(Duration::from_secs(2), late.read_to_string(&mut reply))
            .await
            .expect("the 503 came at once")
            .unwrap();
        assert!(reply.starts_with("HTTP/1.0 503 "), "{reply}");
        // A slot freed is a slot to scrape again: the 404 path needs no nft.
        drop(idle.pop());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut next = tokio::net::TcpStream::connect(addr).await.unwrap();
        next.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut reply = String::new();
        tokio::time::timeout(Duration::from_secs(2), next.read_to_string(&mut reply))
            .await
            .expect("a freed slot serves")
            .unwrap();
        assert!(reply.starts_with("HTTP/1.0 404 "), "{reply}");
        server.abort();
    }

    /// A request that comes in pieces, or with headers longer than one read, is read whole:
    /// a scraper behind a proxy that adds headers still gets its metrics.
    #[tokio::test]
    async fn a_request_split_or_long_is_read_whole() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let table = Arc::new(BaseTable {
            table: "ftp_alg_metrics_test_absent".into(),
            lan_interfaces: Vec::new(),
            control_ports: vec![21],
            listen_port: 2121,
            ct_mark: 1,
            route_mark: 1,
            gc_interval_ms: 20,
        });
        let server = tokio::spawn(serve(listener, Arc::new(Telemetry::default()), table));
        let scrape = |pieces: Vec<Vec<u8>>| async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            for piece in pieces {
                stream.write_all(&piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let mut reply = String::new();
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut reply))
                .await
                .expect("answered")
                .expect("no reset");
            reply
        };
        let reply = scrape(vec![
            b"GET /met".to_vec(),
            b"rics HTTP/1.0\r\n\r\n".to_vec(),
        ])
        .await;
        assert!(reply.starts_with("HTTP/1.0 200 "), "{reply}");
        assert!(reply.contains("ftp_alg_sessions_active 0"), "{reply}");
        let long = format!(
            "GET /metrics HTTP/1.0\r\nAuthorization: Bearer {}\r\n\r\n",
            "x".repeat(3000)
        );
        let reply = scrape(vec![long.into_bytes()]).await;
        assert!(reply.starts_with("HTTP/1.0 200 "), "{reply}");
        server.abort();
    }
}
