//! The embedded revocation list: revoked access-token ids (`jti`) held in
//! process, backed by the database.
//!
//! Every authenticated request asks "is this token revoked?", so the answer
//! must not cost a query. The database stays the source of truth (DESIGN.md
//! §3: what must survive lives in the database); this adapter keeps a copy of
//! the revocations still in force in memory and answers from it.
//!
//! - [`DbBackedRevocations::load`] warms the copy from the database at start,
//!   so a restart does not let a logged-out token back in.
//! - [`revoke`](RevocationList::revoke) writes the database first and the
//!   copy second: if the write fails, nothing claims the token is revoked,
//!   and the caller sees the error (a logout that did not happen says so).
//! - An entry lives until the token's own `exp`; after it the token is refused
//!   anyway, so expired entries are dropped (swept at most once a minute).
//!
//! In the embedded setup there is one process, so the copy is complete. If
//! several processes ever share the database without Redis, each one misses
//! the others' revocations until it calls [`DbBackedRevocations::refresh`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use chrono::Utc;
use orderflow_core::ports::revocations::RevocationList;
use orderflow_core::ports::store::{Store, StoreResult};
use orderflow_domain::Timestamp;

/// How often expired entries are swept out of memory.
const SWEEP_EVERY: chrono::TimeDelta = chrono::TimeDelta::minutes(1);

/// Revoked token ids, answered from memory, stored in the database.
pub struct DbBackedRevocations {
    store: Arc<dyn Store>,
    /// `jti` → the token's expiry.
    revoked: RwLock<HashMap<String, Timestamp>>,
    last_sweep: Mutex<Timestamp>,
}

impl std::fmt::Debug for DbBackedRevocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbBackedRevocations")
            .field("in_memory", &self.len())
            .finish_non_exhaustive()
    }
}

impl DbBackedRevocations {
    /// Reads the revocations in force from the database into memory.
    pub async fn load(store: Arc<dyn Store>) -> StoreResult<Self> {
        let now = Utc::now();
        let active = store.active_revocations(now).await?;
        let revoked = active
            .into_iter()
            .filter(|(_, expires_at)| *expires_at > now)
            .collect();
        Ok(Self {
            store,
            revoked: RwLock::new(revoked),
            last_sweep: Mutex::new(now),
        })
    }

    /// Adds the database's revocations in force to memory and returns how
    /// many entries memory holds. It merges rather than replaces, so a
    /// revocation made while the query ran is not lost (revocations are never
    /// taken back, so merging is always right).
    pub async fn refresh(&self) -> StoreResult<usize> {
        let now = Utc::now();
        let active = self.store.active_revocations(now).await?;
        let mut revoked = self
            .revoked
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        revoked.retain(|_, expires_at| *expires_at > now);
        revoked.extend(
            active
                .into_iter()
                .filter(|(_, expires_at)| *expires_at > now),
        );
        Ok(revoked.len())
    }

    /// How many revocations memory holds (expired ones may linger until the
    /// next sweep).
    pub fn len(&self) -> usize {
        self.revoked
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops expired entries now; returns how many were dropped.
    pub fn purge_expired(&self) -> usize {
        let now = Utc::now();
        *self
            .last_sweep
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = now;
        let mut revoked = self
            .revoked
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let before = revoked.len();
        revoked.retain(|_, expires_at| *expires_at > now);
        before - revoked.len()
    }

    /// Sweeps when the last sweep is more than [`SWEEP_EVERY`] old, so the
    /// cost stays off the common path.
    fn sweep_if_due(&self, now: Timestamp) {
        {
            let mut last = self
                .last_sweep
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if now - *last < SWEEP_EVERY {
                return;
            }
            *last = now;
        }
        let mut revoked = self
            .revoked
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        revoked.retain(|_, expires_at| *expires_at > now);
    }
}

#[async_trait]
impl RevocationList for DbBackedRevocations {
    async fn revoke(&self, jti: &str, expires_at: Timestamp) -> StoreResult<()> {
        // The database first: memory must never know more than what survives.
        self.store.insert_revocation(jti, expires_at).await?;
        let now = Utc::now();
        if expires_at > now {
            let mut revoked = self
                .revoked
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            // Keep the later expiry if the same jti is revoked twice.
            let entry = revoked.entry(jti.to_owned()).or_insert(expires_at);
            *entry = (*entry).max(expires_at);
        }
        self.sweep_if_due(now);
        Ok(())
    }

    async fn is_revoked(&self, jti: &str) -> StoreResult<bool> {
        let now = Utc::now();
        let revoked = self
            .revoked
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(revoked.get(jti).is_some_and(|expires_at| *expires_at > now))
    }
}
