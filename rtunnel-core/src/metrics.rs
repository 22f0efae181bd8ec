//! Prometheus metrics for both binaries: a registry of their own
//! ([`prometheus_client`]) and [`serve`], the `/metrics` endpoint on its
//! own listener (`--metrics-listen`), off the public one.
//!
//! The endpoint speaks just enough HTTP/1.1 for a scraper: `GET /metrics`
//! answers the OpenMetrics text, anything else 404; a request head is
//! read within [`HEAD_TIMEOUT`] and [`MAX_HEAD_BYTES`], one request per
//! connection, at most [`MAX_CONNECTIONS`] at once (more are closed at
//! once), each answered within [`ANSWER_TIMEOUT`]. Whoever can reach the
//! port can scrape it, but cannot hold more than that.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use prometheus_client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The longest a scraper may take to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request head read.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Connections served at once; more are closed as they arrive.
pub const MAX_CONNECTIONS: usize = 8;
/// The longest rendering and writing one answer may take.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Buckets of a latency histogram, in seconds: 1 ms to about 16 s.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15)
}

/// Serves `/metrics` on `listener` until `shutdown` resolves; `render`
/// produces the text of each scrape.
pub async fn serve<R, Fut, S>(listener: TcpListener, render: R, shutdown: S)
where
    R: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = String> + Send + 'static,
    S: Future<Output = ()>,
{
    let render = Arc::new(render);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let (socket, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(ok) => ok,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("metrics: too many connections; closing one");
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(socket, move || render()).await {
                tracing::debug!(error = %e, "metrics: a scrape failed");
            }
            drop(slot);
        });
    }
}

async fn answer<R, Fut>(mut socket: TcpStream, render: R) -> std::io::Result<()>
where
    R: FnOnce() -> Fut,
    Fut: Future<Output = String>,
{
    let mut head = Vec::with_capacity(1024);
    let read = tokio::time::timeout(HEAD_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        loop {
            if head.len() >= MAX_HEAD_BYTES {
                return Err(std::io::Error::other("request head too large"));
            }
            let n = socket.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::Error::other(
                    "closed before the request head ended",
                ));
            }
            // Only the new bytes (and the three before them) can complete
            // the blank line.
            let from = head.len().saturating_sub(3);
            head.extend_from_slice(&buf[..n]);
            if head[from..].windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(());
            }
        }
    })
    .await;
    match read {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(std::io::Error::other("no request head in time")),
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or(path);
    let scrape = method == "GET" && path == "/metrics";
    let answered = tokio::time::timeout(ANSWER_TIMEOUT, async {
        let (status, kind, body) = if scrape {
            (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                render().await,
            )
        } else {
            (
                "404 Not Found",
                "text/plain; charset=utf-8",
                "metrics are at GET /metrics\n".to_owned(),
            )
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(response.as_bytes()).await?;
        socket.shutdown().await
    })
    .await;
    answered.unwrap_or_else(|_| Err(std::io::Error::other("the answer took too long")))
}

/// Encodes `registry` as OpenMetrics text.
pub fn encode(registry: &prometheus_client::registry::Registry) -> String {
    let mut text = String::new();
    // Writing into a String does not fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: std::net::SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn metrics_answer_get_metrics_only() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                serve(
                    listener,
                    || async { "x_total 1\n# EOF\n".to_owned() },
                    stop.cancelled_owned(),
                )
                .await
            }
        });
        let ok = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("x_total 1\n# EOF\n"), "{ok}");
        let other = get(addr, "GET /api/v1/users HTTP/1.1\r\n\r\n").await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        // A head that never ends is cut at the size limit.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let junk = vec![b'a'; MAX_HEAD_BYTES + 2048];
        let _ = s.write_all(&junk).await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        assert!(out.is_empty());
        // Connections that send nothing hold a slot each until their head
        // times out; past the cap, new ones are closed at once.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut late = TcpStream::connect(addr).await.unwrap();
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(2), late.read(&mut byte))
            .await
            .expect("closed at once, not held")
            .unwrap_or(0);
        assert_eq!(n, 0, "the connection past the cap is closed");
        drop(idle);
        stop.cancel();
        task.await.unwrap();
    }
}
