//! Registration, login, token refresh and logout.
//!
//! Access tokens are short-lived and signed with the newest key of the key
//! set that fits the token format (`ORDERFLOW_TOKEN_FORMAT`):
//! - **JWT** (the default): EdDSA or HS256, named by `kid`; the algorithm is
//!   pinned per key (the JOSE answer to `alg` confusion);
//! - **PASETO v4.public**: Ed25519, the key named by its PASERK id
//!   (`k4.pid.…`) in the footer's `kid`; the protocol fixes the algorithm,
//!   so there is no header to confuse.
//!
//! A key belongs to one format, and a token verifies only with a key of its
//! own format, so a token of one format never verifies with a key of the
//! other. Both formats verify while the set has keys of both: switching the
//! format logs nobody out, and the old format's keys are dropped once their
//! last tokens expired. The same claims either way (`sub`, `role`, `sid`,
//! `jti`, `iss`, `aud`, `iat`, `nbf`, `exp`), checked by one function with a
//! small clock skew. Refresh tokens are
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
use pasetors::keys::{AsymmetricPublicKey, AsymmetricSecretKey};
use pasetors::paserk::{FormatAsPaserk, Id};
use pasetors::token::UntrustedToken;
use pasetors::version4::{PublicToken, V4};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::CoreError;
use crate::audit::AuditEvent;
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
    /// PASETO v4.public: Ed25519 under the PASETO protocol. A key of its
    /// own, never shared with a JWT key (key separation).
    #[serde(rename = "v4.public")]
    V4Public,
}

impl KeyAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::HS256 => "HS256",
            KeyAlgorithm::EdDSA => "EdDSA",
            KeyAlgorithm::V4Public => "v4.public",
        }
    }

    /// The token format the key signs.
    pub fn format(self) -> TokenFormat {
        match self {
            KeyAlgorithm::HS256 | KeyAlgorithm::EdDSA => TokenFormat::Jwt,
            KeyAlgorithm::V4Public => TokenFormat::Paseto,
        }
    }
}

impl std::str::FromStr for KeyAlgorithm {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.to_ascii_lowercase().as_str() {
            "hs256" => Ok(KeyAlgorithm::HS256),
            "eddsa" | "ed25519" => Ok(KeyAlgorithm::EdDSA),
            "v4.public" | "paseto" => Ok(KeyAlgorithm::V4Public),
            other => Err(format!(
                "unknown key algorithm {other:?} (eddsa, hs256 or v4.public)"
            )),
        }
    }
}

/// The form of access tokens: what `ORDERFLOW_TOKEN_FORMAT` picks for new
/// tokens. Tokens of the other form still verify while their keys are in
/// the set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenFormat {
    #[default]
    Jwt,
    Paseto,
}

impl TokenFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenFormat::Jwt => "jwt",
            TokenFormat::Paseto => "paseto",
        }
    }

    /// The algorithm of a key generated for this format.
    pub fn default_algorithm(self) -> KeyAlgorithm {
        match self {
            TokenFormat::Jwt => KeyAlgorithm::EdDSA,
            TokenFormat::Paseto => KeyAlgorithm::V4Public,
        }
    }
}

impl std::fmt::Display for TokenFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TokenFormat {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.to_ascii_lowercase().as_str() {
            "jwt" => Ok(TokenFormat::Jwt),
            "paseto" => Ok(TokenFormat::Paseto),
            other => Err(format!("unknown token format {other:?} (jwt or paseto)")),
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
    /// A fresh key with 32 random bytes. Its `kid` is random, except for a
    /// PASETO key: its PASERK id (`k4.pid.…`), as the PASERK spec names
    /// public keys.
    pub fn generate(alg: KeyAlgorithm) -> Self {
        let mut secret = [0u8; 32];
        rand::fill(&mut secret);
        let kid = match alg {
            KeyAlgorithm::V4Public => {
                let (_, public) = paseto_pair(&secret);
                paserk_id(&public)
            }
            KeyAlgorithm::HS256 | KeyAlgorithm::EdDSA => {
                uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
            }
        };
        Self {
            kid,
            alg,
            secret_b64: base64::engine::general_purpose::STANDARD.encode(secret),
            created_at: chrono::Utc::now(),
        }
    }

