//! Security: hostile tokens in both formats (JWT and PASETO), key rotation
//! and format switch-over, sessions per device, brute force, ownership and
//! roles, SQL metacharacters, rate-limit headers per algorithm, hostile
//! input (JSON depth and string length, slow clients).
//!
//! Tokens are crafted with `jsonwebtoken` / `pasetors` and the key file in
//! the test's own data dir, so each attack is signed exactly as an attacker
//! who knows (or guesses) part of the setup would sign it.

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use orderflow::keys;
use orderflow_core::services::auth::{KeyAlgorithm, KeySet, SigningKey, TokenFormat};
use pasetors::version4::PublicToken;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, assert_problem, spawn_app, spawn_app_with};

const PROTECTED: &str = "/api/v1/orders";
/// The registered time claims; a PASETO token carries them as RFC 3339.
const TIMES: [&str; 3] = ["iat", "nbf", "exp"];

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

fn key_set(app: &TestApp) -> KeySet {
    keys::load(&app.app.settings.data_dir).expect("key file")
}

fn format_of(app: &TestApp) -> TokenFormat {
    app.app.settings.token_format
}

/// A PASETO v4.public token's message (claims), signature and footer.
fn paseto_parts(token: &str) -> (Vec<u8>, Vec<u8>, String) {
    let mut parts = token.strip_prefix(PublicToken::HEADER).unwrap().split('.');
    let signed = b64().decode(parts.next().unwrap()).unwrap();
    let footer = parts.next().unwrap_or_default().to_owned();
    let (message, signature) = signed.split_at(signed.len() - 64);
    (message.to_vec(), signature.to_vec(), footer)
}

/// The claims of a real token, as JSON with times in epoch seconds
/// whatever the format (so tests can break any of them the same way).
fn claims_of(token: &str) -> Value {
    if token.starts_with(PublicToken::HEADER) {
        let mut claims: Value = serde_json::from_slice(&paseto_parts(token).0).unwrap();
        for name in TIMES {
            let time = chrono::DateTime::parse_from_rfc3339(claims[name].as_str().unwrap());
            claims[name] = time.unwrap().timestamp().into();
        }
        return claims;
    }
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&b64().decode(payload).unwrap()).unwrap()
}

/// `claims` (times in epoch seconds) signed with `key` in `format`, naming
/// `kid`: a JWT with `kid` in the header (the key's own algorithm; a PASETO
/// key's seed signs as EdDSA), or a PASETO v4.public token with `kid` in
/// the footer (any key's 32-byte secret used as the Ed25519 seed).
fn sign_with(key: &SigningKey, kid: &str, format: TokenFormat, claims: &Value) -> String {
    match format {
        TokenFormat::Jwt => {
            let (alg, encoding, _) = key.jwt_keys().unwrap();
            let mut header = Header::new(alg);
            header.kid = Some(kid.to_owned());
            jsonwebtoken::encode(&header, claims, &encoding).unwrap()
        }
        TokenFormat::Paseto => {
            let mut claims = claims.clone();
            for name in TIMES {
                if let Some(seconds) = claims[name].as_i64() {
                    let time = chrono::DateTime::from_timestamp(seconds, 0).unwrap();
                    claims[name] = time
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                        .into();
                }
            }
            let (secret, _) = key.paseto_keys().unwrap();
            let footer = json!({ "kid": kid }).to_string();
            PublicToken::sign(
                &secret,
                claims.to_string().as_bytes(),
                Some(footer.as_bytes()),
                None,
            )
            .unwrap()
        }
    }
}

/// Signs `claims` with the app's signing key, in the app's format.
fn sign(app: &TestApp, claims: &Value) -> String {
    let set = key_set(app);
    let key = set.signing_key(format_of(app)).unwrap();
    sign_with(key, &key.kid, format_of(app), claims)
}

async fn get_with(app: &TestApp, token: &str) -> reqwest::Response {
    app.get_as(token, PROTECTED).await
}

/// The kid of the key the app signs JWTs with.
fn jwt_signing_kid(app: &TestApp) -> String {
    key_set(app)
        .signing_key(TokenFormat::Jwt)
        .unwrap()
        .kid
        .clone()
}

/// [`keys::rotate`] in the app's data dir: a new `alg` key signing JWTs,
/// the old ones kept for 930 s; the new key and the kids dropped.
fn rotate_jwt_key(app: &TestApp, alg: KeyAlgorithm) -> (SigningKey, Vec<String>) {
    keys::rotate(
        &app.app.settings.data_dir,
        alg,
        std::time::Duration::from_secs(930),
        TokenFormat::Jwt,
    )
    .unwrap()
}

