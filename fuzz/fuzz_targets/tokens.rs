//! API token parsing and HMAC token verification from arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rtunnel_auth::fuzzing::check_tokens(data);
});
