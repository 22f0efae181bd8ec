//! A real web application to put behind an agent: what the subdomain proxy
//! must carry (cookies, redirects, WebSockets, large streamed bodies both
//! ways), served over plain HTTP or over TLS with a self-signed certificate.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

/// A running web application.
pub struct WebApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// TCP connections it accepted so far.
    pub connections: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct App {
    addr: SocketAddr,
    scheme: &'static str,
}

/// The block `/big` repeats.
pub const PATTERN: &[u8; 64] = b"rtunnel streams this without holding it: 0123456789abcdefghijkl\n";

impl WebApp {
    /// Serves the application over plain HTTP.
    pub async fn start() -> WebApp {
        Self::serve(None).await
    }

    /// Serves the application over TLS with a certificate of the test CA
    /// (`tests/fixtures/leaf1-cert.pem`, for `localhost`, `127.0.0.1` and
    /// `app.customer.lan`; agents trust it with `--ca-file test-ca.pem`).
    pub async fn start_tls() -> WebApp {
        Self::serve(Some("leaf1")).await
    }

    /// Serves the application over TLS with a self-signed certificate
    /// (`tests/fixtures/webapp-cert.pem`), which no CA vouches for.
    pub async fn start_tls_self_signed() -> WebApp {
        Self::serve(Some("webapp")).await
    }

    async fn serve(cert: Option<&'static str>) -> WebApp {
        let tls = cert.is_some();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = App {
            addr,
            scheme: if tls { "https" } else { "http" },
        };
        let router = Router::new()
            .route("/headers", get(headers).post(headers))
            .route("/login", get(login))
            .route("/me", get(me))
            .route("/redirect", get(redirect))
            .route("/big", get(big))
            .route("/drip", get(drip))
            .route("/events", get(events))
            .route("/self-redirect", get(self_redirect))
            .route("/upload", post(upload))
            .route("/ws", get(ws))
            .with_state(app);
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let acceptor = cert.map(tls_acceptor);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let router = router.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let builder = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let sni = stream.get_ref().1.server_name().map(str::to_owned);
                            let router = router.layer(axum::Extension(TlsServerName(sni)));
                            let service = hyper_util::service::TowerToHyperService::new(router);
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let _ = builder.serve_connection(io, service).with_upgrades().await;
                        }
                        None => {
                            let service = hyper_util::service::TowerToHyperService::new(router);
                            let io = hyper_util::rt::TokioIo::new(tcp);
                            let _ = builder.serve_connection(io, service).with_upgrades().await;
                        }
                    }
                });
            }
        });
        WebApp { addr, connections }
    }
}

/// The name a TLS client asked for (SNI), if it asked.
#[derive(Clone)]
struct TlsServerName(Option<String>);

fn tls_acceptor(name: &str) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let cert = CertificateDer::from_pem_file(dir.join(format!("{name}-cert.pem"))).unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join(format!("{name}-key.pem"))).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Echoes the request line and headers as JSON (header names lower-case,
/// values of repeated headers in order), and over TLS the name the client
/// asked for (`sni`).
async fn headers(State(app): State<App>, req: Request) -> Response {
    let sni = req
        .extensions()
        .get::<TlsServerName>()
        .and_then(|n| n.0.clone());
    let mut map = serde_json::Map::new();
    for (name, value) in req.headers() {
        let entry = map
            .entry(name.as_str().to_owned())
            .or_insert_with(|| serde_json::Value::Array(vec![]));
        if let serde_json::Value::Array(values) = entry {
            values.push(
                String::from_utf8_lossy(value.as_bytes())
                    .into_owned()
                    .into(),
            );
        }
    }
    axum::Json(serde_json::json!({
        "method": req.method().as_str(),
        "uri": req.uri().to_string(),
        "scheme": app.scheme,
        "sni": sni,
        "headers": map,
    }))
    .into_response()
}

/// Logs in: a session cookie for the app's own domain, and an absolute
/// redirect to the app's own address.
async fn login(State(app): State<App>) -> Response {
    Response::builder()
        .status(StatusCode::FOUND)
        .header(
            header::SET_COOKIE,
            "app_session=s3cret; Domain=127.0.0.1; Path=/; HttpOnly",
        )
        .header(
            header::SET_COOKIE,
            "rtunnel_proxy=forged-by-the-app; Path=/",
        )
        .header(
            header::LOCATION,
            format!("{}://{}/me", app.scheme, app.addr),
        )
        .body(Body::empty())
        .unwrap()
}

/// Who the session cookie says is logged in.
async fn me(headers: HeaderMap) -> Response {
    let cookies = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join("; ");
    if cookies.contains("app_session=s3cret") {
        format!("logged in; cookies seen: {cookies}").into_response()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            format!("not logged in; cookies seen: {cookies}"),
        )
            .into_response()
    }
}

