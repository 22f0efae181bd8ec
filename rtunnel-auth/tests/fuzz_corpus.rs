//! Replays the committed corpus of the `tokens` fuzz target on stable.

use std::path::Path;

#[test]
fn tokens_corpus_replays_cleanly() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    rtunnel_core::proto::fuzzing::replay_corpus(
        root,
        "tokens",
        5,
        rtunnel_auth::fuzzing::check_tokens,
    );
}
