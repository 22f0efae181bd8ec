//! Proxy Host routing from arbitrary Host headers, targets and domains.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rtunnel_server::fuzzing::check_proxy_host(data);
});
