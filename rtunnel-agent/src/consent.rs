//! The customer in the loop: `--consent none|notify|approve` with
//! `--consent-command CMD`.
//!
//! The command runs (`/bin/sh -c CMD`) for each operator's first access in
//! a session, with `RTUNNEL_OPERATOR`, `RTUNNEL_SERVICE`,
//! `RTUNNEL_SESSION` and `RTUNNEL_CONSENT` (`notify` or `approve`) in its
//! environment. With `notify` the access opens at once and the command
//! runs beside it. With `approve` the access waits: exit code 0 allows it
//! (for the rest of the session, or for this one connection with
//! `--consent-per-connection`); any other code refuses it with
//! `consent_denied` and the command's first output line; no answer within
//! `--consent-timeout` refuses it too. Accesses of one operator that
//! arrive while the customer is being asked wait for the same answer.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtunnel_core::ids::SessionId;
use rtunnel_core::proto::{ConsentMode, Refusal, RefusalCode};
use tokio::io::AsyncReadExt;

/// Longest reason taken from the command's output.
const MAX_REASON: usize = 200;

/// How long a refusal stands before the customer is asked again: an
/// operator retrying does not bring up question after question.
pub const REFUSAL_STANDS: Duration = Duration::from_secs(30);

/// The agent's environment the command gets (a desktop session to show a
/// question on, the locale), and nothing else of it.
const PASSED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_MESSAGES",
    "TZ",
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "XAUTHORITY",
    "XDG_RUNTIME_DIR",
    "DBUS_SESSION_BUS_ADDRESS",
];

/// How the agent asks.
#[derive(Debug, Clone)]
pub struct ConsentConfig {
    /// none, notify or approve.
    pub mode: ConsentMode,
    /// The command (run with `/bin/sh -c`).
    pub command: Option<String>,
    /// How long `approve` waits for the command.
    pub timeout: Duration,
    /// Ask for every connection, not once per operator and session.
    pub per_connection: bool,
    /// How long a refusal stands before the customer is asked again
    /// (default [`REFUSAL_STANDS`]).
    pub refusal_stands: Duration,
}

impl Default for ConsentConfig {
    fn default() -> Self {
        ConsentConfig {
            mode: ConsentMode::None,
            command: None,
            timeout: Duration::from_secs(60),
            per_connection: false,
            refusal_stands: REFUSAL_STANDS,
        }
    }
}

impl ConsentConfig {
    /// Checks the settings: notify and approve need a command.
    pub fn check(&self) -> Result<(), String> {
        if self.mode != ConsentMode::None && self.command.as_deref().is_none_or(str::is_empty) {
            return Err(format!(
                "--consent {} needs --consent-command (what tells, or asks, the customer)",
                self.mode.as_str()
            ));
        }
        if self.timeout.is_zero() {
            return Err("--consent-timeout must be more than 0s".into());
        }
        Ok(())
    }
}

/// Who is asking: the session and the operator.
type Asker = (SessionId, String);

/// The answers given so far.
#[derive(Debug, Default)]
pub struct Consent {
    config: ConsentConfig,
    /// Operators allowed in a session.
    allowed: Mutex<HashSet<Asker>>,
    /// One lock per operator and session while the customer is asked.
    asking: Mutex<HashMap<Asker, Arc<tokio::sync::Mutex<()>>>>,
    /// Recent refusals, and when.
    refused: Mutex<HashMap<Asker, (std::time::Instant, Refusal)>>,
}

impl Consent {
    /// With these settings.
    pub fn new(config: ConsentConfig) -> Self {
        Consent {
            config,
            ..Default::default()
        }
    }

    /// The mode.
    pub fn mode(&self) -> ConsentMode {
        self.config.mode
    }

