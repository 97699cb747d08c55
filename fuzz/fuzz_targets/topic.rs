//! `Topic` (`str::parse`) and `TopicList::parse(s, 64)`: never panic; what is accepted is a
//! valid name that prints back unchanged, and a list is 1..=64 distinct valid names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus::model::{Topic, TopicList};

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.split('.').all(|tok| {
            !tok.is_empty()
                && tok
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };

    let topic = s.parse::<Topic>();
    assert_eq!(topic.is_ok(), valid_name(s), "{s:?}: {topic:?}");
    if let Ok(topic) = topic {
        assert_eq!(topic.as_str(), s);
        assert_eq!(topic.to_string(), s);
        assert_eq!(topic.is_reserved(), s.starts_with('_'));
        assert_eq!(topic.to_string().parse::<Topic>().ok(), Some(topic));
    }

    if let Ok(list) = TopicList::parse(s, 64) {
        assert!(!list.is_empty() && list.len() <= 64, "{s:?}: {list:?}");
        assert_eq!(list.len(), list.as_slice().len());
        for (i, t) in list.iter().enumerate() {
            assert!(valid_name(t.as_str()), "{s:?}: {t:?}");
            assert!(!list.as_slice()[..i].contains(t), "duplicate in {s:?}");
            assert!(s.split(',').any(|part| part == t.as_str()));
        }
        // Printing the list back and parsing it again gives the same list.
        let joined: Vec<&str> = list.iter().map(Topic::as_str).collect();
        assert_eq!(TopicList::parse(&joined.join(","), 64).as_ref(), Ok(&list));
    }
});
