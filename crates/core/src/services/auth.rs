//! Registration, login, token refresh and logout.
//!
//! Access tokens are short-lived JWTs signed with the newest key of a key set
//! (EdDSA or HS256, named by `kid`; the algorithm is pinned per key),
//! `iss`/`aud`/`exp`/`nbf`/`iat` checked with a small clock skew. Refresh tokens are
//! opaque random strings; only their SHA-256 is stored, and each use rotates
//! them, so a stolen refresh token that is replayed after the real client used
//! it revokes the whole session. Logout revokes the access token's `jti` until
//! the token's own expiry, and the session's id (`sid:<id>`), which every
//! access token carries, so a device logged out from elsewhere stops at once;
//! tokens themselves are never stored. Failed logins are throttled per
//! account and per client IP with a growing lockout.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{
    PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng,
};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use orderflow_domain::events::{Envelope, EventData};
use orderflow_domain::rules::TextRule;
use orderflow_domain::user::{self, Role};
use orderflow_domain::{Timestamp, UserId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::CoreError;
use crate::ports::revocations::RevocationList;
use crate::ports::store::{RefreshRotation, SessionRecord, Store, StoreError, UserRecord};

/// The signature algorithm of a key. Pinned per key: a token is verified only
/// with the algorithm of the key its `kid` names, whatever its header claims,
/// so an attacker cannot pick `none`, or sign with an EdDSA public key used
/// as an HMAC secret (the classic HS/RS confusion).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum KeyAlgorithm {
    /// HMAC-SHA256 with a 32-byte shared secret. Key files written before
    /// algorithms were recorded hold HMAC keys, hence the default.
    #[default]
    HS256,
    /// Ed25519 signatures: only the holder of the private key can sign.
    EdDSA,
}

impl KeyAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::HS256 => "HS256",
            KeyAlgorithm::EdDSA => "EdDSA",
        }
    }

    fn jwt(self) -> Algorithm {
        match self {
            KeyAlgorithm::HS256 => Algorithm::HS256,
            KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        }
    }
}

impl std::str::FromStr for KeyAlgorithm {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.to_ascii_lowercase().as_str() {
            "hs256" => Ok(KeyAlgorithm::HS256),
            "eddsa" | "ed25519" => Ok(KeyAlgorithm::EdDSA),
            other => Err(format!("unknown key algorithm {other:?} (eddsa or hs256)")),
        }
    }
}

/// One signing key of the key set. The secret never prints.
#[derive(Clone, Serialize, Deserialize)]
pub struct SigningKey {
    pub kid: String,
    #[serde(default)]
    pub alg: KeyAlgorithm,
    /// Base64 (standard alphabet): the HMAC secret (at least 32 random
    /// bytes) or the Ed25519 private key seed (32 bytes).
    pub secret_b64: String,
    pub created_at: Timestamp,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("secret_b64", &"[redacted]")
            .field("created_at", &self.created_at)
            .finish()
    }
}

impl SigningKey {
    /// A fresh key with 32 random bytes and a random `kid`.
    pub fn generate(alg: KeyAlgorithm) -> Self {
        let mut secret = [0u8; 32];
        rand::fill(&mut secret);
        Self {
            kid: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
            alg,
            secret_b64: base64::engine::general_purpose::STANDARD.encode(secret),
            created_at: chrono::Utc::now(),
        }
    }

    /// The JWT algorithm and the keys to sign and verify with (tools and
    /// tests that craft tokens need them; the service uses [`AuthService::new`]).
    pub fn jwt_keys(&self) -> Result<(Algorithm, EncodingKey, DecodingKey), CoreError> {
        let key = self.load()?;
        Ok((key.alg, key.encoding, key.decoding))
    }

