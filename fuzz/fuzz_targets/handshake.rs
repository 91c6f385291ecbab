//! Arbitrary bytes as an upgrade request (and as a server's response): no panic, `consumed`
//! within the input, and the same result however the input is split.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    surge::handshake::fuzz_check_request(data);
    surge::handshake::client::fuzz_check_response(data);
});
