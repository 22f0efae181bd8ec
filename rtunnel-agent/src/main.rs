//! The `rtunnel-agent` binary.

fn main() -> std::process::ExitCode {
    // Every forwarded connection holds a socket: lift the soft limit on
    // open files to the hard one (as Go's runtime does), so a default 1024
    // does not cap a busy node. Failing to raise it is not fatal.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    // Every relayed frame allocates and frees a buffer: keep freed memory
    // for the next frame instead of faulting it in again (glibc only).
    rtunnel_core::malloc::tune_for_relaying();
    // One thread unless RTUNNEL_AGENT_THREADS asks for more.
    let threads = std::env::var(rtunnel_agent::runtime::THREADS_VAR).ok();
    match rtunnel_agent::runtime::build(threads.as_deref()) {
        Ok(runtime) => runtime.block_on(rtunnel_agent::cli::main()),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
