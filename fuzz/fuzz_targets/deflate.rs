//! permessage-deflate: negotiation on both sides (offers and responses with arbitrary parameters),
//! then a sequence of operations on one connection's compression state (messages the peer
//! compresses, arbitrary compressed bytes, messages we compress, prepared messages) with and
//! without context takeover, window bits 8-15 and size limits, checked against flate2 playing the
//! peer. See `surge::fuzzing::fuzz_check_deflate`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    surge::fuzzing::fuzz_check_deflate(data);
});
