//! `TopicPattern` (`str::parse`) and `matches(&Topic)`. The input is `pattern\ntopic` (no
//! newline: the same text is both). Checked against a small reference: which texts are
//! patterns, and which topics a pattern matches (`*` one token, `>` last for one or more).
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus::model::{Topic, TopicPattern};

fn name_token(tok: &str) -> bool {
    !tok.is_empty()
        && tok
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn valid_pattern(s: &str) -> bool {
    let tokens: Vec<&str> = s.split('.').collect();
    !s.is_empty()
        && s.len() <= 200
        && tokens.iter().enumerate().all(|(i, tok)| {
            *tok == "*" || (*tok == ">" && i + 1 == tokens.len()) || name_token(tok)
        })
}

fn reference_match(pattern: &[&str], topic: &[&str]) -> bool {
    match (pattern, topic) {
        ([">"], rest) => !rest.is_empty(),
        (["*", p @ ..], [_, t @ ..]) => reference_match(p, t),
        ([lit, p @ ..], [tok, t @ ..]) => lit == tok && reference_match(p, t),
        ([], []) => true,
        _ => false,
    }
}

fn check(pattern_text: &str, topic_text: &str) {
    let pattern = pattern_text.parse::<TopicPattern>();
    assert_eq!(
        pattern.is_ok(),
        valid_pattern(pattern_text),
        "{pattern_text:?}: {pattern:?}"
    );
    let pattern = match pattern {
        Ok(pattern) => pattern,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    assert_eq!(pattern.to_string(), pattern_text);
    assert_eq!(pattern_text.parse::<TopicPattern>().as_ref(), Ok(&pattern));

    // A topic name is also a pattern, and matches itself.
    if let Ok(topic) = pattern_text.parse::<Topic>() {
        assert!(
            pattern.matches(&topic),
            "{pattern_text:?} must match itself"
        );
    }

    let Ok(topic) = topic_text.parse::<Topic>() else {
        return;
    };
    let p: Vec<&str> = pattern_text.split('.').collect();
    let t: Vec<&str> = topic_text.split('.').collect();
    assert_eq!(
        pattern.matches(&topic),
        reference_match(&p, &t),
        "pattern {pattern_text:?} vs topic {topic_text:?}"
    );
    let everything: TopicPattern = ">".parse().expect("`>` is a pattern");
    assert!(everything.matches(&topic));
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match s.split_once('\n') {
        Some((pattern, topic)) => check(pattern, topic),
        None => check(s, s),
    }
});