    /// The key as the service uses it.
    fn load(&self) -> Result<LoadedKey, CoreError> {
        let secret = base64::engine::general_purpose::STANDARD
            .decode(&self.secret_b64)
            .map_err(|e| {
                CoreError::Internal(format!("signing key {} is not base64: {e}", self.kid))
            })?;
        let (encoding, decoding) = match self.alg {
            KeyAlgorithm::HS256 => {
                if secret.len() < 32 {
                    return Err(CoreError::Internal(format!(
                        "signing key {} is shorter than 32 bytes",
                        self.kid
                    )));
                }
                (
                    EncodingKey::from_secret(&secret),
                    DecodingKey::from_secret(&secret),
                )
            }
            KeyAlgorithm::EdDSA => {
                let seed: [u8; 32] = secret.as_slice().try_into().map_err(|_| {
                    CoreError::Internal(format!(
                        "signing key {} is not a 32-byte Ed25519 seed",
                        self.kid
                    ))
                })?;
                let private = ed25519_dalek::SigningKey::from_bytes(&seed);
                let public = private.verifying_key().to_bytes();
                (
                    EncodingKey::from_ed_der(&ed25519_pkcs8(&seed)),
                    DecodingKey::from_ed_der(&public),
                )
            }
        };
        Ok(LoadedKey {
            kid: self.kid.clone(),
            alg: self.alg.jwt(),
            encoding,
            decoding,
        })
    }
}

/// The PKCS#8 v1 document of an Ed25519 private key (RFC 8410): a fixed
/// 16-byte prefix followed by the 32-byte seed, which is what
/// `jsonwebtoken` signs with.
fn ed25519_pkcs8(seed: &[u8; 32]) -> Vec<u8> {
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(seed);
    der
}

/// The key set: tokens are signed with the newest key and verified with any
/// key still in the set, so a rotation does not log anyone out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeySet {
    pub keys: Vec<SigningKey>,
}

impl KeySet {
    /// The key that signs: the newest.
    pub fn signing_key(&self) -> Option<&SigningKey> {
        self.keys.iter().max_by_key(|key| key.created_at)
    }

    /// Adds a fresh key, which signs from now on, and drops the keys that can
    /// no longer have live tokens (see [`KeySet::prune`]). Returns the new key.
    pub fn rotate(&mut self, alg: KeyAlgorithm, keep_for: Duration) -> SigningKey {
        let key = SigningKey::generate(alg);
        self.keys.push(key.clone());
        self.prune(keep_for, key.created_at);
        key
    }

    /// Drops every key that is not the newest and was superseded more than
    /// `keep_for` ago (the access-token lifetime plus clock skew): every token
    /// it signed has expired. Returns the dropped kids.
    pub fn prune(&mut self, keep_for: Duration, now: Timestamp) -> Vec<String> {
        let mut by_age: Vec<Timestamp> = self.keys.iter().map(|k| k.created_at).collect();
        by_age.sort();
        let newest = by_age.last().copied();
        let keep_for = chrono::Duration::from_std(keep_for).unwrap_or(chrono::Duration::MAX);
        // A key stops signing when the next one is created; its tokens live
        // at most `keep_for` after that.
        let superseded_at = |created: Timestamp| by_age.iter().copied().find(|t| *t > created);
        let mut dropped = Vec::new();
        self.keys.retain(|key| {
            let keep = Some(key.created_at) == newest
                || superseded_at(key.created_at)
                    .is_none_or(|at| at.checked_add_signed(keep_for).is_none_or(|end| end > now));
            if !keep {
                dropped.push(key.kid.clone());
            }
            keep
        });
        dropped
    }
}

struct LoadedKey {
    kid: String,
    alg: Algorithm,
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
    /// How failed logins slow down password guessing.
    pub login_throttle: ThrottleSettings,
}

