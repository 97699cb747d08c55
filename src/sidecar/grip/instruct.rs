//! GRIP instructions an application answers with, parsed at the edge into an [`Instruct`]
//! that cannot be invalid: the `Grip-*` headers (several headers and comma lists alike) or the
//! `application/grip-instruct` JSON body, and the native `Plexus-Hold` alias. A malformed
//! instruction names its header in a [`BadInstruct`], which the client sees as a `502`.
//! The defaults and limits are Pushpin's (docs/API.md, hold mode).

use std::time::Duration;

use crate::model::Topic;

/// A response hold lasts this long unless `Grip-Timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(55);
/// The shortest response hold; a smaller `Grip-Timeout` is raised to it.
pub const MIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Keep-alive data goes out after this long idle unless `timeout=` says otherwise.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(55);
/// The longest hold accepted (`Grip-Timeout`, a keep-alive's timeout).
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Response,
    Stream,
}

/// One held channel: the GRIP name, the topic it maps to, and where to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub name: String,
    pub topic: Topic,
    pub prev_id: Option<String>,
    /// From `Plexus-Hold`: `since=0` is a cursor too (the topic's start).
    pub native: bool,
}

impl Channel {
    /// The `prev-id` as a cursor of the topic: a seq of 1 or more (or 0 given as `since`).
    pub fn cursor(&self) -> Option<u64> {
        self.prev_id
            .as_deref()
            .and_then(|p| p.parse::<u64>().ok())
            .filter(|s| *s >= 1 || self.native)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepAlive {
    pub data: Vec<u8>,
    pub timeout: Duration,
    /// `mode=interval`: sent every `timeout`, not only after `timeout` idle.
    pub interval: bool,
}

/// What the application asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Instruct {
    /// `None`: no hold; the response passes through (its `Grip-*` headers removed).
    pub hold: Option<Hold>,
    /// `Grip-Status`: the status (and reason) the client gets instead of the app's.
    pub status: Option<u16>,
    /// `Grip-Link rel=next`: fetched after the response, its body appended.
    pub next: Option<String>,
    /// `Grip-Link rel=gone`: POSTed (best effort) when the client leaves.
    pub gone: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub mode: Mode,
    pub channels: Vec<Channel>,
    pub timeout: Duration,
    pub keep_alive: Option<KeepAlive>,
}

/// A malformed instruction: which header (or the JSON body) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadInstruct {
    pub header: &'static str,
    pub detail: String,
}

fn bad(header: &'static str, detail: impl Into<String>) -> BadInstruct {
    BadInstruct {
        header,
        detail: detail.into(),
    }
}

pub use crate::model::channel_topic;

/// Splits a header value on `sep` outside double quotes.
fn split_quoted(value: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&value[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        out.push(n);
                    }
                } else {
                    out.push(c);
                }
            }
            out
        }
        None => v.to_owned(),
    }
}

/// `first; k=v; k2=v2` → the first part and its parameters (names lower-cased).
fn params(item: &str) -> (String, Vec<(String, String)>) {
    let mut parts = split_quoted(item, ';').into_iter();
    let first = unquote(parts.next().unwrap_or_default());
    let params = parts
        .filter(|p| !p.trim().is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), unquote(v)),
            None => (p.trim().to_ascii_lowercase(), String::new()),
        })
        .collect();
    (first, params)
}

fn seconds(header: &'static str, what: &str, v: &str) -> Result<Duration, BadInstruct> {
    v.trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
        .filter(|d| *d <= MAX_TIMEOUT)
        .ok_or_else(|| {
            bad(
                header,
                format!(
                    "{what} {v:?} is not a whole number of seconds up to {}",
                    MAX_TIMEOUT.as_secs()
                ),
            )
        })
}

fn channel(name: &str, prev_id: Option<String>) -> Result<Channel, BadInstruct> {
    if name.is_empty() {
        return Err(bad("Grip-Channel", "a channel name is empty"));
    }
    let topic = channel_topic(name).map_err(|e| bad("Grip-Channel", e))?;
    Ok(Channel {
        name: name.to_owned(),
        topic,
        prev_id,
        native: false,
    })
}

/// Decodes `cstring` keep-alive data: `\\`, `\r`, `\n`, `\t`, `\0` escapes.
fn cstring(data: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(data.len());
    let mut bytes = data.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        out.push(match bytes.next() {
            Some(b'\\') => b'\\',
            Some(b'r') => b'\r',
            Some(b'n') => b'\n',
            Some(b't') => b'\t',
            Some(b'0') => 0,
            other => {
                return Err(format!(
                    "bad escape \\{} in cstring data",
                    other.map(|b| b as char).unwrap_or(' ')
                ));
            }
        });
    }
    Ok(out)
}

