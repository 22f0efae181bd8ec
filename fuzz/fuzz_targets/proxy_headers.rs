//! Header and cookie rewriting through the proxy, both ways.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rtunnel_server::fuzzing::check_proxy_headers(data);
});
