//! Standard Webhooks signing: `whsec_` secrets (base64 of 24 to 64 random bytes) and the
//! `v1,` HMAC-SHA256 signature over `{webhook-id}.{webhook-timestamp}.{body}`.

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::wire::base64;

const PREFIX: &str = "whsec_";

/// A fresh secret: `whsec_` + base64 of 32 random bytes.
pub fn new_secret() -> Result<String, String> {
    let mut key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| "no randomness for a secret".to_string())?;
    Ok(format!("{PREFIX}{}", base64::encode(&key)))
}

/// Random lowercase hex of `bytes` bytes (webhook ids).
pub fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| "no randomness for an id".to_string())?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The key bytes of a secret, or why it is not one. Padding may be left out.
pub fn key_of(secret: &str) -> Result<Vec<u8>, String> {
    let Some(encoded) = secret.strip_prefix(PREFIX) else {
        return Err("secret: must start with whsec_".into());
    };
    let mut padded = encoded.to_string();
    while !padded.len().is_multiple_of(4) {
        padded.push('=');
    }
    let key = base64::decode(&padded).ok_or("secret: whsec_ must be followed by base64")?;
    if !(24..=64).contains(&key.len()) {
        return Err(format!(
            "secret: {} bytes; a secret is 24 to 64 random bytes",
            key.len()
        ));
    }
    Ok(key)
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("v1,{}", base64::encode(ctx.sign().as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_webhooks_example_signs_as_published() {
        // The example of the Standard Webhooks specification and its reference libraries.
        let key = key_of("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_or_default();
        let sig = signature(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_are_checked() {
        assert!(key_of("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(key_of("whsec_!!!!").is_err());
        assert!(key_of("whsec_AAAA").is_err(), "3 bytes is too short");
        let fresh = new_secret().unwrap_or_default();
        assert_eq!(key_of(&fresh).map(|k| k.len()), Ok(32));
    }
}
