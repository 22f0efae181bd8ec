//! The subdomain proxy, end to end: real server and agent processes, a real
//! web application behind the agent (plain and TLS), and real HTTP and
//! WebSocket clients in front of the server.

#![allow(clippy::unwrap_used)]

mod support;
#[path = "support/webapp.rs"]
mod webapp;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use webapp::WebApp;

struct Setup {
    _tmp: tempfile::TempDir,
    server: ServerProc,
    admin: String,
    session: String,
    app: WebApp,
    tls_app: WebApp,
    _agent: Proc,
}

impl Setup {
    async fn start() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let server = ServerProc::start(tmp.path(), &[]).await;
        let sys = enroll(&server, "customer-box");
        let admin = user_with_token(&server, "root", "admin");
        let app = WebApp::start().await;
        let tls_app = WebApp::start_tls().await;
        let services = format!(
            "web={a},secure={t}:tls,vhost={a}:host=app.customer.lan,public={a}:host=public,\
             securevhost={t}:tls:host=app.customer.lan:8443",
            t = tls_app.addr,
            a = app.addr
        );
        let ca = fixture("test-ca.pem");
        let agent = start_agent(&server, &sys, &services, &["--ca-file", &ca]);
        let session = active_session(&server, &admin, &sys.id).await;
        Setup {
            _tmp: tmp,
            server,
            admin,
            session,
            app,
            tls_app,
            _agent: agent,
        }
    }

    /// `POST /api/v1/sessions/{id}/proxy-token` as `token`.
    async fn mint(&self, token: &str, service: &str) -> (u16, Value) {
        let path = format!("/api/v1/sessions/{}/proxy-token", self.session);
        let body = json!({ "service": service });
        api_call(self.server.addr, "POST", &path, Some(token), Some(&body)).await
    }

    /// The proxy host of `service`, with the server's port.
    fn host(&self, service: &str) -> String {
        let simple = self.session.replace('-', "");
        format!("{service}--{simple}.localhost:{}", self.server.addr.port())
    }

    /// A client that sends every `*.localhost` name to the server, keeps
    /// cookies, and follows redirects or not.
    fn client(&self, follow: bool, services: &[&str]) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .cookie_store(true)
            .no_proxy()
            .redirect(if follow {
                reqwest::redirect::Policy::limited(5)
            } else {
                reqwest::redirect::Policy::none()
            });
        for s in services {
            let name = self.host(s);
            let name = name.split(':').next().unwrap().to_owned();
            b = b.resolve(&name, self.server.addr);
        }
        b.build().unwrap()
    }

    /// A client already holding the cookie for `service`, as `token`.
    async fn signed_in(&self, token: &str, service: &str) -> reqwest::Client {
        let (status, v) = self.mint(token, service).await;
        assert_eq!(status, 200, "{v}");
        let client = self.client(true, &[service]);
        let resp = client.get(v["url"].as_str().unwrap()).send().await.unwrap();
        assert!(
            resp.status().is_success() || resp.status() == 404,
            "{}",
            resp.status()
        );
        client
    }

    /// A WebSocket to `path` of `service` through the proxy, with `cookie`.
    async fn websocket(
        &self,
        service: &str,
        path: &str,
        cookie: &str,
    ) -> (
        tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ) {
        proxy_websocket(self.server.addr, &self.host(service), path, cookie).await
    }

    /// A new link for `service` as `token`, redeemed: the cookie's
    /// `name=value`.
    async fn cookie(&self, token: &str, service: &str) -> String {
        let (status, v) = self.mint(token, service).await;
        assert_eq!(status, 200, "{v}");
        let link = v["token"].as_str().unwrap();
        redeem_proxy_link(self.server.addr, &self.host(service), link).await
    }

    fn url(&self, service: &str, path: &str) -> String {
        format!("http://{}{path}", self.host(service))
    }
}