fn keep_alive(value: &str) -> Result<KeepAlive, BadInstruct> {
    const H: &str = "Grip-Keep-Alive";
    let (data, ps) = params(value);
    let mut format = "raw".to_owned();
    let mut timeout = DEFAULT_KEEP_ALIVE;
    let mut interval = false;
    for (k, v) in ps {
        match k.as_str() {
            "format" => format = v,
            "timeout" => timeout = seconds(H, "timeout", &v)?,
            "mode" => {
                interval = match v.as_str() {
                    "idle" => false,
                    "interval" => true,
                    m => return Err(bad(H, format!("mode {m:?} is not idle or interval"))),
                }
            }
            _ => {}
        }
    }
    if data.is_empty() {
        return Err(bad(H, "the keep-alive data is empty"));
    }
    let data = match format.as_str() {
        "raw" => data.into_bytes(),
        "cstring" => cstring(&data).map_err(|e| bad(H, e))?,
        "base64" => crate::wire::base64::decode(&data)
            .ok_or_else(|| bad(H, "the keep-alive data is not base64"))?,
        f => {
            return Err(bad(
                H,
                format!("format {f:?} is not raw, cstring or base64"),
            ));
        }
    };
    if timeout.is_zero() {
        return Err(bad(H, "timeout must be at least 1 second"));
    }
    Ok(KeepAlive {
        data,
        timeout,
        interval,
    })
}

/// The `Grip-*` (and `Plexus-Hold`) headers of an application's response, by lower-case name.
pub fn from_headers(headers: &[(String, String)]) -> Result<Instruct, BadInstruct> {
    let all = |name: &'static str| {
        headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let one = |name: &'static str| -> Result<Option<&str>, BadInstruct> {
        let mut values = all(name);
        let first = values.next();
        if values.next().is_some() {
            return Err(bad(name, "given more than once"));
        }
        Ok(first)
    };
    let mut instruct = Instruct::default();
    if let Some(status) = one("Grip-Status")? {
        let code = status.split_whitespace().next().unwrap_or_default();
        instruct.status = Some(
            code.parse::<u16>()
                .ok()
                .filter(|c| (100..=999).contains(c))
                .ok_or_else(|| bad("Grip-Status", format!("{status:?} is not a status code")))?,
        );
    }
    for value in all("Grip-Link") {
        for link in split_quoted(value, ',') {
            let (uri, ps) = params(link);
            let uri = uri
                .trim()
                .strip_prefix('<')
                .and_then(|u| u.strip_suffix('>'))
                .filter(|u| !u.is_empty())
                .ok_or_else(|| bad("Grip-Link", format!("{link:?} is not <uri>; rel=…")))?;
            match ps.iter().find(|(k, _)| k == "rel").map(|(_, v)| v.as_str()) {
                Some("next") => instruct.next = Some(uri.to_owned()),
                Some("gone") => instruct.gone = Some(uri.to_owned()),
                other => {
                    return Err(bad(
                        "Grip-Link",
                        format!("rel {other:?} is not next or gone"),
                    ));
                }
            }
        }
    }
    if let Some(native) = one("Plexus-Hold")? {
        if all("Grip-Hold").next().is_some() {
            return Err(bad(
                "Plexus-Hold",
                "give Plexus-Hold or Grip-Hold, not both",
            ));
        }
        instruct.hold = Some(native_hold(native)?);
        return Ok(instruct);
    }
    let Some(mode) = one("Grip-Hold")? else {
        return Ok(instruct);
    };
    let mode = match mode.trim() {
        "response" => Mode::Response,
        "stream" => Mode::Stream,
        m => {
            return Err(bad("Grip-Hold", format!("{m:?} is not response or stream")));
        }
    };
    let mut channels = Vec::new();
    for value in all("Grip-Channel") {
        for item in split_quoted(value, ',') {
            let (name, ps) = params(item);
            let prev_id = ps.into_iter().find(|(k, _)| k == "prev-id").map(|(_, v)| v);
            channels.push(channel(name.trim(), prev_id)?);
        }
    }
    if channels.is_empty() {
        return Err(bad("Grip-Channel", "a hold needs at least one channel"));
    }
    let timeout = match one("Grip-Timeout")? {
        Some(t) => seconds("Grip-Timeout", "timeout", t)?.max(MIN_TIMEOUT),
        None => DEFAULT_TIMEOUT,
    };
    let keep_alive = one("Grip-Keep-Alive")?.map(keep_alive).transpose()?;
    instruct.hold = Some(Hold {
        mode,
        channels,
        timeout,
        keep_alive,
    });
    Ok(instruct)
}

