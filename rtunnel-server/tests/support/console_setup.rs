//! What the browser tests share: a real server, an enrolled system whose
//! agent offers a web app and a real PTY (`/bin/sh`), an admin token, and
//! the session, active.

use super::support::*;
use super::webapp;

pub(crate) struct Setup {
    pub(crate) tmp: tempfile::TempDir,
    pub(crate) server: ServerProc,
    pub(crate) admin: String,
    pub(crate) session: String,
    pub(crate) _app: webapp::WebApp,
    pub(crate) _agent: Proc,
}

pub(crate) async fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path(), &[]).await;
    let sys = enroll(&server, "customer-box");
    let admin = user_with_token(&server, "root", "admin");
    let app = webapp::WebApp::start().await;
    let agent = start_agent(
        &server,
        &sys,
        &format!("web={}", app.addr),
        &["--shell", "/bin/sh"],
    );
    let session = active_session(&server, &admin, &sys.id).await;
    Setup {
        tmp,
        server,
        admin,
        session,
        _app: app,
        _agent: agent,
    }
}
