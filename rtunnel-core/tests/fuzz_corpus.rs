//! Replays the committed corpora of the core's fuzz targets on stable, so
//! a regression on any input the fuzzer ever kept fails an ordinary test.

use rtunnel_core::proto::fuzzing::replay_corpus;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn proto_frames_corpus_replays_cleanly() {
    replay_corpus(
        root(),
        "proto_frames",
        10,
        rtunnel_core::proto::fuzzing::check_frames,
    );
}

#[test]
fn terminal_frames_corpus_replays_cleanly() {
    replay_corpus(
        root(),
        "terminal_frames",
        10,
        rtunnel_core::terminal::fuzzing::check_terminal_frames,
    );
}

#[test]
fn ws_frames_corpus_replays_cleanly() {
    replay_corpus(
        root(),
        "ws_frames",
        10,
        rtunnel_core::ws::fuzzing::check_ws_frames,
    );
}

#[test]
fn mux_frames_corpus_replays_cleanly() {
    replay_corpus(
        root(),
        "mux_frames",
        10,
        rtunnel_core::mux::wire::fuzzing::check_mux_frames,
    );
}
