//! Scenarios for the revocation list ([`RevocationList`]), always backed by
//! a [`Store`] (the source of truth).
//!
//! Token ids are unique per run, so scenarios may share a server. The expiry
//! scenario sleeps past a one-second expiry (expiry is what it tests).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};

use crate::ports::revocations::RevocationList;
use crate::ports::store::Store;

fn jti(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::now_v7().simple())
}

/// A revoked token is revoked, others are not, and the database has it.
pub async fn revoke_and_check(list: Arc<dyn RevocationList>, store: Arc<dyn Store>) {
    let revoked = jti("revoked");
    let other = jti("other");
    assert!(
        !list.is_revoked(&revoked).await.unwrap(),
        "nothing revoked yet"
    );
    list.revoke(&revoked, Utc::now() + TimeDelta::minutes(15))
        .await
        .unwrap();
    assert!(list.is_revoked(&revoked).await.unwrap(), "revoked");
    assert!(!list.is_revoked(&other).await.unwrap(), "only that token");
    assert!(
        store.is_revoked(&revoked, Utc::now()).await.unwrap(),
        "written to the database, the source of truth"
    );
}

/// A token that expired already is not kept; one that expires later stops
/// being revoked when it does (it is refused as expired anyway). Revoking
/// twice keeps the later expiry. (Sleeps past a one-second expiry.)
pub async fn entries_follow_the_token_expiry(list: Arc<dyn RevocationList>) {
    let old = jti("old");
    list.revoke(&old, Utc::now() - TimeDelta::seconds(1))
        .await
        .unwrap();
    assert!(
        !list.is_revoked(&old).await.unwrap(),
        "an expired token is not kept"
    );

    let short = jti("short");
    let twice = jti("twice");
    let soon = Utc::now() + TimeDelta::seconds(1);
    list.revoke(&short, soon).await.unwrap();
    list.revoke(&twice, Utc::now() + TimeDelta::minutes(5))
        .await
        .unwrap();
    list.revoke(&twice, soon).await.unwrap();
    assert!(list.is_revoked(&short).await.unwrap());
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert!(
        !list.is_revoked(&short).await.unwrap(),
        "gone after the token's own expiry"
    );
    assert!(
        list.is_revoked(&twice).await.unwrap(),
        "a second, earlier expiry does not shorten the first"
    );
}

/// A new instance on the same database (a restarted process, or another
/// process) knows what was revoked before it started.
pub async fn a_new_instance_remembers<F, Fut>(first: Arc<dyn RevocationList>, make_another: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Arc<dyn RevocationList>>,
{
    let a = jti("a");
    let b = jti("b");
    first
        .revoke(&a, Utc::now() + TimeDelta::minutes(15))
        .await
        .unwrap();
    first
        .revoke(&b, Utc::now() + TimeDelta::minutes(5))
        .await
        .unwrap();
    drop(first);
    let second = make_another().await;
    assert!(second.is_revoked(&a).await.unwrap());
    assert!(second.is_revoked(&b).await.unwrap());
    assert!(!second.is_revoked(&jti("never")).await.unwrap());
}
