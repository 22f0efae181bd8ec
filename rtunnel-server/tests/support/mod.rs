//! Test harness: real `rtunnel-server` and `rtunnel-agent` processes on
//! loopback, plus echo and HTTP services, a tiny HTTP client and polling.
//!
//! Every process is killed when its handle drops; every port is chosen by
//! the OS; every file lives in a temporary directory.

#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub mod chromium;
pub mod metrics;

/// Generous: CI machines are small and busy.
pub const WAIT: Duration = Duration::from_secs(30);

pub fn server_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rtunnel-server"))
}

/// The agent binary sits next to the server's in the target directory.
/// Cargo builds it for this package's tests only as a test harness, so the
/// test command builds the executables first (`cargo build --bins`).
pub fn agent_bin() -> PathBuf {
    let p = server_bin().with_file_name(format!("rtunnel-agent{}", std::env::consts::EXE_SUFFIX));
    assert!(
        p.exists(),
        "{} is missing: build it first (`cargo build --workspace --bins`, as ./scripts/test.sh does)",
        p.display()
    );
    p
}

/// Polls `f` until it returns `Some`, or panics after [`WAIT`].
pub async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The address `proc` logged as `FIELD=ADDR` on the first line holding
/// `marker` (text logs), once it has.
pub async fn logged_address(proc: &Proc, marker: &str, field: &str) -> SocketAddr {
    let what = format!("a log line with {marker:?}");
    wait_for(&what, || {
        let text = proc.log_text();
        async move {
            let line = text.lines().find(|l| l.contains(marker))?;
            line.split(&format!("{field}="))
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        }
    })
    .await
}

/// A child process killed on drop, with its stderr in a file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    pub name: &'static str,
}

impl Proc {
    pub fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .env("RTUNNEL_LOG", "info")
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { child, log, name }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by number (unix).
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status();
    }

    /// Waits for the process to exit on its own.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit:\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.name, self.log_text());
        }
    }
}

/// A running server process and its data directory.
pub struct ServerProc {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

impl ServerProc {
    /// Starts a server on an OS-chosen port.
    pub async fn start(dir: &Path, extra: &[&str]) -> ServerProc {
        Self::start_on(dir, "127.0.0.1:0", extra).await
    }

    /// Starts a server with extra environment variables.
    pub async fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> ServerProc {
        Self::spawn(dir, "127.0.0.1:0", extra, env).await
    }

    /// Starts a server on `listen` and waits until it accepts connections.
    pub async fn start_on(dir: &Path, listen: &str, extra: &[&str]) -> ServerProc {
        Self::spawn(dir, listen, extra, &[]).await
    }

    async fn spawn(dir: &Path, listen: &str, extra: &[&str], env: &[(&str, &str)]) -> ServerProc {
        let log = dir.join(format!("server-{}.log", unique()));
        let mut cmd = Command::new(server_bin());
        cmd.envs(env.iter().copied());
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(database_args(dir))
            .arg("--listen")
            .arg(listen)
            .args(extra);
        let proc = Proc::spawn("rtunnel-server", &mut cmd, log);
        let addr = wait_for("the server to listen", || {
            let text = proc.log_text();
            async move {
                let line = text
                    .lines()
                    .find(|l| l.contains("rtunnel-server listening"))?;
                // Text (`addr=...`) or JSON (`--log-format json`).
                if line.starts_with('{') {
                    let v: serde_json::Value = serde_json::from_str(line).ok()?;
                    return v["fields"]["addr"].as_str()?.parse().ok();
                }
                let addr = line.split("addr=").nth(1)?.split_whitespace().next()?;
                addr.parse().ok()
            }
        })
        .await;
        ServerProc {
            proc,
            addr,
            dir: dir.to_owned(),
        }
    }

    /// Runs an admin subcommand on the same data directory; returns stdout.
    pub fn admin(&self, args: &[&str]) -> String {
        admin(&self.dir, args)
    }