    /// The JWT algorithm and the keys to sign and verify with (tools and
    /// tests that craft tokens need them; the service uses [`AuthService::new`]).
    /// A PASETO key's seed is used as an Ed25519 JWT key here, which is
    /// what an attacker who holds it would try.
    pub fn jwt_keys(&self) -> Result<(Algorithm, EncodingKey, DecodingKey), CoreError> {
        let secret = self.secret()?;
        if self.alg == KeyAlgorithm::HS256 {
            return Ok((
                Algorithm::HS256,
                EncodingKey::from_secret(&secret),
                DecodingKey::from_secret(&secret),
            ));
        }
        let seed = self.seed(&secret)?;
        let public = ed25519_dalek::SigningKey::from_bytes(&seed)
            .verifying_key()
            .to_bytes();
        Ok((
            Algorithm::EdDSA,
            EncodingKey::from_ed_der(&ed25519_pkcs8(&seed)),
            DecodingKey::from_ed_der(&public),
        ))
    }

    /// The PASETO v4 keys of this key's Ed25519 seed (for tools and tests
    /// that craft tokens; an HMAC secret of 32 bytes works as a seed too).
    pub fn paseto_keys(
        &self,
    ) -> Result<(AsymmetricSecretKey<V4>, AsymmetricPublicKey<V4>), CoreError> {
        let secret = self.secret()?;
        Ok(paseto_pair(&self.seed(&secret)?))
    }

    fn secret(&self) -> Result<Vec<u8>, CoreError> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.secret_b64)
            .map_err(|e| {
                CoreError::Internal(format!("signing key {} is not base64: {e}", self.kid))
            })
    }

    fn seed(&self, secret: &[u8]) -> Result<[u8; 32], CoreError> {
        secret.try_into().map_err(|_| {
            CoreError::Internal(format!(
                "signing key {} is not a 32-byte Ed25519 seed",
                self.kid
            ))
        })
    }

    /// The key as the service uses it.
    fn load(&self) -> Result<LoadedKey, CoreError> {
        let material = match self.alg {
            KeyAlgorithm::HS256 | KeyAlgorithm::EdDSA => {
                if self.alg == KeyAlgorithm::HS256 && self.secret()?.len() < 32 {
                    return Err(CoreError::Internal(format!(
                        "signing key {} is shorter than 32 bytes",
                        self.kid
                    )));
                }
                let (alg, encoding, decoding) = self.jwt_keys()?;
                KeyMaterial::Jwt {
                    alg,
                    encoding,
                    decoding,
                }
            }
            KeyAlgorithm::V4Public => {
                let (secret, public) = self.paseto_keys()?;
                if paserk_id(&public) != self.kid {
                    return Err(CoreError::Internal(format!(
                        "PASETO key {} is not named by its PASERK id",
                        self.kid
                    )));
                }
                KeyMaterial::Paseto { secret, public }
            }
        };
        Ok(LoadedKey {
            kid: self.kid.clone(),
            format: self.alg.format(),
            material,
        })
    }
}

/// The PASETO v4 key pair of an Ed25519 seed: pasetors takes the secret key
/// as seed and public key together (64 bytes).
fn paseto_pair(seed: &[u8; 32]) -> (AsymmetricSecretKey<V4>, AsymmetricPublicKey<V4>) {
    let private = ed25519_dalek::SigningKey::from_bytes(seed);
    let secret = AsymmetricSecretKey::<V4>::from(&private.to_keypair_bytes())
        .expect("64 bytes are a v4 secret key");
    let public = AsymmetricPublicKey::<V4>::from(&private.verifying_key().to_bytes())
        .expect("32 bytes are a v4 public key");
    (secret, public)
}

