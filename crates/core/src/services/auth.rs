//! Registration, login, token refresh and logout.
//!
//! Access tokens are short-lived JWTs (HS256 with a `kid` chosen from a key
//! set, algorithm pinned, `iss`/`aud`/`exp`/`nbf` checked). Refresh tokens are
//! opaque random strings; only their SHA-256 is stored, and each use rotates
//! them, so a stolen refresh token that is replayed after the real client used
//! it revokes the whole session. Logout revokes the access token's `jti` until
//! the token's own expiry; the token itself is never stored.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{
    PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng,
};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use orderflow_domain::events::{Envelope, EventData};
use orderflow_domain::user::{self, Role};
use orderflow_domain::{Timestamp, UserId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::CoreError;
use crate::ports::revocations::RevocationList;
use crate::ports::store::{RefreshRotation, SessionRecord, Store, StoreError, UserRecord};

/// One HMAC signing key. The secret never prints.
#[derive(Clone, Serialize, Deserialize)]
pub struct SigningKey {
    pub kid: String,
    /// Base64 (standard alphabet) of at least 32 random bytes.
    pub secret_b64: String,
    pub created_at: Timestamp,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("secret_b64", &"[redacted]")
            .field("created_at", &self.created_at)
            .finish()
    }
}

impl SigningKey {
    /// A fresh key with 32 random bytes and a random `kid`.
    pub fn generate() -> Self {
        let mut secret = [0u8; 32];
        rand::fill(&mut secret);
        Self {
            kid: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
            secret_b64: base64::engine::general_purpose::STANDARD.encode(secret),
            created_at: chrono::Utc::now(),
        }
    }
}

/// The key set: tokens are signed with the newest key and verified with any
/// key still in the set, so a rotation does not log anyone out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeySet {
    pub keys: Vec<SigningKey>,
}

struct LoadedKey {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// Token lifetimes and the JWT audience/issuer.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub issuer: String,
    pub audience: String,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    /// Tolerated clock difference between machines when checking `exp`/`nbf`.
    pub clock_skew: Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            issuer: "orderflow".into(),
            audience: "orderflow-api".into(),
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            clock_skew: Duration::from_secs(30),
        }
    }
}

/// JWT claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: UserId,
    pub role: Role,
    /// The session (device) the token belongs to.
    pub sid: uuid::Uuid,
    pub jti: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
}

/// Who is calling, after the access token was verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: UserId,
    pub role: Role,
    pub session_id: uuid::Uuid,
    pub jti: String,
    pub expires_at: Timestamp,
}

impl Principal {
    pub fn require_admin(&self) -> Result<(), CoreError> {
        if self.role == Role::Admin {
            Ok(())
        } else {
            Err(CoreError::Forbidden("this needs the admin role".into()))
        }
    }
}

/// What login and refresh return.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

pub struct AuthService {
    store: Arc<dyn Store>,
    revocations: Arc<dyn RevocationList>,
    keys: Vec<LoadedKey>,
    settings: AuthSettings,
}

const WRONG_CREDENTIALS: &str = "e-mail or password is wrong";

impl AuthService {
    pub fn new(
        store: Arc<dyn Store>,
        revocations: Arc<dyn RevocationList>,
        key_set: &KeySet,
        settings: AuthSettings,
    ) -> Result<Self, CoreError> {
        let mut keys = Vec::with_capacity(key_set.keys.len());
        // Newest first: the first key signs.
        let mut sorted = key_set.keys.clone();
        sorted.sort_by_key(|key| std::cmp::Reverse(key.created_at));
        for key in sorted {
            let secret = base64::engine::general_purpose::STANDARD
                .decode(&key.secret_b64)
                .map_err(|e| {
                    CoreError::Internal(format!("signing key {} is not base64: {e}", key.kid))
                })?;
            if secret.len() < 32 {
                return Err(CoreError::Internal(format!(
                    "signing key {} is shorter than 32 bytes",
                    key.kid
                )));
            }
            keys.push(LoadedKey {
                kid: key.kid,
                encoding: EncodingKey::from_secret(&secret),
                decoding: DecodingKey::from_secret(&secret),
            });
        }
        if keys.is_empty() {
            return Err(CoreError::Internal("the signing key set is empty".into()));
        }
        Ok(Self {
            store,
            revocations,
            keys,
            settings,
        })
    }

    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    /// Creates a shopper; the `UserRegistered` event (welcome e-mail) commits with it.
    pub async fn register(
        &self,
        email: &str,
        password: &str,
        name: &str,
    ) -> Result<UserRecord, CoreError> {
        let email = user::normalize_email(email)?;
        let name = user::normalize_name(name)?;
        user::check_password(password)?;
        let password_hash = hash_password(password.to_owned()).await?;
        let record = UserRecord {
            id: uuid::Uuid::now_v7(),
            email,
            name,
            password_hash,
            role: Role::Shopper,
            created_at: chrono::Utc::now(),
        };
        let mut tx = self.store.begin().await?;
        match tx.insert_user(&record).await {
            Err(StoreError::Conflict(_)) => {
                return Err(CoreError::Conflict(
                    "an account with this e-mail already exists".into(),
                ));
            }
            other => other?,
        }
        tx.append(&[Envelope::new(
            EventData::UserRegistered {
                user_id: record.id,
                email: record.email.clone(),
                name: record.name.clone(),
            },
            None,
        )])
        .await?;
        tx.commit().await?;
        metrics::counter!("orderflow_users_registered_total").increment(1);
        Ok(record)
    }

