//! yamux frames from arbitrary bytes, read by either end of a connection.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rtunnel_core::mux::wire::fuzzing::check_mux_frames(data);
});
