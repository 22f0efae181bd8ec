//! Replays the committed corpora of the server's fuzz targets on stable, so
//! a regression on any input the fuzzer ever kept fails an ordinary test.

use rtunnel_core::proto::fuzzing::replay_corpus;
use rtunnel_server::fuzzing::{check_launcher_urls, check_proxy_headers, check_proxy_host};
use std::path::Path;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn proxy_host_corpus_replays_cleanly() {
    replay_corpus(root(), "proxy_host", 10, check_proxy_host);
}

#[test]
fn proxy_headers_corpus_replays_cleanly() {
    replay_corpus(root(), "proxy_headers", 10, check_proxy_headers);
}

#[test]
fn launcher_urls_corpus_replays_cleanly() {
    replay_corpus(root(), "launcher_urls", 10, check_launcher_urls);
}
