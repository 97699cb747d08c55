//! Who may do what. Credentials (static tokens from the config file, or JWTs signed with
//! HS256, RS256 or ES256) become a [`Principal`] whose rules grant `publish`, `subscribe` and
//! `jobs` on topic patterns, and `admin`. Nothing here knows HTTP.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::model::{JobId, Topic, TopicPattern};

/// What a credential may do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    pub publish: Vec<TopicPattern>,
    pub subscribe: Vec<TopicPattern>,
    pub jobs: Vec<TopicPattern>,
    pub admin: bool,
}

/// The rules as written in the config file or a JWT's `plexus` claim.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesText {
    #[serde(default)]
    pub publish: Vec<String>,
    #[serde(default)]
    pub subscribe: Vec<String>,
    #[serde(default)]
    pub jobs: Vec<String>,
    #[serde(default)]
    pub admin: bool,
}

impl RulesText {
    /// Parses every pattern; an error names the list and the pattern.
    pub fn parse(&self) -> Result<Rules, RuleError> {
        let list = |list: &'static str, items: &[String]| {
            items
                .iter()
                .map(|p| {
                    p.parse::<TopicPattern>().map_err(|e| RuleError {
                        list,
                        why: e.to_string(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Rules {
            publish: list("publish", &self.publish)?,
            subscribe: list("subscribe", &self.subscribe)?,
            jobs: list("jobs", &self.jobs)?,
            admin: self.admin,
        })
    }
}

/// A rule list holds a pattern that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// `publish`, `subscribe` or `jobs`.
    pub list: &'static str,
    pub why: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.list, self.why)
    }
}

impl std::error::Error for RuleError {}

/// Why an [`Authenticator`] cannot be built from its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthSetupError {
    /// `auth.jwt_public_key` cannot be read.
    ReadPublicKey { path: String, why: String },
    /// `auth.jwt_public_key` holds neither an RSA nor an EC public key.
    NotAPublicKey,
    /// `auth.jwt_secret` is shorter than [`MIN_JWT_SECRET_BYTES`].
    ShortSecret,
}

impl fmt::Display for AuthSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthSetupError::ReadPublicKey { path, why } => {
                write!(f, "auth.jwt_public_key: cannot read {path}: {why}")
            }
            AuthSetupError::NotAPublicKey => {
                f.write_str("auth.jwt_public_key: not an RSA or EC public key in PEM")
            }
            AuthSetupError::ShortSecret => write!(
                f,
                "auth.jwt_secret: use at least {MIN_JWT_SECRET_BYTES} bytes (an HS256 secret \
                 shorter than the hash can be guessed from one token); e.g. openssl rand -hex 32"
            ),
        }
    }
}

impl std::error::Error for AuthSetupError {}

/// Whether a principal may read a topic, as far as its rules alone can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadAccess {
    Allowed,
    Denied,
    /// `_jobs.{id}`: allowed when the principal holds `jobs` on that job's queue, which only
    /// the job store knows (see [`Principal::can_use_queue`]).
    IfJobsOnQueueOf(JobId),
}

/// The hub's reserved topics that carry a queue's jobs: a job's events and a queue's
/// announcements, read with the `jobs` right on the queue.
enum JobTopic {
    Job(JobId),
    Queue(Topic),
}

/// `_jobs.{id}` and `_queues.{queue}`; `Err(())` for a `_jobs…` or `_queues…` name that
/// names no job or queue (such a topic has no queue, so no `jobs` right covers it); `Ok(None)`
/// for every other topic.
fn job_topic(topic: &Topic) -> Result<Option<JobTopic>, ()> {
    let name = topic.as_str();
    let (family, rest) = name.split_once('.').unwrap_or((name, ""));
    match family {
        "_jobs" => rest
            .parse()
            .map(|id| Some(JobTopic::Job(id)))
            .map_err(|_| ()),
        "_queues" => rest
            .parse()
            .map(|queue| Some(JobTopic::Queue(queue)))
            .map_err(|_| ()),
        _ => Ok(None),
    }
}

/// The caller of a request.
#[derive(Clone, Debug)]
pub enum Principal {
    /// `auth.mode = open`: everything is allowed.
    Open,
    Granted(Arc<Rules>),
}

impl Principal {
    fn allows(&self, list: impl Fn(&Rules) -> &[TopicPattern], topic: &Topic) -> bool {
        match self {
            Principal::Open => true,
            Principal::Granted(rules) => list(rules).iter().any(|p| p.matches(topic)),
        }
    }

