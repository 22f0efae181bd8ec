//! Launcher URLs from arbitrary resource metadata, addresses and fallbacks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rtunnel_server::fuzzing::check_launcher_urls(data);
});
