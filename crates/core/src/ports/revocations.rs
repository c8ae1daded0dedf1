//! Revoked access tokens, by `jti`. The database is the source of truth; an
//! adapter keeps a fast copy (in process, or in Redis) and may lose it at any
//! moment without letting a revoked token back in.

use async_trait::async_trait;
use orderflow_domain::Timestamp;

use crate::ports::store::StoreError;

#[async_trait]
pub trait RevocationList: Send + Sync + 'static {
    /// Revokes `jti` until `expires_at` (the token's own `exp`; after it the
    /// token is dead anyway, so the entry may be dropped).
    async fn revoke(&self, jti: &str, expires_at: Timestamp) -> Result<(), StoreError>;
    async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError>;
}
