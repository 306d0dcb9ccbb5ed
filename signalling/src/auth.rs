//! Credentials: application secrets, user tokens, subscriber sessions and
//! e-mail codes.
//!
//! * An application secret is 32 random bytes, base64url without padding.
//!   The server keeps only a SHA-256 digest of it (for HTTP Basic, see
//!   [`secret_digest`]) and the user-token key derived from it; the secret
//!   itself is shown once. Digests stored by earlier versions are argon2id
//!   PHC strings: they are still checked ([`StoredSecret::Argon2`]) and
//!   replaced by the digest at their next successful use.
//! * The user-token key is `HKDF-SHA256(ikm = secret as UTF-8, salt =
//!   "confer-user-token-v1", info = app id as lowercase hyphenated UUID)`,
//!   32 bytes, used as the HS256 key. An application holding its secret
//!   derives the same key and can mint tokens without calling the server.
//! * Subscriber session tokens and e-mail codes are random and stored only
//!   as SHA-256 digests.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hkdf::Hkdf;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ids::{AppId, Timestamp};

/// The HKDF salt of user-token keys (part of the documented contract).
pub const TOKEN_KEY_SALT: &[u8] = b"confer-user-token-v1";
/// The `aud` claim every user token carries.
pub const TOKEN_AUDIENCE: &str = "confer";

/// Why a credential was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    /// Not a token at all, or not signed by the key it claims.
    #[error("invalid token")]
    Invalid,
    /// Past its `exp`.
    #[error("token expired")]
    Expired,
    /// Issued in the future, or valid for longer than allowed.
    #[error("token lifetime not acceptable")]
    BadLifetime,
}

/// The 32-byte HS256 key for an application's user tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenKey(pub [u8; 32]);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// Derives the key from an application's secret (see the module docs).
    #[must_use]
    pub fn derive(app_id: AppId, secret: &str) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(TOKEN_KEY_SALT), secret.as_bytes());
        let mut okm = [0u8; 32];
        hk.expand(app_id.to_string().as_bytes(), &mut okm)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Self(okm)
    }

    /// Base64url form, as stored.
    #[must_use]
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Parses the stored form.
    #[must_use]
    pub fn decode(text: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }
}

/// The claims of a user token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserClaims {
    /// The application id (issuer).
    pub iss: String,
    /// Always `"confer"`.
    pub aud: String,
    /// The application's own id for the user (its external id).
    pub sub: String,
    /// Display name of the user.
    pub name: String,
    /// E-mail of the user, if the application shares it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
    /// Business objects (context strings) the user may see, vouched for by
    /// the application; grants access to their contextual conversations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ctx: Vec<String>,
}

/// A new random application secret.
#[must_use]
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A new random opaque token (subscriber sessions).
#[must_use]
pub fn generate_opaque_token() -> String {
    generate_secret()
}

/// A uniformly random 6-digit code, leading zeros allowed.
#[must_use]
pub fn generate_code() -> String {
    format!("{:06}", rand::rng().random_range(0..1_000_000u32))
}

/// SHA-256 of `parts` joined with NUL separators, hex-encoded.
#[must_use]
pub fn digest(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hasher.update([0u8]);
        }
        hasher.update(part.as_bytes());
    }
    hex(&hasher.finalize())
}

