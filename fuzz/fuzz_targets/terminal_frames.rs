//! Terminal stream messages (type, length, body) from arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rtunnel_core::terminal::fuzzing::check_terminal_frames(data);
});
