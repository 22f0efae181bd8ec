//! Allocator settings for a process that relays bulk data.
//!
//! Relaying allocates and frees a buffer for every frame: yamux a body of up
//! to 256 KiB for each frame it sends or receives, tungstenite a buffer for
//! each WebSocket message. With glibc's defaults, blocks above a threshold
//! (128 KiB at start, raised to the largest such block freed so far) are
//! mapped and unmapped one by one, and freed memory at the top of the heap
//! goes back to the kernel once more than twice that threshold is free, so
//! the next frame faults the same pages in again. On a bulk
//! transfer through `forward`, the server and the agent, that was a fifth of
//! each process's time (`perf`; docs/PERFORMANCE.md, "Throughput").
//!
//! [`tune_for_relaying`] fixes the thresholds instead: blocks up to
//! [`MMAP_THRESHOLD_BYTES`] come from the heap, and the heap is trimmed only
//! once more than [`TRIM_THRESHOLD_BYTES`] at its top is free: each malloc
//! arena (glibc makes up to eight per core, as threads contend) keeps up to
//! that much at its top for the next frames, besides the free chunks below
//! blocks still in use that any heap keeps. The shipped binaries call it
//! first thing; an embedding service may call it too, or leave its
//! allocator alone.
//!
//! It changes nothing when the operator set either threshold
//! (`glibc.malloc.mmap_threshold` or `glibc.malloc.trim_threshold` in
//! `GLIBC_TUNABLES`, or `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_`):
//! their choice wins. Nor on other C libraries (musl, macOS), whose
//! allocators have no such thresholds.

/// Blocks up to this size come from the heap, not from a mapping of their
/// own: above the largest WebSocket message a tunnel sends (256 KiB).
pub const MMAP_THRESHOLD_BYTES: usize = 1024 * 1024;

/// The heap is trimmed only when more than this is free at its top.
pub const TRIM_THRESHOLD_BYTES: usize = 4 * 1024 * 1024;

/// What [`tune_for_relaying`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tuning {
    /// The thresholds are set.
    Applied,
    /// The operator set a threshold in the environment; it was left as it is.
    LeftToEnvironment,
    /// Not glibc, or glibc refused the setting: nothing changed.
    Unsupported,
}

/// Sets the C allocator's thresholds for relaying (see the module docs).
/// Call it once, early in `main`; calling it again does no harm.
///
/// ```
/// let tuning = rtunnel_core::malloc::tune_for_relaying();
/// tracing::debug!(?tuning, "allocator");
/// ```
pub fn tune_for_relaying() -> Tuning {
    let tunables = std::env::var_os("GLIBC_TUNABLES").unwrap_or_default();
    let tunables = tunables.to_string_lossy();
    let set_by_operator = ["glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold"]
        .iter()
        .any(|name| tunables.contains(name))
        || ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"]
            .iter()
            .any(|name| std::env::var_os(name).is_some());
    if set_by_operator {
        return Tuning::LeftToEnvironment;
    }
    sys::set_thresholds(MMAP_THRESHOLD_BYTES, TRIM_THRESHOLD_BYTES)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod sys {
    use super::Tuning;

    pub(super) fn set_thresholds(mmap: usize, trim: usize) -> Tuning {
        let (Ok(mmap), Ok(trim)) = (libc::c_int::try_from(mmap), libc::c_int::try_from(trim))
        else {
            return Tuning::Unsupported;
        };
        // SAFETY: mallopt only sets allocator parameters, under glibc's own
        // lock; it is safe to call from any thread at any time.
        #[allow(unsafe_code)]
        let ok = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, mmap) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, trim) == 1
        };
        if ok {
            Tuning::Applied
        } else {
            Tuning::Unsupported
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod sys {
    use super::Tuning;

    pub(super) fn set_thresholds(_mmap: usize, _trim: usize) -> Tuning {
        Tuning::Unsupported
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Set in the child process the test below starts: which probe to run.
    const PROBE: &str = "RTUNNEL_MALLOC_PROBE";

    /// Minor page faults of this thread so far.
    fn page_faults() -> libc::c_long {
        #[allow(unsafe_code)]
        // SAFETY: getrusage writes only into the struct it is given.
        unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut usage), 0);
            usage.ru_minflt
        }
    }

    /// In a fresh process (so no earlier allocation moved glibc's dynamic
    /// threshold): allocates and frees a block the size of a large
    /// WebSocket message, then counts the page faults of the next one. It
    /// exits 0 if the memory was kept for it, 1 if the kernel had to hand
    /// the pages out again (128 faults for 512 KiB).
    #[test]
    fn probe() {
        let Some(mode) = std::env::var_os(PROBE) else {
            return;
        };
        if mode == "tuned" {
            assert_eq!(tune_for_relaying(), Tuning::Applied);
        }
        const BLOCK: usize = 512 * 1024;
        drop(std::hint::black_box(vec![1u8; BLOCK]));
        let before = page_faults();
        let block = std::hint::black_box(vec![1u8; BLOCK]);
        let faults = page_faults() - before;
        drop(block);
        std::process::exit(if faults < 16 { 0 } else { 1 });
    }

    fn run_probe(mode: &str) -> bool {
        let status = std::process::Command::new(std::env::current_exe().expect("the test binary"))
            .args(["--exact", "malloc::tests::probe", "--test-threads=1"])
            .env(PROBE, mode)
            .env_remove("GLIBC_TUNABLES")
            .env_remove("MALLOC_MMAP_THRESHOLD_")
            .env_remove("MALLOC_TRIM_THRESHOLD_")
            .env_remove("MALLOC_TOP_PAD_")
            .env_remove("LD_PRELOAD")
            .stdout(std::process::Stdio::null())
            .status()
            .expect("the test binary runs");
        status.success()
    }

    #[test]
    fn a_freed_frame_buffer_stays_in_the_heap_once_tuned() {
        // glibc's defaults map the block on its own and unmap it when freed.
        assert!(!run_probe("default"), "the probe cannot tell");
        assert!(run_probe("tuned"));
    }

    #[test]
    fn malloc_tunables_set_by_the_operator_win() {
        // Read in this process: GLIBC_TUNABLES is read once by glibc at
        // start, so the test only sets what tune_for_relaying reads.
        let status = std::process::Command::new(std::env::current_exe().expect("the test binary"))
            .args(["--exact", "malloc::tests::tunables_probe"])
            .env(PROBE, "tunables")
            .env("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1048576")
            .stdout(std::process::Stdio::null())
            .status()
            .expect("the test binary runs");
        assert!(status.success());
    }

    #[test]
    fn tunables_probe() {
        if std::env::var_os(PROBE).is_some_and(|m| m == "tunables") {
            assert_eq!(tune_for_relaying(), Tuning::LeftToEnvironment);
        }
    }
}
