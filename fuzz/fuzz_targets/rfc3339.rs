//! `parse_rfc3339`: never panics; an accepted time formats (`format_rfc3339_millis`) to a
//! string that parses back to the same instant whenever that instant lies in years 0000–9999.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus::model::{format_rfc3339_millis, parse_rfc3339};

/// 0000-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z.
const MIN: i64 = -62_167_219_200_000;
const MAX: i64 = 253_402_300_799_999;

fn check_format(ms: i64, from: &str) {
    let text = format_rfc3339_millis(ms);
    assert_eq!(text.len(), 24, "{from:?} -> {ms} formats as {text:?}");
    assert_eq!(
        parse_rfc3339(&text),
        Some(ms),
        "{from:?} -> {ms} formats as {text:?}"
    );
    assert_eq!(format_rfc3339_millis(ms), text);
}

fuzz_target!(|data: &[u8]| {
    // Also exercise the formatter on any instant, as eight little-endian bytes.
    if let Ok(bytes) = <[u8; 8]>::try_from(data) {
        let ms = i64::from_le_bytes(bytes);
        if (MIN..=MAX).contains(&ms) {
            check_format(ms, "raw i64");
        } else {
            // Outside four-digit years the text is not RFC 3339; it must not parse as another time.
            let text = format_rfc3339_millis(ms);
            let parsed = parse_rfc3339(&text);
            assert!(
                parsed.is_none_or(|t| t == ms),
                "{ms} formats as {text:?}, parses as {parsed:?}"
            );
        }
    }

    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Some(ms) = parse_rfc3339(s) else {
        return;
    };
    // The offset (at most ±23:59) can move a time just outside the four-digit years.
    if (MIN..=MAX).contains(&ms) {
        check_format(ms, s);
    }
    // Accepted text shows the same instant up to the millisecond whatever its case.
    assert_eq!(parse_rfc3339(&s.to_ascii_uppercase()), Some(ms), "{s:?}");
});
