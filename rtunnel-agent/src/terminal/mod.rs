//! The built-in `terminal` service: a shell on a real PTY of the agent host.
//!
//! The shell is the login shell of the agent's user, or of the terminal
//! user (`--terminal-user`, see [`user`]), or `--shell`, started as a login
//! shell in the user's home with a clean environment: only `HOME`, `USER`,
//! `LOGNAME`, `SHELL`, `PATH`, the locale, and `TERM=xterm-256color`, plus
//! `RTUNNEL_OPERATOR` naming the operator so the customer can see who is
//! there. Nothing else of the agent's environment (its `RTUNNEL_SECRET`
//! above all) reaches the shell.

pub mod hub;
pub mod user;

use std::path::{Path, PathBuf};

use rtunnel_core::mux::MuxStream;
use rtunnel_core::proto::TerminalOpen;
use rtunnel_core::terminal::{MAX_TERMINAL_MESSAGE, TermMsg, read_msg, write_msg};
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};

/// The name of the built-in service in the manifest.
pub const TERMINAL_SERVICE: &str = "terminal";

pub use user::TerminalUser;

/// How terminals are started.
#[derive(Debug, Clone, Default)]
pub struct TerminalConfig {
    /// The shell; default: the login shell of the terminal user, else of
    /// the agent's user.
    pub shell: Option<PathBuf>,
    /// The user shells run as; default: the agent's own user.
    pub user: Option<TerminalUser>,
}

impl TerminalConfig {
    /// The shell to start.
    pub fn shell(&self) -> PathBuf {
        self.shell
            .clone()
            .or_else(|| self.user.as_ref().map(|u| u.shell.clone()))
            .unwrap_or_else(login_shell)
    }
}

/// The agent user's login shell: its `/etc/passwd` entry, else `$SHELL`,
/// else `/bin/sh`.
pub fn login_shell() -> PathBuf {
    let from_passwd = || {
        let uid = current_uid()?;
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() >= 7 && fields[2] == uid && !fields[6].is_empty())
                .then(|| PathBuf::from(fields[6]))
        })
    };
    from_passwd()
        .or_else(|| std::env::var_os("SHELL").map(PathBuf::from))
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| PathBuf::from("/bin/sh"))
}

fn current_uid() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1).map(str::to_owned)
}

/// The environment of a terminal's shell, run as `user` (default: the
/// agent's own).
pub fn shell_env(
    shell: &Path,
    operator: &str,
    user: Option<&TerminalUser>,
) -> Vec<(String, String)> {
    let mut env = Vec::new();
    let keep = |k: &str| std::env::var(k).ok().map(|v| (k.to_owned(), v));
    match user {
        Some(u) => {
            env.push(("HOME".into(), u.home.display().to_string()));
            env.push(("USER".into(), u.name.clone()));
            env.push(("LOGNAME".into(), u.name.clone()));
        }
        None => {
            for key in ["HOME", "USER", "LOGNAME"] {
                env.extend(keep(key));
            }
        }
    }
    for key in ["LANG", "LC_ALL", "LC_CTYPE", "TZ"] {
        env.extend(keep(key));
    }
    let path = std::env::var("PATH")
        .unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin".into());
    env.push(("PATH".into(), path));
    env.push(("SHELL".into(), shell.display().to_string()));
    env.push(("TERM".into(), "xterm-256color".into()));
    env.push(("RTUNNEL_OPERATOR".into(), operator.to_owned()));
    env
}

/// How a terminal ended.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ended {
    /// Bytes typed into the shell.
    pub to_shell: u64,
    /// Bytes the shell wrote.
    pub from_shell: u64,
    /// Its exit code (128 + signal), if it ended by itself or was killed.
    pub code: Option<i32>,
}

