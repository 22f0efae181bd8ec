//! `--terminal-user`: shells run as another user than the agent.
//!
//! An agent running as root starts each terminal's shell as the terminal
//! user, the way login(1) does: its uid, primary gid and supplementary
//! groups, `HOME`, `USER`, `LOGNAME` and login shell from the user database
//! (`getent passwd`, `id -G`: local files, LDAP or whatever NSS is set up
//! with), the shell started in its home, and the PTY owned by it.

use std::path::PathBuf;
use std::process::Command;

use rustix::process::{Gid, Uid};

/// A user the terminals run as, as the user database describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminalUser {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Every group the user is in, the primary one included.
    pub groups: Vec<u32>,
    /// Home directory.
    pub home: PathBuf,
    /// Login shell (`/bin/sh` when the database names none).
    pub shell: PathBuf,
}

impl TerminalUser {
    /// Looks `name` up in the user database. Fails with a message for people
    /// when the name is malformed or unknown, or when this process could
    /// not become that user (it is not root and not that user already).
    pub fn lookup(name: &str) -> Result<Self, String> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && !name.starts_with('-')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'));
        if !valid {
            return Err(format!("--terminal-user {name:?} is not a user name"));
        }
        let entry = run("getent", &["passwd", name])
            .map_err(|e| format!("cannot look up --terminal-user {name}: {e}"))?
            .ok_or_else(|| format!("--terminal-user {name}: no such user"))?;
        let mut user = parse_passwd(entry.trim_end())
            .ok_or_else(|| format!("--terminal-user {name}: unexpected entry {entry:?}"))?;
        let groups = run("id", &["-G", name])
            .map_err(|e| format!("cannot look up the groups of {name}: {e}"))?
            .unwrap_or_default();
        user.groups = parse_groups(&groups, user.gid);
        let me = rustix::process::getuid().as_raw();
        if me != 0 && me != user.uid {
            return Err(format!(
                "--terminal-user {name} needs the agent to run as root (it runs as uid {me})"
            ));
        }
        Ok(user)
    }

    /// Makes `cmd` start as this user. When the agent already is this user,
    /// nothing changes.
    pub(crate) fn apply(&self, cmd: pty_process::Command) -> pty_process::Command {
        if rustix::process::getuid().as_raw() == self.uid {
            return cmd;
        }
        let uid = Uid::from_raw(self.uid);
        let gid = Gid::from_raw(self.gid);
        let groups: Vec<Gid> = self.groups.iter().map(|&g| Gid::from_raw(g)).collect();
        let drop_privileges = move || -> std::io::Result<()> {
            // Groups first, while still root; the uid last, so nothing
            // can be taken back. Each is one system call: nothing here
            // allocates or takes a lock, as a forked child requires.
            rustix::thread::set_thread_groups(&groups)?;
            rustix::thread::set_thread_res_gid(gid, gid, gid)?;
            rustix::thread::set_thread_res_uid(uid, uid, uid)?;
            Ok(())
        };
        // SAFETY: the hook runs in the forked child before exec. It only
        // makes the three system calls above on memory prepared before the
        // fork (the group list), so it is async-signal-safe. The raw calls
        // act on the calling thread, which is the child's only thread.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(drop_privileges)
        }
    }
}

/// Runs a lookup command: its standard output, or `None` when it found
/// nothing (exit code 2 for getent, 1 for id).
fn run(program: &str, args: &[&str]) -> std::io::Result<Option<String>> {
    let out = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()?;
    if !out.status.success() {
        return Ok(None);
    }
    Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// `name:password:uid:gid:gecos:home:shell`.
fn parse_passwd(line: &str) -> Option<TerminalUser> {
    let fields: Vec<&str> = line.split(':').collect();
    let [name, _, uid, gid, _, home, shell] = fields[..] else {
        return None;
    };
    let shell = if shell.is_empty() { "/bin/sh" } else { shell };
    Some(TerminalUser {
        name: name.to_owned(),
        uid: uid.parse().ok()?,
        gid: gid.parse().ok()?,
        groups: Vec::new(),
        home: PathBuf::from(if home.is_empty() { "/" } else { home }),
        shell: PathBuf::from(shell),
    })
}

/// `id -G` output; the primary group is always in.
fn parse_groups(out: &str, primary: u32) -> Vec<u32> {
    let mut groups: Vec<u32> = out
        .split_whitespace()
        .filter_map(|g| g.parse().ok())
        .collect();
    if !groups.contains(&primary) {
        groups.insert(0, primary);
    }
    groups.truncate(1024);
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_entries_are_read_field_by_field() {
        let u = parse_passwd("ann:x:1001:1002:Ann,,,:/home/ann:/bin/bash").expect("entry");
        assert_eq!((u.uid, u.gid), (1001, 1002));
        assert_eq!(u.home, PathBuf::from("/home/ann"));
        assert_eq!(u.shell, PathBuf::from("/bin/bash"));
        let u = parse_passwd("svc:x:5:5::/:").expect("entry");
        assert_eq!(u.shell, PathBuf::from("/bin/sh"));
        assert!(parse_passwd("short:x:1").is_none());
        assert!(parse_passwd("ann:x:one:1002::/h:/bin/sh").is_none());
    }

    #[test]
    fn groups_always_hold_the_primary_one() {
        assert_eq!(parse_groups("27 100\n", 100), vec![27, 100]);
        assert_eq!(parse_groups("", 100), vec![100]);
    }

    #[test]
    fn malformed_and_unknown_names_are_refused() {
        for bad in ["", "-rf", "a:b", "a b", "x\n"] {
            assert!(TerminalUser::lookup(bad).is_err(), "{bad:?}");
        }
        let e = TerminalUser::lookup("no-such-user-rtunnel").expect_err("unknown");
        assert!(e.contains("no such user"), "{e}");
    }

    #[test]
    fn the_agent_s_own_user_is_found() {
        let me = rustix::process::getuid().as_raw();
        let name = if me == 0 { "root".to_owned() } else { return };
        let u = TerminalUser::lookup(&name).expect("root exists");
        assert_eq!(u.uid, 0);
        assert!(u.groups.contains(&0));
    }
}