    /// How long an access may wait for the answer.
    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }

    /// Whether `operator` must wait for the customer before this access.
    pub fn must_wait(&self, session: SessionId, operator: &str) -> bool {
        self.config.mode == ConsentMode::Approve
            && (self.config.per_connection || !self.is_allowed(session, operator))
    }

    fn is_allowed(&self, session: SessionId, operator: &str) -> bool {
        self.allowed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(session, operator.to_owned()))
    }

    /// Decides one access of `operator` to `service`.
    pub async fn decide(
        &self,
        session: SessionId,
        operator: &str,
        service: &str,
    ) -> Result<(), Refusal> {
        let config = &self.config;
        let Some(command) = config.command.as_deref() else {
            return Ok(());
        };
        match config.mode {
            ConsentMode::None => Ok(()),
            ConsentMode::Notify => {
                if self.first_time(session, operator) {
                    let (command, operator, service) =
                        (command.to_owned(), operator.to_owned(), service.to_owned());
                    tokio::spawn(async move {
                        let told = run(&command, "notify", session, &operator, &service).await;
                        if let Err(e) = told {
                            tracing::warn!("the consent command failed: {e}");
                        }
                    });
                }
                Ok(())
            }
            ConsentMode::Approve if config.per_connection => {
                if let Some(refusal) = self.recently_refused(session, operator) {
                    return Err(refusal);
                }
                let answer = self.ask(command, session, operator, service).await;
                self.remember(session, operator, &answer);
                answer
            }
            ConsentMode::Approve => {
                let key = (session, operator.to_owned());
                let lock = self
                    .asking
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(key.clone())
                    .or_default()
                    .clone();
                // One question at a time per operator: the others wait for
                // its answer.
                let _asking = lock.lock().await;
                if self.is_allowed(session, operator) {
                    return Ok(());
                }
                if let Some(refusal) = self.recently_refused(session, operator) {
                    return Err(refusal);
                }
                let answer = self.ask(command, session, operator, service).await;
                self.remember(session, operator, &answer);
                if answer.is_ok() {
                    self.allowed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key);
                }
                answer
            }
        }
    }

    /// The refusal given `operator` less than [`REFUSAL_STANDS`] ago.
    fn recently_refused(&self, session: SessionId, operator: &str) -> Option<Refusal> {
        let refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        let (at, refusal) = refused.get(&(session, operator.to_owned()))?;
        let stands = self.config.refusal_stands;
        (at.elapsed() < stands).then(|| {
            Refusal::new(
                RefusalCode::ConsentDenied,
                format!(
                    "{} (asked {} ago; the customer is asked again after {})",
                    refusal.reason,
                    crate::agent::rounded(at.elapsed()),
                    crate::agent::rounded(stands)
                ),
            )
        })
    }

    fn remember(&self, session: SessionId, operator: &str, answer: &Result<(), Refusal>) {
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        let stands = self.config.refusal_stands;
        refused.retain(|_, (at, _)| at.elapsed() < stands);
        match answer {
            Ok(()) => {
                refused.remove(&(session, operator.to_owned()));
            }
            Err(r) => {
                refused.insert(
                    (session, operator.to_owned()),
                    (std::time::Instant::now(), r.clone()),
                );
            }
        }
    }

    /// Records a notified operator; true the first time.
    fn first_time(&self, session: SessionId, operator: &str) -> bool {
        self.allowed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((session, operator.to_owned()))
    }

    async fn ask(
        &self,
        command: &str,
        session: SessionId,
        operator: &str,
        service: &str,
    ) -> Result<(), Refusal> {
        tracing::info!(operator, service, session = %session, "asking the customer's consent");
        let timeout = self.config.timeout;
        let answer =
            tokio::time::timeout(timeout, run(command, "approve", session, operator, service))
                .await;
        let refused = |reason: String| {
            tracing::info!(operator, service, session = %session, "consent refused: {reason}");
            Err(Refusal::new(RefusalCode::ConsentDenied, reason))
        };
        match answer {
            Ok(Ok((0, _))) => {
                tracing::info!(operator, service, session = %session, "consent given");
                Ok(())
            }
            Ok(Ok((code, line))) if line.is_empty() => refused(format!(
                "the customer refused access (the consent command exited {code})"
            )),
            Ok(Ok((_, line))) => refused(format!("the customer refused access: {line}")),
            Ok(Err(e)) => refused(format!("the customer could not be asked: {e}")),
            Err(_) => refused(format!(
                "the customer did not answer within {}",
                crate::agent::rounded(timeout)
            )),
        }
    }
}