/// The PASERK id (`k4.pid.…`) of a public key.
fn paserk_id(public: &AsymmetricPublicKey<V4>) -> String {
    let mut id = String::new();
    Id::from(public)
        .fmt(&mut id)
        .expect("writing to a String does not fail");
    id
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
    /// The key that signs tokens of `format`: the newest of that format.
    pub fn signing_key(&self, format: TokenFormat) -> Option<&SigningKey> {
        self.keys
            .iter()
            .filter(|key| key.alg.format() == format)
            .max_by_key(|key| key.created_at)
    }

    /// Adds a fresh key, which signs tokens of its format from now on, and
    /// drops the keys that can no longer have live tokens when `format`
    /// signs (see [`KeySet::prune`]). Returns the new key.
    pub fn rotate(
        &mut self,
        alg: KeyAlgorithm,
        keep_for: Duration,
        format: TokenFormat,
    ) -> SigningKey {
        let key = SigningKey::generate(alg);
        self.keys.push(key.clone());
        self.prune(keep_for, key.created_at, format);
        key
    }

    /// Drops every key whose tokens have all expired, when tokens are
    /// signed in `format`: a key stops signing when a newer key of `format`
    /// is created (a key of the other format, too: that is the switch-over),
    /// and its tokens live at most `keep_for` (the access-token lifetime
    /// plus clock skew) after that. The signer of `format` always stays; a
    /// key with no newer key of `format` stays too (it may still be signing
    /// somewhere). Returns the dropped kids.
    pub fn prune(
        &mut self,
        keep_for: Duration,
        now: Timestamp,
        format: TokenFormat,
    ) -> Vec<String> {
        let signer = self.signing_key(format).map(|key| key.kid.clone());
        let mut signers_created: Vec<Timestamp> = self
            .keys
            .iter()
            .filter(|key| key.alg.format() == format)
            .map(|key| key.created_at)
            .collect();
        signers_created.sort();
        let keep_for = chrono::Duration::from_std(keep_for).unwrap_or(chrono::Duration::MAX);
        let superseded_at =
            |created: Timestamp| signers_created.iter().copied().find(|t| *t > created);
        let mut dropped = Vec::new();
        self.keys.retain(|key| {
            let keep = Some(&key.kid) == signer.as_ref()
                || superseded_at(key.created_at)
                    .is_none_or(|at| at.checked_add_signed(keep_for).is_none_or(|end| end > now));
            if !keep {
                dropped.push(key.kid.clone());
            }
            keep
        });
        dropped
    }

    /// Adds a key for `format` when the set has none (a switch of
    /// `ORDERFLOW_TOKEN_FORMAT`); the key, when one was added.
    pub fn ensure_format(&mut self, format: TokenFormat) -> Option<SigningKey> {
        if self.signing_key(format).is_some() {
            return None;
        }
        let key = SigningKey::generate(format.default_algorithm());
        self.keys.push(key.clone());
        Some(key)
    }
}

/// A key ready to sign and verify.
struct LoadedKey {
    kid: String,
    format: TokenFormat,
    material: KeyMaterial,
}

enum KeyMaterial {
    Jwt {
        alg: Algorithm,
        encoding: EncodingKey,
        decoding: DecodingKey,
    },
    Paseto {
        secret: AsymmetricSecretKey<V4>,
        public: AsymmetricPublicKey<V4>,
    },
}

/// Token format, lifetimes, audience and issuer.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// The form of new access tokens.
    pub token_format: TokenFormat,
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
            token_format: TokenFormat::default(),
            issuer: "orderflow".into(),
            audience: "orderflow-api".into(),
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            clock_skew: Duration::from_secs(30),
            login_throttle: ThrottleSettings::default(),
        }
    }
}

/// The claims of an access token, in either format (times in seconds since
/// the epoch here; a PASETO token carries them as RFC 3339 strings).
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

/// [`Claims`] as a PASETO payload: the registered time claims are RFC 3339
/// strings (PASETO's rule), the others the same.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PasetoClaims {
    pub sub: UserId,
    pub role: Role,
    pub sid: uuid::Uuid,
    pub jti: String,
    pub iat: Timestamp,
    pub nbf: Timestamp,
    pub exp: Timestamp,
    pub iss: String,
    pub aud: String,
}

impl From<&Claims> for PasetoClaims {
    fn from(claims: &Claims) -> Self {
        let time = |seconds| chrono::DateTime::from_timestamp(seconds, 0).unwrap_or_default();
        Self {
            sub: claims.sub,
            role: claims.role,
            sid: claims.sid,
            jti: claims.jti.clone(),
            iat: time(claims.iat),
            nbf: time(claims.nbf),
            exp: time(claims.exp),
            iss: claims.iss.clone(),
            aud: claims.aud.clone(),
        }
    }
}

