//! The `rtunnel-agent` binary.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    rtunnel_agent::cli::main().await
}
