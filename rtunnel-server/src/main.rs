//! The `rtunnel-server` binary.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    rtunnel_server::cli::main().await
}