impl From<PasetoClaims> for Claims {
    fn from(claims: PasetoClaims) -> Self {
        Claims {
            sub: claims.sub,
            role: claims.role,
            sid: claims.sid,
            jti: claims.jti,
            iat: claims.iat.timestamp(),
            nbf: claims.nbf.timestamp(),
            exp: claims.exp.timestamp(),
            iss: claims.iss,
            aud: claims.aud,
        }
    }
}

fn unauthorized(why: &str) -> CoreError {
    CoreError::Unauthorized(why.to_owned())
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
    /// The keys and the tokens they verified. Swapped whole by
    /// [`AuthService::reload_keys`]; a request clones the `Arc`, never waits.
    keys: std::sync::RwLock<Arc<KeyRing>>,
    settings: AuthSettings,
    throttle: LoginThrottle,
    /// The users whose tokens or sessions were just revoked here, for
    /// whoever holds connections of theirs open ([`Self::revoked_users`]).
    revoked: tokio::sync::broadcast::Sender<UserId>,
}

/// A key set, newest first (the first key of the configured format signs),
/// with the tokens its keys verified. A reload makes a new ring, so a
/// token verified under a key that was retired is never taken from the
/// cache again, even when its verification was still running at the swap.
struct KeyRing {
    keys: Vec<LoadedKey>,
    /// Claims of tokens whose signature verified, by the token's exact text.
    /// An Ed25519 check costs tens of microseconds, and the same token comes
    /// back with every request of its session: at 1,000 orders/s the order
    /// requests' checks were 3% of the server's CPU (docs/benchmarks.md).
    /// Kept no longer than a token can be valid, and bounded in bytes.
    verified: moka::sync::Cache<String, Claims>,
}

/// What [`KeyRing::verified`] holds at most, counted as the tokens' and
/// their claims' bytes: about 24,000 tokens (a shopper's Ed25519 JWT is 478
/// bytes, about 700 as weighed). A token that does not fit is verified at
/// each use, as before.
const VERIFIED_TOKENS_BYTES: u64 = 16 * 1024 * 1024;

