//! `Cursor` (`str::parse`): never panics, and whatever parses prints back (`to_string`) to a
//! string that parses to an equal cursor.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus::model::Cursor;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cursor) = s.parse::<Cursor>() else {
        return;
    };
    let text = cursor.to_string();
    let again = text.parse::<Cursor>();
    assert_eq!(again.as_ref(), Ok(&cursor), "{s:?} printed as {text:?}");
    // The printed form is canonical: printing it again changes nothing.
    assert_eq!(again.map(|c| c.to_string()).as_deref(), Ok(text.as_str()));

    match &cursor {
        Cursor::Single(_) => {}
        Cursor::Multi(pairs) => {
            assert!(!pairs.is_empty(), "{s:?}");
            for (i, (topic, seq)) in pairs.iter().enumerate() {
                assert!(
                    pairs[..i].iter().all(|(t, _)| t != topic),
                    "duplicate topic in {s:?}"
                );
                assert_eq!(cursor.position(topic), Some(*seq));
            }
        }
    }
});