async fn redirect() -> Response {
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, "/headers?from=redirect")
        .body(Body::empty())
        .unwrap()
}

#[derive(Deserialize)]
struct Size {
    bytes: u64,
}

/// `bytes` bytes of [`PATTERN`], made as they are sent (chunked, no
/// length): nothing here holds the whole body either.
async fn big(Query(size): Query<Size>) -> Response {
    let block = Bytes::from(PATTERN.repeat(1024));
    let total = size.bytes;
    let stream = futures::stream::unfold(0u64, move |sent| {
        let block = block.clone();
        async move {
            if sent >= total {
                return None;
            }
            let n = (total - sent).min(block.len() as u64) as usize;
            Some((Ok::<_, std::io::Error>(block.slice(..n)), sent + n as u64))
        }
    });
    Body::from_stream(stream).into_response()
}

/// A response that never ends: one line every 50 ms.
async fn drip() -> Response {
    let stream = futures::stream::unfold(0u64, |n| async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Some((
            Ok::<_, std::io::Error>(Bytes::from(format!("drip {n}\n"))),
            n + 1,
        ))
    });
    Body::from_stream(stream).into_response()
}

/// A redirect to `/me` on the host the request named (as applications
/// behind a name-routing reverse proxy, or with an external name, do).
async fn self_redirect(State(app): State<App>, headers: HeaderMap) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("missing-host");
    Response::builder()
        .status(StatusCode::FOUND)
        .header(header::LOCATION, format!("{}://{host}/me", app.scheme))
        .body(Body::empty())
        .unwrap()
}

/// Server-sent events: one event at once, then nothing more, ever. A proxy
/// that buffers holds the event back; one that streams hands it on.
async fn events() -> Response {
    let first = futures::stream::once(async {
        Ok::<_, std::io::Error>(Bytes::from_static(b"event: hello\ndata: first\n\n"))
    });
    let stream = first.chain(futures::stream::pending());
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Reads the request body as it streams in; answers its size and SHA-256.
async fn upload(req: Request) -> Response {
    let mut body = req.into_body().into_data_stream();
    let mut hash = Sha256::new();
    let mut bytes = 0u64;
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            return StatusCode::BAD_REQUEST.into_response();
        };
        bytes += chunk.len() as u64;
        hash.update(&chunk);
    }
    axum::Json(serde_json::json!({
        "bytes": bytes,
        "sha256": hex::encode(hash.finalize()),
    }))
    .into_response()
}

/// WebSocket echo: text and binary messages come back as they were. It
/// speaks the subprotocol `echo.v1` when a client offers it.
async fn ws(upgrade: WebSocketUpgrade) -> Response {
    upgrade
        .protocols(["echo.v1"])
        .on_upgrade(|mut socket| async move {
            while let Some(Ok(msg)) = socket.recv().await {
                let reply = match msg {
                    Message::Text(t) => Message::Text(t),
                    Message::Binary(b) => Message::Binary(b),
                    Message::Close(_) => break,
                    _ => continue,
                };
                if socket.send(reply).await.is_err() {
                    break;
                }
            }
        })
}
