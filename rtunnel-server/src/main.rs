//! The `rtunnel-server` binary.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Every forwarded connection holds a socket: lift the soft limit on
    // open files to the hard one (as Go's runtime does), so a default 1024
    // does not cap a busy node. Failing to raise it is not fatal.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    // Every relayed frame allocates and frees a buffer: keep freed memory
    // for the next frame instead of faulting it in again (glibc only).
    rtunnel_core::malloc::tune_for_relaying();
    rtunnel_server::cli::main().await
}