/// `DELETE /api/v1/me/sessions/{id}` as `token`.
async fn delete_session(app: &TestApp, id: &str, token: &str) -> reqwest::Response {
    app.http
        .delete(app.url(&format!("/api/v1/me/sessions/{id}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn assert_refused(app: &TestApp, token: &str, why: &str) -> Value {
    let body = assert_problem(get_with(app, token).await, 401, "unauthorized").await;
    eprintln!("{why}: {}", body["detail"]);
    body
}

async fn spawn_app_signing(format: TokenFormat) -> TestApp {
    spawn_app_with(&["--token-format", format.as_str()]).await
}

/// The attack matrix, for the format `app` signs: each case breaks one
/// thing, and each is a 401 with the same problem type.
async fn crafted_tokens_are_refused(format: TokenFormat) {
    let app = spawn_app_signing(format).await;
    let shopper = app.shopper("Hale").await;
    assert_eq!(
        shopper.token.starts_with(PublicToken::HEADER),
        format == TokenFormat::Paseto,
        "{format} tokens are issued: {}",
        shopper.token
    );
    let claims = claims_of(&shopper.token);
    let now = chrono::Utc::now().timestamp();

    // Control: the same claims signed with the real key pass, so every
    // refusal below is about the one thing each case breaks.
    assert_eq!(
        get_with(&app, &sign(&app, &claims)).await.status(),
        StatusCode::OK
    );

    let mut expired = claims.clone();
    expired["iat"] = (now - 3600).into();
    expired["nbf"] = (now - 3600).into();
    expired["exp"] = (now - 120).into(); // beyond the 30 s skew
    let body = assert_refused(&app, &sign(&app, &expired), "expired").await;
    assert!(body["detail"].as_str().unwrap().contains("expired"));

    let mut wrong_aud = claims.clone();
    wrong_aud["aud"] = "another-api".into();
    assert_refused(&app, &sign(&app, &wrong_aud), "wrong aud").await;

    let mut wrong_iss = claims.clone();
    wrong_iss["iss"] = "someone-else".into();
    assert_refused(&app, &sign(&app, &wrong_iss), "wrong iss").await;

    let mut not_yet = claims.clone();
    not_yet["nbf"] = (now + 3600).into();
    assert_refused(&app, &sign(&app, &not_yet), "nbf in the future").await;

    let mut from_the_future = claims.clone();
    from_the_future["iat"] = (now + 3600).into();
    assert_refused(&app, &sign(&app, &from_the_future), "iat in the future").await;

    // Tampered: the payload says admin, the signature is the shopper's.
    let mut admin = claims_of(&shopper.token);
    admin["role"] = "admin".into();
    let tampered = match format {
        TokenFormat::Jwt => {
            let parts: Vec<&str> = shopper.token.split('.').collect();
            let forged = b64().encode(admin.to_string());
            format!("{}.{}.{}", parts[0], forged, parts[2])
        }
        TokenFormat::Paseto => {
            let (message, signature, footer) = paseto_parts(&shopper.token);
            let mut real: Value = serde_json::from_slice(&message).unwrap();
            real["role"] = "admin".into();
            let signed = [real.to_string().into_bytes(), signature].concat();
            format!("{}{}.{footer}", PublicToken::HEADER, b64().encode(signed))
        }
    };
    assert_refused(&app, &tampered, "tampered").await;

    // Forged: signed with a key of the right kind that is not in the set,
    // under the real key's kid.
    let set = key_set(&app);
    let signer = set.signing_key(format).unwrap();
    let stranger = SigningKey::generate(signer.alg);
    let forged = sign_with(&stranger, &signer.kid, format, &claims);
    assert_refused(&app, &forged, "forged").await;

    // Unknown kid.
    let wrong_kid = sign_with(signer, "not-a-key", format, &claims);
    let body = assert_refused(&app, &wrong_kid, "unknown kid").await;
    assert!(body["detail"].as_str().unwrap().contains("unknown key"));

    // The other format, signed with the real key's secret under its kid:
    // a key signs its own format only.
    let other = match format {
        TokenFormat::Jwt => TokenFormat::Paseto,
        TokenFormat::Paseto => TokenFormat::Jwt,
    };
    let confused = sign_with(signer, &signer.kid, other, &claims);
    let body = assert_refused(&app, &confused, "the other format under this kid").await;
    assert!(body["detail"].as_str().unwrap().contains("algorithm"));

    // No kid at all.
    let no_kid = match format {
        TokenFormat::Jwt => {
            let (alg, encoding, _) = signer.jwt_keys().unwrap();
            jsonwebtoken::encode(&Header::new(alg), &claims, &encoding).unwrap()
        }
        TokenFormat::Paseto => {
            let (secret, _) = signer.paseto_keys().unwrap();
            let signed = sign(&app, &claims);
            let message = paseto_parts(&signed).0;
            PublicToken::sign(&secret, &message, None, None).unwrap()
        }
    };
    assert_refused(&app, &no_kid, "no kid").await;

    // Unsigned: JWT's `alg: none`, with and without the real kid; PASETO's
    // signature cut off.
    match format {
        TokenFormat::Jwt => {
            for header in [
                json!({"alg": "none", "typ": "JWT"}),
                json!({"alg": "none", "typ": "JWT", "kid": signer.kid}),
            ] {
                let encode = |v: &Value| b64().encode(v.to_string());
                let token = format!("{}.{}.", encode(&header), encode(&claims));
                assert_refused(&app, &token, "alg none").await;
            }
        }
        TokenFormat::Paseto => {
            let (message, _, footer) = paseto_parts(&shopper.token);
            let token = format!("{}{}.{footer}", PublicToken::HEADER, b64().encode(message));
            assert_refused(&app, &token, "no signature").await;
        }
    }

    // Revoked: logged out, the token is refused.
    assert_eq!(
        app.logout(&shopper.token).await.status(),
        StatusCode::NO_CONTENT
    );
    let body = assert_refused(&app, &shopper.token, "revoked").await;
    assert!(body["detail"].as_str().unwrap().contains("revoked"));
}

#[tokio::test]
async fn crafted_jwts_are_refused_and_a_well_signed_one_is_accepted() {
    crafted_tokens_are_refused(TokenFormat::Jwt).await;
}

#[tokio::test]
async fn crafted_pasetos_are_refused_and_a_well_signed_one_is_accepted() {
    crafted_tokens_are_refused(TokenFormat::Paseto).await;
}

/// Switching `ORDERFLOW_TOKEN_FORMAT` logs nobody out: the process adds a
/// key of the new format, signs with it, and the old format's tokens
/// verify until their key is pruned (after their expiry).
#[tokio::test]
async fn switching_the_token_format_logs_nobody_out_early() {
    let app = spawn_app_signing(TokenFormat::Jwt).await;
    let shopper = app.shopper("Sude").await;
    let jwt_kid = jwt_signing_kid(&app);

    let mut settings = app.app.settings.clone();
    settings.token_format = TokenFormat::Paseto;
    let switched = orderflow::App::build(settings.clone()).await.unwrap();
    let set = key_set(&app);
    let paseto_key = set
        .signing_key(TokenFormat::Paseto)
        .expect("a PASETO key was added");
    assert!(paseto_key.kid.starts_with("k4.pid."), "{}", paseto_key.kid);
    assert_eq!(switched.auth.signing_kid(), paseto_key.kid);
    // The JWT still verifies...
    let principal = switched.auth.authenticate(&shopper.token).await.unwrap();
    assert_eq!(principal.user_id, shopper.id);
    // ...new tokens are PASETOs named by the new key...
    let pair = switched
        .auth
        .login(&shopper.email, PASSWORD, Some("after the switch"), None)
        .await
        .unwrap();
    let (_, _, footer) = paseto_parts(&pair.access_token);
    let footer: Value = serde_json::from_slice(&b64().decode(footer).unwrap()).unwrap();
    assert_eq!(footer["kid"], paseto_key.kid.as_str());
    assert!(switched.auth.authenticate(&pair.access_token).await.is_ok());
    // ...and a later restart with the old format still takes them both.
    let back = orderflow::App::build(app.app.settings.clone())
        .await
        .unwrap();
    assert!(back.auth.authenticate(&pair.access_token).await.is_ok());
    assert!(back.auth.authenticate(&shopper.token).await.is_ok());

    // Once the JWTs have all expired, pruning (signing PASETO) drops the
    // JWT key, and JWTs stop verifying with the same problem as any bad token.
    assert_eq!(
        keys::prune(
            &settings.data_dir,
            std::time::Duration::ZERO,
            TokenFormat::Paseto
        )
        .unwrap(),
        vec![jwt_kid]
    );
    let pruned = orderflow::App::build(settings).await.unwrap();
    let error = pruned.auth.authenticate(&shopper.token).await.unwrap_err();
    assert!(error.to_string().contains("unknown key"), "{error}");
    assert!(pruned.auth.authenticate(&pair.access_token).await.is_ok());
}

#[tokio::test]
async fn algorithm_confusion_between_hmac_and_eddsa_is_refused() {
    let app = spawn_app().await;
    let shopper = app.shopper("Ilker").await;
    let claims = claims_of(&shopper.token);
    let set = key_set(&app);
    let ed_key = set.signing_key(TokenFormat::Jwt).unwrap();
    assert_eq!(
        ed_key.alg,
        KeyAlgorithm::EdDSA,
        "new data dirs sign with Ed25519"
    );

    // HS256 "signed" with the Ed25519 public key as the HMAC secret, under the
    // Ed25519 key's kid: the classic confusion attack (the public key is,
    // by design, not a secret).
    let (_, _, ed_decoding) = ed_key.jwt_keys().unwrap();
    let public = ed_decoding.as_bytes().to_vec();
    assert_eq!(public.len(), 32, "the raw Ed25519 public key");
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(ed_key.kid.clone());
    let confused =
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&public)).unwrap();
    let body = assert_refused(&app, &confused, "HS256 under an EdDSA kid").await;
    assert!(body["detail"].as_str().unwrap().contains("algorithm"));

    // The other way: an HMAC key in the set, a token claiming EdDSA under its kid.
    let (hs_key, _) = rotate_jwt_key(&app, KeyAlgorithm::HS256);
    let restarted = orderflow::App::build(app.app.settings.clone())
        .await
        .unwrap();
    let (_, ed_encoding, _) = ed_key.jwt_keys().unwrap();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(hs_key.kid.clone());
    let confused = jsonwebtoken::encode(&header, &claims, &ed_encoding).unwrap();
    let error = restarted.auth.authenticate(&confused).await.unwrap_err();
    assert!(error.to_string().contains("algorithm"), "{error}");
}

#[tokio::test]
async fn key_rotation_signs_with_the_new_key_and_old_tokens_keep_working() {
    let app = spawn_app().await;
    let shopper = app.shopper("Jale").await;
    let old_kid = jwt_signing_kid(&app);

    let (new_key, dropped) = rotate_jwt_key(&app, KeyAlgorithm::EdDSA);
    assert!(dropped.is_empty(), "the old key still has live tokens");
    // A reload (what SIGHUP does) picks the new key up in the running app...
    assert_eq!(
        keys::reload(&app.app.auth, &app.app.settings.data_dir).unwrap(),
        new_key.kid
    );
    let reloaded = app.tokens(&shopper.email, PASSWORD).await;
    let header = jsonwebtoken::decode_header(&reloaded.access_token).unwrap();
    assert_eq!(header.kid.as_deref(), Some(new_key.kid.as_str()));
    assert_eq!(
        get_with(&app, &shopper.token).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        get_with(&app, &reloaded.access_token).await.status(),
        StatusCode::OK
    );
    // ...and so does a restart.
    let restarted = orderflow::App::build(app.app.settings.clone())
        .await
        .unwrap();
    assert_eq!(restarted.auth.signing_kid(), new_key.kid);
    let principal = restarted.auth.authenticate(&shopper.token).await.unwrap();
    assert_eq!(
        principal.user_id, shopper.id,
        "a token of the old key verifies"
    );
    let pair = restarted
        .auth
        .login(&shopper.email, PASSWORD, Some("after rotation"), None)
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(&pair.access_token).unwrap();
    assert_eq!(header.kid.as_deref(), Some(new_key.kid.as_str()));
    assert_ne!(header.kid.as_deref(), Some(old_kid.as_str()));

    // Once the old key's tokens have all expired, pruning drops it and its
    // tokens stop verifying.
    assert_eq!(
        keys::prune(
            &app.app.settings.data_dir,
            std::time::Duration::ZERO,
            TokenFormat::Jwt
        )
        .unwrap(),
        vec![old_kid]
    );
    let pruned = orderflow::App::build(app.app.settings.clone())
        .await
        .unwrap();
    assert!(pruned.auth.authenticate(&shopper.token).await.is_err());
    assert!(pruned.auth.authenticate(&pair.access_token).await.is_ok());
    // The running app verified the old token above and holds it as
    // verified; a reload without its key refuses it all the same.
    keys::reload(&app.app.auth, &app.app.settings.data_dir).unwrap();
    assert_refused(&app, &shopper.token, "its key was pruned and reloaded").await;
    assert_eq!(
        get_with(&app, &reloaded.access_token).await.status(),
        StatusCode::OK
    );
}

/// A token's signature is verified once per key ring, but its times are
/// checked at every use: a token that expires after it was verified is
/// refused from then on.
#[tokio::test]
async fn a_token_verified_before_is_refused_once_it_expires() {
    let app = spawn_app().await;
    let shopper = app.shopper("Sibel").await;
    let mut claims = claims_of(&shopper.token);
    // Past `exp`, but within the 30 s clock skew for one more second.
    claims["exp"] = (chrono::Utc::now().timestamp() - 29).into();
    let token = sign(&app, &claims);
    for _ in 0..2 {
        assert_eq!(get_with(&app, &token).await.status(), StatusCode::OK);
    }
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    let body = assert_refused(&app, &token, "expired after it was verified").await;
    assert!(body["detail"].as_str().unwrap().contains("expired"));
}

async fn sessions(app: &TestApp, token: &str) -> Vec<Value> {
    app.get_json(token, "/api/v1/me/sessions").await["items"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn sessions_are_listed_per_device_and_one_can_be_logged_out() {
    let app = spawn_app().await;
    let shopper = app.shopper("Leyla").await; // device "test"
    let phone: orderflow_api::routes::auth::TokenPairView = app
        .login(&shopper.email, PASSWORD, Some("phone"))
        .await
        .json()
        .await
        .unwrap();

    let listed = sessions(&app, &phone.access_token).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    let phone_session = listed.iter().find(|s| s["device"] == "phone").unwrap();
    let laptop_session = listed.iter().find(|s| s["device"] == "test").unwrap();
    assert_eq!(phone_session["current"], true);
    assert_eq!(laptop_session["current"], false);
    for s in &listed {
        assert!(
            s["id"].is_string() && s["created_at"].is_string() && s["last_used_at"].is_string()
        );
    }

    // The phone logs the laptop out: its access token stops at once, its
    // refresh token dies, and the phone is unaffected.
    let laptop_id = laptop_session["id"].as_str().unwrap();
    let response = delete_session(&app, laptop_id, &phone.access_token).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_refused(&app, &shopper.token, "session deleted").await;
    app.assert_refresh_refused(&shopper.refresh_token).await;
    assert_eq!(
        get_with(&app, &phone.access_token).await.status(),
        StatusCode::OK
    );
    assert_eq!(sessions(&app, &phone.access_token).await.len(), 1);

    // Deleting it again, or another shopper's session, is 404.
    let again = delete_session(&app, laptop_id, &phone.access_token).await;
    assert_problem(again, 404, "not-found").await;
    let other = app.shopper("Mert").await;
    let phone_id = phone_session["id"].as_str().unwrap();
    let foreign = delete_session(&app, phone_id, &other.token).await;
    assert_problem(foreign, 404, "not-found").await;
    assert_eq!(
        get_with(&app, &phone.access_token).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn logout_all_ends_every_device_including_refreshed_tokens() {
    let app = spawn_app().await;
    let shopper = app.shopper("Nur").await;
    let second = app.tokens(&shopper.email, PASSWORD).await;
    // A refreshed pair is still the same session: it must die too.
    let refreshed = app.refreshed(&second.refresh_token).await;

    let response = app
        .http
        .post(app.url("/api/v1/auth/logout-all"))
        .bearer_auth(&shopper.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    for token in [
        &shopper.token,
        &second.access_token,
        &refreshed.access_token,
    ] {
        assert_refused(&app, token, "logout-all").await;
    }
    for refresh in [&shopper.refresh_token, &refreshed.refresh_token] {
        app.assert_refresh_refused(refresh).await;
    }
    // Logging in again works and starts a fresh session.
    let fresh = app.tokens(&shopper.email, PASSWORD).await;
    assert_eq!(sessions(&app, &fresh.access_token).await.len(), 1);
}

#[tokio::test]
async fn a_reused_refresh_token_revokes_the_family_and_its_access_tokens() {
    let app = spawn_app().await;
    let shopper = app.shopper("Oya").await;
    let rotated = app.refreshed(&shopper.refresh_token).await;
    // The thief replays the first refresh token.
    app.assert_refresh_refused(&shopper.refresh_token).await;
    // The whole family is dead: the rotated refresh token...
    app.assert_refresh_refused(&rotated.refresh_token).await;
    // ...and every access token of the family, at once.
    assert_refused(&app, &rotated.access_token, "refresh reuse").await;
    assert_refused(&app, &shopper.token, "refresh reuse").await;
    // ...and the session is gone from the list.
    let fresh = app.tokens(&shopper.email, PASSWORD).await;
    let listed = sessions(&app, &fresh.access_token).await;
    assert_eq!(listed.len(), 1, "only the new login: {listed:?}");
}

#[tokio::test]
async fn failed_logins_lock_the_account_out_with_a_growing_delay() {
    let app = spawn_app().await;
    let shopper = app.shopper("Pelin").await;
    for _ in 0..5 {
        assert_problem(
            app.login(&shopper.email, "wrong password!!", None).await,
            401,
            "unauthorized",
        )
        .await;
    }
    // The sixth failure locks the account for a second; the right password
    // is refused too while it is locked.
    app.login(&shopper.email, "wrong password!!", None).await;
    let locked = app.login(&shopper.email, PASSWORD, None).await;
    let retry: u64 = locked.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "retry-after {retry}");
    assert_problem(locked, 429, "rate-limited").await;

    // An unknown e-mail goes through exactly the same steps.
    for _ in 0..6 {
        assert_problem(
            app.login("ghost@example.com", "wrong password!!", None)
                .await,
            401,
            "unauthorized",
        )
        .await;
    }
    assert_problem(
        app.login("ghost@example.com", "wrong password!!", None)
            .await,
        429,
        "rate-limited",
    )
    .await;

    // After the lockout the right password works again and clears the count.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        app.login(&shopper.email, PASSWORD, None).await.status(),
        StatusCode::OK
    );
}

/// An unknown e-mail and a wrong password get the same answer, so the
/// answer does not tell which e-mails have accounts. That they take the same
/// time is not timed here (a noisy machine makes that flaky): the core's
/// `the_dummy_hash_costs_what_a_stored_one_does` checks that the unknown
/// e-mail's path verifies a hash of the same cost.
#[tokio::test]
async fn unknown_email_and_wrong_password_get_the_same_answer() {
    let app = spawn_app().await;
    let shopper = app.shopper("Rana").await;
    let answer = |email: String| {
        let app = &app;
        async move {
            let response = app.login(&email, "wrong password!!", None).await;
            let status = response.status();
            let content_type = response.headers()["content-type"].clone();
            let body: Value = response.json().await.unwrap();
            (status, content_type, body)
        }
    };
    let known = answer(shopper.email.clone()).await;
    let unknown = answer("nobody@example.com".into()).await;
    assert_eq!(known.0, StatusCode::UNAUTHORIZED);
    assert_eq!(known, unknown);
}

#[tokio::test]
async fn another_shoppers_order_is_404_and_admin_routes_are_403() {
    let app = spawn_app().await;
    let product = app.create_product("SEC-1", 1000, 5).await;
    let owner = app.shopper("Selin").await;
    let other = app.shopper("Tarik").await;
    let order = app.order_one(&owner, product.id, 1).await;
    assert_problem(
        app.get_order(&other.token, order.id).await,
        404,
        "not-found",
    )
    .await;
    let listed = app.orders(&other.token).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 0);

    for (method, path) in [
        ("GET", "/api/v1/admin/consumers"),
        ("GET", "/api/v1/admin/dlq"),
        ("POST", "/api/v1/products"),
    ] {
        let request = match method {
            "GET" => app.http.get(app.url(path)),
            _ => app.http.post(app.url(path)).json(
                &json!({"sku": "X-1", "name": "x", "price_cents": 1, "currency": "EUR", "stock": 1}),
            ),
        };
        let response = request.bearer_auth(&owner.token).send().await.unwrap();
        assert_problem(response, 403, "forbidden").await;
    }
}

#[tokio::test]
async fn sql_metacharacters_are_stored_and_returned_as_text() {
    let app = spawn_app().await;
    let evil = "Robert'); DROP TABLE users;-- \" OR '1'='1";
    // Name.
    let email = "o'brien+x--@example.com";
    let response = app.register(email, PASSWORD, evil).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["name"], evil);
    assert_eq!(user["email"], email);
    // E-mail local part and device.
    let pair: orderflow_api::routes::auth::TokenPairView = app
        .login(email, PASSWORD, Some("phone'; DELETE FROM sessions;--"))
        .await
        .json()
        .await
        .unwrap();
    let listed = sessions(&app, &pair.access_token).await;
    assert_eq!(listed[0]["device"], "phone'; DELETE FROM sessions;--");
    // An e-mail that is an injection attempt is just a wrong login.
    assert_problem(
        app.login("' OR 1=1 --@example.com", PASSWORD, None).await,
        401,
        "unauthorized",
    )
    .await;

    // Product sku and name. A sku has a strict alphabet: quotes and
    // semicolons are refused by validation, naming the field...
    let admin = app.admin_token().await;
    let refused = app
        .post_product(
            &admin,
            &json!({"sku": "X';DROP TABLE products;--", "name": "x", "price_cents": 500, "currency": "EUR", "stock": 3}),
        )
        .await;
    assert_eq!(
        assert_problem(refused, 422, "validation").await["field"],
        "sku"
    );
    // ...and the metacharacters it allows (a SQL comment) are just text.
    let sku = "SKU--DROP.TABLE_1";
    let response = app
        .post_product(
            &admin,
            &json!({"sku": sku, "name": evil, "price_cents": 500, "currency": "EUR", "stock": 3}),
        )
        .await;
    let status = response.status();
    let product: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{product}");
    assert_eq!(product["sku"], sku);
    assert_eq!(product["name"], evil);
    let id: uuid::Uuid = product["id"].as_str().unwrap().parse().unwrap();
    let fetched = app.product(id).await;
    assert_eq!(fetched.name, evil);

    // Idempotency-Key.
    let key = "k';DROP/**/TABLE/**/orders;--";
    let body = json!({"items": [{"product_id": id, "quantity": 1}]});
    let first = app.place_order(&pair.access_token, Some(key), &body).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let replay = app.place_order(&pair.access_token, Some(key), &body).await;
    assert_eq!(replay.status(), StatusCode::CREATED);
    let replay: Value = replay.json().await.unwrap();
    assert_eq!(first["id"], replay["id"], "the key was matched as text");

    // Everything is still there.
    assert_eq!(app.tokens(email, PASSWORD).await.token_type, "Bearer");
    assert_eq!(
        app.orders(&pair.access_token).await["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

// --- rate limits: one policy per algorithm, and their headers ---

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_fixed_window_on_login_answers_429_with_every_header() {
    let app = spawn_app_with(&["--rate-limits", "login=ip:fixed:3/1m"]).await;
    for remaining in (0..3).rev() {
        let response = app
            .login("nobody@example.com", "wrong password!!", None)
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(header(&response, "ratelimit-policy"), "\"login\";q=3;w=60");
        assert_eq!(
            header(&response, "ratelimit"),
            format!("\"login\";r={remaining};t=60")
        );
    }
    let refused = app
        .login("nobody@example.com", "wrong password!!", None)
        .await;
    assert_eq!(header(&refused, "ratelimit-policy"), "\"login\";q=3;w=60");
    assert_eq!(header(&refused, "ratelimit"), "\"login\";r=0;t=60");
    let retry: u64 = header(&refused, "retry-after").parse().unwrap();
    assert!((59..=60).contains(&retry), "retry-after {retry}");
    let body = assert_problem(refused, 429, "rate-limited").await;
    assert!(body["detail"].as_str().unwrap().contains("login"), "{body}");
    // Other groups are not limited by it.
    let products = app
        .http
        .get(app.url("/api/v1/products"))
        .send()
        .await
        .unwrap();
    assert_eq!(products.status(), StatusCode::OK);
    assert!(products.headers().get("ratelimit").is_none());
}

#[tokio::test]
async fn a_token_bucket_on_the_catalog_allows_a_burst_then_refills() {
    let app = spawn_app_with(&["--rate-limits", "catalog=ip:bucket:1/s,burst=3"]).await;
    let get = || app.http.get(app.url("/api/v1/products")).send();
    for remaining in (0..3).rev() {
        let response = get().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "ratelimit-policy"), "\"catalog\";q=3;w=3");
        assert!(
            header(&response, "ratelimit").starts_with(&format!("\"catalog\";r={remaining};t=")),
            "{}",
            header(&response, "ratelimit")
        );
    }
    let refused = get().await.unwrap();
    assert_eq!(header(&refused, "retry-after"), "1");
    assert_problem(refused, 429, "rate-limited").await;
    // One token per second comes back.
    tokio::time::sleep(std::time::Duration::from_millis(1050)).await;
    assert_eq!(get().await.unwrap().status(), StatusCode::OK);
    assert_eq!(get().await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_leaky_bucket_on_orders_queues_per_user_and_refuses_only_a_full_queue() {
    let app = spawn_app_with(&["--rate-limits", "orders=user:leaky:4/s,queue=2"]).await;
    let ann = app.shopper("Ann").await;
    let bob = app.shopper("Bob").await;
    let list = |token: String| {
        let app = &app;
        async move {
            let started = std::time::Instant::now();
            let response = app.get_as(&token, "/api/v1/orders").await;
            (response, started.elapsed())
        }
    };
    // Four at once: one passes, two wait their turn (250 ms apart), one is refused.
    let answers = futures::future::join_all((0..4).map(|_| list(ann.token.clone()))).await;
    let mut passed: Vec<_> = answers
        .iter()
        .filter(|(r, _)| r.status() == StatusCode::OK)
        .map(|(_, took)| *took)
        .collect();
    passed.sort();
    assert_eq!(passed.len(), 3, "{answers:?}");
    assert!(
        passed[2] >= std::time::Duration::from_millis(450),
        "the last queued one waited two places: {passed:?}"
    );
    let (refused, _) = answers
        .into_iter()
        .find(|(r, _)| r.status() == StatusCode::TOO_MANY_REQUESTS)
        .expect("one refused");
    assert_eq!(header(&refused, "ratelimit-policy"), "\"orders\";q=4;w=1");
    assert!(header(&refused, "ratelimit").starts_with("\"orders\";r=0;"));
    assert!(header(&refused, "retry-after").parse::<u64>().unwrap() >= 1);
    assert_problem(refused, 429, "rate-limited").await;

    // Per user: Bob's budget is his own, and he does not wait.
    let (response, took) = list(bob.token.clone()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(took < std::time::Duration::from_millis(200), "{took:?}");
    assert_eq!(header(&response, "ratelimit"), "\"orders\";r=2;t=1");
}

// --- hostile input ---

#[tokio::test]
async fn deep_json_and_long_strings_are_422_naming_the_limit() {
    let app = spawn_app().await;
    let deep = format!(
        r#"{{"email":{}1{},"password":"x","name":"y"}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    let response = app
        .http
        .post(app.url("/api/v1/auth/register"))
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    let body = assert_problem(response, 422, "input-limit").await;
    assert!(
        body["detail"].as_str().unwrap().contains("deeper than 32"),
        "{body}"
    );

    let long = app
        .register("long@example.com", PASSWORD, &"n".repeat(5000))
        .await;
    let body = assert_problem(long, 422, "input-limit").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("longer than 4096"),
        "{body}"
    );

    // Just under the limits, the ordinary rules answer (the name is too long
    // for a user, which validation names).
    let name = app
        .register("long@example.com", PASSWORD, &"n".repeat(4000))
        .await;
    assert_eq!(
        assert_problem(name, 422, "validation").await["field"],
        "name"
    );
}

/// Connects to the app and sends `bytes`, then reads what the server sends
/// until it closes the connection (`None` if that takes over 5 s), and how
/// long after the sending it closed.
async fn send_raw_until_closed(
    app: &TestApp,
    bytes: &[u8],
) -> (Option<String>, std::time::Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let limit = std::time::Duration::from_secs(5);
    let read = tokio::time::timeout(limit, stream.read_to_end(&mut answer)).await;
    let answer = read
        .ok()
        .map(|_| String::from_utf8_lossy(&answer).into_owned());
    (answer, started.elapsed())
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let app = spawn_app_with(&["--header-read-timeout-secs", "1"]).await;
    // Half a request: the request line and one header, never the blank line.
    let (answer, took) = send_raw_until_closed(&app, b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
    let answer = answer.expect("the server closed the connection");
    assert!(
        took >= std::time::Duration::from_millis(900) && took < std::time::Duration::from_secs(3),
        "closed after {took:?}"
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer:?}"
    );
    // The server is fine for everyone else.
    let health = app.get("/healthz").await;
    assert_eq!(health.status(), StatusCode::OK);
}

/// Each request head on a keep-alive connection has its own deadline (one
/// alarm per connection serves them all): heads sent in time are answered
/// well past the first head's deadline, and a later head left unfinished
/// is cut off a time-out after it began, not at an earlier head's deadline.
#[tokio::test]
async fn every_head_on_a_kept_alive_connection_has_its_own_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(&["--header-read-timeout-secs", "1"]).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let connected = std::time::Instant::now();
    for _ in 0..3 {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let answer = read_one_answer(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("{\"status\":\"ok\"}"), "{answer}");
        // Deliberate: two thirds of the time-out between heads, so the third
        // comes after the first head's deadline.
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    }
    assert!(connected.elapsed() > std::time::Duration::from_millis(2000));
    // Half a head, then nothing: cut off about one time-out later.
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut rest),
    )
    .await
    .expect("the server closes the connection")
    .unwrap();
    let took = started.elapsed();
    // The head began when the last answer was read, 0.7 s before.
    assert!(
        took >= std::time::Duration::from_millis(200) && took < std::time::Duration::from_secs(3),
        "closed after {took:?}"
    );
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || rest.starts_with("HTTP/1.1 408"),
        "{rest:?}"
    );
}

/// One answer read off a kept-alive connection: its head, and as many body
/// bytes as its `content-length` says.
async fn read_one_answer(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut read = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&read).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .expect("the answer says its length");
            if read.len() >= end + 4 + length {
                return text;
            }
        }
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        assert!(n > 0, "the server closed the connection mid-answer");
        read.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn a_body_that_never_arrives_is_answered_408_as_a_problem() {
    let app = spawn_app_with(&["--request-timeout-secs", "1"]).await;
    let (answer, took) = send_raw_until_closed(
        &app,
        b"POST /api/v1/auth/register HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\nconnection: close\r\n\r\n{\"email\":",
    )
    .await;
    let answer = answer.expect("answered and closed");
    assert!(took < std::time::Duration::from_secs(3));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains("request-timeout"), "{answer}");
}

