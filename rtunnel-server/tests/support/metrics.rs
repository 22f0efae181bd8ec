//! Prometheus scrapes of the processes under test (`--metrics-listen`).

use std::collections::HashMap;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Proc, logged_address};

/// The address a process logged for its metrics.
pub async fn metrics_addr(proc: &Proc) -> SocketAddr {
    logged_address(proc, "metrics at GET /metrics", "addr").await
}

/// One HTTP GET; the status line and the body.
pub async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// Samples by name with labels (`name{a="b"}`), every line checked.
pub fn parse(text: &str) -> HashMap<String, f64> {
    assert!(text.ends_with("# EOF\n"), "{text}");
    let mut samples = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(
            name.chars().next().unwrap().is_ascii_alphabetic(),
            "bad name in {line:?}"
        );
        samples.insert(name.to_owned(), value);
    }
    samples
}

pub fn sample(samples: &HashMap<String, f64>, name: &str) -> f64 {
    *samples
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {samples:#?}"))
}

/// The connections each of the server's `threads` connection threads
/// holds now (0 for one that never held any).
pub async fn connections_by_thread(addr: SocketAddr, threads: usize) -> Vec<f64> {
    let (_, body) = get(addr, "/metrics").await;
    let s = parse(&body);
    (0..threads)
        .map(|t| {
            let name = format!("rtunnel_connections{{thread=\"{t}\"}}");
            s.get(&name).copied().unwrap_or(0.0)
        })
        .collect()
}