impl AuthSettings {
    /// How long a key that stopped signing must keep verifying: until the
    /// last token it signed has expired, clock skew included.
    pub fn key_retention(&self) -> Duration {
        self.access_token_ttl + self.clock_skew
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            issuer: "orderflow".into(),
            audience: "orderflow-api".into(),
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            clock_skew: Duration::from_secs(30),
            login_throttle: ThrottleSettings::default(),
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Newest first: the first key signs. Swapped whole by
    /// [`AuthService::reload_keys`]; a request clones the `Arc`, never waits.
    keys: std::sync::RwLock<Arc<Vec<LoadedKey>>>,
    settings: AuthSettings,
    throttle: LoginThrottle,
    /// The users whose tokens or sessions were just revoked here, for
    /// whoever holds connections of theirs open ([`Self::revoked_users`]).
    revoked: tokio::sync::broadcast::Sender<UserId>,
}

/// Revocations waiting for a slow listener; past this it is told it lagged.
const REVOKED_QUEUE: usize = 1024;

const WRONG_CREDENTIALS: &str = "e-mail or password is wrong";

/// The revocation-list entry that kills every access token of a session.
/// Tokens carry their session id (`sid`), so checking this id next to the
/// `jti` logs a device out at once without a database query per request.
fn session_revocation_id(session_id: uuid::Uuid) -> String {
    format!("sid:{session_id}")
}

/// Loads a key set, newest (the signer) first.
fn load_keys(key_set: &KeySet) -> Result<Vec<LoadedKey>, CoreError> {
    let mut sorted = key_set.keys.clone();
    sorted.sort_by_key(|key| std::cmp::Reverse(key.created_at));
    let keys = sorted
        .iter()
        .map(SigningKey::load)
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Err(CoreError::Internal("the signing key set is empty".into()));
    }
    Ok(keys)
}

impl AuthService {
    pub fn new(
        store: Arc<dyn Store>,
        revocations: Arc<dyn RevocationList>,
        key_set: &KeySet,
        settings: AuthSettings,
    ) -> Result<Self, CoreError> {
        Ok(Self {
            store,
            revocations,
            keys: std::sync::RwLock::new(Arc::new(load_keys(key_set)?)),
            throttle: LoginThrottle::new(settings.login_throttle.clone()),
            settings,
            revoked: tokio::sync::broadcast::channel(REVOKED_QUEUE).0,
        })
    }

    /// Hears of every user whose token or session this process revokes
    /// (logout, logout-all, a session ended from another device, a reused
    /// refresh token), right after the revocation is in force: the live
    /// channels close those users' connections at once instead of waiting
    /// for their next check. A listener that lags is told so (and should
    /// check everyone).
    pub fn revoked_users(&self) -> tokio::sync::broadcast::Receiver<UserId> {
        self.revoked.subscribe()
    }

    fn tell_revoked(&self, user_id: UserId) {
        // Nobody listening is fine: nothing is open to close.
        let _ = self.revoked.send(user_id);
    }

    /// The kid of the key that signs new tokens.
    pub fn signing_kid(&self) -> String {
        self.keys()[0].kid.clone()
    }

    /// Replaces the key set (after `orderflow keys rotate`, on SIGHUP): new
    /// tokens are signed with its newest key, and only its keys verify. A
    /// set that does not load leaves the current one in place.
    pub fn reload_keys(&self, key_set: &KeySet) -> Result<(), CoreError> {
        let keys = Arc::new(load_keys(key_set)?);
        *self
            .keys
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = keys;
        Ok(())
    }

    fn keys(&self) -> Arc<Vec<LoadedKey>> {
        self.keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
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
    /// which e-mails have accounts. Failures are counted per account (the
    /// e-mail as typed, normalized, whether or not it exists) and per client
    /// IP; past a few, that account or IP is locked out for a window that
    /// doubles with each further failure ([`CoreError::TooManyAttempts`]).
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        device: Option<&str>,
        client_ip: Option<&str>,
    ) -> Result<TokenPair, CoreError> {
        user::LOGIN_EMAIL.check("email", email)?;
        user::LOGIN_PASSWORD.check("password", password)?;
        if let Some(device) = device {
            user::DEVICE.check("device", device)?;
        }
        let normalized = user::normalize_email(email).ok();
        // Hashed: a fixed-size key however long the typed e-mail, and no
        // e-mail addresses held in the throttle's memory.
        let account = normalized.as_deref().unwrap_or(email.trim());
        let account_key = format!("account:{}", sha256_hex(account));
        let ip_key = client_ip.map(|ip| format!("ip:{ip}"));
        self.throttle
            .check(&account_key, ip_key.as_deref())
            .map_err(|retry_after| {
                metrics::counter!("orderflow_logins_total", "outcome" => "locked").increment(1);
                CoreError::TooManyAttempts { retry_after }
            })?;
        let user = match &normalized {
            Some(email) => self.store.user_by_email(email).await?,
            None => None,
        };
        let hash = user
            .as_ref()
            .map(|u| u.password_hash.clone())
            .unwrap_or_else(|| dummy_hash().to_owned());
        let matches = verify_password(password.to_owned(), hash).await?;
        let Some(user) = user.filter(|_| matches) else {
            metrics::counter!("orderflow_logins_total", "outcome" => "failed").increment(1);
            self.throttle
                .record_failure(&account_key, ip_key.as_deref());
            return Err(CoreError::Unauthorized(WRONG_CREDENTIALS.into()));
        };
        self.throttle.record_success(&account_key);
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
        let refresh_token = new_random_token();
        self.store
            .create_session(&session, &sha256_hex(&refresh_token))
            .await?;
        metrics::counter!("orderflow_logins_total", "outcome" => "ok").increment(1);
        self.issue(&user, session.id, refresh_token)
    }