    pub fn can_publish(&self, topic: &Topic) -> bool {
        self.allows(|r| &r.publish, topic)
    }

    /// The `subscribe` rules alone; reading also takes [`Principal::read_access`].
    pub fn can_subscribe(&self, topic: &Topic) -> bool {
        self.allows(|r| &r.subscribe, topic)
    }

    /// Reading a topic takes a `subscribe` rule that matches it (a wildcard never matches a
    /// reserved first token, see [`TopicPattern`]); reading a job's events (`_jobs.{id}`) or
    /// a queue's announcements (`_queues.{queue}`) also takes `jobs` on that queue, the right
    /// that `GET /v1/jobs/{id}` needs for the same data.
    pub fn read_access(&self, topic: &Topic) -> ReadAccess {
        if matches!(self, Principal::Open) {
            return ReadAccess::Allowed;
        }
        if !self.can_subscribe(topic) {
            return ReadAccess::Denied;
        }
        match job_topic(topic) {
            Ok(None) => ReadAccess::Allowed,
            Ok(Some(JobTopic::Queue(queue))) if self.can_use_queue(&queue) => ReadAccess::Allowed,
            Ok(Some(JobTopic::Job(id))) => ReadAccess::IfJobsOnQueueOf(id),
            Ok(Some(JobTopic::Queue(_))) | Err(()) => ReadAccess::Denied,
        }
    }

    pub fn can_use_queue(&self, queue: &Topic) -> bool {
        self.allows(|r| &r.jobs, queue)
    }

    pub fn is_admin(&self) -> bool {
        match self {
            Principal::Open => true,
            Principal::Granted(rules) => rules.admin,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    Open,
    Required,
}

/// A secret that never shows in logs or printed configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"[redacted]\"")
    }
}

#[derive(Debug)]
pub enum AuthError {
    Missing,
    Invalid(String),
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Missing => write!(
                f,
                "credentials required: send Authorization: Bearer TOKEN (or access_token=TOKEN in the query)"
            ),
            AuthError::Invalid(why) => write!(f, "bad credentials: {why}"),
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    /// Required and checked by the validation; read again for `jwt_max_lifetime`.
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    plexus: Option<RulesText>,
}

/// What a JWT must carry besides a good signature and a valid `exp` (`nbf` when present).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JwtChecks {
    /// `auth.jwt_audience`: when set, `aud` is required and must name it.
    pub audience: Option<String>,
    /// `auth.jwt_issuer`: when set, `iss` is required and must be it.
    pub issuer: Option<String>,
    /// `auth.jwt_max_lifetime`: when set, a token whose `exp - iat` (or, without `iat`,
    /// `exp - now`) is longer is refused, so that a leaked token cannot be one that lasts
    /// for years.
    pub max_lifetime: Option<Duration>,
}

struct Jwt {
    key: DecodingKey,
    validation: Validation,
}

/// The shortest `auth.jwt_secret`: HS256 keys shorter than its 256-bit output can be guessed
/// offline from one token (RFC 7518 §3.2 requires at least this).
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// Turns credentials into principals.
pub struct Authenticator {
    mode: AuthMode,
    tokens: HashMap<String, Arc<Rules>>,
    jwt: Vec<Jwt>,
    max_lifetime: Option<Duration>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .field("tokens", &self.tokens.len())
            .field("jwt_keys", &self.jwt.len())
            .finish()
    }
}

