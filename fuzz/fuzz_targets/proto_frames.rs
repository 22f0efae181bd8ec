//! Control messages, stream headers and replies from arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rtunnel_core::proto::fuzzing::check_frames(data);
});