    /// Creates or promotes the bootstrap admin (`ORDERFLOW_ADMIN_EMAIL`).
    pub async fn ensure_admin(&self, email: &str, password: &str) -> Result<UserRecord, CoreError> {
        let email = user::normalize_email(email)?;
        user::check_password(password)?;
        let password_hash = hash_password(password.to_owned()).await?;
        let existing = self.store.user_by_email(&email).await?;
        let record = UserRecord {
            id: existing
                .as_ref()
                .map(|u| u.id)
                .unwrap_or_else(uuid::Uuid::now_v7),
            name: existing
                .as_ref()
                .map(|u| u.name.clone())
                .unwrap_or_else(|| "Administrator".into()),
            email,
            password_hash,
            role: Role::Admin,
            created_at: existing
                .as_ref()
                .map(|u| u.created_at)
                .unwrap_or_else(chrono::Utc::now),
        };
        let mut tx = self.store.begin().await?;
        tx.upsert_admin(&record).await?;
        tx.commit().await?;
        Ok(record)
    }

    /// Checks the password and opens a session for `device`.
    ///
    /// An unknown e-mail is answered exactly like a wrong password, after
    /// verifying against a dummy hash, so the answer and its timing do not tell
    /// which e-mails have accounts.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        device: Option<&str>,
    ) -> Result<TokenPair, CoreError> {
        let user = match user::normalize_email(email) {
            Ok(email) => self.store.user_by_email(&email).await?,
            Err(_) => None,
        };
        let hash = user
            .as_ref()
            .map(|u| u.password_hash.clone())
            .unwrap_or_else(|| dummy_hash().to_owned());
        let matches = verify_password(password.to_owned(), hash).await?;
        let Some(user) = user.filter(|_| matches) else {
            metrics::counter!("orderflow_logins_total", "outcome" => "failed").increment(1);
            return Err(CoreError::Unauthorized(WRONG_CREDENTIALS.into()));
        };
        let now = chrono::Utc::now();
        let session = SessionRecord {
            id: uuid::Uuid::now_v7(),
            user_id: user.id,
            device: device
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .unwrap_or("unknown")
                .chars()
                .take(100)
                .collect(),
            created_at: now,
            last_used_at: now,
            expires_at: now + self.settings.refresh_token_ttl,
            revoked_at: None,
        };
        let refresh_token = new_refresh_token();
        self.store
            .create_session(&session, &sha256_hex(&refresh_token))
            .await?;
        metrics::counter!("orderflow_logins_total", "outcome" => "ok").increment(1);
        self.issue(&user, session.id, refresh_token)
    }

    /// Swaps a refresh token for a new pair; the presented one stops working.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, CoreError> {
        let now = chrono::Utc::now();
        let new_refresh = new_refresh_token();
        let rotation = self
            .store
            .rotate_refresh_token(
                &sha256_hex(refresh_token),
                &sha256_hex(&new_refresh),
                now,
                now + self.settings.refresh_token_ttl,
            )
            .await?;
        match rotation {
            RefreshRotation::Rotated { session } => {
                let user = self
                    .store
                    .user_by_id(session.user_id)
                    .await?
                    .ok_or_else(|| CoreError::Unauthorized("refresh token is not valid".into()))?;
                self.issue(&user, session.id, new_refresh)
            }
            RefreshRotation::ReuseDetected {
                session_id,
                user_id,
            } => {
                tracing::warn!(%session_id, %user_id, "refresh token reuse detected; session revoked");
                metrics::counter!("orderflow_refresh_reuse_detected_total").increment(1);
                Err(CoreError::Unauthorized(
                    "refresh token was already used; the session is revoked".into(),
                ))
            }
            RefreshRotation::Invalid => {
                Err(CoreError::Unauthorized("refresh token is not valid".into()))
            }
        }
    }

    /// Revokes the access token (by `jti`, until its expiry) and its session.
    pub async fn logout(&self, principal: &Principal) -> Result<(), CoreError> {
        self.revocations
            .revoke(&principal.jti, principal.expires_at)
            .await?;
        self.store
            .revoke_session(principal.session_id, chrono::Utc::now())
            .await?;
        Ok(())
    }

    /// Verifies a bearer token: signature with the key named by `kid`,
    /// algorithm pinned to HS256, `iss`, `aud`, `exp`, `nbf`, then revocation.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, CoreError> {
        let unauthorized = |why: &str| CoreError::Unauthorized(why.to_owned());
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| unauthorized("access token is malformed"))?;
        if header.alg != Algorithm::HS256 {
            return Err(unauthorized("access token uses an unsupported algorithm"));
        }
        let kid = header
            .kid
            .ok_or_else(|| unauthorized("access token has no key id"))?;
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or_else(|| unauthorized("access token was signed with an unknown key"))?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.settings.clock_skew.as_secs();
        let claims = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    unauthorized("access token has expired")
                }
                _ => unauthorized("access token is not valid"),
            })?
            .claims;
        metrics::counter!("orderflow_revocation_checks_total").increment(1);
        if self.revocations.is_revoked(&claims.jti).await? {
            return Err(unauthorized("access token was revoked"));
        }
        let expires_at = chrono::DateTime::from_timestamp(claims.exp, 0)
            .ok_or_else(|| unauthorized("access token is not valid"))?;
        Ok(Principal {
            user_id: claims.sub,
            role: claims.role,
            session_id: claims.sid,
            jti: claims.jti,
            expires_at,
        })
    }

    fn issue(
        &self,
        user: &UserRecord,
        session_id: uuid::Uuid,
        refresh_token: String,
    ) -> Result<TokenPair, CoreError> {
        let now = chrono::Utc::now().timestamp();
        let ttl = self.settings.access_token_ttl.as_secs();
        let claims = Claims {
            sub: user.id,
            role: user.role,
            sid: session_id,
            jti: uuid::Uuid::now_v7().to_string(),
            iat: now,
            nbf: now,
            exp: now + ttl as i64,
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
        };
        let signer = &self.keys[0];
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(signer.kid.clone());
        let access_token = jsonwebtoken::encode(&header, &claims, &signer.encoding)
            .map_err(|e| CoreError::Internal(format!("signing a token failed: {e}")))?;
        Ok(TokenPair {
            access_token,
            refresh_token,
            token_type: "Bearer".into(),
            expires_in: ttl,
        })
    }
}

