//! TLS built in: the server serves HTTPS with `--tls-cert`/`--tls-key`
//! (HSTS on every answer) and takes a renewed certificate on SIGHUP; the
//! agent and `forward` trust a private CA with `--ca-file`; `:tls`
//! services have their certificates checked unless marked `insecure`.

#![allow(clippy::unwrap_used)]

mod support;
#[path = "support/webapp.rs"]
mod webapp;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use webapp::WebApp;

/// `GET /healthz` over TLS, trusting the test CA: the certificate the
/// server presented and the answer's head.
async fn https_get(addr: SocketAddr) -> (CertificateDer<'static>, String) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(fixture("test-ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let cert = tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    (cert, answer)
}

fn pem(name: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(fixture(name)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_serves_https_and_takes_a_renewed_certificate_on_sighup() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    std::fs::copy(fixture("leaf1-cert.pem"), &cert).unwrap();
    std::fs::copy(fixture("leaf1-key.pem"), &key).unwrap();
    let server = ServerProc::start(
        tmp.path(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    )
    .await;
    let (presented, answer) = https_get(server.addr).await;
    assert_eq!(presented, pem("leaf1-cert.pem"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000"),
        "{answer}"
    );

    // An agent and a forward that trust the test CA work end to end.
    let token = user_with_token(&server, "root", "admin");
    let sys = enroll(&server, "over-tls");
    let echo = echo_service().await;
    let ca = fixture("test-ca.pem");
    let url = format!("wss://localhost:{}/api/v1/tunnel", server.addr.port());
    let _agent = start_agent_at(
        &server,
        &url,
        &sys,
        &format!("echo={echo}"),
        &["--ca-file", &ca],
    );
    let base = format!("https://localhost:{}", server.addr.port());
    let session = wait_for("the agent to connect over TLS", || {
        let text = _agent.log_text();
        async move {
            text.lines()
                .find(|l| l.contains("connected to wss://"))
                .and_then(|l| l.split("session=").nth(1))
                .map(|s| s.split_whitespace().next().unwrap().to_owned())
        }
    })
    .await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(agent_bin());
    cmd.args(["forward", "--server", &base, "--session", &session])
        .args(["--service", "echo", "--listen", &listen, "--ca-file", &ca])
        .env("RTUNNEL_TOKEN", &token);
    clear_proxy_env(&mut cmd);
    let fwd = Proc::spawn("forward", &mut cmd, tmp.path().join("forward.log"));
    wait_for("the forward to listen", || {
        let text = fwd.log_text();
        async move { text.contains("forwarding").then_some(()) }
    })
    .await;
    assert_eq!(
        echo_through(listen.parse().unwrap(), b"over tls").await,
        b"over tls"
    );

    // Without the CA the agent is told what to do.
    let out = Command::new(agent_bin())
        .args(["check", "--url", &url, "--key", &sys.key, "--no-terminal"])
        .env("RTUNNEL_SECRET", &sys.secret)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL  server") && stdout.contains("--ca-file"),
        "{stdout}"
    );

    // Renewed: the new certificate from the next connection on.
    std::fs::copy(fixture("leaf2-cert.pem"), &cert).unwrap();
    std::fs::copy(fixture("leaf2-key.pem"), &key).unwrap();
    server.proc.signal("HUP");
    wait_for("the server to reload its certificate", || {
        let text = server.proc.log_text();
        async move { text.contains("TLS certificate reloaded").then_some(()) }
    })
    .await;
    assert_eq!(https_get(server.addr).await.0, pem("leaf2-cert.pem"));

    // A broken renewal keeps the certificate in use.
    std::fs::write(&cert, "not a certificate").unwrap();
    server.proc.signal("HUP");
    wait_for("the server to refuse the broken certificate", || {
        let text = server.proc.log_text();
        async move {
            text.contains("keeping the certificate in use")
                .then_some(())
        }
    })
    .await;
    assert_eq!(https_get(server.addr).await.0, pem("leaf2-cert.pem"));
    // The tunnel lived through it all.
    assert_eq!(
        echo_through(listen.parse().unwrap(), b"still").await,
        b"still"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_service_certificate_is_checked_unless_the_service_is_insecure() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &[]).await;
    let sys = enroll(&server, "tls-services");
    let trusted = WebApp::start_tls().await;
    let self_signed = WebApp::start_tls_self_signed().await;
    let services = format!(
        "trusted={}:tls,strict={}:tls,lax={}:tls:insecure",
        trusted.addr, self_signed.addr, self_signed.addr
    );
    let check = |extra: &[&str]| {
        let out = Command::new(agent_bin())
            .args(["check", "--url", &server.tunnel_url(), "--key", &sys.key])
            .args(["--no-terminal", "--static-services", &services])
            .args(extra)
            .env("RTUNNEL_SECRET", &sys.secret)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Without --ca-file even the CA's certificate is unknown.
    let out = check(&[]);
    assert!(out.contains("FAIL  service trusted"), "{out}");
    let out = check(&["--ca-file", &fixture("test-ca.pem")]);
    assert!(out.contains("ok    service trusted"), "{out}");
    let strict = out.lines().find(|l| l.contains("service strict")).unwrap();
    assert!(strict.starts_with("FAIL"), "{out}");
    assert!(
        strict.contains("--ca-file") && strict.contains(":tls:insecure"),
        "{strict}"
    );
    assert!(out.contains("ok    service lax"), "{out}");

    // Served for real: the checked service answers, the strict one is
    // refused with the reason, the insecure one answers.
    let token = user_with_token(&server, "root", "admin");
    let _agent = start_agent(
        &server,
        &sys,
        &services,
        &["--ca-file", &fixture("test-ca.pem")],
    );
    let session = active_session(&server, &token, &sys.id).await;
    // The agent speaks TLS to the service: through the forward it is
    // plain HTTP.
    for (service, works) in [("trusted", true), ("strict", false), ("lax", true)] {
        let (_fwd, addr) = start_forward(&server, &token, &session, service).await;
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /headers HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer).await;
        assert_eq!(
            answer.starts_with("HTTP/1.1 200"),
            works,
            "{service}: {answer:?}"
        );
    }
    let log = _agent.log_text();
    assert!(
        log.contains("strict") && log.contains("a CA certificate as its own"),
        "{log}"
    );
}