/// Serves one terminal stream (its `ok` already sent): runs the shell until
/// it exits (its code is sent back) or the stream ends (the shell is
/// killed).
pub async fn serve(config: &TerminalConfig, stream: MuxStream, open: TerminalOpen) -> Ended {
    let shell = config.shell();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let spawned = spawn(config, &shell, &open);
    let (pty, mut child) = match spawned {
        Ok(ok) => ok,
        Err(e) => {
            tracing::warn!(shell = %shell.display(), "cannot start a terminal: {e}");
            let msg = format!("rtunnel-agent: cannot start {}: {e}\r\n", shell.display());
            let _ = write_msg(&mut writer, &TermMsg::Data(msg.into_bytes())).await;
            let _ = write_msg(&mut writer, &TermMsg::Exit { code: 127 }).await;
            let _ = writer.shutdown().await;
            return Ended {
                code: Some(127),
                ..Ended::default()
            };
        }
    };
    let typed = std::sync::atomic::AtomicU64::new(0);
    let shown = std::sync::atomic::AtomicU64::new(0);
    tracing::info!(operator = %open.operator, shell = %shell.display(), "terminal opened");
    let (mut pty_out, mut pty_in) = pty.into_split();
    let input = async {
        // Operator to shell: keystrokes and resizes, until the stream ends.
        while let Ok(Some(msg)) = read_msg(&mut reader).await {
            match msg {
                TermMsg::Data(bytes) => {
                    if pty_in.write_all(&bytes).await.is_err() {
                        break;
                    }
                    typed.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                TermMsg::Resize { cols, rows } => {
                    let _ = pty_in.resize(pty_process::Size::new(rows, cols));
                }
                TermMsg::Exit { .. } => break,
                TermMsg::Event(_) | TermMsg::Control(_) | TermMsg::Output { .. } => {}
            }
        }
    };
    let output = copy_output(&mut pty_out, &mut writer, &shown);
    let shell_ended = tokio::select! {
        _ = output => true,
        _ = input => false,
    };
    if !shell_ended {
        tracing::info!(operator = %open.operator, "operator left the terminal; ending the shell");
        let _ = child.start_kill();
    }
    let code = match child.wait().await {
        Ok(status) => exit_code(status),
        Err(_) => -1,
    };
    if shell_ended {
        let _ = write_msg(&mut writer, &TermMsg::Exit { code }).await;
        let _ = writer.shutdown().await;
    }
    tracing::info!(operator = %open.operator, code, "terminal closed");
    Ended {
        to_shell: typed.into_inner(),
        from_shell: shown.into_inner(),
        code: Some(code),
    }
}

pub(crate) fn spawn(
    config: &TerminalConfig,
    shell: &Path,
    open: &TerminalOpen,
) -> Result<(pty_process::Pty, tokio::process::Child), pty_process::Error> {
    let (pty, pts) = pty_process::open()?;
    pty.resize(pty_process::Size::new(open.rows, open.cols))?;
    let user = config.user.as_ref();
    if let Some(u) = user {
        // The shell's own terminal belongs to it, as after login(1): tty,
        // sudo and ssh reopen it by name.
        rustix::fs::fchown(&pts, Some(rustix::fs::Uid::from_raw(u.uid)), None)
            .map_err(std::io::Error::from)?;
    }
    let name = shell
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sh".into());
    let home = match user {
        Some(u) => u.home.clone(),
        None => std::env::var_os("HOME").map_or_else(|| "/".into(), PathBuf::from),
    };
    let mut cmd = pty_process::Command::new(shell)
        // A leading dash makes it a login shell, as login(1) does.
        .arg0(format!("-{name}"))
        .env_clear()
        .envs(shell_env(shell, &open.operator, user))
        .current_dir(if enterable(&home) { home } else { "/".into() })
        .kill_on_drop(true);
    if let Some(u) = user {
        cmd = u.apply(cmd);
    }
    let child = cmd.spawn(pts)?;
    Ok((pty, child))
}

/// Whether the shell can start in `dir`: it exists and this process may
/// enter it (an agent started with `sudo -u` may carry a `HOME` it cannot).
fn enterable(dir: &Path) -> bool {
    dir.is_dir() && rustix::fs::access(dir, rustix::fs::Access::EXEC_OK).is_ok()
}

/// Shell output to the operator until the PTY ends (every process holding
/// it has exited: reading then fails with EIO).
async fn copy_output(
    pty: &mut pty_process::OwnedReadPty,
    writer: &mut WriteHalf<MuxStream>,
    shown: &std::sync::atomic::AtomicU64,
) {
    let mut buf = vec![0u8; MAX_TERMINAL_MESSAGE.min(16 * 1024)];
    loop {
        match pty.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                shown.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                if write_msg(writer, &TermMsg::Data(buf[..n].to_vec()))
                    .await
                    .is_err()
                {
                    // The operator is gone: the input side sees the stream
                    // end and the shell is killed.
                    return std::future::pending().await;
                }
            }
        }
    }
}

pub(crate) fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shell_environment_holds_no_agent_secret() {
        // set_var is unsafe in edition 2024: the end-to-end test checks a
        // real agent with RTUNNEL_SECRET set; this checks the list itself.
        let env = shell_env(Path::new("/bin/bash"), "olga", None);
        assert!(
            env.iter()
                .all(|(k, _)| !k.starts_with("RTUNNEL_") || k == "RTUNNEL_OPERATOR")
        );
        assert!(env.contains(&("TERM".into(), "xterm-256color".into())));
        assert!(env.contains(&("RTUNNEL_OPERATOR".into(), "olga".into())));
        assert!(env.contains(&("SHELL".into(), "/bin/bash".into())));
    }

    #[test]
    fn a_terminal_user_s_home_and_name_replace_the_agent_s() {
        let ann = TerminalUser {
            name: "ann".into(),
            uid: 1001,
            gid: 1001,
            groups: vec![1001],
            home: "/home/ann".into(),
            shell: "/bin/zsh".into(),
        };
        let env = shell_env(Path::new("/bin/zsh"), "olga", Some(&ann));
        assert!(env.contains(&("HOME".into(), "/home/ann".into())));
        assert!(env.contains(&("USER".into(), "ann".into())));
        assert!(env.contains(&("LOGNAME".into(), "ann".into())));
        let config = TerminalConfig {
            shell: None,
            user: Some(ann),
        };
        assert_eq!(config.shell(), PathBuf::from("/bin/zsh"));
    }

    #[test]
    fn a_login_shell_is_found() {
        assert!(login_shell().is_absolute());
    }
}