    pub fn tunnel_url(&self) -> String {
        format!("ws://{}/api/v1/tunnel", self.addr)
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Creates a user with a password (`user add --password-stdin`).
pub fn user_with_password(server: &ServerProc, name: &str, role: &str, password: &str) {
    admin_with_stdin(
        &server.dir,
        &["user", "add", name, "--role", role, "--password-stdin"],
        &format!("{password}\n"),
    );
}

/// The `--database-url` of the servers and admin commands of a test
/// directory: the one its `database-url` file names (see
/// [`use_postgres`]), else none (the SQLite file in the data directory).
pub fn database_args(dir: &Path) -> Vec<String> {
    match std::fs::read_to_string(dir.join("database-url")) {
        Ok(url) => vec!["--database-url".into(), url.trim().to_owned()],
        Err(_) => vec![],
    }
}

/// Makes every server and admin command of `dir` use a new database on the
/// test PostgreSQL (`RTUNNEL_TEST_POSTGRES_URL`, started by
/// `scripts/test.sh`). Returns its URL.
pub async fn use_postgres(dir: &Path) -> String {
    let url = std::env::var("RTUNNEL_TEST_POSTGRES_URL")
        .expect("RTUNNEL_TEST_POSTGRES_URL is not set: run ./scripts/test.sh");
    let name = format!("e2e_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::postgres::PgPool::connect(&url).await.unwrap();
    // The name is ours: a fixed prefix and hex.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let db = format!("{}/{name}", url.rsplit_once('/').unwrap().0);
    std::fs::write(dir.join("database-url"), &db).unwrap();
    db
}

/// Runs `rtunnel-server --data-dir DIR/data ARGS`, asserting success.
pub fn admin(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(server_bin())
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(database_args(dir))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rtunnel-server {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs an admin subcommand with `input` on its standard input (such as
/// `user add --password-stdin`); returns stdout.
pub fn admin_with_stdin(dir: &Path, args: &[&str], input: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(server_bin())
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(database_args(dir))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "rtunnel-server {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// An enrolled system's credentials.
pub struct Enrolled {
    pub id: String,
    pub key: String,
    pub secret: String,
}

pub fn enroll(server: &ServerProc, name: &str) -> Enrolled {
    let v: serde_json::Value =
        serde_json::from_str(&server.admin(&["system", "add", name, "--json"])).unwrap();
    Enrolled {
        id: v["id"].as_str().unwrap().into(),
        key: v["key"].as_str().unwrap().into(),
        secret: v["secret"].as_str().unwrap().into(),
    }
}

/// Creates a user and returns an API token for it.
pub fn user_with_token(server: &ServerProc, name: &str, role: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(
        &server.admin(&["user", "add", name, "--role", role, "--token", "--json"]),
    )
    .unwrap();
    v["token"].as_str().unwrap().to_owned()
}

/// The path of a file in `tests/fixtures`.
pub fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .to_str()
        .unwrap()
        .to_owned()
}

/// Starts an agent process.
pub fn start_agent(server: &ServerProc, sys: &Enrolled, services: &str, extra: &[&str]) -> Proc {
    start_agent_at(server, &server.tunnel_url(), sys, services, extra)
}

/// Starts an agent process dialing `url` (a proxy in front of the server).
pub fn start_agent_at(
    server: &ServerProc,
    url: &str,
    sys: &Enrolled,
    services: &str,
    extra: &[&str],
) -> Proc {
    let mut cmd = agent_command(url, sys, services);
    cmd.args(["--reconnect-delay", "200ms", "--max-reconnect-delay", "1s"])
        .args(extra);
    spawn_agent(server, &mut cmd)
}

/// The command line of an agent, with the proxy variables of the test's
/// own environment removed; tests add flags and variables to it (the
/// reconnect delays are the agent's defaults unless added).
pub fn agent_command(url: &str, sys: &Enrolled, services: &str) -> Command {
    let mut cmd = Command::new(agent_bin());
    cmd.arg("run")
        .arg("--url")
        .arg(url)
        .arg("--key")
        .arg(&sys.key)
        .arg("--static-services")
        .arg(services)
        .env("RTUNNEL_SECRET", &sys.secret);
    clear_proxy_env(&mut cmd);
    cmd
}

/// Spawns an agent command, logging next to the server's data.
pub fn spawn_agent(server: &ServerProc, cmd: &mut Command) -> Proc {
    let log = server.dir.join(format!("agent-{}.log", unique()));
    Proc::spawn("rtunnel-agent", cmd, log)
}

/// The proxy variables of the test's own environment, in both cases,
/// which the programs under test must not see.
pub fn proxy_vars() -> impl Iterator<Item = String> {
    [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "RTUNNEL_PROXY",
    ]
    .into_iter()
    .flat_map(|v| [v.to_owned(), v.to_ascii_lowercase()])
}

pub fn clear_proxy_env(cmd: &mut Command) {
    for var in proxy_vars() {
        cmd.env_remove(var);
    }
}

/// A real HTTP proxy (Debian's tinyproxy, which `scripts/test.sh` installs)
/// on a loopback port, optionally requiring Basic credentials.
pub struct Tinyproxy {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Tinyproxy {
    pub async fn start(dir: &Path, credentials: Option<(&str, &str)>) -> Tinyproxy {
        let bin = std::env::var("RTUNNEL_TEST_TINYPROXY").unwrap_or_else(|_| "tinyproxy".into());
        let id = unique();
        let port = free_port();
        let log = dir.join(format!("tinyproxy-{id}.log"));
        let mut conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 600\nMaxClients 2000\nLogLevel Info\nLogFile \"{}\"\n",
            log.display()
        );
        if let Some((user, password)) = credentials {
            conf.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        let conf_path = dir.join(format!("tinyproxy-{id}.conf"));
        std::fs::write(&conf_path, conf).unwrap();
        let mut cmd = Command::new(&bin);
        cmd.arg("-d").arg("-c").arg(&conf_path);
        if Command::new(&bin).arg("-v").output().is_err() {
            panic!(
                "{bin} not found: ./scripts/test.sh installs tinyproxy (or set RTUNNEL_TEST_TINYPROXY)"
            );
        }
        let proc = Proc::spawn("tinyproxy", &mut cmd, log);
        wait_for("tinyproxy to listen", || {
            let text = proc.log_text();
            async move { text.contains("Accepting connections").then_some(()) }
        })
        .await;
        Tinyproxy {
            proc,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
        }
    }

    /// The CONNECT requests it served, as logged.
    pub fn connects(&self) -> Vec<String> {
        self.proc
            .log_text()
            .lines()
            .filter(|l| l.contains("CONNECT") && l.contains("Request"))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        self.proc.kill();
    }
}

/// Starts `rtunnel-agent forward` on an OS-chosen local port.
pub async fn start_forward(
    server: &ServerProc,
    token: &str,
    session: &str,
    service: &str,
) -> (Proc, SocketAddr) {
    start_forward_at(&server.dir, &server.base_url(), token, session, service).await
}

/// Starts `rtunnel-agent forward --server BASE_URL` (a proxy in front of
/// the server) on an OS-chosen local port, logging into `dir`.
pub async fn start_forward_at(
    dir: &Path,
    base_url: &str,
    token: &str,
    session: &str,
    service: &str,
) -> (Proc, SocketAddr) {
    spawn_forward(dir, base_url, token, ["--session", session], service).await
}

/// Starts `rtunnel-agent forward --system NAME`: the system's current
/// session, whatever it is.
pub async fn start_forward_to_system(
    server: &ServerProc,
    token: &str,
    system: &str,
    service: &str,
) -> (Proc, SocketAddr) {
    let base = server.base_url();
    spawn_forward(&server.dir, &base, token, ["--system", system], service).await
}

async fn spawn_forward(
    dir: &Path,
    base_url: &str,
    token: &str,
    target: [&str; 2],
    service: &str,
) -> (Proc, SocketAddr) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let log = dir.join(format!("forward-{}.log", unique()));
    let mut cmd = Command::new(agent_bin());
    cmd.args(["forward", "--server", base_url])
        .args(target)
        .args(["--service", service, "--listen", &listen])
        .env("RTUNNEL_TOKEN", token);
    clear_proxy_env(&mut cmd);
    let proc = Proc::spawn("rtunnel-agent forward", &mut cmd, log);
    wait_for("the forward to listen", || {
        let text = proc.log_text();
        async move { text.contains("forwarding").then_some(()) }
    })
    .await;
    (proc, listen.parse().unwrap())
}

/// Sends `data` on an open connection to an echo service and reads it back.
pub async fn roundtrip(conn: &mut TcpStream, data: &[u8]) {
    conn.write_all(data).await.unwrap();
    let mut back = vec![0u8; data.len()];
    tokio::time::timeout(WAIT, conn.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, data);
}

/// A port free right now, for a program that binds it right after (a
/// forward, nginx, an application). Taken below the kernel's ephemeral
/// range (32768 and up on Linux), so no socket bound to port 0 meanwhile,
/// such as another test's server, can take it first.
pub fn free_port() -> u16 {
    use rand::Rng as _;
    let mut rng = rand::rng();
    loop {
        let port = rng.random_range(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// Waits until the system has an active session and returns its id.
pub async fn active_session(server: &ServerProc, token: &str, system_id: &str) -> String {
    active_session_at(server.addr, token, system_id).await
}

/// [`active_session`] of the server at `addr`.
pub async fn active_session_at(addr: SocketAddr, token: &str, system_id: &str) -> String {
    wait_for("an active session", || async {
        let (status, body) = http_get(
            addr,
            &format!("/api/v1/sessions?status=active&system_id={system_id}"),
            Some(token),
        )
        .await
        .ok()?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["items"][0]["id"].as_str().map(str::to_owned)
    })
    .await
}

/// A minimal HTTP/1.1 GET; returns status and body.
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    http_raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"),
    )
    .await
}

/// Sends a raw request, reads the response to the end; returns status, body.
pub async fn http_raw(addr: SocketAddr, request: &str) -> std::io::Result<(u16, String)> {
    let s = TcpStream::connect(addr).await?;
    let (status, _head, body) = http_raw_on(s, request).await?;
    Ok((status, body))
}

/// Sends a raw request from the local address `from` (any 127.0.0.0/8
/// address works on loopback, so tests can be several clients); returns
/// status, response head, body.
pub async fn http_raw_from(
    from: std::net::IpAddr,
    addr: SocketAddr,
    request: &str,
) -> std::io::Result<(u16, String, String)> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let s = socket.connect(addr).await?;
    http_raw_on(s, request).await
}

async fn http_raw_on(mut s: TcpStream, request: &str) -> std::io::Result<(u16, String, String)> {
    s.write_all(request.as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_owned(), b.to_owned()))
        .unwrap_or_default();
    Ok((status, head, body))
}

/// The value of header `name` in a response head.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

/// A TCP echo service on an OS-chosen port.
pub async fn echo_service() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// The page the HTTP service answers.
pub const PAGE: &str = "<html><body>hello from behind the tunnel</body></html>";

/// A tiny HTTP service answering every request with [`PAGE`].
pub async fn http_service() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{PAGE}",
                    PAGE.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// Sends `data` through `addr` and returns what comes back (echo).
pub async fn echo_through(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (mut r, mut w) = s.into_split();
    let data = data.to_vec();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::with_capacity(1 << 20);
    r.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    got
}

/// Audit events of one kind, read from the server's SQLite file.
pub async fn audit_events(dir: &Path, event: &str) -> Vec<rtunnel_core::store::AuditEvent> {
    use rtunnel_core::store::sql::SqlStore;
    let store = match std::fs::read_to_string(dir.join("database-url")) {
        Ok(url) => SqlStore::connect(url.trim()).await.unwrap(),
        Err(_) => SqlStore::open(&dir.join("data/rtunnel.db")).await.unwrap(),
    };
    let events = store.audit_events(event).await.unwrap();
    store.close().await;
    events
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    v
}

/// A TCP proxy whose links can be paused: bytes are held, sockets stay open,
/// as when a NAT or a flaky link stops forwarding without resetting.
pub struct PausableProxy {
    pub addr: SocketAddr,
    paused: tokio::sync::watch::Sender<bool>,
}

impl PausableProxy {
    pub async fn start(upstream: SocketAddr) -> PausableProxy {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (paused, _) = tokio::sync::watch::channel(false);
        let tx = paused.clone();
        tokio::spawn(async move {
            while let Ok((down, _)) = l.accept().await {
                let Ok(up) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pump(dr, uw, tx.subscribe()));
                tokio::spawn(pump(ur, dw, tx.subscribe()));
            }
        });
        PausableProxy { addr, paused }
    }

    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    pub fn resume(&self) {
        self.paused.send_replace(false);
    }
}

async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut paused: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while *paused.borrow_and_update() {
            if paused.changed().await.is_err() {
                return;
            }
        }
        // Reading is cancel-safe: a pause in the middle loses nothing.
        let n = tokio::select! {
            read = r.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = paused.changed() => continue,
        };
        if w.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = w.shutdown().await;
}

/// An API answer with its head.
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: serde_json::Value,
}

/// One API call from the local address `from` (see [`http_raw_from`]).
pub async fn api_call_from(
    from: &str,
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> Answer {
    let (status, head, text) = http_raw_from(
        from.parse().unwrap(),
        addr,
        &api_request(addr, method, path, token, body),
    )
    .await
    .unwrap();
    let body = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
    };
    Answer { status, head, body }
}

fn api_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> String {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// One API call with an optional bearer token and JSON body; returns the
/// status and the parsed JSON answer (`Null` for an empty body).
pub async fn api_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    let request = api_request(addr, method, path, token, body);
    let (status, text) = http_raw(addr, &request).await.unwrap();
    let value = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
    };
    (status, value)
}

/// A WebSocket to `path` on the proxy host `host` (with its port), opened
/// on a TCP connection to `connect_to` (the server, or what fronts it),
/// carrying the proxy cookie of `token`.
/// Redeems a proxy link's token on `host` (sent to `connect_to`), as a
/// browser's first visit does; returns the `name=value` of the cookie it
/// set, for the requests that follow.
pub async fn redeem_proxy_link(connect_to: SocketAddr, host: &str, token: &str) -> String {
    let request =
        format!("GET /?token={token} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let (status, head, body) = http_raw_from("127.0.0.1".parse().unwrap(), connect_to, &request)
        .await
        .unwrap();
    assert_eq!(status, 302, "{head}{body}");
    let set = header(&head, "set-cookie").unwrap();
    set.split(';').next().unwrap().to_owned()
}

/// A WebSocket to `path` on the proxy host `host` (sent to `connect_to`),
/// with `cookie` (`name=value`, from [`redeem_proxy_link`]).
pub async fn proxy_websocket(
    connect_to: SocketAddr,
    host: &str,
    path: &str,
    cookie: &str,
) -> (
    tokio_tungstenite::WebSocketStream<TcpStream>,
    tokio_tungstenite::tungstenite::handshake::client::Response,
) {
    let tcp = TcpStream::connect(connect_to).await.unwrap();
    let request = websocket_request(&format!("ws://{host}{path}"), host, &[("cookie", cookie)]);
    tokio_tungstenite::client_async(request, tcp).await.unwrap()
}

/// A WebSocket upgrade request for `uri` with `Host: host` and `headers`.
pub fn websocket_request(
    uri: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> tokio_tungstenite::tungstenite::http::Request<()> {
    let mut request = tokio_tungstenite::tungstenite::http::Request::builder()
        .uri(uri)
        .header("host", host)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header(
            "sec-websocket-key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        );
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(()).unwrap()
}

/// A session as the API shows it (`None` unless 200).
pub async fn session_status(
    server: &ServerProc,
    token: &str,
    id: &str,
) -> Option<serde_json::Value> {
    let (status, body) = http_get(server.addr, &format!("/api/v1/sessions/{id}"), Some(token))
        .await
        .ok()?;
    (status == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

/// Waits until the API shows session `id` active.
pub async fn wait_session_active(server: &ServerProc, token: &str, id: &str) {
    wait_for("the session to be active", || async {
        let v = session_status(server, token, id).await?;
        (v["status"] == "active").then_some(())
    })
    .await
}

/// The test Redis (`RTUNNEL_TEST_REDIS_URL`, started by `scripts/test.sh`).
pub fn test_redis_url() -> String {
    std::env::var("RTUNNEL_TEST_REDIS_URL")
        .expect("RTUNNEL_TEST_REDIS_URL is not set: run ./scripts/test.sh")
}

/// The flags of cluster node `node` on Redis `redis_url` under `prefix`
/// (one per test, so tests sharing a Redis never see each other's nodes).
pub fn node_args(redis_url: &str, prefix: &str, node: &str) -> Vec<String> {
    [
        "--redis-url",
        redis_url,
        "--redis-prefix",
        prefix,
        "--node-id",
        node,
        "--node-listen",
        "127.0.0.1:0",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A Redis key prefix of its own.
pub fn unique_prefix() -> String {
    format!("test-{}:", unique())
}

/// A `redis-server` of a test's own, killed on drop (for tests that stop
/// Redis under a running server without disturbing the others).
pub struct OwnRedis {
    child: Child,
    pub port: u16,
}

impl OwnRedis {
    /// Starts one on `port` and waits until it accepts connections.
    pub async fn start(port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test-deps.sh installs it)");
        wait_for("redis-server to accept connections", || async move {
            TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        OwnRedis { child, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx run from `dir/name`, as a foreground process: its own pid file,
/// logs and temporary files there, and `http` (the inside of the `http`
/// block, which may use `{prefix}` for that directory) as its sites.
pub fn nginx(dir: &Path, name: &'static str, http: &str) -> Proc {
    let prefix = dir.join(name);
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    let p = prefix.display().to_string();
    let conf = format!(
        "pid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\nevents {{}}\nhttp {{\n\
         client_body_temp_path {p}/body;\nproxy_temp_path {p}/proxy;\n{}\n}}\n",
        http.replace("{prefix}", &p)
    );
    std::fs::write(prefix.join("nginx.conf"), conf).unwrap();
    let mut cmd = Command::new("nginx");
    cmd.arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(prefix.join("nginx.conf"))
        .args(["-g", "daemon off;"]);
    Proc::spawn(name, &mut cmd, dir.join(format!("{name}.log")))
}
