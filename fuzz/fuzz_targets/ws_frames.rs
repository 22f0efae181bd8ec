//! WebSocket frames from arbitrary bytes, read by either end of a tunnel.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rtunnel_core::ws::fuzzing::check_ws_frames(data);
});
