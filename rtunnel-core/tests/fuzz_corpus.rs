//! Replays the committed corpora of the core's fuzz targets on stable, so
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
fn proto_frames_corpus_replays_cleanly() {
    replay("proto_frames", rtunnel_core::proto::fuzzing::check_frames);
}

#[test]
fn terminal_frames_corpus_replays_cleanly() {
    replay(
        "terminal_frames",
        rtunnel_core::terminal::fuzzing::check_terminal_frames,
    );
}
