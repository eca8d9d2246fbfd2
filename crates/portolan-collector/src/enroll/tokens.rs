//! Bootstrap tokens: how they are made, written and checked.
//!
//! A token is `<id>.<secret>`: 16 hex characters naming it (shown in listings and logs),
//! a dot, and 64 hex characters of secret (256 bits from the system's CSPRNG). Only the
//! SHA-256 of the secret is stored; a presented secret is compared to it in constant
//! time. 256 random bits need no slow hash: nobody can guess them, and a stolen hash
//! does not give the secret back.

use ring::rand::{SecureRandom, SystemRandom};

/// Bytes of a token's id.
const ID_BYTES: usize = 8;
/// Bytes of a token's secret.
const SECRET_BYTES: usize = 32;

/// Why a presented token is not even worth looking up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the enrollment token is malformed (expected `<16 hex>.<64 hex>` as `portolan token create` printed it; check for a truncated copy or stray quotes)"
)]
pub struct MalformedToken;

/// A new token: its id, and the whole token to hand out (id, dot, secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    /// The public id.
    pub id: String,
    /// `<id>.<secret>`: shown once.
    pub token: String,
    /// SHA-256 of the secret, hex: what is stored.
    pub secret_sha256: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Makes a new token from the system's CSPRNG.
pub fn generate() -> Result<NewToken, String> {
    let rng = SystemRandom::new();
    let mut id = [0u8; ID_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    rng.fill(&mut id)
        .and_then(|()| rng.fill(&mut secret))
        .map_err(|_| "the system's random number generator failed".to_owned())?;
    let (id, secret) = (hex(&id), hex(&secret));
    Ok(NewToken {
        token: format!("{id}.{secret}"),
        secret_sha256: secret_sha256(&secret),
        id,
    })
}

/// The SHA-256 of a secret, hex.
pub fn secret_sha256(secret: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref())
}

/// Splits a presented token into id and secret, checking its shape (nothing else).
pub fn parse(token: &str) -> Result<(&str, &str), MalformedToken> {
    let (id, secret) = token.trim().split_once('.').ok_or(MalformedToken)?;
    let is_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if is_hex(id, ID_BYTES * 2) && is_hex(secret, SECRET_BYTES * 2) {
        Ok((id, secret))
    } else {
        Err(MalformedToken)
    }
}

/// Whether `secret` is the one whose hash is `stored_sha256`, in constant time.
pub fn secret_matches(secret: &str, stored_sha256: &str) -> bool {
    let presented = secret_sha256(secret);
    presented.len() == stored_sha256.len()
        && presented
            .bytes()
            .zip(stored_sha256.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Checks a token's host_id patterns: `*` and the characters of a host_id.
pub fn check_patterns(patterns: &[String]) -> Result<(), String> {
    for p in patterns {
        let ok = !p.is_empty()
            && p.len() <= portolan_tls::identity::MAX_NAME_LEN
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'*'));
        if !ok {
            return Err(format!(
                "host pattern `{p}` is invalid: use the characters of a host_id (`A-Z a-z 0-9 . _ -`) and `*` for any run of them"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_parses_and_matches_only_its_hash() {
        let t = generate().expect("rng");
        let (id, secret) = parse(&t.token).expect("well-formed");
        assert_eq!(id, t.id);
        assert!(secret_matches(secret, &t.secret_sha256));
        let other = generate().expect("rng");
        assert_ne!(other.token, t.token);
        assert!(!secret_matches(secret, &other.secret_sha256));
        assert!(!t.secret_sha256.contains(secret));
        // Whitespace around a pasted token is forgiven.
        assert!(parse(&format!("  {}\n", t.token)).is_ok());
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            "",
            "nodot",
            "0123456789abcdef.",
            ".0123",
            "0123456789ABCDEF.0000000000000000000000000000000000000000000000000000000000000000",
            "0123456789abcdef.000000000000000000000000000000000000000000000000000000000000000",
            "0123456789abcdef.00000000000000000000000000000000000000000000000000000000000000zz",
        ] {
            assert_eq!(parse(bad), Err(MalformedToken), "{bad}");
        }
    }

    #[test]
    fn patterns_are_host_ids_with_stars() {
        assert!(check_patterns(&["web-*".into(), "*.prod".into(), "db-1".into()]).is_ok());
        for bad in ["", "web/1", "a b", "web-?"] {
            assert!(check_patterns(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
