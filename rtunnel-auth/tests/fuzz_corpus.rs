//! Replays the committed corpus of the `tokens` fuzz target on stable.

use std::path::Path;

#[test]
fn tokens_corpus_replays_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/tokens");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("the fuzz corpus is committed") {
        let path = entry.expect("readable corpus entry").path();
        let data = std::fs::read(&path).expect("readable corpus file");
        rtunnel_auth::fuzzing::check_tokens(&data);
        count += 1;
    }
    assert!(count >= 5, "only {count} corpus files in {}", dir.display());
}