/// Runs the command; its exit code and first output line (stdout, else
/// stderr), cut and cleaned. Dropping the future kills it.
async fn run(
    command: &str,
    mode: &str,
    session: SessionId,
    operator: &str,
    service: &str,
) -> std::io::Result<(i32, String)> {
    let passed = PASSED_ENV
        .iter()
        .filter_map(|k| std::env::var_os(k).map(|v| (*k, v)));
    let mut child = tokio::process::Command::new("/bin/sh")
        .args(["-c", command])
        .env_clear()
        .envs(passed)
        .env("RTUNNEL_CONSENT", mode)
        .env("RTUNNEL_OPERATOR", operator)
        .env("RTUNNEL_SERVICE", service)
        .env("RTUNNEL_SESSION", session.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut out = Vec::new();
    let mut err = Vec::new();
    let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
    let read_out = async {
        if let Some(s) = stdout.as_mut() {
            let _ = s.take(64 * 1024).read_to_end(&mut out).await;
        }
    };
    let read_err = async {
        if let Some(s) = stderr.as_mut() {
            let _ = s.take(64 * 1024).read_to_end(&mut err).await;
        }
    };
    tokio::join!(read_out, read_err);
    let status = child.wait().await?;
    let code = status.code().unwrap_or(-1);
    let first = |bytes: &[u8]| -> String {
        let text = String::from_utf8_lossy(bytes);
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("");
        let mut clean: String = line
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(MAX_REASON)
            .collect();
        clean.truncate(clean.trim_end().len());
        clean
    };
    let line = match first(&out) {
        l if l.is_empty() => first(&err),
        l => l,
    };
    Ok((code, line))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consent(mode: ConsentMode, command: &str, per_connection: bool) -> Consent {
        Consent::new(ConsentConfig {
            mode,
            command: Some(command.into()),
            timeout: Duration::from_secs(5),
            per_connection,
            refusal_stands: REFUSAL_STANDS,
        })
    }

    #[tokio::test]
    async fn approve_asks_once_per_operator_and_session() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        let cmd = format!(
            "echo \"$RTUNNEL_OPERATOR $RTUNNEL_SERVICE $RTUNNEL_CONSENT\" >> {}; exit 0",
            count.display()
        );
        let c = consent(ConsentMode::Approve, &cmd, false);
        let s = SessionId::new();
        assert!(c.must_wait(s, "alice"));
        let (a, b) = tokio::join!(c.decide(s, "alice", "ssh"), c.decide(s, "alice", "web"));
        a.unwrap();
        b.unwrap();
        assert!(!c.must_wait(s, "alice"));
        c.decide(s, "alice", "ssh").await.unwrap();
        c.decide(s, "bob", "ssh").await.unwrap();
        let asked = std::fs::read_to_string(&count).unwrap();
        assert_eq!(asked.lines().count(), 2, "{asked}");
        assert!(asked.contains("alice ssh approve") || asked.contains("alice web approve"));
        assert!(asked.contains("bob ssh approve"));
    }

    #[tokio::test]
    async fn a_refusal_carries_the_first_line_and_a_timeout_refuses() {
        let c = consent(
            ConsentMode::Approve,
            "echo; echo 'not now, \x1b[31mbusy'; exit 3",
            false,
        );
        let s = SessionId::new();
        let r = c.decide(s, "alice", "ssh").await.unwrap_err();
        assert_eq!(r.code, RefusalCode::ConsentDenied);
        assert!(r.reason.ends_with("not now,  [31mbusy"), "{}", r.reason);
        let slow = Consent::new(ConsentConfig {
            mode: ConsentMode::Approve,
            command: Some("sleep 30".into()),
            timeout: Duration::from_millis(200),
            per_connection: false,
            refusal_stands: REFUSAL_STANDS,
        });
        let r = slow.decide(s, "alice", "ssh").await.unwrap_err();
        assert!(
            r.reason.contains("did not answer within 200ms"),
            "{}",
            r.reason
        );
        // Per connection: asked every time.
        let every = consent(ConsentMode::Approve, "exit 0", true);
        every.decide(s, "alice", "ssh").await.unwrap();
        assert!(every.must_wait(s, "alice"));
        // A refusal stands a while: asking again does not run the command.
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        let no = consent(
            ConsentMode::Approve,
            &format!("echo asked >> {}; echo no; exit 1", count.display()),
            false,
        );
        for _ in 0..3 {
            let r = no.decide(s, "bob", "ssh").await.unwrap_err();
            assert!(r.reason.contains("no"), "{}", r.reason);
        }
        assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 1);
        let again = no.decide(s, "bob", "ssh").await.unwrap_err();
        assert!(again.reason.contains("asked"), "{}", again.reason);
    }

    #[test]
    fn a_mode_without_a_command_is_refused() {
        let e = ConsentConfig {
            mode: ConsentMode::Notify,
            ..Default::default()
        }
        .check()
        .unwrap_err();
        assert!(e.contains("--consent-command"), "{e}");
        assert!(ConsentConfig::default().check().is_ok());
    }
}