impl KeyRing {
    fn new(keys: Vec<LoadedKey>, settings: &AuthSettings) -> Self {
        let verified = moka::sync::Cache::builder()
            .max_capacity(VERIFIED_TOKENS_BYTES)
            .weigher(|token: &String, claims: &Claims| {
                let bytes = token.len()
                    + claims.jti.len()
                    + claims.iss.len()
                    + claims.aud.len()
                    + std::mem::size_of::<(String, Claims)>();
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .time_to_live(settings.key_retention())
            .build();
        Self { keys, verified }
    }
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

/// Loads a key set, newest first; the first key of `format` signs. An error
/// when the set has no key of `format`.
fn load_keys(key_set: &KeySet, format: TokenFormat) -> Result<Vec<LoadedKey>, CoreError> {
    let mut sorted = key_set.keys.clone();
    sorted.sort_by_key(|key| std::cmp::Reverse(key.created_at));
    let keys = sorted
        .iter()
        .map(SigningKey::load)
        .collect::<Result<Vec<_>, _>>()?;
    if !keys.iter().any(|key| key.format == format) {
        return Err(CoreError::Internal(format!(
            "the signing key set has no key for {format} tokens (orderflow keys rotate --alg {})",
            format.default_algorithm().as_str().to_ascii_lowercase()
        )));
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
            keys: std::sync::RwLock::new(Arc::new(KeyRing::new(
                load_keys(key_set, settings.token_format)?,
                &settings,
            ))),
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
        self.signer(&self.keys().keys).kid.clone()
    }

    /// The newest key of the configured format (there is one: see
    /// [`load_keys`]).
    fn signer<'k>(&self, keys: &'k [LoadedKey]) -> &'k LoadedKey {
        keys.iter()
            .find(|key| key.format == self.settings.token_format)
            .expect("load_keys checked that a key of the format is in the set")
    }

    /// Replaces the key set (after `orderflow keys rotate`, on SIGHUP): new
    /// tokens are signed with its newest key of the configured format, and
    /// only its keys verify. A set that does not load leaves the current one
    /// in place.
    pub fn reload_keys(&self, key_set: &KeySet) -> Result<(), CoreError> {
        let keys = Arc::new(KeyRing::new(
            load_keys(key_set, self.settings.token_format)?,
            &self.settings,
        ));
        *self
            .keys
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = keys;
        Ok(())
    }

    fn keys(&self) -> Arc<KeyRing> {
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
        let user_id = user.as_ref().map(|user| user.id);
        let Some(user) = user.filter(|_| matches) else {
            metrics::counter!("orderflow_logins_total", "outcome" => "failed").increment(1);
            for (locked, locked_for) in self
                .throttle
                .record_failure(&account_key, ip_key.as_deref())
            {
                AuditEvent::LoginLockedOut {
                    user_id: user_id.filter(|_| locked == account_key),
                    locked: &locked,
                    client_ip,
                    locked_for,
                }
                .record();
            }
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
                AuditEvent::RefreshTokenReused {
                    user_id,
                    session_id,
                }
                .record();
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
        AuditEvent::SessionRevoked {
            user_id: principal.user_id,
            session_id: principal.session_id,
            by_session: principal.session_id,
            reason: "logout",
        }
        .record();
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
                AuditEvent::SessionRevoked {
                    user_id: principal.user_id,
                    session_id,
                    by_session: principal.session_id,
                    reason: "revoked",
                }
                .record();
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
        AuditEvent::SessionsRevokedAll {
            user_id: principal.user_id,
            by_session: principal.session_id,
            sessions: sessions.len(),
        }
        .record();
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

    /// Verifies a bearer token: a PASETO (`v4.public.…`) or a JWT, each with
    /// the key of its own format that its `kid` names (for a JWT, the
    /// header's `alg` must be that key's), then `iss`, `aud`, `exp`, `nbf`,
    /// `iat` (one check for both formats), then revocation of the token
    /// (`jti`) and of its session (`sid`), both answered from memory.
    ///
    /// A token whose signature this key ring verified before is not verified
    /// again ([`KeyRing::verified`]); its claims and revocation are checked
    /// on every request all the same.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, CoreError> {
        let ring = self.keys();
        let claims = match ring.verified.get(token) {
            Some(claims) => claims,
            None => {
                let claims = if token.starts_with(PublicToken::HEADER) {
                    self.verify_paseto(token, &ring.keys)?
                } else {
                    self.verify_jwt(token, &ring.keys)?
                };
                ring.verified.insert(token.to_owned(), claims.clone());
                claims
            }
        };
        let principal = self.check_claims(claims)?;
        self.still_valid(&principal).await?;
        Ok(principal)
    }

    /// The key named `kid`, when it signs `format`'s tokens.
    fn verifying_key<'k>(
        keys: &'k [LoadedKey],
        kid: &str,
        format: TokenFormat,
    ) -> Result<&'k KeyMaterial, CoreError> {
        let key = keys
            .iter()
            .find(|key| key.kid == kid)
            .ok_or_else(|| unauthorized("access token was signed with an unknown key"))?;
        if key.format != format {
            return Err(unauthorized(
                "access token's algorithm does not match its key",
            ));
        }
        Ok(&key.material)
    }

