//! Security events as audit lines: one structured log line per event on the
//! [`TARGET`] target, so an operator can keep them apart from the rest of
//! the log (`RUST_LOG=info,orderflow::audit=info`; with
//! `ORDERFLOW_LOG_FORMAT=json` each is one JSON object whose `audit` field
//! names the event). Each says who (user id, session id, client address)
//! and what happened, and never a secret: no password, access or refresh
//! token, or key material; a locked-out account that is not a user is named
//! by the hash the login throttle keys on, not by the e-mail typed.
//!
//! The events: `login.locked_out`, `refresh_token.reused`,
//! `session.revoked`, `sessions.revoked_all`, `key.rotated`, `key.pruned`,
//! `keys.reloaded`, `admin.action`, `admin.denied`.

use std::time::Duration;

use orderflow_domain::UserId;

/// The `tracing` target of every audit line.
pub const TARGET: &str = "orderflow::audit";

/// One security event.
#[derive(Debug, Clone)]
pub enum AuditEvent<'a> {
    /// Failed logins locked an account or a client address out.
    LoginLockedOut {
        /// The user, when the e-mail typed belongs to one.
        user_id: Option<UserId>,
        /// `account:<sha256 of the e-mail>` or `ip:<address>`: the key
        /// that is locked.
        locked: &'a str,
        client_ip: Option<&'a str>,
        locked_for: Duration,
    },
    /// A refresh token was presented again after it had been rotated: a
    /// stolen token, or a client bug. The session was revoked.
    RefreshTokenReused {
        user_id: UserId,
        session_id: uuid::Uuid,
    },
    /// One session ended: `reason` is `logout` or `revoked` (from another
    /// device of the same user).
    SessionRevoked {
        user_id: UserId,
        session_id: uuid::Uuid,
        by_session: uuid::Uuid,
        reason: &'static str,
    },
    /// Every session of a user ended (logout everywhere).
    SessionsRevokedAll {
        user_id: UserId,
        by_session: uuid::Uuid,
        sessions: usize,
    },
    /// A signing key was added (`orderflow keys rotate`, or a token-format
    /// switch).
    KeyRotated { kid: &'a str, alg: &'a str },
    /// A key whose tokens had all expired was dropped.
    KeyPruned { kid: &'a str },
    /// A running process loaded the key file again (SIGHUP).
    KeysReloaded { signing_kid: &'a str },
    /// An admin called an admin route that changes something.
    AdminAction {
        user_id: UserId,
        session_id: uuid::Uuid,
        method: &'a str,
        path: &'a str,
    },
    /// Someone who is not an admin called an admin route.
    AdminDenied {
        user_id: UserId,
        session_id: uuid::Uuid,
        method: &'a str,
        path: &'a str,
    },
}

impl AuditEvent<'_> {
    /// Writes the audit line.
    pub fn record(&self) {
        match self {
            AuditEvent::LoginLockedOut {
                user_id,
                locked,
                client_ip,
                locked_for,
            } => tracing::warn!(
                target: TARGET,
                audit = "login.locked_out",
                user_id = user_id.map(tracing::field::display),
                locked,
                client_ip,
                locked_for_secs = locked_for.as_secs_f64(),
                "failed logins locked {locked} out"
            ),
            AuditEvent::RefreshTokenReused {
                user_id,
                session_id,
            } => tracing::warn!(
                target: TARGET,
                audit = "refresh_token.reused",
                %user_id,
                %session_id,
                "a rotated refresh token was used again; the session is revoked"
            ),
            AuditEvent::SessionRevoked {
                user_id,
                session_id,
                by_session,
                reason,
            } => tracing::info!(
                target: TARGET,
                audit = "session.revoked",
                %user_id,
                %session_id,
                %by_session,
                reason,
                "a session was revoked"
            ),
            AuditEvent::SessionsRevokedAll {
                user_id,
                by_session,
                sessions,
            } => tracing::info!(
                target: TARGET,
                audit = "sessions.revoked_all",
                %user_id,
                %by_session,
                sessions,
                "every session of a user was revoked"
            ),
            AuditEvent::KeyRotated { kid, alg } => tracing::info!(
                target: TARGET,
                audit = "key.rotated",
                kid,
                alg,
                "a signing key was added"
            ),
            AuditEvent::KeyPruned { kid } => tracing::info!(
                target: TARGET,
                audit = "key.pruned",
                kid,
                "a signing key whose tokens had expired was dropped"
            ),
            AuditEvent::KeysReloaded { signing_kid } => tracing::info!(
                target: TARGET,
                audit = "keys.reloaded",
                signing_kid,
                "the signing keys were reloaded"
            ),
            AuditEvent::AdminAction {
                user_id,
                session_id,
                method,
                path,
            } => tracing::info!(
                target: TARGET,
                audit = "admin.action",
                %user_id,
                %session_id,
                method,
                path,
                "an admin called {method} {path}"
            ),
            AuditEvent::AdminDenied {
                user_id,
                session_id,
                method,
                path,
            } => tracing::warn!(
                target: TARGET,
                audit = "admin.denied",
                %user_id,
                %session_id,
                method,
                path,
                "a caller without the admin role called {method} {path}"
            ),
        }
    }
}
