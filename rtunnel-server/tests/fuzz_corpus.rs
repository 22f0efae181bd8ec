//! Replays the committed corpora of the server's fuzz targets on stable, so
//! a regression on any input the fuzzer ever kept fails an ordinary test.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("the fuzz corpus is committed") {
        let path = entry.expect("readable corpus entry").path();
        let data = std::fs::read(&path).expect("readable corpus file");
        check(&data);
        count += 1;
    }
    assert!(
        count >= 10,
        "only {count} corpus files in {}",
        dir.display()
    );
}

#[test]
fn proxy_host_corpus_replays_cleanly() {
    replay("proxy_host", rtunnel_server::fuzzing::check_proxy_host);
}

#[test]
fn proxy_headers_corpus_replays_cleanly() {
    replay(
        "proxy_headers",
        rtunnel_server::fuzzing::check_proxy_headers,
    );
}

#[test]
fn launcher_urls_corpus_replays_cleanly() {
    replay(
        "launcher_urls",
        rtunnel_server::fuzzing::check_launcher_urls,
    );
}