fn header_values(resp: &reqwest::Response, name: &str) -> Vec<String> {
    resp.headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

fn assert_security_headers(resp: &reqwest::Response) {
    assert!(
        header_values(resp, "content-security-policy")
            .contains(&"frame-ancestors 'self'".to_owned()),
        "{:?}",
        resp.headers()
    );
    assert_eq!(header_values(resp, "referrer-policy"), ["no-referrer"]);
    assert_eq!(header_values(resp, "x-content-type-options"), ["nosniff"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_becomes_a_cookie_and_the_service_sees_a_clean_request() {
    let s = Setup::start().await;
    let (status, v) = s.mint(&s.admin, "web").await;
    assert_eq!(status, 200, "{v}");
    let url = v["url"].as_str().unwrap();
    let token = v["token"].as_str().unwrap();
    assert_eq!(url, format!("http://{}/?token={token}", s.host("web")));
    assert_eq!(v["expires_in"], 3600);

    // First request: the cookie, and a redirect to the same URL without the token.
    let client = s.client(false, &["web"]);
    let first = s.url("web", &format!("/headers?a=1&token={token}&b=%2F"));
    let resp = client.get(&first).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(
        header_values(&resp, "location"),
        [s.url("web", "/headers?a=1&b=%2F")]
    );
    let cookie = header_values(&resp, "set-cookie").join("\n");
    assert!(cookie.starts_with("rtunnel_proxy="), "{cookie}");
    // The cookie is a credential of its own, not the link's token.
    assert!(!cookie.contains(token), "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{attr}: {cookie}");
    }
    assert!(!cookie.to_lowercase().contains("domain="), "{cookie}");
    assert!(!cookie.contains("Secure"), "plain http: {cookie}");
    assert_security_headers(&resp);

    // With the cookie: through to the service, which sees its own Host and
    // the proxy's forwarding headers, never the client's, nor the token.
    let resp = client
        .get(s.url("web", "/headers?a=1"))
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-host", "evil.example")
        .header("forwarded", "for=6.6.6.6")
        .header("cookie", format!("mine=1; {pair}; rtunnel_console=x"))
        .header("authorization", format!("Bearer {}", s.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_security_headers(&resp);
    let seen: Value = resp.json().await.unwrap();
    let h = &seen["headers"];
    assert_eq!(seen["uri"], "/headers?a=1");
    assert_eq!(h["host"], json!([s.app.addr.to_string()]));
    assert_eq!(h["x-forwarded-for"], json!(["127.0.0.1"]));
    assert_eq!(h["x-forwarded-proto"], json!(["http"]));
    assert_eq!(h["x-forwarded-host"], json!([s.host("web")]));
    assert!(h.get("forwarded").is_none(), "{seen}");
    let cookies = h["cookie"].to_string();
    assert!(cookies.contains("mine=1"), "{seen}");
    assert!(
        !cookies.contains("rtunnel_") && !cookies.contains(token),
        "{seen}"
    );
    // Nor an rtunnel credential in Authorization; the app's own passes.
    assert!(h.get("authorization").is_none(), "{seen}");
    let resp = client
        .get(s.url("web", "/headers"))
        .header("cookie", &pair)
        .header("authorization", "Bearer the-apps-own")
        .send()
        .await
        .unwrap();
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(
        seen["headers"]["authorization"],
        json!(["Bearer the-apps-own"])
    );

    // The proxy's own Origin and Referer reach the app as its own origin
    // (consistent with the Host it gets); a foreign Origin stays foreign.
    let own = format!("http://{}", s.host("web"));
    let resp = client
        .get(s.url("web", "/headers"))
        .header("cookie", &pair)
        .header("origin", &own)
        .header("referer", format!("{own}/page?x=1"))
        .send()
        .await
        .unwrap();
    let seen: Value = resp.json().await.unwrap();
    let app_origin = format!("http://{}", s.app.addr);
    assert_eq!(seen["headers"]["origin"], json!([app_origin]), "{seen}");
    assert_eq!(
        seen["headers"]["referer"],
        json!([format!("{app_origin}/page?x=1")]),
        "{seen}"
    );
    let resp = client
        .get(s.url("web", "/headers"))
        .header("cookie", &pair)
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(seen["headers"]["origin"], json!(["http://evil.example"]));

    // An application's own `token` parameter reaches it, for a client that
    // holds the cookie.
    let resp = client
        .get(s.url("web", "/headers?token=the-apps-own"))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(seen["uri"], "/headers?token=the-apps-own");

    // The link works once: a second use without the cookie is told so (a
    // page for a browser), with the cookie it just goes on; the link's
    // token is no cookie either.
    let fresh = s.client(false, &["web"]);
    let resp = fresh
        .get(&first)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 410);
    assert_eq!(header_values(&resp, "x-rtunnel-error"), ["proxy_link_used"]);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("This link was already used")
    );
    let resp = fresh.get(&first).send().await.unwrap();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["code"], "proxy_link_used", "{v}");
    let resp = fresh
        .get(&first)
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(
        header_values(&resp, "location"),
        [s.url("web", "/headers?a=1&b=%2F")]
    );
    assert!(header_values(&resp, "set-cookie").is_empty());
    let resp = fresh
        .get(s.url("web", "/headers"))
        .header("cookie", format!("rtunnel_proxy={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // Junk and foreign values of the cookie before the real one do not
    // keep it from working.
    let junk = (0..40)
        .map(|i| format!("rtunnel_proxy=junk{i}; rtunnel_proxy=; "))
        .collect::<String>();
    let resp = fresh
        .get(s.url("web", "/headers"))
        .header("cookie", format!("{junk}{pair}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // The token's use was audited before the cookie was handed out.
    let events = audit_events(&s.server.dir, "proxy_token_issued").await;
    assert_eq!(events.len(), 1);
    let events = audit_events(&s.server.dir, "proxy_opened").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].details["service"], "web");
    assert_eq!(events[0].actor.as_deref(), Some("root"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_applications_login_cookie_and_redirects_work_through_the_proxy() {
    let s = Setup::start().await;
    let client = s.signed_in(&s.admin, "web").await;
    // Not following: the app's cookie loses its Domain, its attempt to set
    // the proxy's cookie is dropped, its absolute redirect to its own
    // address comes back to the proxy host.
    let raw = s.client(false, &["web"]);
    let cookie = s.cookie(&s.admin, "web").await;
    let resp = raw
        .get(s.url("web", "/login"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(
        header_values(&resp, "set-cookie"),
        ["app_session=s3cret; Path=/; HttpOnly"]
    );
    assert_eq!(header_values(&resp, "location"), [s.url("web", "/me")]);

    // A browser-like client: log in, follow the redirect, stay logged in.
    let resp = client.get(s.url("web", "/login")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.url().as_str(), s.url("web", "/me"));
    let text = resp.text().await.unwrap();
    assert!(text.starts_with("logged in"), "{text}");
    assert!(!text.contains("rtunnel_proxy"), "{text}");
    // A relative redirect passes as it is.
    let resp = client.get(s.url("web", "/redirect")).send().await.unwrap();
    assert_eq!(resp.url().as_str(), s.url("web", "/headers?from=redirect"));
}

/// A service gets the Host it is routed by: a fixed name (behind the
/// customer's name-routing reverse proxy) or the public proxy host (an
/// application that knows its external name); Origin and redirects follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_gets_the_host_it_is_routed_by() {
    let s = Setup::start().await;
    let raw = s.client(false, &["vhost", "public"]);

    // (service, the Host it gets, the Origin it gets for its proxy origin)
    let public_host = s.host("public");
    let public_origin = format!("http://{public_host}");
    let modes = [
        ("vhost", "app.customer.lan", "http://app.customer.lan"),
        ("public", public_host.as_str(), public_origin.as_str()),
    ];
    for (service, want_host, want_origin) in modes {
        let cookie = s.cookie(&s.admin, service).await;
        let own = format!("http://{}", s.host(service));
        let resp = raw
            .get(s.url(service, "/headers"))
            .header("cookie", &cookie)
            .header("origin", &own)
            .send()
            .await
            .unwrap();
        let seen: Value = resp.json().await.unwrap();
        assert_eq!(seen["headers"]["host"], json!([want_host]), "{seen}");
        assert_eq!(seen["headers"]["origin"], json!([want_origin]), "{seen}");
        // A redirect to the host the service got comes back to the proxy.
        let resp = raw
            .get(s.url(service, "/self-redirect"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 302, "{service}");
        assert_eq!(header_values(&resp, "location"), [s.url(service, "/me")]);
    }

    // The manifest says how each is reached.
    let path = format!("/api/v1/sessions/{}/services", s.session);
    let (_, v) = api_call(s.server.addr, "GET", &path, Some(&s.admin), None).await;
    let vhost = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "vhost")
        .unwrap()
        .clone();
    assert_eq!(
        vhost["host_header"],
        json!({"mode": "fixed", "name": "app.customer.lan"}),
        "{v}"
    );
}

/// Server-sent events reach the browser as they are sent: the service sends
/// one event and then nothing, without ending the response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_arrive_as_they_are_sent() {
    let s = Setup::start().await;
    let client = s.signed_in(&s.admin, "web").await;
    let resp = client.get(s.url("web", "/events")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header_values(&resp, "content-type"), ["text/event-stream"]);
    let mut body = resp.bytes_stream();
    let first = tokio::time::timeout(WAIT, body.next())
        .await
        .expect("the first event was held back")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"event: hello\ndata: first\n\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_pass_through_the_proxy() {
    let s = Setup::start().await;
    let cookie = s.cookie(&s.admin, "web").await;
    let (mut ws, resp) = s.websocket("web", "/ws", &cookie).await;
    assert_eq!(resp.status(), 101);
    assert_eq!(
        resp.headers()["referrer-policy"].to_str().unwrap(),
        "no-referrer"
    );
    ws.send(Message::text("hello through the tunnel"))
        .await
        .unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap(), "hello through the tunnel");
    let blob = random_bytes(200_000);
    ws.send(Message::binary(blob.clone())).await.unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_data().as_ref(), &blob[..]);
    ws.close(None).await.unwrap();

    // A subprotocol the client offers reaches the service, and the one the
    // service picks comes back.
    let tcp = tokio::net::TcpStream::connect(s.server.addr).await.unwrap();
    let host = s.host("web");
    let request = websocket_request(
        &format!("ws://{host}/ws"),
        &host,
        &[
            ("cookie", &cookie),
            ("sec-websocket-protocol", "chat.v2, echo.v1"),
        ],
    );
    let (mut ws, resp) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    assert_eq!(
        resp.headers()["sec-websocket-protocol"].to_str().unwrap(),
        "echo.v1"
    );
    ws.send(Message::text("with a subprotocol")).await.unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap(), "with a subprotocol");
}

/// Peak resident memory of a process (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gibibyte_streams_both_ways_with_the_servers_memory_flat() {
    use sha2::{Digest, Sha256};
    let s = Setup::start().await;
    let client = s.signed_in(&s.admin, "web").await;
    // Warm up (pools, buffers), then measure the peak from here.
    let warm = client
        .get(s.url("web", "/big?bytes=1048576"))
        .send()
        .await
        .unwrap();
    assert_eq!(warm.bytes().await.unwrap().len(), 1 << 20);
    let before = peak_rss_kib(s.server.proc.child.id());

    const GIB: u64 = 1 << 30;
    let resp = client
        .get(s.url("web", &format!("/big?bytes={GIB}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_security_headers(&resp);
    let mut body = resp.bytes_stream();
    let mut total = 0u64;
    let mut first = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        if first.len() < 64 {
            first.extend_from_slice(&chunk[..chunk.len().min(64 - first.len())]);
        }
        total += chunk.len() as u64;
    }
    assert_eq!(total, GIB);
    assert_eq!(&first[..], &webapp::PATTERN[..]);

    // Upload: a chunked body the proxy must stream, not collect.
    const UPLOAD: u64 = 256 << 20;
    let block = bytes::Bytes::from(webapp::PATTERN.repeat(1024));
    let chunks = UPLOAD / block.len() as u64;
    let mut want = Sha256::new();
    for _ in 0..chunks {
        want.update(&block);
    }
    let stream =
        futures::stream::iter((0..chunks).map(move |_| Ok::<_, std::io::Error>(block.clone())));
    let resp = client
        .post(s.url("web", "/upload"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["bytes"], UPLOAD);
    assert_eq!(v["sha256"], hex::encode(want.finalize()));

    let after = peak_rss_kib(s.server.proc.child.id());
    eprintln!("server peak RSS: {before} KiB before, {after} KiB after 1 GiB down and 256 MiB up");
    // Flat: the server never held more than a few buffers of either body.
    assert!(
        after < before + 64 * 1024,
        "peak RSS grew from {before} KiB to {after} KiB"
    );

    // One visit in the access log, open while the client is active.
    let path = format!("/api/v1/sessions/{}/logs", s.session);
    let (_, v) = api_call(s.server.addr, "GET", &path, Some(&s.admin), None).await;
    let http: Vec<&Value> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "http")
        .collect();
    assert_eq!(http.len(), 1, "{v}");
    assert_eq!(http[0]["service"], "web");
    assert_eq!(http[0]["user"], "root");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_service_is_reached_over_tls() {
    let s = Setup::start().await;
    let client = s.signed_in(&s.admin, "secure").await;
    let resp = client
        .get(s.url("secure", "/headers"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(seen["scheme"], "https", "{seen}");
    assert_eq!(seen["headers"]["host"], json!([s.tls_app.addr.to_string()]));
    // Dialed by address: no name in the handshake.
    assert_eq!(seen["sni"], Value::Null, "{seen}");
    assert!(
        s.tls_app
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    );
    // An https redirect to the service's own address comes back too.
    let resp = client.get(s.url("secure", "/login")).send().await.unwrap();
    assert_eq!(resp.url().as_str(), s.url("secure", "/me"));
    assert!(resp.text().await.unwrap().starts_with("logged in"));

    // A virtual host over TLS: the handshake asks for its name (a
    // customer's reverse proxy picks certificate and application by it),
    // and the request carries it as `Host`.
    let client = s.signed_in(&s.admin, "securevhost").await;
    let resp = client
        .get(s.url("securevhost", "/headers"))
        .send()
        .await
        .unwrap();
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(seen["sni"], "app.customer.lan", "{seen}");
    assert_eq!(seen["headers"]["host"], json!(["app.customer.lan:8443"]));
}

/// One raw HTTP/1.1 exchange on an open connection: the status line and
/// headers, and the body (by Content-Length).
async fn exchange(tcp: &mut tokio::net::TcpStream, request: &str) -> (u16, String, String) {
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tcp.read(&mut byte).await.unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let status = head[9..12].parse().unwrap();
    let len: usize = header(&head, "content-length").map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0u8; len];
    tcp.read_exact(&mut body).await.unwrap();
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_and_the_refusals_of_the_proxy() {
    let s = Setup::start().await;
    let pair = s.cookie(&s.admin, "web").await;
    let host = s.host("web");
    let get =
        |path: &str, extra: &str| format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n");
    let cookie = format!("Cookie: {pair}\r\n");

    // Keep-alive: three requests on one client connection, and the proxy
    // reuses its connection to the service.
    let connections_before = s.app.connections.load(std::sync::atomic::Ordering::SeqCst);
    let mut tcp = tokio::net::TcpStream::connect(s.server.addr).await.unwrap();
    for _ in 0..3 {
        let (status, _, body) = exchange(&mut tcp, &get("/headers", &cookie)).await;
        assert_eq!(status, 200, "{body}");
    }
    let used = s.app.connections.load(std::sync::atomic::Ordering::SeqCst) - connections_before;
    assert_eq!(
        used, 1,
        "the proxy opened {used} connections to the service"
    );

    // Every refusal is the envelope, with the security headers.
    let refusals: Vec<(String, u16, &str)> = vec![
        (get("/", ""), 401, "proxy_token_required"),
        (
            get("/", "Cookie: rtunnel_proxy=forged\r\n"),
            401,
            "invalid_proxy_token",
        ),
        (get("/?token=forged", ""), 401, "invalid_proxy_token"),
        (
            get("/", &cookie).replace(&host, &s.host("secure")),
            401,
            "invalid_proxy_token",
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: {host}\r\nHost: {}\r\n\r\n",
                s.server.addr
            ),
            400,
            "invalid_host",
        ),
        (
            format!(
                "GET http://{}/ HTTP/1.1\r\nHost: {host}\r\n{cookie}\r\n",
                s.server.addr
            ),
            400,
            "invalid_host",
        ),
    ];
    for (request, want_status, want_code) in refusals {
        let mut tcp = tokio::net::TcpStream::connect(s.server.addr).await.unwrap();
        let (status, head, body) = exchange(&mut tcp, &request).await;
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert_eq!(
            (status, v["code"].as_str()),
            (want_status, Some(want_code)),
            "{request}\n{head}{body}"
        );
        assert_eq!(v["success"], false);
        if want_code != "invalid_host" {
            assert_eq!(
                header(&head, "x-content-type-options"),
                Some("nosniff"),
                "{head}"
            );
        }
    }

    // The redirect after a token stays on this host, whatever the path
    // looks like (no open redirect through `//host` or `/\\host`).
    for path in ["//evil.example/x", "/\\evil.example/x"] {
        let (_, v) = s.mint(&s.admin, "web").await;
        let token = v["token"].as_str().unwrap();
        let mut tcp = tokio::net::TcpStream::connect(s.server.addr).await.unwrap();
        let request = get(&format!("{path}?token={token}"), "");
        let (status, head, _) = exchange(&mut tcp, &request).await;
        assert_eq!(status, 302, "{head}");
        let location = header(&head, "location").unwrap();
        assert_eq!(location, format!("http://{host}{path}"), "{head}");
    }

    // A browser navigating in from another site holds the SameSite=Strict
    // cookie back: it gets a page that loads itself again (from this
    // origin, so with the cookie); from this origin there is no second
    // chance, so no loop.
    let navigate = "Sec-Fetch-Mode: navigate\r\nSec-Fetch-Dest: document\r\n";
    let mut tcp = tokio::net::TcpStream::connect(s.server.addr).await.unwrap();
    let cross = format!("{navigate}Sec-Fetch-Site: cross-site\r\n");
    let (status, head, body) = exchange(&mut tcp, &get("/headers", &cross)).await;
    assert_eq!(status, 200, "{head}{body}");
    assert!(
        body.contains("http-equiv=\"refresh\" content=\"0\""),
        "{body}"
    );
    assert_eq!(header(&head, "cache-control"), Some("no-store"));
    let same = format!("{navigate}Sec-Fetch-Site: same-origin\r\n");
    let (status, _, _) = exchange(&mut tcp, &get("/headers", &same)).await;
    assert_eq!(status, 401);

    // Forwarded-host headers do not make an API request a proxy request.
    let request = format!(
        "GET /headers HTTP/1.1\r\nHost: {}\r\nX-Forwarded-Host: {host}\r\nForwarded: host={host}\r\n{cookie}\r\n",
        s.server.addr
    );
    let (status, _, body) = exchange(
        &mut tokio::net::TcpStream::connect(s.server.addr).await.unwrap(),
        &request,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("route_not_found"), "{body}");

    // A request head past the limit is refused before anything else.
    let huge = format!("X-Big: {}\r\n", "a".repeat(70 * 1024));
    let mut tcp = tokio::net::TcpStream::connect(s.server.addr).await.unwrap();
    tcp.write_all(get("/", &format!("{cookie}{huge}")).as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // Tokens are only minted for the session's proxiable services.
    let (status, v) = s.mint(&s.admin, "nope").await;
    assert_eq!((status, v["code"].as_str()), (404, Some("unknown_service")));
    let (status, v) = s.mint(&s.admin, "terminal").await;
    assert_eq!((status, v["code"].as_str()), (404, Some("unknown_service")));
    // A viewer without a grant does not see the session; with one, may
    // not connect.
    let viewer = user_with_token(&s.server, "vera", "viewer");
    let (status, _) = s.mint(&viewer, "web").await;
    assert_eq!(status, 404);
    s.server.admin(&["grant", "vera", "customer-box"]);
    let (status, _) = s.mint(&viewer, "web").await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_access_or_closing_the_session_cuts_what_is_open() {
    let s = Setup::start().await;
    let op = user_with_token(&s.server, "olga", "operator");
    s.server.admin(&["grant", "olga", "customer-box"]);
    let client = s.signed_in(&op, "web").await;

    // A response that never ends, and a WebSocket, both open.
    let resp = client.get(s.url("web", "/drip")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut drip = resp.bytes_stream();
    assert!(drip.next().await.unwrap().is_ok());

    s.server.admin(&["revoke", "olga", "customer-box"]);
    let cut = tokio::time::timeout(WAIT, async {
        loop {
            match drip.next().await {
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return,
            }
        }
    })
    .await;
    assert!(cut.is_ok(), "the streaming response outlived the grant");

    // New requests are refused, and the cut is in the logs.
    let resp = client.get(s.url("web", "/headers")).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let events = audit_events(&s.server.dir, "access_cut").await;
    assert!(
        events
            .iter()
            .any(|e| e.details["kind"] == "http" && e.actor.as_deref() == Some("olga")),
        "{events:?}"
    );
    let path = format!("/api/v1/sessions/{}/logs", s.session);
    let entry = wait_for("the visit's access log entry to close", || async {
        let (_, v) = api_call(s.server.addr, "GET", &path, Some(&s.admin), None).await;
        v["items"]
            .as_array()?
            .iter()
            .find(|e| e["kind"] == "http" && e["user"] == "olga" && e["closed_at"].is_string())
            .cloned()
    })
    .await;
    assert_eq!(entry["error"], "access revoked", "{entry}");
    assert!(entry["bytes_from_service"].as_u64().unwrap() > 0, "{entry}");

    // Closing the session: the admin's open WebSocket ends, and the token
    // stops working.
    let cookie = s.cookie(&s.admin, "web").await;
    let (mut ws, _) = s.websocket("web", "/ws", &cookie).await;
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_text().unwrap(),
        "ping"
    );
    let path = format!("/api/v1/sessions/{}", s.session);
    let (status, _) = api_call(s.server.addr, "DELETE", &path, Some(&s.admin), None).await;
    assert_eq!(status, 200);
    let ended =
        tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    assert!(ended.is_ok(), "the WebSocket outlived the session");
    let raw = s.client(false, &["web"]);
    let resp = raw
        .get(s.url("web", "/headers"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 410);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["code"], "session_ended");
}

/// With an https public URL (TLS ends at a reverse proxy in front), the
/// cookie is `__Host-` prefixed and Secure, and answers carry HSTS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_https_the_cookie_is_host_prefixed_and_hsts_is_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &["--public-url", "https://127.0.0.1:8443"]).await;
    let sys = enroll(&server, "customer-box");
    let admin = user_with_token(&server, "root", "admin");
    let app = WebApp::start().await;
    let _agent = start_agent(&server, &sys, &format!("web={}", app.addr), &[]);
    let session = active_session(&server, &admin, &sys.id).await;
    let path = format!("/api/v1/sessions/{session}/proxy-token");
    let (status, v) = api_call(
        server.addr,
        "POST",
        &path,
        Some(&admin),
        Some(&json!({"service": "web"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let url = v["url"].as_str().unwrap();
    let host = format!("web--{}.localhost:8443", session.replace('-', ""));
    assert!(url.starts_with(&format!("https://{host}/?token=")), "{url}");
    let token = v["token"].as_str().unwrap();
    let request =
        format!("GET /?token={token} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let (status, head, _) = http_raw_from("127.0.0.1".parse().unwrap(), server.addr, &request)
        .await
        .unwrap();
    assert_eq!(status, 302, "{head}");
    let cookie = header(&head, "set-cookie").unwrap();
    assert!(cookie.starts_with("__Host-rtunnel_proxy="), "{cookie}");
    for attr in ["; Secure", "; Path=/", "HttpOnly", "SameSite=Strict"] {
        assert!(cookie.contains(attr), "{attr}: {cookie}");
    }
    assert_eq!(
        header(&head, "strict-transport-security"),
        Some("max-age=31536000")
    );
    assert_eq!(
        header(&head, "location").unwrap(),
        format!("https://{host}/")
    );
    let pair = cookie.split(';').next().unwrap();
    let request = format!(
        "GET /headers HTTP/1.1\r\nHost: {host}\r\nCookie: {pair}\r\nConnection: close\r\n\r\n"
    );
    let (status, head, body) = http_raw_from("127.0.0.1".parse().unwrap(), server.addr, &request)
        .await
        .unwrap();
    assert_eq!(status, 200, "{head}{body}");
    assert!(header(&head, "strict-transport-security").is_some());
    assert!(!body.contains("rtunnel_proxy"), "{body}");
    // The plain-http name is not the cookie here.
    let plain = pair.replace("__Host-", "");
    let request = format!(
        "GET /headers HTTP/1.1\r\nHost: {host}\r\nCookie: {plain}\r\nConnection: close\r\n\r\n"
    );
    let (status, _, _) = http_raw_from("127.0.0.1".parse().unwrap(), server.addr, &request)
        .await
        .unwrap();
    assert_eq!(status, 401);
}
