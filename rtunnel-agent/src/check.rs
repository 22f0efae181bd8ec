//! `rtunnel-agent check`: tries what `run` would do, without starting a
//! session. For each server URL it dials the tunnel endpoint (proxy, TLS,
//! the WebSocket upgrade with the key and secret) and hangs up before the
//! handshake, so no session starts and a running agent is not disturbed;
//! then it connects to each service (and does its TLS handshake).
//!
//! One line per check on stdout, `ok` or `FAIL` with what is wrong and
//! what to do; exit 0 when every check passed, 1 otherwise.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::agent::{ServiceConn, dial_service};
use crate::cli::{Failure, Loaded, RunArgs};
use crate::dial::{DialOptions, dial};

/// Runs the checks of an agent built from the settings. The report is
/// the command's output, on stdout.
#[allow(clippy::print_stdout)]
pub(crate) async fn check(args: RunArgs, loaded: Option<Loaded>) -> Result<(), Failure> {
    let agent = crate::cli::build(&args, loaded.as_ref())?;
    let config = agent.config();
    let mut failures = 0usize;
    let mut report = |ok: bool, what: String| {
        if ok {
            println!("ok    {what}");
        } else {
            failures += 1;
            println!("FAIL  {what}");
        }
    };
    let auth = format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", config.key, config.secret))
    );
    for endpoint in &config.endpoints {
        let options = DialOptions {
            tls_insecure: config.tls_insecure,
            ca_roots: config.ca_roots.clone(),
            proxy: endpoint.proxy.clone(),
        };
        let via = match &endpoint.proxy {
            Some(p) => format!(" through the proxy {p}"),
            None => String::new(),
        };
        match dial(&endpoint.url, &auth, &options).await {
            Ok(mut ws) => {
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut ws).await;
                report(
                    true,
                    format!(
                        "server {}{via}: reached, credentials of {} accepted",
                        endpoint.url, config.key
                    ),
                );
            }
            Err(e) => {
                let hint = e
                    .config_hint()
                    .map(|h| format!("; {h}"))
                    .unwrap_or_default();
                report(false, format!("server {}{via}: {e}{hint}", endpoint.url));
            }
        }
    }
    let tls = crate::agent::ServiceTls::new(&config.ca_roots);
    for spec in agent.services().iter() {
        let what = format!(
            "service {} at {}{}",
            spec.name,
            spec.target(),
            if spec.tls { " (TLS)" } else { "" }
        );
        match dial_service(spec, &tls).await {
            Ok(ServiceConn::Plain(_) | ServiceConn::Tls(_)) => report(true, what),
            Err(why) => report(false, format!("{what}: {why}")),
        }
    }
    if let Some(terminal) = &config.terminal {
        let shell = terminal.shell();
        let runnable = std::fs::metadata(&shell).is_ok_and(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.is_file() && m.permissions().mode() & 0o111 != 0
        });
        report(
            runnable,
            format!(
                "terminal shell {}{}",
                shell.display(),
                if runnable {
                    ""
                } else {
                    ": not an executable file"
                }
            ),
        );
    }
    match failures {
        0 => Ok(()),
        n => Err(Failure {
            code: 1,
            message: format!("{n} check{} failed", if n == 1 { "" } else { "s" }),
        }),
    }
}