/// `Plexus-Hold: stream; topic=T[; since=C]` or `long-poll; topic=T; since=C[; timeout=S]`:
/// the same hold as GRIP's, with a topic and a cursor in place of a channel and a prev-id.
fn native_hold(value: &str) -> Result<Hold, BadInstruct> {
    const H: &str = "Plexus-Hold";
    let (mode, ps) = params(value);
    let get = |k: &str| ps.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mode = match mode.trim() {
        "stream" => Mode::Stream,
        "long-poll" => Mode::Response,
        m => return Err(bad(H, format!("{m:?} is not stream or long-poll"))),
    };
    let name = get("topic").ok_or_else(|| bad(H, "topic= is missing"))?;
    let topic = name
        .parse::<Topic>()
        .map_err(|e| bad(H, format!("topic {name:?}: {e}")))?;
    let since = get("since");
    if mode == Mode::Response && since.is_none() {
        return Err(bad(H, "a long-poll needs since="));
    }
    if let Some(s) = &since
        && s.parse::<u64>().is_err()
    {
        return Err(bad(H, format!("since {s:?} is not a seq")));
    }
    let timeout = match get("timeout") {
        Some(t) => seconds(H, "timeout", &t)?.max(MIN_TIMEOUT),
        None => DEFAULT_TIMEOUT,
    };
    Ok(Hold {
        mode,
        channels: vec![Channel {
            name,
            topic,
            prev_id: since,
            native: true,
        }],
        timeout,
        keep_alive: None,
    })
}