    /// Swaps a refresh token for a new pair; the presented one stops working.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, CoreError> {
        REFRESH_TOKEN.check("refresh_token", refresh_token)?;
        let now = chrono::Utc::now();
        let new_refresh = new_random_token();
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
                // The store revoked the family's refresh token; its access
                // tokens (the thief's or the owner's) stop now too.
                self.revocations
                    .revoke(
                        &session_revocation_id(session_id),
                        self.session_revocation_expiry(),
                    )
                    .await?;
                metrics::counter!("orderflow_refresh_reuse_detected_total").increment(1);
                self.tell_revoked(user_id);
                Err(CoreError::Unauthorized(
                    "refresh token was already used; the session is revoked".into(),
                ))
            }
            RefreshRotation::Invalid => {
                Err(CoreError::Unauthorized("refresh token is not valid".into()))
            }
        }
    }

    /// Logs the caller's device out: the access token's `jti` is revoked until
    /// its expiry, and the session with every other access token it issued.
    pub async fn logout(&self, principal: &Principal) -> Result<(), CoreError> {
        self.revocations
            .revoke(&principal.jti, principal.expires_at)
            .await?;
        self.end_session(principal.session_id).await?;
        self.tell_revoked(principal.user_id);
        Ok(())
    }

    /// The caller's sessions still in force (not revoked, not expired),
    /// most recently created first.
    pub async fn sessions(&self, principal: &Principal) -> Result<Vec<SessionRecord>, CoreError> {
        let now = chrono::Utc::now();
        let mut sessions = self.store.sessions_of_user(principal.user_id).await?;
        sessions.retain(|s| s.revoked_at.is_none() && s.expires_at > now);
        Ok(sessions)
    }

    /// Logs one of the caller's devices out. Another user's session, or one
    /// already ended, is "not found": ids of others are never confirmed.
    pub async fn revoke_session(
        &self,
        principal: &Principal,
        session_id: uuid::Uuid,
    ) -> Result<(), CoreError> {
        let now = chrono::Utc::now();
        match self.store.session(session_id).await? {
            Some(session)
                if session.user_id == principal.user_id
                    && session.revoked_at.is_none()
                    && session.expires_at > now =>
            {
                self.end_session(session_id).await?;
                self.tell_revoked(principal.user_id);
                Ok(())
            }
            _ => Err(CoreError::NotFound("session")),
        }
    }

    /// Logs out every device of the caller; returns how many sessions ended.
    pub async fn logout_all(&self, principal: &Principal) -> Result<usize, CoreError> {
        let sessions = self.sessions(principal).await?;
        // Revoke the ids first: once the store marks the sessions revoked,
        // `sessions` no longer lists them, so a failure half-way must leave
        // the access tokens dead rather than alive.
        let until = self.session_revocation_expiry();
        for session in &sessions {
            self.revocations
                .revoke(&session_revocation_id(session.id), until)
                .await?;
        }
        self.store
            .revoke_all_sessions(principal.user_id, chrono::Utc::now())
            .await?;
        metrics::counter!("orderflow_logouts_total", "scope" => "all").increment(1);
        self.tell_revoked(principal.user_id);
        Ok(sessions.len())
    }

    /// Ends a session: its refresh token stops working (store), and every
    /// access token it issued stops at once (its `sid` revoked until the
    /// newest of them would have expired anyway).
    async fn end_session(&self, session_id: uuid::Uuid) -> Result<(), CoreError> {
        self.revocations
            .revoke(
                &session_revocation_id(session_id),
                self.session_revocation_expiry(),
            )
            .await?;
        self.store
            .revoke_session(session_id, chrono::Utc::now())
            .await?;
        metrics::counter!("orderflow_logouts_total", "scope" => "session").increment(1);
        Ok(())
    }

    /// An access token issued now expires (skew included) by then.
    fn session_revocation_expiry(&self) -> Timestamp {
        chrono::Utc::now()
            + chrono::Duration::from_std(self.settings.key_retention())
                .unwrap_or(chrono::Duration::days(1))
    }

    /// Verifies a bearer token: the key named by `kid`, with that key's own
    /// algorithm (the header's `alg` must match it), then `iss`, `aud`,
    /// `exp`, `nbf`, `iat`, then revocation of the token (`jti`) and of its
    /// session (`sid`), both answered from memory.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, CoreError> {
        let unauthorized = |why: &str| CoreError::Unauthorized(why.to_owned());
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| unauthorized("access token is malformed"))?;
        let kid = header
            .kid
            .ok_or_else(|| unauthorized("access token has no key id"))?;
        let keys = self.keys();
        let key = keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or_else(|| unauthorized("access token was signed with an unknown key"))?;
        if header.alg != key.alg {
            return Err(unauthorized(
                "access token's algorithm does not match its key",
            ));
        }
        let mut validation = Validation::new(key.alg);
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
        // `iat` in the future (beyond the skew) means a forged or broken clock.
        let skew = self.settings.clock_skew.as_secs() as i64;
        if claims.iat > chrono::Utc::now().timestamp() + skew {
            return Err(unauthorized("access token is not valid yet"));
        }
        let expires_at = chrono::DateTime::from_timestamp(claims.exp, 0)
            .ok_or_else(|| unauthorized("access token is not valid"))?;
        let principal = Principal {
            user_id: claims.sub,
            role: claims.role,
            session_id: claims.sid,
            jti: claims.jti,
            expires_at,
        };
        self.still_valid(&principal).await?;
        Ok(principal)
    }

    /// Whether a caller authenticated earlier is still let in: neither the
    /// token (`jti`) nor its session (`sid`) revoked, both answered from
    /// memory (or Redis). A live connection asks this every second, so a
    /// logout elsewhere closes it; it closes at the token's expiry by its
    /// own timer.
    pub async fn still_valid(&self, principal: &Principal) -> Result<(), CoreError> {
        metrics::counter!("orderflow_revocation_checks_total").increment(1);
        if self.revocations.is_revoked(&principal.jti).await?
            || self
                .revocations
                .is_revoked(&session_revocation_id(principal.session_id))
                .await?
        {
            return Err(CoreError::Unauthorized("access token was revoked".into()));
        }
        Ok(())
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
        let keys = self.keys();
        let signer = &keys[0];
        let mut header = Header::new(signer.alg);
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

/// How failed logins are throttled. The first few failures cost nothing
/// (people mistype); after `free_failures` the key is locked out for
/// `base_lockout`, doubling with each further failure up to `max_lockout`.
/// A key with no failure for `forget_after` starts over.
#[derive(Debug, Clone)]
pub struct ThrottleSettings {
    /// Failures allowed per account before lockouts begin.
    pub account_free_failures: u32,
    /// Failures allowed per client IP (across accounts) before lockouts begin;
    /// higher, since one IP may be a whole office behind NAT.
    pub ip_free_failures: u32,
    pub base_lockout: Duration,
    pub max_lockout: Duration,
    pub forget_after: Duration,
    /// Most keys tracked at once (memory bound under a flood of addresses).
    pub max_keys: usize,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        Self {
            account_free_failures: 5,
            ip_free_failures: 20,
            base_lockout: Duration::from_secs(1),
            max_lockout: Duration::from_secs(15 * 60),
            forget_after: Duration::from_secs(15 * 60),
            max_keys: 100_000,
        }
    }
}

