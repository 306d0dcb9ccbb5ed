//! Cost of authenticating a request: verifying a user token (every
//! WebSocket connect and REST call of a user) and an application secret
//! (every HTTP Basic request): before, an argon2id check as earlier
//! versions stored secrets; now, a SHA-256 digest compared in constant time.

use confer_signalling::auth::{self, TokenKey, UserClaims};
use confer_signalling::ids::{AppId, Timestamp};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn user_token(c: &mut Criterion) {
    let app = AppId::random();
    let key = TokenKey::derive(app, "bench secret");
    let now = Timestamp::from_secs(1_800_000_000);
    let claims = UserClaims {
        iss: app.to_string(),
        aud: auth::TOKEN_AUDIENCE.to_owned(),
        sub: "employee-0042".to_owned(),
        name: "Анна Петрова".to_owned(),
        email: Some("anna@example.com".to_owned()),
        iat: now.as_secs(),
        exp: now.as_secs() + 3600,
        ctx: Vec::new(),
    };
    let token = auth::mint_token(&key, &claims).expect("HS256 encoding does not fail");

    c.bench_function("user_token/verify", |b| {
        b.iter(|| {
            let issuer = auth::unverified_issuer(black_box(&token));
            let claims = auth::verify_token(black_box(&token), &key, now, 86_400, 60);
            black_box((issuer, claims))
        });
    });
    c.bench_function("user_token/mint", |b| {
        b.iter(|| black_box(auth::mint_token(&key, black_box(&claims))));
    });
    c.bench_function("token_key/derive", |b| {
        b.iter(|| black_box(TokenKey::derive(app, black_box("bench secret"))));
    });
}

fn app_secret(c: &mut Criterion) {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let secret = auth::generate_secret();
    // The hash earlier versions stored: argon2id, default parameters.
    let salt = SaltString::encode_b64(b"confer bench salt").expect("16 bytes is a valid salt");
    let phc = argon2::Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .expect("argon2 with default parameters")
        .to_string();
    let digest = auth::secret_digest(&secret);
    let mut group = c.benchmark_group("app_secret");
    group.sample_size(10);
    group.bench_function("argon2_verify", |b| {
        b.iter(|| black_box(auth::verify_argon2_secret(black_box(&secret), &phc)));
    });
    group.sample_size(100);
    group.bench_function("digest_verify", |b| {
        b.iter(|| black_box(auth::secret_matches_digest(black_box(&secret), &digest)));
    });
    group.bench_function("digest_verify_wrong", |b| {
        let wrong = auth::generate_secret();
        b.iter(|| black_box(auth::secret_matches_digest(black_box(&wrong), &digest)));
    });
    group.finish();
}

criterion_group!(benches, user_token, app_secret);
criterion_main!(benches);
