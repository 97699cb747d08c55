//! `Since` (`str::parse`): never panics, and each accepted form agrees with the parser of that
//! form (a duration, an RFC 3339 time, a cursor).
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus::model::{Cursor, Since, parse_duration, parse_rfc3339};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let since = s.parse::<Since>();
    match &since {
        Ok(Since::All) => assert_eq!(s, "all"),
        Ok(Since::Now) => assert_eq!(s, "now"),
        Ok(Since::Ago(d)) => assert_eq!(parse_duration(s).as_ref(), Ok(d)),
        Ok(Since::Time(t)) => assert_eq!(parse_rfc3339(s), Some(*t)),
        Ok(Since::Cursor(c)) => assert_eq!(s.parse::<Cursor>().as_ref(), Ok(c)),
        Err(e) => {
            // Rejected: no form accepts it, and the error message can be built.
            assert!(parse_duration(s).is_err() && parse_rfc3339(s).is_none());
            assert!(s.parse::<Cursor>().is_err());
            let _ = e.to_string();
        }
    }
});