/// Failed-login bookkeeping, per account and per client IP, in process.
///
/// This is the embedded setup's store of failures; with several API
/// processes the same counters belong in Redis (the algorithm is the same:
/// a failure count and a locked-until time per key). Time is
/// `tokio::time::Instant`, so tests drive it with paused time.
struct LoginThrottle {
    settings: ThrottleSettings,
    entries: std::sync::Mutex<std::collections::HashMap<String, Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    locked_until: tokio::time::Instant,
    last_failure: tokio::time::Instant,
}

impl LoginThrottle {
    fn new(settings: ThrottleSettings) -> Self {
        Self {
            settings,
            entries: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Failures>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `Err(retry_after)` while the account or the IP is locked out.
    fn check(&self, account: &str, ip: Option<&str>) -> Result<(), Duration> {
        let now = tokio::time::Instant::now();
        let entries = self.lock();
        let wait = [Some(account), ip]
            .into_iter()
            .flatten()
            .filter_map(|key| entries.get(key))
            .map(|f| f.locked_until.saturating_duration_since(now))
            .max()
            .unwrap_or_default();
        if wait.is_zero() { Ok(()) } else { Err(wait) }
    }

    fn record_failure(&self, account: &str, ip: Option<&str>) {
        let now = tokio::time::Instant::now();
        let mut entries = self.lock();
        if entries.len() >= self.settings.max_keys {
            let forget_after = self.settings.forget_after;
            entries.retain(|_, f| now.saturating_duration_since(f.last_failure) < forget_after);
            if entries.len() >= self.settings.max_keys {
                // Every key is recent: a flood. Forgetting is the lesser evil
                // than growing without bound; the per-IP route limit still holds.
                entries.clear();
            }
        }
        let keys = [
            Some((account, self.settings.account_free_failures)),
            ip.map(|ip| (ip, self.settings.ip_free_failures)),
        ];
        for (key, free) in keys.into_iter().flatten() {
            let entry = entries.entry(key.to_owned()).or_insert(Failures {
                count: 0,
                locked_until: now,
                last_failure: now,
            });
            if now.saturating_duration_since(entry.last_failure) >= self.settings.forget_after {
                entry.count = 0;
            }
            entry.count = entry.count.saturating_add(1);
            entry.last_failure = now;
            if entry.count > free {
                let doublings = (entry.count - free - 1).min(30);
                let lockout = self
                    .settings
                    .base_lockout
                    .saturating_mul(1 << doublings)
                    .min(self.settings.max_lockout);
                entry.locked_until = now + lockout;
            }
        }
    }

    /// A successful login clears the account's failures (not the IP's: one
    /// right password must not reset a spray over many accounts).
    fn record_success(&self, account: &str) {
        self.lock().remove(account);
    }
}

/// argon2id with the parameters of the OWASP Password Storage Cheat Sheet:
/// 19 MiB of memory, 2 iterations, 1 lane. Spelled out rather than left to
/// the crate's defaults, so a dependency update cannot weaken them silently.
fn argon2() -> Argon2<'static> {
    let params =
        argon2::Params::new(19 * 1024, 2, 1, None).expect("the OWASP argon2 parameters are valid");
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

/// Hashes a password off the async runtime, because it is meant to be slow
/// (tens of milliseconds of CPU) and would stall every other request.
pub async fn hash_password(password: String) -> Result<String, CoreError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        argon2()
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
        // Verification reads the parameters from the stored hash itself.
        Ok(argon2()
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
        argon2()
            .hash_password(uuid::Uuid::new_v4().to_string().as_bytes(), &salt)
            .expect("hashing a fixed-size password cannot fail")
            .to_string()
    })
}