/// The audit lines in a process's JSON log.
fn audit_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["target"] == orderflow_core::audit::TARGET)
        .collect()
}

/// The audit lines of `event`, their fields.
fn audit_events(lines: &[Value], event: &str) -> Vec<Value> {
    lines
        .iter()
        .filter(|line| line["fields"]["audit"] == event)
        .map(|line| line["fields"].clone())
        .collect()
}

/// The one audit line of `event`, its fields.
fn audit_line(lines: &[Value], event: &str) -> Value {
    let found = audit_events(lines, event);
    assert_eq!(found.len(), 1, "one {event} line in {lines:#?}");
    found[0].clone()
}

/// A real `orderflow serve` with JSON logs, and `orderflow keys rotate`:
/// each security event is one audit line naming who, and no line of the
/// log holds a password, a token or key material. (A process, not the
/// in-process app: its log is exactly what an operator gets.)
#[tokio::test]
async fn security_events_are_audit_lines_with_ids_and_no_secret() {
    use crate::support::process::{http_process, processes_environment, work_dir};
    let (work, logs) = work_dir();
    let env = processes_environment(
        &work.path().join("data"),
        &[("ORDERFLOW_LOG_FORMAT", "json")],
    );
    let (mut server, client) = http_process("audited", "serve", &env, &logs).await;
    let email = "umay@example.com";
    let (shopper_id, _) = client.registered_shopper(email).await;
    let login = |password: &'static str| {
        client.post(
            "/auth/login",
            json!({"email": email, "password": password, "device": "audit test"}),
            None,
        )
    };
    let pair: Value = login(PASSWORD).await.json().await.unwrap();
    let (access, refresh) = (
        pair["access_token"].as_str().unwrap().to_owned(),
        pair["refresh_token"].as_str().unwrap().to_owned(),
    );
    let admin = client
        .login(crate::support::ADMIN_EMAIL, crate::support::ADMIN_PASSWORD)
        .await;
    let mut secrets = vec![
        PASSWORD.to_owned(),
        crate::support::ADMIN_PASSWORD.to_owned(),
        access.clone(),
        refresh.clone(),
        admin.clone(),
    ];

    // Failed logins until the account locks (five are free).
    let wrong = "not-the-password-1";
    secrets.push(wrong.to_owned());
    for _ in 0..6 {
        assert_eq!(login(wrong).await.status(), StatusCode::UNAUTHORIZED);
    }
    // A refresh token used twice.
    let refresh_body = json!({ "refresh_token": refresh });
    let rotated: Value = client
        .post("/auth/refresh", refresh_body.clone(), None)
        .await
        .json()
        .await
        .unwrap();
    secrets.push(rotated["refresh_token"].as_str().unwrap().to_owned());
    secrets.push(rotated["access_token"].as_str().unwrap().to_owned());
    let reused = client.post("/auth/refresh", refresh_body, None).await;
    assert_eq!(reused.status(), StatusCode::UNAUTHORIZED);
    // An admin's change, and a shopper at an admin route.
    client.product(&admin, "AUDIT-1", 100, 1).await;
    let (other_id, other) = client.registered_shopper("vedat@example.com").await;
    secrets.push(other.clone());
    let product = json!({"sku": "AUDIT-2", "name": "Denied", "price_cents": 100, "currency": "EUR", "stock": 1});
    let denied = client.post("/products", product, Some(&other)).await;
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    // A logout.
    let logout = client.post("/auth/logout", json!({}), Some(&other)).await;
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    server.stop().await;
    // A key rotation, by the command an operator runs.
    let rotation = tokio::process::Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(["keys", "rotate"])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("RUST_LOG", "info")
        .output()
        .await
        .unwrap();
    assert!(rotation.status.success());
    let rotation_log = [rotation.stdout, rotation.stderr].concat();
    let rotation_log = String::from_utf8_lossy(&rotation_log).into_owned();

    let log = std::fs::read_to_string(&server.log).unwrap();
    let lines = audit_lines(&log);
    let locked = audit_line(&lines, "login.locked_out");
    assert_eq!(locked["user_id"], shopper_id.as_str());
    assert!(
        locked["locked"].as_str().unwrap().starts_with("account:"),
        "{locked}"
    );
    let reuse = audit_line(&lines, "refresh_token.reused");
    assert_eq!(reuse["user_id"], shopper_id.as_str());
    assert!(reuse["session_id"].as_str().is_some(), "{reuse}");
    let action = audit_line(&lines, "admin.action");
    assert_eq!(action["method"], "POST");
    assert_eq!(action["path"], "/api/v1/products");
    assert!(action["user_id"].as_str().is_some() && action["session_id"].as_str().is_some());
    assert_eq!(
        audit_line(&lines, "admin.denied")["user_id"],
        other_id.as_str()
    );
    let revoked = audit_line(&lines, "session.revoked");
    assert_eq!(revoked["user_id"], other_id.as_str());
    assert_eq!(revoked["reason"], "logout");
    // The data dir's first key, at the first start.
    assert_eq!(audit_events(&lines, "key.rotated").len(), 1);
    let rotated_key = audit_line(&audit_lines(&rotation_log), "key.rotated");
    let set = keys::load(&work.path().join("data")).unwrap();
    let signer = set.signing_key(TokenFormat::Jwt).unwrap();
    assert_eq!(rotated_key["kid"], signer.kid.as_str());

    // Never a secret: no password typed, no token, no key material; not
    // even the e-mail of the locked account (it is named by its hash).
    for key in &set.keys {
        secrets.push(key.secret_b64.clone());
    }
    for text in [&log, &rotation_log] {
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "a secret in the log");
        }
    }
    let audit_text = serde_json::to_string(&lines).unwrap();
    assert!(!audit_text.contains(email), "{audit_text}");
}