    /// A JWT's signature, under the key its `kid` names; its claims are
    /// checked by [`Self::check_claims`].
    fn verify_jwt(&self, token: &str, keys: &[LoadedKey]) -> Result<Claims, CoreError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| unauthorized("access token is malformed"))?;
        let kid = header
            .kid
            .ok_or_else(|| unauthorized("access token has no key id"))?;
        let KeyMaterial::Jwt { alg, decoding, .. } =
            Self::verifying_key(keys, &kid, TokenFormat::Jwt)?
        else {
            unreachable!("a JWT key has JWT material")
        };
        if header.alg != *alg {
            return Err(unauthorized(
                "access token's algorithm does not match its key",
            ));
        }
        let mut validation = Validation::new(*alg);
        // Times, issuer and audience: one check for both formats.
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Claims>(token, decoding, &validation)
            .map(|data| data.claims)
            .map_err(|_| unauthorized("access token is not valid"))
    }

    /// A PASETO v4.public token's signature, under the key its footer's
    /// `kid` (a PASERK id) names; its claims are checked by
    /// [`Self::check_claims`].
    fn verify_paseto(&self, token: &str, keys: &[LoadedKey]) -> Result<Claims, CoreError> {
        let untrusted = UntrustedToken::<pasetors::Public, V4>::try_from(token)
            .map_err(|_| unauthorized("access token is malformed"))?;
        let mut footer = pasetors::footer::Footer::new();
        footer
            .parse_bytes(untrusted.untrusted_footer())
            .map_err(|_| unauthorized("access token has no key id"))?;
        let kid = footer
            .get_claim("kid")
            .and_then(|kid| kid.as_str())
            .ok_or_else(|| unauthorized("access token has no key id"))?;
        let KeyMaterial::Paseto { public, .. } =
            Self::verifying_key(keys, kid, TokenFormat::Paseto)?
        else {
            unreachable!("a PASETO key has PASETO material")
        };
        let trusted = PublicToken::verify(public, &untrusted, None, None)
            .map_err(|_| unauthorized("access token is not valid"))?;
        let claims: PasetoClaims = serde_json::from_str(trusted.payload())
            .map_err(|_| unauthorized("access token is not valid"))?;
        Ok(claims.into())
    }

    /// What both formats check after the signature: issuer, audience, and
    /// the times with the clock skew (`exp` passed, `nbf` not reached, `iat`
    /// in the future: a forged token or a broken clock).
    fn check_claims(&self, claims: Claims) -> Result<Principal, CoreError> {
        if claims.iss != self.settings.issuer || claims.aud != self.settings.audience {
            return Err(unauthorized("access token is not valid"));
        }
        let now = chrono::Utc::now().timestamp();
        let skew = self.settings.clock_skew.as_secs() as i64;
        if claims.exp < now - skew {
            return Err(unauthorized("access token has expired"));
        }
        if claims.nbf > now + skew || claims.iat > now + skew {
            return Err(unauthorized("access token is not valid yet"));
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
        let ring = self.keys();
        let signer = self.signer(&ring.keys);
        let signing_failed =
            |e: &dyn std::fmt::Display| CoreError::Internal(format!("signing a token failed: {e}"));
        let access_token = match &signer.material {
            KeyMaterial::Jwt { alg, encoding, .. } => {
                let mut header = Header::new(*alg);
                header.kid = Some(signer.kid.clone());
                jsonwebtoken::encode(&header, &claims, encoding).map_err(|e| signing_failed(&e))?
            }
            KeyMaterial::Paseto { secret, .. } => {
                let payload = serde_json::to_vec(&PasetoClaims::from(&claims))
                    .map_err(|e| signing_failed(&e))?;
                let footer = serde_json::to_vec(&serde_json::json!({ "kid": signer.kid }))
                    .map_err(|e| signing_failed(&e))?;
                PublicToken::sign(secret, &payload, Some(&footer), None)
                    .map_err(|e| signing_failed(&e))?
            }
        };
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

    /// Counts a failed login for the account and the client address; the
    /// keys this failure locked out, with how long.
    fn record_failure(&self, account: &str, ip: Option<&str>) -> Vec<(String, Duration)> {
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
        let mut locked = Vec::new();
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
                locked.push((key.to_owned(), lockout));
            }
        }
        locked
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

    /// What keeps an unknown e-mail from answering faster than a wrong
    /// password: `login` verifies against the dummy hash, and that costs
    /// what verifying a stored hash costs only if both carry the same
    /// algorithm, version, cost parameters and salt and output sizes
    /// (verification reads them from the hash). Checked here, not timed.
    #[tokio::test]
    async fn the_dummy_hash_costs_what_a_stored_one_does() {
        let stored = hash_password("a stored password".into()).await.unwrap();
        let stored = PasswordHash::new(&stored).unwrap();
        let dummy = PasswordHash::new(dummy_hash()).unwrap();
        assert_eq!(stored.algorithm, dummy.algorithm);
        assert_eq!(stored.version, dummy.version);
        assert_eq!(stored.params.to_string(), dummy.params.to_string());
        assert_eq!(
            stored.salt.map(|s| s.as_str().len()),
            dummy.salt.map(|s| s.as_str().len())
        );
        assert_eq!(stored.hash.map(|h| h.len()), dummy.hash.map(|h| h.len()));
        assert!(
            !verify_password("a stored password".into(), dummy_hash().to_owned())
                .await
                .unwrap()
        );
    }

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
            assert!(throttle.record_failure("a", None).is_empty());
        }
        assert!(throttle.check("a", None).is_ok(), "three mistakes are free");
        assert_eq!(
            throttle.record_failure("a", None),
            vec![("a".to_owned(), Duration::from_secs(1))],
            "the failure that locks says so (the audit line)"
        );
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
        let jwt = TokenFormat::Jwt;
        let mut set = KeySet {
            keys: vec![SigningKey::generate(KeyAlgorithm::HS256)],
        };
        let first = set.keys[0].kid.clone();
        let second = set.rotate(KeyAlgorithm::EdDSA, ttl, jwt);
        assert_eq!(set.keys.len(), 2, "the old key still verifies");
        assert_eq!(set.signing_key(jwt).unwrap().kid, second.kid);
        // Long after the second key took over, the first one is dropped.
        let later = second.created_at + chrono::Duration::seconds(931);
        assert_eq!(set.prune(ttl, later, jwt), vec![first]);
        assert_eq!(set.keys.len(), 1);
        // The newest key is never dropped, however old.
        assert!(
            set.prune(ttl, later + chrono::Duration::days(365), jwt)
                .is_empty()
        );
    }

    #[test]
    fn a_switch_of_format_keeps_the_old_keys_until_their_tokens_expired() {
        let ttl = Duration::from_secs(930);
        let mut set = KeySet {
            keys: vec![SigningKey::generate(KeyAlgorithm::EdDSA)],
        };
        let jwt_key = set.keys[0].kid.clone();
        assert!(set.ensure_format(TokenFormat::Jwt).is_none());
        let paseto_key = set.ensure_format(TokenFormat::Paseto).unwrap();
        assert!(paseto_key.kid.starts_with("k4.pid."), "{}", paseto_key.kid);
        assert_eq!(
            set.signing_key(TokenFormat::Paseto).unwrap().kid,
            paseto_key.kid
        );
        assert_eq!(set.signing_key(TokenFormat::Jwt).unwrap().kid, jwt_key);
        // Signing PASETO, the JWT key verifies until its last tokens expired...
        let soon = paseto_key.created_at + chrono::Duration::seconds(929);
        assert!(set.prune(ttl, soon, TokenFormat::Paseto).is_empty());
        // ...then it goes.
        let later = paseto_key.created_at + chrono::Duration::seconds(931);
        assert_eq!(set.prune(ttl, later, TokenFormat::Paseto), vec![jwt_key]);
        // Switched back to JWT: a new JWT key, and the PASETO key goes the
        // same way once its tokens expired.
        let back = set.ensure_format(TokenFormat::Jwt).unwrap();
        let much_later = back.created_at + chrono::Duration::seconds(931);
        assert_eq!(
            set.prune(ttl, much_later, TokenFormat::Jwt),
            vec![paseto_key.kid]
        );
        assert_eq!(set.keys.len(), 1);
    }

    #[test]
    fn ed25519_keys_load_and_sign() {
        let (alg, encoding, decoding) = SigningKey::generate(KeyAlgorithm::EdDSA)
            .jwt_keys()
            .unwrap();
        let token = jsonwebtoken::encode(
            &Header::new(alg),
            &serde_json::json!({"sub": "x", "exp": 4_000_000_000u64}),
            &encoding,
        )
        .unwrap();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_required_spec_claims(&["exp"]);
        jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation).unwrap();
    }

    #[test]
    fn paseto_keys_are_named_by_their_paserk_id_and_sign() {
        let key = SigningKey::generate(KeyAlgorithm::V4Public);
        let (secret, public) = key.paseto_keys().unwrap();
        assert_eq!(paserk_id(&public), key.kid);
        let token = PublicToken::sign(&secret, b"{}", Some(b"{}"), None).unwrap();
        let untrusted = UntrustedToken::<pasetors::Public, V4>::try_from(&token).unwrap();
        PublicToken::verify(&public, &untrusted, None, None).unwrap();
        // A key whose kid is not its PASERK id does not load.
        let mut renamed = key.clone();
        renamed.kid = "k4.pid.someone-else".into();
        assert!(renamed.load().is_err());
    }

    #[test]
    fn signing_keys_never_print_their_secret() {
        let key = SigningKey::generate(KeyAlgorithm::EdDSA);
        let printed = format!("{key:?}");
        assert!(!printed.contains(&key.secret_b64));
        assert!(printed.contains("redacted"));
    }
}