/// What a refresh token can look like: [`new_random_token`] makes 43
/// base64url characters; the bound leaves room for a longer format later.
pub static REFRESH_TOKEN: TextRule =
    TextRule::new(1, 128, Some("^[A-Za-z0-9_-]+$"), "base64url characters");

/// 32 random bytes as 43 base64url characters: refresh tokens, live tickets.
pub fn new_random_token() -> String {
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

    fn throttle() -> LoginThrottle {
        LoginThrottle::new(ThrottleSettings {
            account_free_failures: 3,
            ip_free_failures: 5,
            ..ThrottleSettings::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn lockouts_start_after_the_free_failures_and_double() {
        let throttle = throttle();
        for _ in 0..3 {
            assert!(throttle.check("a", None).is_ok());
            throttle.record_failure("a", None);
        }
        assert!(throttle.check("a", None).is_ok(), "three mistakes are free");
        throttle.record_failure("a", None);
        assert_eq!(throttle.check("a", None), Err(Duration::from_secs(1)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(throttle.check("a", None).is_ok());
        throttle.record_failure("a", None);
        assert_eq!(throttle.check("a", None), Err(Duration::from_secs(2)));
        tokio::time::advance(Duration::from_secs(2)).await;
        throttle.record_failure("a", None);
        assert_eq!(throttle.check("a", None), Err(Duration::from_secs(4)));
        // Another account is not affected; a success clears the account.
        assert!(throttle.check("b", None).is_ok());
        throttle.record_success("a");
        assert!(throttle.check("a", None).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_ip_spraying_many_accounts_is_locked_out() {
        let throttle = throttle();
        for i in 0..5 {
            throttle.record_failure(&format!("user-{i}"), Some("ip:10.0.0.1"));
        }
        assert!(throttle.check("fresh", Some("ip:10.0.0.1")).is_ok());
        throttle.record_failure("user-5", Some("ip:10.0.0.1"));
        assert!(throttle.check("fresh", Some("ip:10.0.0.1")).is_err());
        assert!(throttle.check("fresh", Some("ip:10.0.0.2")).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn lockouts_are_capped_and_forgotten() {
        let throttle = throttle();
        for _ in 0..40 {
            throttle.record_failure("a", None);
        }
        assert_eq!(throttle.check("a", None), Err(Duration::from_secs(15 * 60)));
        tokio::time::advance(Duration::from_secs(15 * 60)).await;
        throttle.record_failure("a", None);
        assert!(throttle.check("a", None).is_ok(), "counting starts over");
    }

    #[test]
    fn rotation_keeps_old_keys_until_their_tokens_expired() {
        let ttl = Duration::from_secs(930);
        let mut set = KeySet {
            keys: vec![SigningKey::generate(KeyAlgorithm::HS256)],
        };
        let first = set.keys[0].kid.clone();
        let second = set.rotate(KeyAlgorithm::EdDSA, ttl);
        assert_eq!(set.keys.len(), 2, "the old key still verifies");
        assert_eq!(set.signing_key().unwrap().kid, second.kid);
        // Long after the second key took over, the first one is dropped.
        let later = second.created_at + chrono::Duration::seconds(931);
        assert_eq!(set.prune(ttl, later), vec![first]);
        assert_eq!(set.keys.len(), 1);
        // The newest key is never dropped, however old.
        assert!(
            set.prune(ttl, later + chrono::Duration::days(365))
                .is_empty()
        );
    }

    #[test]
    fn ed25519_keys_load_and_sign() {
        let key = SigningKey::generate(KeyAlgorithm::EdDSA).load().unwrap();
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::EdDSA),
            &serde_json::json!({"sub": "x", "exp": 4_000_000_000u64}),
            &key.encoding,
        )
        .unwrap();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_required_spec_claims(&["exp"]);
        jsonwebtoken::decode::<serde_json::Value>(&token, &key.decoding, &validation).unwrap();
    }

    #[test]
    fn signing_keys_never_print_their_secret() {
        let key = SigningKey::generate(KeyAlgorithm::EdDSA);
        let printed = format!("{key:?}");
        assert!(!printed.contains(&key.secret_b64));
        assert!(printed.contains("redacted"));
    }
}
