//! Keeping the agent's credentials away from what it starts.
//!
//! The agent spawns shells for operators. A shell running as the agent's
//! own user could otherwise read the system secret (or `forward`'s API
//! token) from `/proc/<agent>/environ`, `/proc/<agent>/mem` or with a
//! debugger, and from `/proc/<agent>/cmdline` if it was passed as a flag.
//! [`protect_process`] makes the agent non-dumpable, which puts those files
//! and `ptrace` out of reach of every process without `CAP_SYS_PTRACE`
//! (that is: of everyone but root); [`scrub_from_process`] overwrites the
//! secret in the command line and environment the process was started with.
//! A root shell can still read anything on the machine (docs/SECURITY.md).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;

/// Shortest value [`scrub_from_process`] overwrites: a short string is
/// likely to occur by chance elsewhere in the command line.
const MIN_SCRUB_LEN: usize = 8;

/// Makes this process non-dumpable: no core dumps, and `/proc/<pid>/environ`,
/// `mem` and `ptrace` need `CAP_SYS_PTRACE`. Children get the default back
/// when they `exec`, so the shells the agent starts are ordinary processes.
pub fn protect_process() -> io::Result<()> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(io::Error::from)
}

/// How many copies of a secret [`scrub_from_process`] overwrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scrubbed {
    /// In the command line (`ps`, `/proc/<pid>/cmdline`).
    pub command_line: usize,
    /// In the environment the process started with.
    pub environment: usize,
}

/// Overwrites every copy of `secret` in this process's original command line
/// and environment with `x`, so `ps` and `/proc/<pid>/cmdline` no longer
/// show it. Values shorter than eight bytes are left alone.
///
/// Anyone who looked before this ran has seen it: a secret belongs in
/// `RTUNNEL_SECRET` or `--secret-file`, not in a flag.
pub fn scrub_from_process(secret: &str) -> io::Result<Scrubbed> {
    if secret.len() < MIN_SCRUB_LEN {
        return Ok(Scrubbed::default());
    }
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let areas = memory_areas(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/self/stat"))?;
    let mem = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/proc/self/mem")?;
    let [(arg_start, arg_end), (env_start, env_end)] = areas;
    Ok(Scrubbed {
        command_line: scrub_area(&mem, arg_start, arg_end, secret.as_bytes())?,
        environment: scrub_area(&mem, env_start, env_end, secret.as_bytes())?,
    })
}

/// The `[start, end)` addresses of the original command line and
/// environment, fields 48 to 51 of `/proc/self/stat` (see proc(5)).
fn memory_areas(stat: &str) -> Option<[(u64, u64); 2]> {
    // The command name in field 2 may hold spaces and parentheses: the
    // fields that follow start after its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(45)
        .take(4)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let [arg_start, arg_end, env_start, env_end] = fields[..] else {
        return None;
    };
    // A kernel that hides them answers zeros.
    (arg_start < arg_end && env_start <= env_end)
        .then_some([(arg_start, arg_end), (env_start, env_end)])
}

fn scrub_area(mem: &File, start: u64, end: u64, secret: &[u8]) -> io::Result<usize> {
    let len = usize::try_from(end - start).map_err(io::Error::other)?;
    if len > 4 << 20 {
        return Ok(0);
    }
    let mut area = vec![0u8; len];
    mem.read_exact_at(&mut area, start)?;
    let mut copies = 0;
    let mut at = 0;
    while let Some(pos) = find(&area[at..], secret) {
        let from = at + pos;
        area[from..from + secret.len()].fill(b'x');
        copies += 1;
        at = from + secret.len();
    }
    if copies > 0 {
        mem.write_all_at(&area, start)?;
    }
    Ok(copies)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_areas_are_read_after_a_command_name_with_spaces_and_parentheses() {
        let mut stat = String::from("42 (a) b) (c) S");
        // Fields 4 to 47, then the four we want, then the exit code.
        for i in 4..=47 {
            stat.push_str(&format!(" {i}"));
        }
        stat.push_str(" 1000 1100 1100 1400 0");
        assert_eq!(memory_areas(&stat), Some([(1000, 1100), (1100, 1400)]));
        assert_eq!(memory_areas("42 (x) S 1 2"), None);
    }

    #[test]
    fn this_process_s_own_areas_are_found() {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let [(a, b), _] = memory_areas(&stat).expect("areas of a live process");
        assert!(a < b);
    }

    #[test]
    fn short_values_are_left_alone() {
        assert_eq!(scrub_from_process("short").ok(), Some(Scrubbed::default()));
    }
}