/// The `application/grip-instruct` body: the hold and the response it wraps.
pub struct JsonInstruct {
    pub instruct: Instruct,
    pub code: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

pub fn from_json(body: &[u8]) -> Result<JsonInstruct, BadInstruct> {
    const H: &str = "application/grip-instruct";
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(H, format!("the body is not JSON: {e}")))?;
    let hold = v.get("hold").ok_or_else(|| bad(H, "\"hold\" is missing"))?;
    let mode = match hold.get("mode").and_then(|m| m.as_str()) {
        Some("response") | None => Mode::Response,
        Some("stream") => Mode::Stream,
        Some(m) => return Err(bad(H, format!("mode {m:?} is not response or stream"))),
    };
    let mut channels = Vec::new();
    for c in hold
        .get("channels")
        .and_then(|c| c.as_array())
        .ok_or_else(|| bad(H, "hold.channels is not a list"))?
    {
        let name = c
            .get("name")
            .and_then(|n| n.as_str())
            .ok_or_else(|| bad(H, "a channel has no name"))?;
        let prev_id = c.get("prev-id").and_then(|p| p.as_str()).map(str::to_owned);
        channels.push(channel(name, prev_id).map_err(|e| bad(H, e.detail))?);
    }
    if channels.is_empty() {
        return Err(bad(H, "a hold needs at least one channel"));
    }
    let timeout = match hold.get("timeout") {
        None => DEFAULT_TIMEOUT,
        Some(t) => t
            .as_u64()
            .map(Duration::from_secs)
            .filter(|d| *d <= MAX_TIMEOUT)
            .ok_or_else(|| bad(H, "hold.timeout is not a whole number of seconds"))?
            .max(MIN_TIMEOUT),
    };
    let keep_alive = match hold.get("keep-alive") {
        None => None,
        Some(k) => {
            let data = match (k.get("content"), k.get("content-bin")) {
                (Some(c), _) => c
                    .as_str()
                    .map(|s| s.as_bytes().to_vec())
                    .ok_or_else(|| bad(H, "keep-alive.content is not a string"))?,
                (None, Some(b)) => b
                    .as_str()
                    .and_then(crate::wire::base64::decode)
                    .ok_or_else(|| bad(H, "keep-alive.content-bin is not base64"))?,
                (None, None) => return Err(bad(H, "keep-alive has no content")),
            };
            let timeout = match k.get("timeout") {
                None => DEFAULT_KEEP_ALIVE,
                Some(t) => t
                    .as_u64()
                    .filter(|t| *t >= 1)
                    .map(Duration::from_secs)
                    .ok_or_else(|| bad(H, "keep-alive.timeout is not a whole number of seconds"))?,
            };
            Some(KeepAlive {
                data,
                timeout,
                interval: k.get("mode").and_then(|m| m.as_str()) == Some("interval"),
            })
        }
    };
    let response = v.get("response");
    let code = response
        .and_then(|r| r.get("code"))
        .map(|c| {
            c.as_u64()
                .filter(|c| (100..=999).contains(c))
                .ok_or_else(|| bad(H, "response.code is not a status"))
        })
        .transpose()?
        .unwrap_or(200) as u16;
    let mut headers = Vec::new();
    if let Some(h) = response.and_then(|r| r.get("headers")) {
        let h = h
            .as_object()
            .ok_or_else(|| bad(H, "response.headers is not an object"))?;
        for (k, v) in h {
            let v = v
                .as_str()
                .ok_or_else(|| bad(H, format!("response header {k} is not a string")))?;
            headers.push((k.clone(), v.to_owned()));
        }
    }
    let body = match (
        response.and_then(|r| r.get("body")),
        response.and_then(|r| r.get("body-bin")),
    ) {
        (Some(b), _) => b
            .as_str()
            .map(|s| s.as_bytes().to_vec())
            .ok_or_else(|| bad(H, "response.body is not a string"))?,
        (None, Some(b)) => b
            .as_str()
            .and_then(crate::wire::base64::decode)
            .ok_or_else(|| bad(H, "response.body-bin is not base64"))?,
        (None, None) => Vec::new(),
    };
    Ok(JsonInstruct {
        instruct: Instruct {
            hold: Some(Hold {
                mode,
                channels,
                timeout,
                keep_alive,
            }),
            ..Instruct::default()
        },
        code,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned()))
            .collect()
    }

    fn hold(pairs: &[(&str, &str)]) -> Hold {
        from_headers(&h(pairs)).unwrap().hold.unwrap()
    }

    fn err(pairs: &[(&str, &str)]) -> BadInstruct {
        from_headers(&h(pairs)).unwrap_err()
    }

    #[test]
    fn no_grip_hold_is_no_hold() {
        assert_eq!(
            from_headers(&h(&[("Content-Type", "text/plain")])).unwrap(),
            Instruct::default()
        );
    }

    #[test]
    fn hold_modes() {
        assert_eq!(
            hold(&[("Grip-Hold", "stream"), ("Grip-Channel", "a")]).mode,
            Mode::Stream
        );
        assert_eq!(
            hold(&[("Grip-Hold", "response"), ("Grip-Channel", "a")]).mode,
            Mode::Response
        );
        assert_eq!(
            err(&[("Grip-Hold", "poll"), ("Grip-Channel", "a")]).header,
            "Grip-Hold"
        );
        assert_eq!(err(&[("Grip-Hold", "stream")]).header, "Grip-Channel");
    }

    #[test]
    fn channels_from_several_headers_and_comma_lists_with_prev_ids() {
        let held = hold(&[
            ("Grip-Hold", "response"),
            ("Grip-Channel", "banana, cherry; prev-id=7"),
            ("Grip-Channel", "\"dx\"; prev-id=\"a,b\""),
        ]);
        let names: Vec<_> = held.channels.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["banana", "cherry", "dx"]);
        assert_eq!(held.channels[1].cursor(), Some(7));
        assert_eq!(held.channels[2].prev_id.as_deref(), Some("a,b"));
        assert_eq!(held.channels[2].cursor(), None);
        assert_eq!(held.channels[0].prev_id, None);
    }

    #[test]
    fn timeout_default_minimum_and_bad() {
        let t = |v: &str| {
            hold(&[
                ("Grip-Hold", "response"),
                ("Grip-Channel", "a"),
                ("Grip-Timeout", v),
            ])
            .timeout
        };
        assert_eq!(
            hold(&[("Grip-Hold", "response"), ("Grip-Channel", "a")]).timeout,
            DEFAULT_TIMEOUT
        );
        assert_eq!(t("2"), MIN_TIMEOUT);
        assert_eq!(t("30"), Duration::from_secs(30));
        for v in ["x", "-1", "1.5", "99999999"] {
            let e = err(&[
                ("Grip-Hold", "response"),
                ("Grip-Channel", "a"),
                ("Grip-Timeout", v),
            ]);
            assert_eq!(e.header, "Grip-Timeout", "{v}");
        }
    }

    #[test]
    fn keep_alive_formats_timeout_and_mode() {
        let k = |v: &str| {
            hold(&[
                ("Grip-Hold", "stream"),
                ("Grip-Channel", "a"),
                ("Grip-Keep-Alive", v),
            ])
            .keep_alive
            .unwrap()
        };
        let raw = k("ping");
        assert_eq!(
            (raw.data.as_slice(), raw.timeout, raw.interval),
            (&b"ping"[..], DEFAULT_KEEP_ALIVE, false)
        );
        let c = k("\\n; format=cstring; timeout=20; mode=interval");
        assert_eq!(
            (c.data.as_slice(), c.timeout, c.interval),
            (&b"\n"[..], Duration::from_secs(20), true)
        );
        assert_eq!(k("aGk=; format=base64").data, b"hi");
        for v in [
            "x; format=hex",
            "; timeout=5",
            "x; mode=often",
            "x; timeout=0",
            "!!; format=base64",
            "\\q; format=cstring",
        ] {
            let e = err(&[
                ("Grip-Hold", "stream"),
                ("Grip-Channel", "a"),
                ("Grip-Keep-Alive", v),
            ]);
            assert_eq!(e.header, "Grip-Keep-Alive", "{v}");
        }
    }

    #[test]
    fn status_and_links() {
        let i = from_headers(&h(&[
            ("Grip-Status", "404 Not Here"),
            (
                "Grip-Link",
                "</next?x=1>; rel=next, <http://a/gone>; rel=gone",
            ),
        ]))
        .unwrap();
        assert_eq!(i.status, Some(404));
        assert_eq!(i.next.as_deref(), Some("/next?x=1"));
        assert_eq!(i.gone.as_deref(), Some("http://a/gone"));
        assert_eq!(err(&[("Grip-Status", "abc")]).header, "Grip-Status");
        assert_eq!(err(&[("Grip-Link", "/x; rel=next")]).header, "Grip-Link");
        assert_eq!(err(&[("Grip-Link", "</x>; rel=prev")]).header, "Grip-Link");
    }

    #[test]
    fn a_channel_that_is_no_topic_is_a_bad_grip_channel() {
        assert_eq!(
            err(&[("Grip-Hold", "stream"), ("Grip-Channel", "a..b")]).header,
            "Grip-Channel"
        );
    }

    #[test]
    fn native_aliases() {
        let s = hold(&[("Plexus-Hold", "stream; topic=t.x; since=4")]);
        assert_eq!(
            (s.mode, s.channels[0].topic.as_str(), s.channels[0].cursor()),
            (Mode::Stream, "t.x", Some(4))
        );
        let l = hold(&[("Plexus-Hold", "long-poll; topic=t; since=0; timeout=9")]);
        assert_eq!(
            (l.mode, l.timeout),
            (Mode::Response, Duration::from_secs(9))
        );
        for v in [
            "long-poll; topic=t",
            "poll; topic=t",
            "stream",
            "stream; topic=a..b",
            "stream; topic=t; since=x",
        ] {
            assert_eq!(err(&[("Plexus-Hold", v)]).header, "Plexus-Hold", "{v}");
        }
    }

    #[test]
    fn the_json_body_form() {
        let j = from_json(
            br#"{"hold":{"mode":"stream","channels":[{"name":"a","prev-id":"3"}],"timeout":2,
                "keep-alive":{"content":"k","timeout":10}},
                "response":{"code":201,"headers":{"Content-Type":"text/plain"},"body":"hi\n"}}"#,
        )
        .unwrap();
        let held = j.instruct.hold.unwrap();
        assert_eq!(
            (held.mode, held.timeout, held.channels[0].cursor()),
            (Mode::Stream, MIN_TIMEOUT, Some(3))
        );
        assert_eq!(held.keep_alive.unwrap().data, b"k");
        assert_eq!((j.code, j.body.as_slice()), (201, &b"hi\n"[..]));
        assert_eq!(
            j.headers,
            [("Content-Type".to_owned(), "text/plain".to_owned())]
        );
        for body in [
            &b"{"[..],
            br#"{"response":{}}"#,
            br#"{"hold":{"channels":[]}}"#,
            br#"{"hold":{"mode":"x","channels":[{"name":"a"}]}}"#,
        ] {
            assert_eq!(
                from_json(body).err().map(|e| e.header),
                Some("application/grip-instruct")
            );
        }
    }
}