/// argon2id with the OWASP-recommended parameters (the crate's defaults:
/// 19 MiB, 2 iterations, 1 lane), off the async runtime because it is meant to be slow.
pub async fn hash_password(password: String) -> Result<String, CoreError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| CoreError::Internal(format!("password hashing failed: {e}")))
    })
    .await
    .map_err(|e| CoreError::Internal(format!("password hashing task failed: {e}")))?
}

async fn verify_password(password: String, hash: String) -> Result<bool, CoreError> {
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&hash)
            .map_err(|e| CoreError::Internal(format!("stored hash is invalid: {e}")))?;
        Ok(Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await
    .map_err(|e| CoreError::Internal(format!("password check task failed: {e}")))?
}

/// A hash of a random password, verified against when the e-mail is unknown.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(uuid::Uuid::new_v4().to_string().as_bytes(), &salt)
            .expect("hashing a fixed-size password cannot fail")
            .to_string()
    })
}

fn new_refresh_token() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Hex SHA-256, used to store refresh tokens and hash idempotent requests.
pub fn sha256_hex(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn password_hashes_verify_only_the_right_password() {
        let hash = hash_password("correct horse battery".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(
            verify_password("correct horse battery".into(), hash.clone())
                .await
                .unwrap()
        );
        assert!(
            !verify_password("wrong horse battery".into(), hash)
                .await
                .unwrap()
        );
    }

    #[test]
    fn signing_keys_never_print_their_secret() {
        let key = SigningKey::generate();
        let printed = format!("{key:?}");
        assert!(!printed.contains(&key.secret_b64));
        assert!(printed.contains("redacted"));
    }
}
