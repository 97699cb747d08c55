//! `wire::base64`: `decode` never panics, decoding is canonical (`encode(decode(s)) == s`), and
//! any bytes survive `decode(encode(bytes))`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus::wire::base64::{decode, encode};

fuzz_target!(|data: &[u8]| {
    // The raw bytes as a payload.
    let encoded = encode(data);
    assert_eq!(encoded.len(), data.len().div_ceil(3) * 4);
    assert_eq!(decode(&encoded).as_deref(), Some(data));

    // The bytes as text to decode.
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(bytes) = decode(s) {
        assert_eq!(encode(&bytes), s, "{s:?} decodes to {bytes:?}");
    }
});