/// Compares two digests in constant time.
#[must_use]
pub fn digests_equal(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// The prefix of a stored application-secret digest.
pub const SECRET_DIGEST_PREFIX: &str = "sha256:";

/// The stored form of an application secret: `sha256:` and the hex SHA-256
/// of the secret's text.
///
/// A slow password hash (argon2) protects low-entropy passwords against
/// guessing from a stolen database. A secret is 256 random bits: nobody
/// can guess it from its digest, slow or fast, so the slowness would only
/// be a cost on every HTTP Basic request (17 ms and 19 MiB each), which a
/// stranger could make the server pay at will. A keyed HMAC would add
/// nothing either, unless its key were kept away from the database (the
/// server would need it on the same machine).
#[must_use]
pub fn secret_digest(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    format!("{SECRET_DIGEST_PREFIX}{}", hex(&digest))
}

/// What a stored application secret is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoredSecret<'a> {
    /// A [`secret_digest`].
    Digest(&'a str),
    /// An argon2 PHC string (`$argon2id$…`) written by an earlier version.
    Argon2(&'a str),
    /// Neither: matches no secret.
    Unknown,
}

impl<'a> StoredSecret<'a> {
    /// Tells the stored forms apart.
    #[must_use]
    pub fn parse(stored: &'a str) -> Self {
        if stored.starts_with(SECRET_DIGEST_PREFIX) {
            Self::Digest(stored)
        } else if stored.starts_with("$argon2") {
            Self::Argon2(stored)
        } else {
            Self::Unknown
        }
    }
}

/// Whether `secret` matches a stored [`secret_digest`], compared in
/// constant time.
#[must_use]
pub fn secret_matches_digest(secret: &str, stored: &str) -> bool {
    digests_equal(&secret_digest(secret), stored)
}

/// Whether `secret` matches an argon2 PHC string (as earlier versions
/// stored it). Slow on purpose: about 17 ms and 19 MiB with the default
/// parameters; run it on a blocking thread.
#[must_use]
pub fn verify_argon2_secret(secret: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|hash| {
            Argon2::default()
                .verify_password(secret.as_bytes(), &hash)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Signs `claims` with `key` (HS256).
///
/// # Errors
/// [`AuthError::Invalid`] if encoding fails (it does not for HS256).
pub fn mint_token(key: &TokenKey, claims: &UserClaims) -> Result<String, AuthError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(&key.0),
    )
    .map_err(|_| AuthError::Invalid)
}

/// Reads the `iss` claim without checking the signature, to find which
/// application's key to verify with. Nothing else may be trusted from it.
#[must_use]
pub fn unverified_issuer(token: &str) -> Option<AppId> {
    #[derive(Deserialize)]
    struct Iss {
        iss: String,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let iss: Iss = serde_json::from_slice(&bytes).ok()?;
    iss.iss.parse().ok()
}

/// Verifies a token's signature and audience with `key`, then its times
/// against `now` (the server's clock, not the OS clock, so tests control it).
///
/// # Errors
/// [`AuthError::Invalid`], [`AuthError::Expired`] or
/// [`AuthError::BadLifetime`].
pub fn verify_token(
    token: &str,
    key: &TokenKey,
    now: Timestamp,
    max_ttl_secs: u64,
    leeway_secs: u64,
) -> Result<UserClaims, AuthError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&[TOKEN_AUDIENCE]);
    validation.validate_exp = false;
    validation.set_required_spec_claims(&["iss", "aud", "sub", "exp"]);
    let data =
        jsonwebtoken::decode::<UserClaims>(token, &DecodingKey::from_secret(&key.0), &validation)
            .map_err(|_| AuthError::Invalid)?;
    let claims = data.claims;
    let now = now.as_secs();
    let leeway = i64::try_from(leeway_secs).unwrap_or(i64::MAX);
    if claims.exp <= now {
        return Err(AuthError::Expired);
    }
    let max_ttl = i64::try_from(max_ttl_secs).unwrap_or(i64::MAX);
    if claims.iat > now.saturating_add(leeway) || claims.exp.saturating_sub(claims.iat) > max_ttl {
        return Err(AuthError::BadLifetime);
    }
    Ok(claims)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(app: AppId, iat: i64, exp: i64) -> UserClaims {
        UserClaims {
            iss: app.to_string(),
            aud: TOKEN_AUDIENCE.to_owned(),
            sub: "u-1".to_owned(),
            name: "Анна".to_owned(),
            email: None,
            iat,
            exp,
            ctx: Vec::new(),
        }
    }

    #[test]
    fn secret_digest_matches_only_the_secret() {
        let secret = generate_secret();
        let stored = secret_digest(&secret);
        assert_eq!(StoredSecret::parse(&stored), StoredSecret::Digest(&stored));
        assert!(secret_matches_digest(&secret, &stored));
        assert!(!secret_matches_digest("wrong", &stored));
        assert!(!secret_matches_digest(&secret, "sha256:00"));
        assert_eq!(StoredSecret::parse("not a digest"), StoredSecret::Unknown);
    }

    #[test]
    fn argon2_strings_of_earlier_versions_still_verify() {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let secret = generate_secret();
        let salt = SaltString::encode_b64(&[7u8; 16]).unwrap();
        let phc = Argon2::default()
            .hash_password(secret.as_bytes(), &salt)
            .unwrap()
            .to_string();
        assert_eq!(StoredSecret::parse(&phc), StoredSecret::Argon2(&phc));
        assert!(verify_argon2_secret(&secret, &phc));
        assert!(!verify_argon2_secret("wrong", &phc));
        assert!(!verify_argon2_secret(&secret, "$argon2id$garbage"));
    }

    #[test]
    fn key_derivation_is_stable_and_app_bound() {
        let app = AppId::random();
        let other = AppId::random();
        assert_eq!(TokenKey::derive(app, "s"), TokenKey::derive(app, "s"));
        assert_ne!(TokenKey::derive(app, "s"), TokenKey::derive(other, "s"));
        let key = TokenKey::derive(app, "s");
        assert_eq!(TokenKey::decode(&key.encode()), Some(key));
    }

    #[test]
    fn tokens_verify_with_their_key_only() {
        let app = AppId::random();
        let key = TokenKey::derive(app, "secret");
        let now = Timestamp::from_secs(1_000_000);
        let token = mint_token(&key, &claims(app, 1_000_000, 1_003_600)).unwrap();
        assert_eq!(unverified_issuer(&token), Some(app));
        assert!(verify_token(&token, &key, now, 86_400, 60).is_ok());
        let other = TokenKey::derive(app, "other secret");
        assert_eq!(
            verify_token(&token, &other, now, 86_400, 60),
            Err(AuthError::Invalid)
        );
        let later = Timestamp::from_secs(1_003_600);
        assert_eq!(
            verify_token(&token, &key, later, 86_400, 60),
            Err(AuthError::Expired)
        );
        assert_eq!(
            verify_token(&token, &key, now, 600, 60),
            Err(AuthError::BadLifetime)
        );
    }

    #[test]
    fn codes_are_six_digits() {
        for _ in 0..100 {
            let code = generate_code();
            assert_eq!(code.len(), 6);
            assert!(code.bytes().all(|b| b.is_ascii_digit()));
        }
    }
}