fn validation(alg: Algorithm, checks: &JwtChecks) -> Validation {
    let mut v = Validation::new(alg);
    v.validate_exp = true;
    v.validate_nbf = true;
    v.leeway = 5;
    let mut required = vec!["exp"];
    if let Some(aud) = &checks.audience {
        v.set_audience(&[aud]);
        required.push("aud");
    }
    if let Some(iss) = &checks.issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    v.set_required_spec_claims(&required);
    v
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Authenticator {
    pub fn open() -> Self {
        Authenticator {
            mode: AuthMode::Open,
            tokens: HashMap::new(),
            jwt: Vec::new(),
            max_lifetime: None,
        }
    }

    /// `tokens`: static token → rules; `jwt_secret` (HS256, at least
    /// [`MIN_JWT_SECRET_BYTES`]) and/or `jwt_public_key` (PEM, RSA for RS256 or EC P-256 for
    /// ES256); `checks`: what every JWT must carry besides.
    pub fn new(
        mode: AuthMode,
        tokens: Vec<(Secret, Rules)>,
        jwt_secret: Option<&Secret>,
        jwt_public_key_pem: Option<&[u8]>,
        checks: &JwtChecks,
    ) -> Result<Self, AuthSetupError> {
        let mut jwt = Vec::new();
        if let Some(secret) = jwt_secret {
            if secret.0.len() < MIN_JWT_SECRET_BYTES {
                return Err(AuthSetupError::ShortSecret);
            }
            jwt.push(Jwt {
                key: DecodingKey::from_secret(secret.0.as_bytes()),
                validation: validation(Algorithm::HS256, checks),
            });
        }
        if let Some(pem) = jwt_public_key_pem {
            if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
                jwt.push(Jwt {
                    key,
                    validation: validation(Algorithm::RS256, checks),
                });
            } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
                jwt.push(Jwt {
                    key,
                    validation: validation(Algorithm::ES256, checks),
                });
            } else {
                return Err(AuthSetupError::NotAPublicKey);
            }
        }
        Ok(Authenticator {
            mode,
            tokens: tokens
                .into_iter()
                .map(|(token, rules)| (token.0, Arc::new(rules)))
                .collect(),
            jwt,
            max_lifetime: checks.max_lifetime,
        })
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    pub fn authenticate(&self, credential: Option<&str>) -> Result<Principal, AuthError> {
        if self.mode == AuthMode::Open {
            return Ok(Principal::Open);
        }
        let token = credential
            .filter(|c| !c.is_empty())
            .ok_or(AuthError::Missing)?;
        if let Some(rules) = self.tokens.get(token) {
            return Ok(Principal::Granted(rules.clone()));
        }
        if self.jwt.is_empty() || token.matches('.').count() != 2 {
            return Err(AuthError::Invalid("unknown token".into()));
        }
        let mut last = String::from("no key accepts it");
        for jwt in &self.jwt {
            match jsonwebtoken::decode::<Claims>(token, &jwt.key, &jwt.validation) {
                Ok(data) => {
                    if let Some(max) = self.max_lifetime {
                        let from = data.claims.iat.unwrap_or_else(unix_now);
                        let lifetime = data.claims.exp.saturating_sub(from);
                        if lifetime > max.as_secs() {
                            return Err(AuthError::Invalid(format!(
                                "the token lives {lifetime} s (exp - {}), more than auth.jwt_max_lifetime ({} s)",
                                if data.claims.iat.is_some() {
                                    "iat"
                                } else {
                                    "now"
                                },
                                max.as_secs()
                            )));
                        }
                    }
                    let rules = data
                        .claims
                        .plexus
                        .unwrap_or_default()
                        .parse()
                        .map_err(|e| {
                            AuthError::Invalid(format!("the token's plexus claim: {e}"))
                        })?;
                    return Ok(Principal::Granted(Arc::new(rules)));
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(AuthError::Invalid(last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

    fn rules(publish: &[&str]) -> Rules {
        RulesText {
            publish: publish.iter().map(|s| s.to_string()).collect(),
            ..RulesText::default()
        }
        .parse()
        .unwrap()
    }

    const SECRET: &str = "a-test-secret-of-at-least-32-bytes";

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn tokens_and_jwts() {
        let secret = Secret(SECRET.into());
        let auth = Authenticator::new(
            AuthMode::Required,
            vec![(Secret("tok".into()), rules(&["orders.>"]))],
            Some(&secret),
            None,
            &JwtChecks::default(),
        )
        .unwrap();
        assert!(matches!(auth.authenticate(None), Err(AuthError::Missing)));
        assert!(matches!(
            auth.authenticate(Some("nope")),
            Err(AuthError::Invalid(_))
        ));
        let p = auth.authenticate(Some("tok")).unwrap();
        assert!(p.can_publish(&"orders.eu".parse().unwrap()));
        assert!(!p.can_publish(&"alerts".parse().unwrap()));
        assert!(!p.can_subscribe(&"orders.eu".parse().unwrap()));

        let claims = serde_json::json!({"sub":"alice","exp":now()+60,"plexus":{"subscribe":[">"]}});
        let good = encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let p = auth.authenticate(Some(&good)).unwrap();
        assert!(p.can_subscribe(&"x.y".parse().unwrap()) && !p.is_admin());

        let expired = serde_json::json!({"exp":now()-3600,"plexus":{"subscribe":[">"]}});
        let expired = encode(
            &Header::default(),
            &expired,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert!(auth.authenticate(Some(&expired)).is_err());
        let not_yet = serde_json::json!({"exp":now()+7200,"nbf":now()+3600});
        let not_yet = encode(
            &Header::default(),
            &not_yet,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert!(auth.authenticate(Some(&not_yet)).is_err());
        let forged = encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(b"other"),
        )
        .unwrap();
        assert!(auth.authenticate(Some(&forged)).is_err());
    }

    #[test]
    fn reserved_topics_take_a_named_pattern_and_jobs_on_the_queue() {
        let principal = |subscribe: &[&str], jobs: &[&str]| {
            let text = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
            Principal::Granted(Arc::new(
                RulesText {
                    subscribe: text(subscribe),
                    jobs: text(jobs),
                    ..RulesText::default()
                }
                .parse()
                .unwrap(),
            ))
        };
        let t = |s: &str| s.parse::<Topic>().unwrap();
        let id = "0123456789abcdef0123456789abcdef";
        let job = t(&format!("_jobs.{id}"));
        let everything = principal(&[">"], &[">"]);
        assert_eq!(everything.read_access(&t("a.b")), ReadAccess::Allowed);
        for reserved in [&job, &t("_queues.thumbs"), &t("_x")] {
            assert_eq!(everything.read_access(reserved), ReadAccess::Denied);
        }
        let follower = principal(&["_jobs.>", "_queues.>"], &["thumbs"]);
        assert_eq!(
            follower.read_access(&job),
            ReadAccess::IfJobsOnQueueOf(id.parse().unwrap())
        );
        assert_eq!(
            follower.read_access(&t("_queues.thumbs")),
            ReadAccess::Allowed
        );
        for denied in [
            "_queues.other",
            "_jobs.nope",
            "_jobs",
            "_queues",
            "_jobs.x.y",
        ] {
            assert_eq!(
                follower.read_access(&t(denied)),
                ReadAccess::Denied,
                "{denied}"
            );
        }
        // `jobs` alone does not read the topics: the subscribe rule must name them.
        let worker = principal(&[], &["thumbs"]);
        assert_eq!(worker.read_access(&t("_queues.thumbs")), ReadAccess::Denied);
        assert_eq!(worker.read_access(&job), ReadAccess::Denied);
        assert_eq!(
            Principal::Open.read_access(&t("_queues.thumbs")),
            ReadAccess::Allowed
        );
    }

    fn hs256(claims: serde_json::Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn short_secrets_are_refused() {
        let short = Secret("x".repeat(MIN_JWT_SECRET_BYTES - 1));
        let e = Authenticator::new(
            AuthMode::Required,
            vec![],
            Some(&short),
            None,
            &JwtChecks::default(),
        )
        .unwrap_err();
        assert_eq!(e, AuthSetupError::ShortSecret);
        assert!(e.to_string().starts_with("auth.jwt_secret:"), "{e}");
    }

    #[test]
    fn audience_issuer_and_max_lifetime() {
        let checks = JwtChecks {
            audience: Some("plexus".into()),
            issuer: Some("https://issuer.example".into()),
            max_lifetime: Some(std::time::Duration::from_secs(3600)),
        };
        let auth = Authenticator::new(
            AuthMode::Required,
            vec![],
            Some(&Secret(SECRET.into())),
            None,
            &checks,
        )
        .unwrap();
        let t = now();
        let good = serde_json::json!({"aud":"plexus","iss":"https://issuer.example","exp":t+600});
        assert!(auth.authenticate(Some(&hs256(good.clone()))).is_ok());
        let mut with_iat = good.clone();
        with_iat["iat"] = (t - 10).into();
        with_iat["exp"] = (t - 10 + 3600).into();
        assert!(auth.authenticate(Some(&hs256(with_iat))).is_ok());
        for (field, value) in [
            ("aud", serde_json::json!("other")),
            ("aud", serde_json::Value::Null),
            ("iss", serde_json::json!("https://evil.example")),
            ("iss", serde_json::Value::Null),
            ("exp", serde_json::json!(t + 3700)),
            ("iat", serde_json::json!(t - 4000)),
        ] {
            let mut c = good.clone();
            if value.is_null() {
                c.as_object_mut().unwrap().remove(field);
            } else {
                c[field] = value.clone();
            }
            let got = auth.authenticate(Some(&hs256(c.clone())));
            assert!(got.is_err(), "{field} = {value}: {c} must be refused");
        }
    }

    #[test]
    fn open_mode_allows_everything_and_secrets_are_redacted() {
        let p = Authenticator::open().authenticate(None).unwrap();
        assert!(p.is_admin() && p.can_publish(&"a".parse().unwrap()));
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "\"[redacted]\"");
    }
}
