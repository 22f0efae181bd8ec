//! Replays the committed corpus of the `proto_frames` fuzz target on stable,
//! so a regression on any input the fuzzer ever kept fails an ordinary test.

use std::path::Path;

#[test]
fn proto_frames_corpus_replays_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/proto_frames");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("the fuzz corpus is committed") {
        let path = entry.expect("readable corpus entry").path();
        let data = std::fs::read(&path).expect("readable corpus file");
        rtunnel_core::proto::fuzzing::check_frames(&data);
        count += 1;
    }
    assert!(
        count >= 10,
        "only {count} corpus files in {}",
        dir.display()
    );
}

#[test]
fn terminal_frames_corpus_replays_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/terminal_frames");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("the fuzz corpus is committed") {
        let path = entry.expect("readable corpus entry").path();
        let data = std::fs::read(&path).expect("readable corpus file");
        rtunnel_core::terminal::fuzzing::check_terminal_frames(&data);
        count += 1;
    }
    assert!(
        count >= 10,
        "only {count} corpus files in {}",
        dir.display()
    );
}
