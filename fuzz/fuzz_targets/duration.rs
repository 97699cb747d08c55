//! `parse_duration`: never panics; what parses is 1–12 digits + a unit, and the duration
//! printed back in the largest unit that divides it parses to the same duration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus::model::parse_duration;

const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1000),
    ("ms", 1),
];

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match parse_duration(s) {
        Ok(d) => {
            let digits = s.bytes().take_while(u8::is_ascii_digit).count();
            assert!((1..=12).contains(&digits), "{s:?}");
            let unit = &s[digits..];
            let (_, per) = UNITS
                .iter()
                .find(|(u, _)| *u == unit)
                .unwrap_or_else(|| panic!("{s:?} accepted with unit {unit:?}"));
            let n: u64 = s[..digits].parse().expect("digits");
            assert_eq!(d.as_millis(), u128::from(n) * u128::from(*per), "{s:?}");

            let ms = u64::try_from(d.as_millis()).expect("fits in u64 milliseconds");
            let (unit, per) = UNITS
                .iter()
                .find(|(_, per)| ms % per == 0)
                .expect("ms divides everything");
            let printed = format!("{}{unit}", ms / per);
            assert_eq!(
                parse_duration(&printed),
                Ok(d),
                "{s:?} printed as {printed:?}"
            );
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
