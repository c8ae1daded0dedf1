//! Scenarios for the database port ([`Store`] and [`StoreTx`](crate::ports::store::StoreTx)).
//!
//! Every function takes a freshly migrated, empty store.

use std::sync::Arc;
use std::time::Duration;

use orderflow_domain::notification::{Channel, NotificationKind};
use orderflow_domain::order::{HistoryEntry, OrderStatus};
use orderflow_domain::product::{ProductDraft, ProductSearch, ProductSort, search_words};
use orderflow_domain::user::Role;
use tokio::sync::{Barrier, oneshot};

use super::{
    draft, given_order, given_product, given_user, now, order_of, shopper, user_registered,
};
use crate::ports::store::{
    ChangesPage, DeadLetter, IdempotencyClaim, IdempotencyRecord, NotificationRecord, OrderChange,
    PaymentRecord, RefreshRotation, Reservation, SessionRecord, Store, StoreError, StoreTx,
};

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

/// `migrate` can run on every start, and `ping` answers.
pub async fn migrate_is_repeatable(store: Arc<dyn Store>) {
    store
        .migrate()
        .await
        .expect("a second migrate must be a no-op");
    store.ping().await.expect("ping after migrate");
    let user = given_user(&store, "Ann").await;
    store.migrate().await.expect("migrate with data present");
    assert!(
        store.user_by_id(user.id).await.unwrap().is_some(),
        "migrate must keep the data"
    );
}

/// Users: insert, lookups, duplicate e-mail is `Conflict`, admin bootstrap.
pub async fn users(store: Arc<dyn Store>) {
    let ann = given_user(&store, "Ann").await;
    assert_eq!(
        store.user_by_email(&ann.email).await.unwrap(),
        Some(ann.clone()),
        "lookup by e-mail"
    );
    assert_eq!(
        store.user_by_id(ann.id).await.unwrap(),
        Some(ann.clone()),
        "lookup by id"
    );
    assert_eq!(
        store.user_by_email("nobody@example.com").await.unwrap(),
        None
    );
    assert_eq!(store.user_by_id(uuid::Uuid::now_v7()).await.unwrap(), None);

    // Same e-mail, another id: refused, and the refusal is a Conflict.
    let twin = crate::ports::store::UserRecord {
        id: uuid::Uuid::now_v7(),
        ..ann.clone()
    };
    let mut tx = store.begin().await.unwrap();
    match tx.insert_user(&twin).await {
        Err(StoreError::Conflict(what)) => assert!(
            what.contains("email"),
            "conflict should name the e-mail: {what}"
        ),
        other => panic!("a duplicate e-mail must be Conflict, got {other:?}"),
    }
    drop(tx);
    assert_eq!(
        store.user_by_email(&ann.email).await.unwrap().unwrap().id,
        ann.id
    );

    // upsert_admin creates a missing admin...
    let mut admin = shopper("Root");
    admin.role = Role::Admin;
    let mut tx = store.begin().await.unwrap();
    tx.upsert_admin(&admin).await.expect("create the admin");
    tx.commit().await.unwrap();
    let stored = store
        .user_by_email(&admin.email)
        .await
        .unwrap()
        .expect("admin created");
    assert_eq!(stored.role, Role::Admin);

    // ...and promotes an existing user without touching the rest.
    let mut promote = shopper("Other");
    promote.email = ann.email.clone();
    promote.role = Role::Admin;
    let mut tx = store.begin().await.unwrap();
    tx.upsert_admin(&promote)
        .await
        .expect("promote an existing user");
    tx.upsert_admin(&promote)
        .await
        .expect("upsert_admin is repeatable");
    tx.commit().await.unwrap();
    let promoted = store.user_by_email(&ann.email).await.unwrap().unwrap();
    assert_eq!(
        promoted.role,
        Role::Admin,
        "the existing user became an admin"
    );
    assert_eq!(promoted.id, ann.id, "promotion keeps the user's id");
    assert_eq!(
        promoted.password_hash, ann.password_hash,
        "promotion keeps the password"
    );
}

fn session_of(user_id: uuid::Uuid, device: &str, expires_in: chrono::Duration) -> SessionRecord {
    let at = now();
    SessionRecord {
        id: uuid::Uuid::now_v7(),
        user_id,
        device: device.to_owned(),
        created_at: at,
        last_used_at: at,
        expires_at: at + expires_in,
        revoked_at: None,
    }
}

/// Sessions: refresh rotation, reuse detection revokes the session,
/// expired and revoked sessions refuse their token.
pub async fn refresh_rotation_and_reuse(store: Arc<dyn Store>) {
    let user = given_user(&store, "Ann").await;
    let session = session_of(user.id, "phone", chrono::Duration::days(30));
    store
        .create_session(&session, "hash-1")
        .await
        .expect("create session");
    assert_eq!(
        store.session(session.id).await.unwrap(),
        Some(session.clone()),
        "session round-trips"
    );

    let used_at = now() + secs(5);
    let expires = used_at + chrono::Duration::days(30);
    match rotation(&store, "hash-1", "hash-2", used_at, expires).await {
        RefreshRotation::Rotated { session: rotated } => {
            assert_eq!(rotated.id, session.id);
            assert_eq!(rotated.user_id, user.id);
            assert_eq!(rotated.last_used_at, used_at, "rotation records the use");
            assert_eq!(rotated.expires_at, expires, "rotation extends the session");
            assert_eq!(rotated.revoked_at, None);
        }
        other => panic!("the current token must rotate, got {other:?}"),
    }
    let stored = store.session(session.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.last_used_at, stored.expires_at),
        (used_at, expires),
        "rotation is stored"
    );

    // The new token rotates again.
    assert!(
        matches!(
            rotation(&store, "hash-2", "hash-3", used_at, expires).await,
            RefreshRotation::Rotated { .. }
        ),
        "the token handed out by a rotation must be usable"
    );

    // Replaying a rotated-away token: reuse detected, the session dies.
    let replay_at = used_at + secs(1);
    match rotation(&store, "hash-1", "hash-x", replay_at, expires).await {
        RefreshRotation::ReuseDetected {
            session_id,
            user_id,
        } => {
            assert_eq!((session_id, user_id), (session.id, user.id));
        }
        other => panic!("a replayed token must be detected, got {other:?}"),
    }
    let revoked = store.session(session.id).await.unwrap().unwrap();
    assert_eq!(
        revoked.revoked_at,
        Some(replay_at),
        "reuse revokes the session"
    );
    assert_eq!(
        rotation(&store, "hash-3", "hash-4", replay_at, expires).await,
        RefreshRotation::Invalid,
        "after reuse, even the latest token of the session is dead"
    );

    assert_eq!(
        rotation(&store, "never-issued", "hash-y", now(), expires).await,
        RefreshRotation::Invalid,
        "unknown tokens are invalid"
    );

    // An expired session refuses its (current) token.
    let old = session_of(user.id, "laptop", chrono::Duration::seconds(-1));
    store.create_session(&old, "old-hash").await.unwrap();
    assert_eq!(
        rotation(&store, "old-hash", "old-hash-2", now(), expires).await,
        RefreshRotation::Invalid,
        "an expired session's token is invalid"
    );

    // Two presentations of one token racing: exactly one rotates.
    let raced = session_of(user.id, "tablet", chrono::Duration::days(1));
    store.create_session(&raced, "race-0").await.unwrap();
    let (a, b) = tokio::join!(
        store.rotate_refresh_token("race-0", "race-a", now(), expires),
        store.rotate_refresh_token("race-0", "race-b", now(), expires),
    );
    let rotated = [a.unwrap(), b.unwrap()]
        .into_iter()
        .filter(|r| matches!(r, RefreshRotation::Rotated { .. }))
        .count();
    assert_eq!(
        rotated, 1,
        "one refresh token must rotate once, however many present it at once"
    );
}

/// Logout of one device, and of all devices.
pub async fn revoke_sessions(store: Arc<dyn Store>) {
    let user = given_user(&store, "Ann").await;
    let other = given_user(&store, "Bob").await;
    let phone = session_of(user.id, "phone", chrono::Duration::days(1));
    let laptop = session_of(user.id, "laptop", chrono::Duration::days(1));
    let tablet = session_of(user.id, "tablet", chrono::Duration::days(1));
    let bobs = session_of(other.id, "phone", chrono::Duration::days(1));
    for (session, hash) in [
        (&phone, "h-phone"),
        (&laptop, "h-laptop"),
        (&tablet, "h-tablet"),
        (&bobs, "h-bob"),
    ] {
        store.create_session(session, hash).await.unwrap();
    }
    let listed = ids_sorted(store.sessions_of_user(user.id).await.unwrap(), |s| s.id);
    let mut expected = vec![phone.id, laptop.id, tablet.id];
    expected.sort();
    assert_eq!(
        listed, expected,
        "sessions_of_user lists exactly the user's sessions"
    );

    let at = now();
    assert!(
        store.revoke_session(phone.id, at).await.unwrap(),
        "revoking a live session"
    );
    assert!(
        !store.revoke_session(phone.id, at).await.unwrap(),
        "revoking twice reports false"
    );
    assert!(
        !store
            .revoke_session(uuid::Uuid::now_v7(), at)
            .await
            .unwrap(),
        "unknown session reports false"
    );
    assert_eq!(
        store.session(phone.id).await.unwrap().unwrap().revoked_at,
        Some(at)
    );
    assert_eq!(
        store
            .rotate_refresh_token("h-phone", "h-phone-2", now(), now() + secs(60))
            .await
            .unwrap(),
        RefreshRotation::Invalid,
        "a revoked session's token is invalid"
    );

    assert_eq!(
        store.revoke_all_sessions(user.id, at).await.unwrap(),
        2,
        "the two still live sessions"
    );
    assert_eq!(store.revoke_all_sessions(user.id, at).await.unwrap(), 0);
    assert!(
        store
            .sessions_of_user(user.id)
            .await
            .unwrap()
            .iter()
            .all(|s| s.revoked_at.is_some())
    );
    assert_eq!(
        store.session(bobs.id).await.unwrap().unwrap().revoked_at,
        None,
        "other users keep theirs"
    );
}

/// Revoked access tokens: in force until they expire; logout-all instant.
pub async fn token_revocations(store: Arc<dyn Store>) {
    let at = now();
    store
        .insert_revocation("jti-live", at + secs(3600))
        .await
        .unwrap();
    store
        .insert_revocation("jti-expired", at - secs(1))
        .await
        .unwrap();
    store
        .insert_revocation("jti-live", at + secs(60))
        .await
        .expect("revoking twice is fine");

    assert!(store.is_revoked("jti-live", at).await.unwrap());
    assert!(
        !store.is_revoked("jti-expired", at).await.unwrap(),
        "an expired revocation is not in force"
    );
    assert!(!store.is_revoked("jti-unknown", at).await.unwrap());
    assert!(
        !store.is_revoked("jti-live", at + secs(7200)).await.unwrap(),
        "after the token's expiry the revocation no longer matters"
    );
    let active = store.active_revocations(at).await.unwrap();
    let jtis: Vec<&str> = active.iter().map(|(jti, _)| jti.as_str()).collect();
    assert_eq!(jtis, vec!["jti-live"], "only revocations still in force");
    assert_eq!(
        active[0].1,
        at + secs(3600),
        "revoking twice keeps the later expiry"
    );

    let user = given_user(&store, "Ann").await;
    assert_eq!(store.tokens_valid_after(user.id).await.unwrap(), None);
    store.set_tokens_valid_after(user.id, at).await.unwrap();
    assert_eq!(store.tokens_valid_after(user.id).await.unwrap(), Some(at));
    assert_eq!(
        store
            .tokens_valid_after(uuid::Uuid::now_v7())
            .await
            .unwrap(),
        None
    );
}

/// Catalog: insert, read, keyset paging, update, duplicate SKU, batch lookup.
pub async fn products(store: Arc<dyn Store>) {
    let mut inserted = Vec::new();
    for i in 0..5 {
        let at = now();
        let id = uuid::Uuid::now_v7();
        let d = draft(&format!("Thing {i}"), 100 + i, 10 * i);
        let product = store
            .insert_product(id, &d, at)
            .await
            .expect("insert product");
        assert_eq!(
            (
                product.id,
                &product.sku,
                &product.name,
                product.price_cents,
                &product.currency,
                product.stock
            ),
            (id, &d.sku, &d.name, d.price_cents, &d.currency, d.stock),
            "insert_product returns what was stored"
        );
        assert_eq!(product.updated_at, at);
        assert_eq!(store.product(id).await.unwrap(), Some(product.clone()));
        inserted.push(product);
    }
    assert_eq!(store.count_products().await.unwrap(), 5);
    assert_eq!(store.product(uuid::Uuid::now_v7()).await.unwrap(), None);

    // Pages of two, by id, follow each other without gaps or repeats.
    let mut paged = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.list_products(cursor, 2).await.unwrap();
        assert!(page.len() <= 2, "limit respected");
        let Some(last) = page.last() else { break };
        cursor = Some(last.id);
        paged.extend(page);
    }
    let mut by_id = inserted.clone();
    by_id.sort_by_key(|p| p.id);
    assert_eq!(paged, by_id, "paging walks every product once, in id order");

    // Update replaces the fields.
    let target = &inserted[1];
    let changed = ProductDraft::new("SKU-NEW-1", "Big mug", 999, "USD", 3).unwrap();
    let later = now() + secs(10);
    let updated = store
        .update_product(target.id, &changed, later)
        .await
        .unwrap()
        .expect("exists");
    assert_eq!(
        (
            updated.sku.as_str(),
            updated.name.as_str(),
            updated.price_cents,
            updated.currency.as_str(),
            updated.stock
        ),
        ("SKU-NEW-1", "Big mug", 999, "USD", 3)
    );
    assert_eq!(updated.updated_at, later);
    assert_eq!(store.product(target.id).await.unwrap(), Some(updated));
    assert_eq!(
        store
            .update_product(uuid::Uuid::now_v7(), &changed, later)
            .await
            .unwrap(),
        None
    );

    // SKUs are unique, on insert and on update.
    let taken = ProductDraft::new(&inserted[0].sku, "Copy", 1, "EUR", 1).unwrap();
    match store
        .insert_product(uuid::Uuid::now_v7(), &taken, now())
        .await
    {
        Err(StoreError::Conflict(what)) => {
            assert!(what.contains("sku"), "conflict should name the SKU: {what}")
        }
        other => panic!("a duplicate SKU must be Conflict, got {other:?}"),
    }
    match store.update_product(inserted[2].id, &taken, now()).await {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("updating to a taken SKU must be Conflict, got {other:?}"),
    }
    assert_eq!(store.count_products().await.unwrap(), 5);

    let wanted = [inserted[3].id, uuid::Uuid::now_v7(), inserted[0].id];
    let found = ids_sorted(store.products_by_ids(&wanted).await.unwrap(), |p| p.id);
    let mut expected = vec![inserted[0].id, inserted[3].id];
    expected.sort();
    assert_eq!(
        found, expected,
        "products_by_ids returns the known ones and skips unknown ids"
    );
    assert!(store.products_by_ids(&[]).await.unwrap().is_empty());
}

/// Orders: insert with lines and first history entry, status steps,
/// newest-first listing with a cursor, counts per status.
pub async fn orders(store: Arc<dyn Store>) {
    let ann = given_user(&store, "Ann").await;
    let bob = given_user(&store, "Bob").await;
    let mug = given_product(&store, 10).await;
    let cup = given_product(&store, 10).await;

    let t0 = now();
    let first = order_of(ann.id, &[(&mug, 2), (&cup, 1)], t0);
    let second = order_of(ann.id, &[(&mug, 1)], t0 + secs(1));
    let third = order_of(ann.id, &[(&cup, 3)], t0 + secs(2));
    let bobs = order_of(bob.id, &[(&cup, 1)], t0 + secs(3));
    let mut tx = store.begin().await.unwrap();
    for order in [&first, &second, &third, &bobs] {
        tx.insert_order(order).await.expect("insert order");
    }
    tx.commit().await.unwrap();

    let (stored, history) = store.order(first.id).await.unwrap().expect("order exists");
    assert_eq!(stored, first, "order and its lines round-trip");
    assert_eq!(
        history,
        vec![HistoryEntry {
            status: OrderStatus::Pending,
            at: t0
        }],
        "first history entry"
    );
    assert!(store.order(uuid::Uuid::now_v7()).await.unwrap().is_none());
    assert_eq!(
        store.order_without_history(first.id).await.unwrap(),
        Some(first.clone()),
        "the order and its lines, without the history"
    );
    assert!(
        store
            .order_without_history(uuid::Uuid::now_v7())
            .await
            .unwrap()
            .is_none()
    );

    // Walk the first order to confirmed in one transition of three steps.
    let at = t0 + secs(30);
    let mut tx = store.begin().await.unwrap();
    let locked = tx
        .order_for_update(first.id)
        .await
        .unwrap()
        .expect("order_for_update finds it");
    assert_eq!(
        locked, first,
        "order_for_update returns the order with its lines"
    );
    assert!(
        tx.order_for_update(uuid::Uuid::now_v7())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        tx.order_status_for_update(first.id).await.unwrap(),
        Some(first.status)
    );
    assert_eq!(
        tx.order_status_for_update(uuid::Uuid::now_v7())
            .await
            .unwrap(),
        None
    );
    let steps = [
        OrderStatus::Reserved,
        OrderStatus::Paid,
        OrderStatus::Confirmed,
    ];
    tx.set_order_status(first.id, &steps, at).await.unwrap();
    tx.commit().await.unwrap();
    let (stored, history) = store.order(first.id).await.unwrap().unwrap();
    assert_eq!(stored.status, OrderStatus::Confirmed);
    assert_eq!(stored.updated_at, at);
    assert_eq!(stored.created_at, t0, "created_at never changes");
    let walked: Vec<_> = history.iter().map(|h| h.status).collect();
    assert_eq!(
        walked,
        vec![
            OrderStatus::Pending,
            OrderStatus::Reserved,
            OrderStatus::Paid,
            OrderStatus::Confirmed
        ],
        "one history entry per step, in order"
    );
    assert!(history[1..].iter().all(|h| h.at == at));

    // A rolled-back transition leaves no trace.
    let mut tx = store.begin().await.unwrap();
    tx.set_order_status(second.id, &[OrderStatus::Cancelled], at)
        .await
        .unwrap();
    drop(tx);
    let (stored, history) = store.order(second.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.status, history.len()),
        (OrderStatus::Pending, 1),
        "rollback undoes the transition"
    );

    // Newest first, only the user's own, paged by an order id cursor.
    let ids = |orders: Vec<orderflow_domain::order::Order>| {
        orders.into_iter().map(|o| o.id).collect::<Vec<_>>()
    };
    let all = store.orders_of_user(ann.id, None, 10).await.unwrap();
    assert_eq!(
        all.iter().find(|o| o.id == third.id),
        Some(&third),
        "listed orders carry their lines"
    );
    assert_eq!(
        ids(all),
        vec![third.id, second.id, first.id],
        "newest first, own orders only"
    );
    let page = store.orders_of_user(ann.id, None, 2).await.unwrap();
    assert_eq!(ids(page), vec![third.id, second.id]);
    let next = store
        .orders_of_user(ann.id, Some(second.id), 2)
        .await
        .unwrap();
    assert_eq!(
        ids(next),
        vec![first.id],
        "orders created strictly before the cursor"
    );
    assert!(
        store
            .orders_of_user(ann.id, Some(first.id), 2)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .orders_of_user(uuid::Uuid::now_v7(), None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    let mut counts = store.count_orders_by_status().await.unwrap();
    counts.sort_by_key(|(status, _)| status.as_str());
    assert_eq!(
        counts,
        vec![(OrderStatus::Confirmed, 1), (OrderStatus::Pending, 3)]
    );
}

/// Idempotency keys: claimed once, then the saved answer comes back.
pub async fn idempotency(store: Arc<dyn Store>) {
    let user = given_user(&store, "Ann").await;
    let other = given_user(&store, "Bob").await;
    let body = serde_json::json!({"order_id": "x", "status": "pending"});

    let mut tx = store.begin().await.unwrap();
    assert_eq!(
        claim(&mut tx, user.id, "k1", "hash-a").await,
        IdempotencyClaim::Claimed
    );
    tx.complete_idempotency_key(user.id, "k1", 201, &body)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    let expected = IdempotencyRecord {
        request_hash: "hash-a".into(),
        response_status: 201,
        response_body: body.clone(),
    };
    assert_eq!(
        claim(&mut tx, user.id, "k1", "hash-a").await,
        IdempotencyClaim::Existing(expected.clone()),
        "a used key answers with what was saved"
    );
    assert_eq!(
        claim(&mut tx, user.id, "k1", "hash-b").await,
        IdempotencyClaim::Existing(expected),
        "the saved request hash comes back, so callers can tell key reuse"
    );
    assert_eq!(
        claim(&mut tx, other.id, "k1", "hash-a").await,
        IdempotencyClaim::Claimed,
        "keys are per user"
    );
    drop(tx);

    // A claim that is rolled back is forgotten.
    let mut tx = store.begin().await.unwrap();
    assert_eq!(
        claim(&mut tx, user.id, "k2", "hash-c").await,
        IdempotencyClaim::Claimed
    );
    drop(tx);
    let mut tx = store.begin().await.unwrap();
    assert_eq!(
        claim(&mut tx, user.id, "k2", "hash-c").await,
        IdempotencyClaim::Claimed,
        "a rolled-back claim must not hold the key"
    );
    drop(tx);
}

async fn claim_and_answer(
    store: Arc<dyn Store>,
    user_id: uuid::Uuid,
    key: String,
    claimed_tx: Option<oneshot::Sender<()>>,
) -> IdempotencyClaim {
    let mut tx = store.begin().await.expect("begin");
    let claim = tx
        .claim_idempotency_key(user_id, &key, "hash")
        .await
        .expect("claim");
    if claim == IdempotencyClaim::Claimed {
        if let Some(claimed) = claimed_tx {
            let _ = claimed.send(());
            // Deliberate: keep the claim open a moment so the other task's
            // claim really runs while this transaction is uncommitted.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tx.complete_idempotency_key(user_id, &key, 201, &serde_json::json!({ "key": key }))
            .await
            .expect("complete");
    }
    tx.commit().await.expect("commit");
    claim
}

/// Two requests with one key at once: exactly one is `Claimed`; the other
/// waits for it and sees its answer.
pub async fn concurrent_idempotency_claims(store: Arc<dyn Store>) {
    let user = given_user(&store, "Ann").await;

    // The loser starts while the winner's claim is open and uncommitted.
    let (claimed, wait_for_claim) = oneshot::channel();
    let winner = tokio::spawn(claim_and_answer(
        store.clone(),
        user.id,
        "overlap".into(),
        Some(claimed),
    ));
    wait_for_claim.await.expect("the first task claims the key");
    let loser = claim_and_answer(store.clone(), user.id, "overlap".into(), None).await;
    assert_eq!(winner.await.unwrap(), IdempotencyClaim::Claimed);
    match loser {
        IdempotencyClaim::Existing(record) => assert_eq!(
            (record.response_status, record.response_body),
            (201, serde_json::json!({"key": "overlap"})),
            "the loser must see the winner's committed answer"
        ),
        other => panic!("a second claim of an open key must end as Existing, got {other:?}"),
    }

    // Free-for-all: two tasks released together, ten keys.
    for round in 0..10 {
        let key = format!("race-{round}");
        let barrier = Arc::new(Barrier::new(2));
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let (store, barrier, key) = (store.clone(), barrier.clone(), key.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    claim_and_answer(store, user.id, key, None).await
                })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.expect("claim task"));
        }
        let claimed = results
            .iter()
            .filter(|r| **r == IdempotencyClaim::Claimed)
            .count();
        assert_eq!(claimed, 1, "exactly one claim of {key} wins: {results:?}");
        assert!(
            results.iter().any(
                |r| matches!(r, IdempotencyClaim::Existing(rec) if rec.response_status == 201)
            ),
            "the other sees the completed answer: {results:?}"
        );
    }
}

/// `store.rotate_refresh_token(…)`'s answer.
async fn rotation(
    store: &Arc<dyn Store>,
    old_hash: &str,
    new_hash: &str,
    at: orderflow_domain::Timestamp,
    expires: orderflow_domain::Timestamp,
) -> RefreshRotation {
    store
        .rotate_refresh_token(old_hash, new_hash, at, expires)
        .await
        .unwrap()
}

/// The ids of `items`, sorted.
fn ids_sorted<T>(items: Vec<T>, id: impl Fn(&T) -> uuid::Uuid) -> Vec<uuid::Uuid> {
    let mut ids: Vec<_> = items.iter().map(id).collect();
    ids.sort();
    ids
}

/// `tx`'s claim of idempotency key `key` of `user_id` for a request hashed
/// `hash`.
async fn claim(
    tx: &mut Box<dyn StoreTx>,
    user_id: uuid::Uuid,
    key: &str,
    hash: &str,
) -> IdempotencyClaim {
    tx.claim_idempotency_key(user_id, key, hash).await.unwrap()
}

/// A reservation of `lines` for `order_id` in a transaction of its own,
/// committed.
async fn reserve_committed(
    store: &Arc<dyn Store>,
    order_id: uuid::Uuid,
    lines: &[(uuid::Uuid, u32)],
) -> Reservation {
    let mut tx = store.begin().await.unwrap();
    let outcome = tx.reserve_stock(order_id, lines).await.unwrap();
    tx.commit().await.unwrap();
    outcome
}

/// How many rows `store.prune(what, before, limit)` deleted.
async fn pruned(
    store: &Arc<dyn Store>,
    what: crate::ports::store::Prunable<'_>,
    before: orderflow_domain::Timestamp,
    limit: u32,
) -> u64 {
    store.prune(what, before, limit).await.unwrap()
}

/// The product `id` as stored; it exists.
async fn stored(store: &Arc<dyn Store>, id: uuid::Uuid) -> orderflow_domain::product::Product {
    store
        .product(id)
        .await
        .unwrap()
        .expect("the product exists")
}

async fn stock_of(store: &Arc<dyn Store>, product_id: uuid::Uuid) -> i64 {
    stored(store, product_id).await.stock
}

/// The stocks of products `a` and `b`.
async fn stocks_of(store: &Arc<dyn Store>, a: uuid::Uuid, b: uuid::Uuid) -> (i64, i64) {
    (stock_of(store, a).await, stock_of(store, b).await)
}

/// The stock a reservation left, per product in id order; panics unless
/// every line was reserved.
fn stock_left(outcome: Reservation) -> Vec<(uuid::Uuid, i64)> {
    match outcome {
        Reservation::Reserved { products } => products.iter().map(|p| (p.id, p.stock)).collect(),
        other => panic!("expected every line reserved, got {other:?}"),
    }
}

/// Stock: all lines or none, never below zero, once per order, released once.
pub async fn stock_reservation(store: Arc<dyn Store>) {
    let user = given_user(&store, "Ann").await;
    let mug = given_product(&store, 5).await;
    let cup = given_product(&store, 2).await;
    let order = given_order(&store, user.id, &[(&mug, 3), (&cup, 2)]).await;

    let reserve = |lines: Vec<(uuid::Uuid, u32)>, order_id: uuid::Uuid| {
        let store = store.clone();
        async move {
            let mut tx = store.begin().await.unwrap();
            let outcome = tx.reserve_stock(order_id, &lines).await.unwrap();
            tx.commit().await.unwrap();
            outcome
        }
    };

    // One line short: nothing changes.
    assert_eq!(
        reserve(vec![(mug.id, 3), (cup.id, 3)], order.id).await,
        Reservation::Insufficient {
            product_id: cup.id,
            available: 2,
            requested: 3
        }
    );
    assert_eq!(
        stocks_of(&store, mug.id, cup.id).await,
        (5, 2),
        "all or nothing"
    );

    let unknown = uuid::Uuid::now_v7();
    assert_eq!(
        reserve(vec![(mug.id, 1), (unknown, 1)], order.id).await,
        Reservation::UnknownProduct {
            product_id: unknown
        }
    );
    assert_eq!(
        stock_of(&store, mug.id).await,
        5,
        "an unknown product changes nothing"
    );

    // A rolled-back reservation gives everything back.
    let mut tx = store.begin().await.unwrap();
    assert_eq!(
        stock_left(
            tx.reserve_stock(order.id, &[(mug.id, 3), (cup.id, 2)])
                .await
                .unwrap()
        ),
        vec![(mug.id, 2), (cup.id, 0)]
    );
    drop(tx);
    assert_eq!(stocks_of(&store, mug.id, cup.id).await, (5, 2), "rollback");

    // Exactly to zero is fine.
    assert_eq!(
        stock_left(reserve(vec![(mug.id, 3), (cup.id, 2)], order.id).await),
        vec![(mug.id, 2), (cup.id, 0)]
    );
    assert_eq!(stocks_of(&store, mug.id, cup.id).await, (2, 0));

    // A redelivery does not take stock again.
    assert_eq!(
        reserve(vec![(mug.id, 3), (cup.id, 2)], order.id).await,
        Reservation::AlreadyReserved
    );
    assert_eq!(stocks_of(&store, mug.id, cup.id).await, (2, 0));

    // Another order cannot go below zero.
    let second = given_order(&store, user.id, &[(&cup, 1)]).await;
    assert_eq!(
        reserve(vec![(cup.id, 1)], second.id).await,
        Reservation::Insufficient {
            product_id: cup.id,
            available: 0,
            requested: 1
        }
    );

    // Release gives back exactly what was taken, once.
    let mut tx = store.begin().await.unwrap();
    assert!(tx.release_stock(order.id).await.unwrap(), "first release");
    assert!(
        !tx.release_stock(order.id).await.unwrap(),
        "second release in the same transaction"
    );
    tx.commit().await.unwrap();
    assert_eq!(stocks_of(&store, mug.id, cup.id).await, (5, 2));
    let mut tx = store.begin().await.unwrap();
    assert!(
        !tx.release_stock(order.id).await.unwrap(),
        "a redelivered release gives nothing back"
    );
    assert!(
        !tx.release_stock(second.id).await.unwrap(),
        "nothing reserved, nothing released"
    );
    tx.commit().await.unwrap();
    assert_eq!(stocks_of(&store, mug.id, cup.id).await, (5, 2));

    // A released order stays settled: a late redelivery does not re-reserve.
    assert_eq!(
        reserve(vec![(mug.id, 3)], order.id).await,
        Reservation::AlreadyReserved
    );
    assert_eq!(stock_of(&store, mug.id).await, 5);
}

/// Search: every word a prefix of a word of the name, description or
/// category, all of them; the filters; each order; pages; the index
/// follows edits and imports; the category list counts.
pub async fn product_search(store: Arc<dyn Store>) {
    let at = now();
    let add = |name: &str, price: i64, description: &str, category: Option<&str>| {
        let store = store.clone();
        let draft = draft(name, price, 5)
            .described(description, category)
            .unwrap();
        async move {
            store
                .insert_product(uuid::Uuid::now_v7(), &draft, at)
                .await
                .unwrap()
        }
    };
    let mug = add(
        "Blue Coffee Mug",
        1_200,
        "Stoneware, holds 300 ml.",
        Some("Kitchen"),
    )
    .await;
    let kettle = add(
        "Kettle",
        4_500,
        "Boils water for coffee and tea.",
        Some("Kitchen"),
    )
    .await;
    let lamp = add("Desk Lamp", 3_000, "Warm light, blue shade.", Some("Home")).await;
    let pen = add("Fountain Pen", 800, "", None).await;
    let search = |q: &str| ProductSearch {
        words: search_words(q),
        category: None,
        min_price_cents: None,
        max_price_cents: None,
        sort: ProductSort::Relevance,
        offset: 0,
        limit: 50,
    };
    let found = |search: ProductSearch| {
        let store = store.clone();
        async move {
            let mut ids = store.search_products(&search).await.unwrap();
            if search.sort == ProductSort::Relevance {
                ids.sort();
            }
            ids
        }
    };

    // Words: prefixes, any field, case folded, all must match.
    assert_eq!(found(search("coff")).await, vec![mug.id, kettle.id]);
    assert_eq!(found(search("BLUE")).await, vec![mug.id, lamp.id]);
    assert_eq!(found(search("blue mug")).await, vec![mug.id]);
    assert_eq!(found(search("kitchen")).await, vec![mug.id, kettle.id]);
    assert_eq!(found(search("blue tea")).await, Vec::<uuid::Uuid>::new());
    assert_eq!(found(search("")).await.len(), 4, "no words: everything");
    // Filters, with or without words.
    let kitchen = ProductSearch {
        category: Some("Kitchen".into()),
        ..search("")
    };
    assert_eq!(found(kitchen.clone()).await, vec![mug.id, kettle.id]);
    let cheap = ProductSearch {
        max_price_cents: Some(3_000),
        min_price_cents: Some(1_000),
        ..search("")
    };
    assert_eq!(found(cheap).await, vec![mug.id, lamp.id]);
    let water = ProductSearch {
        category: Some("Home".into()),
        ..search("water")
    };
    assert_eq!(found(water).await, Vec::<uuid::Uuid>::new());
    // Orders and pages.
    let sorted = |sort| ProductSearch { sort, ..search("") };
    assert_eq!(
        found(sorted(ProductSort::PriceAsc)).await,
        vec![pen.id, mug.id, lamp.id, kettle.id]
    );
    assert_eq!(
        found(sorted(ProductSort::PriceDesc)).await,
        vec![kettle.id, lamp.id, mug.id, pen.id]
    );
    assert_eq!(
        found(sorted(ProductSort::Name)).await,
        vec![mug.id, lamp.id, pen.id, kettle.id]
    );
    let page = ProductSearch {
        offset: 1,
        limit: 2,
        ..sorted(ProductSort::PriceAsc)
    };
    assert_eq!(found(page).await, vec![mug.id, lamp.id]);
    // The best match first: the word in the name and the category beats
    // the word once in a description.
    let ranked = store
        .search_products(&search("kettle coffee"))
        .await
        .unwrap();
    assert_eq!(ranked, vec![kettle.id]);
    let ranked = store.search_products(&search("blue")).await.unwrap();
    assert_eq!(ranked.len(), 2);

    // The index follows an edit and an import; stock changes leave it be.
    let renamed = ProductDraft::new(&lamp.sku, "Reading Light", 3_000, "EUR", 5)
        .unwrap()
        .described("Warm light.", Some("Home"))
        .unwrap();
    store.update_product(lamp.id, &renamed, at).await.unwrap();
    assert_eq!(found(search("desk")).await, Vec::<uuid::Uuid>::new());
    assert_eq!(found(search("reading")).await, vec![lamp.id]);
    assert_eq!(found(search("blue")).await, vec![mug.id]);
    let imported = ProductDraft::new(&pen.sku, "Fountain Pen", 800, "EUR", 5)
        .unwrap()
        .described("Fine nib, refillable.", Some("Stationery"))
        .unwrap();
    store
        .import_products(&[(uuid::Uuid::now_v7(), imported)], at)
        .await
        .unwrap();
    assert_eq!(found(search("nib")).await, vec![pen.id]);
    let order = given_order(&store, given_user(&store, "Ann").await.id, &[(&mug, 1)]).await;
    let mut tx = store.begin().await.unwrap();
    tx.reserve_stock(order.id, &[(mug.id, 1)]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(found(search("stoneware")).await, vec![mug.id]);

    assert_eq!(
        store.categories().await.unwrap(),
        vec![
            ("Home".to_owned(), 1),
            ("Kitchen".to_owned(), 2),
            ("Stationery".to_owned(), 1)
        ]
    );
    let read = store.product(pen.id).await.unwrap().unwrap();
    assert_eq!(read.description, "Fine nib, refillable.");
    assert_eq!(read.category.as_deref(), Some("Stationery"));
}

/// A cancelled order takes no stock, whichever comes first; a charge is
/// found for the refund, a refund (a negative row) is not a charge.
pub async fn cancelled_orders(store: Arc<dyn Store>) {
    let user = given_user(&store, "Ann").await;
    let mug = given_product(&store, 5).await;
    let at = chrono::Utc::now();

    // Cancelled before the reservation: the reservation takes nothing.
    let early = given_order(&store, user.id, &[(&mug, 2)]).await;
    let mut tx = store.begin().await.unwrap();
    tx.set_order_status(early.id, &[OrderStatus::Cancelled], at)
        .await
        .unwrap();
    assert!(
        !tx.release_stock(early.id).await.unwrap(),
        "nothing to give back"
    );
    tx.commit().await.unwrap();
    assert_eq!(
        reserve_committed(&store, early.id, &[(mug.id, 2)]).await,
        Reservation::OrderCancelled
    );
    assert_eq!(stock_of(&store, mug.id).await, 5);

    // Reserved, then cancelled: the cancellation gives it back, and a late
    // redelivery of the reservation takes nothing again.
    let late = given_order(&store, user.id, &[(&mug, 3)]).await;
    assert!(matches!(
        reserve_committed(&store, late.id, &[(mug.id, 3)]).await,
        Reservation::Reserved { .. }
    ));
    assert_eq!(stock_of(&store, mug.id).await, 2);
    let mut tx = store.begin().await.unwrap();
    assert!(tx.order_for_update(late.id).await.unwrap().is_some());
    tx.set_order_status(late.id, &[OrderStatus::Cancelled], at)
        .await
        .unwrap();
    assert!(tx.release_stock(late.id).await.unwrap());
    tx.commit().await.unwrap();
    assert_eq!(stock_of(&store, mug.id).await, 5);
    assert_eq!(
        reserve_committed(&store, late.id, &[(mug.id, 3)]).await,
        Reservation::AlreadyReserved
    );
    assert_eq!(stock_of(&store, mug.id).await, 5);

    // The charge a refund names: the successful one, never a declined
    // attempt or the refund itself.
    let payment = |succeeded: bool, reference: &str, amount_cents: i64| PaymentRecord {
        order_id: late.id,
        succeeded,
        reference: reference.into(),
        amount_cents,
        currency: "EUR".into(),
        at,
    };
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.charge_of(late.id).await.unwrap(), None);
    tx.record_payment(&payment(false, "card declined", 3_000))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.charge_of(late.id).await.unwrap(), None, "declined");
    tx.record_payment(&payment(true, "pay_1", 3_000))
        .await
        .unwrap();
    tx.record_payment(&payment(true, "pay_1", -3_000))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    assert_eq!(
        tx.charge_of(late.id).await.unwrap().as_deref(),
        Some("pay_1")
    );
    assert_eq!(tx.charge_of(early.id).await.unwrap(), None);
    tx.commit().await.unwrap();
}

/// Many orders racing for the last units: never oversold.
pub async fn concurrent_reservations(store: Arc<dyn Store>) {
    let user = given_user(&store, "Ann").await;
    for (stock, per_order, orders, expected_reserved) in
        [(5_i64, 1_u32, 20_usize, 5_usize), (7, 2, 10, 3)]
    {
        let product = given_product(&store, stock).await;
        let mut order_ids = Vec::new();
        for _ in 0..orders {
            order_ids.push(
                given_order(&store, user.id, &[(&product, per_order)])
                    .await
                    .id,
            );
        }
        let barrier = Arc::new(Barrier::new(orders));
        let tasks: Vec<_> = order_ids
            .into_iter()
            .map(|order_id| {
                let (store, barrier) = (store.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let mut tx = store.begin().await.expect("begin");
                    let outcome = tx
                        .reserve_stock(order_id, &[(product.id, per_order)])
                        .await
                        .expect("reserve");
                    tx.commit().await.expect("commit");
                    outcome
                })
            })
            .collect();
        let mut reserved = 0;
        for task in tasks {
            match task.await.expect("reservation task") {
                Reservation::Reserved { .. } => reserved += 1,
                Reservation::Insufficient { .. } => {}
                other => panic!("unexpected outcome {other:?}"),
            }
        }
        assert_eq!(
            reserved, expected_reserved,
            "{stock} units, {per_order} per order"
        );
        let left = stock_of(&store, product.id).await;
        assert_eq!(
            left,
            stock - i64::from(per_order) * expected_reserved as i64,
            "never oversold"
        );
        assert!(left >= 0);
    }
}

/// Processed marks: first true, then false; per group; rolled back = absent.
/// Marks in bulk: one answer per id, in order; an id repeated in the list
/// or marked before is not new; the marks roll back with the transaction
/// and are the same marks `mark_processed`, `is_processed` and
/// `processed_among` see.
pub async fn processed_marks_in_bulk(store: Arc<dyn Store>) {
    let (a, b, c) = (
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
    );
    let mut tx = store.begin().await.unwrap();
    assert_eq!(
        tx.mark_processed_many("email", &[a, b, a]).await.unwrap(),
        vec![true, true, false],
        "a repeated id is marked once"
    );
    drop(tx);
    assert_not_processed(&store, a, "rolled-back bulk marks are not kept").await;

    let mut tx = store.begin().await.unwrap();
    assert!(tx.mark_processed("email", a).await.unwrap());
    assert_eq!(
        tx.mark_processed_many("email", &[c, a, b]).await.unwrap(),
        vec![true, false, true],
        "an id marked earlier in the transaction is not new"
    );
    assert_eq!(
        tx.mark_processed_many("email", &[]).await.unwrap(),
        Vec::<bool>::new()
    );
    tx.commit().await.unwrap();
    for id in [a, b, c] {
        assert!(store.is_processed("email", id).await.unwrap());
        assert!(!store.is_processed("sms", id).await.unwrap());
    }
    let unmarked = uuid::Uuid::now_v7();
    assert_eq!(
        store
            .processed_among("email", &[unmarked, b, a, b])
            .await
            .unwrap(),
        [a, b].into_iter().collect(),
        "the marked ones among many, in one lookup"
    );
    assert!(
        store
            .processed_among("sms", &[a, b, c])
            .await
            .unwrap()
            .is_empty(),
        "another group's marks are not this one's"
    );
    assert!(
        store
            .processed_among("email", &[])
            .await
            .unwrap()
            .is_empty()
    );

    let mut tx = store.begin().await.unwrap();
    assert_eq!(
        tx.mark_processed_many("sms", &[b, a]).await.unwrap(),
        vec![true, true],
        "groups are independent"
    );
    assert!(!tx.mark_processed("sms", a).await.unwrap());
    tx.commit().await.unwrap();
}

/// `event` is not marked processed for the `email` group (`why`).
async fn assert_not_processed(store: &Arc<dyn Store>, event: uuid::Uuid, why: &str) {
    assert!(!store.is_processed("email", event).await.unwrap(), "{why}");
}

pub async fn processed_marks(store: Arc<dyn Store>) {
    let event = uuid::Uuid::now_v7();
    assert!(!store.is_processed("email", event).await.unwrap());

    let mut tx = store.begin().await.unwrap();
    assert!(
        tx.mark_processed("email", event).await.unwrap(),
        "first mark"
    );
    drop(tx);
    assert_not_processed(&store, event, "a rolled-back mark is not kept").await;

    let mut tx = store.begin().await.unwrap();
    assert!(
        tx.mark_processed("email", event).await.unwrap(),
        "first mark"
    );
    assert!(
        !tx.mark_processed("email", event).await.unwrap(),
        "second mark in the same transaction"
    );
    tx.commit().await.unwrap();
    assert!(store.is_processed("email", event).await.unwrap());

    let mut tx = store.begin().await.unwrap();
    assert!(
        !tx.mark_processed("email", event).await.unwrap(),
        "redelivered event is recognised"
    );
    assert!(
        tx.mark_processed("sms", event).await.unwrap(),
        "groups are independent"
    );
    tx.commit().await.unwrap();
    assert!(store.is_processed("sms", event).await.unwrap());
    assert!(!store.is_processed("push", event).await.unwrap());
}

/// Savepoints, as the consumer runtime's group commit uses them: each
/// effect in its own savepoint of one background transaction; the one rolled
/// back leaves no trace (its mark, its stock, its events), its neighbours
/// commit.
pub async fn savepoints_undo_one_effect(store: Arc<dyn Store>) {
    let user = given_user(&store, "Ann").await;
    let mug = given_product(&store, 5).await;
    let kept = given_order(&store, user.id, &[(&mug, 2)]).await;
    let undone = given_order(&store, user.id, &[(&mug, 3)]).await;
    let (first, second, third) = (
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
    );

    let mut tx = store.begin_group_commit("inventory").await.unwrap();
    tx.savepoint().await.unwrap();
    assert!(tx.mark_processed("inventory", first).await.unwrap());
    assert_eq!(
        stock_left(tx.reserve_stock(kept.id, &[(mug.id, 2)]).await.unwrap()),
        vec![(mug.id, 3)]
    );
    tx.release_savepoint().await.unwrap();

    tx.savepoint().await.unwrap();
    assert!(tx.mark_processed("inventory", second).await.unwrap());
    assert_eq!(
        stock_left(tx.reserve_stock(undone.id, &[(mug.id, 3)]).await.unwrap()),
        vec![(mug.id, 0)]
    );
    tx.append(&[user_registered(user.id)]).await.unwrap();
    tx.rollback_to_savepoint().await.unwrap();

    tx.savepoint().await.unwrap();
    assert!(tx.mark_processed("inventory", third).await.unwrap());
    tx.release_savepoint().await.unwrap();
    tx.commit().await.unwrap();

    assert!(store.is_processed("inventory", first).await.unwrap());
    assert!(
        !store.is_processed("inventory", second).await.unwrap(),
        "the rolled-back mark is gone"
    );
    assert!(store.is_processed("inventory", third).await.unwrap());
    let stock = store.product(mug.id).await.unwrap().unwrap().stock;
    assert_eq!(stock, 3, "only the kept reservation took stock");

    // The undone order can still be reserved: its reservation left nothing.
    let mut tx = store.begin().await.unwrap();
    assert_eq!(
        stock_left(tx.reserve_stock(undone.id, &[(mug.id, 3)]).await.unwrap()),
        vec![(mug.id, 0)]
    );
    tx.commit().await.unwrap();
    assert_eq!(store.product(mug.id).await.unwrap().unwrap().stock, 0);
}

/// Read models: notifications, payments, points, leaderboard, daily sales.
pub async fn read_models(store: Arc<dyn Store>) {
    let ann = given_user(&store, "Ann").await;
    let bob = given_user(&store, "Bob").await;
    let cid = given_user(&store, "Cid").await;
    let dee = given_user(&store, "Dee").await;
    let mug = given_product(&store, 100).await;
    let order = given_order(&store, ann.id, &[(&mug, 4)]).await;

    // Notifications, newest first.
    let t0 = now();
    let note = |user_id, channel, kind, order_id, at| NotificationRecord {
        user_id,
        channel,
        kind,
        order_id,
        sent_at: at,
    };
    let n1 = note(ann.id, Channel::Email, NotificationKind::Welcome, None, t0);
    let n2 = note(
        ann.id,
        Channel::Sms,
        NotificationKind::OrderConfirmed,
        Some(order.id),
        t0 + secs(1),
    );
    let n3 = note(
        ann.id,
        Channel::Push,
        NotificationKind::OrderConfirmed,
        Some(order.id),
        t0 + secs(2),
    );
    let n4 = note(bob.id, Channel::Email, NotificationKind::Welcome, None, t0);
    let mut tx = store.begin().await.unwrap();
    for n in [&n1, &n2, &n3, &n4] {
        tx.record_notification(n).await.unwrap();
    }
    tx.record_payment(&PaymentRecord {
        order_id: order.id,
        succeeded: true,
        reference: "pay_123".into(),
        amount_cents: order.total_cents,
        currency: "EUR".into(),
        at: t0,
    })
    .await
    .expect("record a payment");
    tx.commit().await.unwrap();
    assert_eq!(
        store.notifications_of_user(ann.id, 10).await.unwrap(),
        vec![n3.clone(), n2.clone(), n1]
    );
    assert_eq!(
        store.notifications_of_user(ann.id, 2).await.unwrap(),
        vec![n3, n2],
        "limit"
    );
    assert_eq!(
        store.notifications_of_user(bob.id, 10).await.unwrap(),
        vec![n4]
    );

    // Points: Bob 120, Ann 50, Cid 50 (tied), Dee back to 0.
    let mut tx = store.begin().await.unwrap();
    tx.add_points(ann.id, 30).await.unwrap();
    tx.add_points(ann.id, 20).await.unwrap();
    tx.add_points(bob.id, 120).await.unwrap();
    tx.add_points(cid.id, 50).await.unwrap();
    tx.add_points(dee.id, 10).await.unwrap();
    tx.add_points(dee.id, -10).await.unwrap();
    tx.commit().await.unwrap();
    let standing = |points, rank| crate::ports::store::PointsStanding { points, rank };
    assert_eq!(store.points(bob.id).await.unwrap(), standing(120, Some(1)));
    assert_eq!(store.points(ann.id).await.unwrap(), standing(50, Some(2)));
    assert_eq!(
        store.points(cid.id).await.unwrap(),
        standing(50, Some(2)),
        "ties share a rank"
    );
    assert_eq!(
        store.points(dee.id).await.unwrap(),
        standing(0, None),
        "no points, no rank"
    );
    assert_eq!(
        store.points(uuid::Uuid::now_v7()).await.unwrap(),
        standing(0, None)
    );
    // The balance alone: the standing's points, 0 for a stranger.
    for (user, points) in [(&bob, 120), (&ann, 50), (&cid, 50), (&dee, 0)] {
        assert_eq!(store.point_balance(user.id).await.unwrap(), points);
    }
    assert_eq!(store.point_balance(uuid::Uuid::now_v7()).await.unwrap(), 0);

    let board = store.leaderboard(10).await.unwrap();
    let (first_tied, second_tied) = if ann.id < cid.id {
        (&ann, &cid)
    } else {
        (&cid, &ann)
    };
    let rows: Vec<_> = board
        .iter()
        .map(|e| (e.user_id, e.name.as_str(), e.points, e.rank))
        .collect();
    assert_eq!(
        rows,
        vec![
            (bob.id, "Bob", 120, 1),
            (first_tied.id, first_tied.name.as_str(), 50, 2),
            (second_tied.id, second_tied.name.as_str(), 50, 2),
        ],
        "points desc, then user id; users without points are left out"
    );
    assert_eq!(store.leaderboard(1).await.unwrap().len(), 1, "limit");

    // Daily sales: the last N UTC days, per currency.
    let at = now();
    let today = at.date_naive();
    let yesterday = today.pred_opt().unwrap();
    let usd = {
        let mut o = order_of(ann.id, &[(&mug, 1)], now());
        o.currency = orderflow_domain::money::Currency::parse("USD").unwrap();
        o.total_cents = 700;
        o
    };
    let mut tx = store.begin().await.unwrap();
    tx.record_sale(&order, at).await.unwrap();
    tx.record_sale(&order, at).await.unwrap();
    tx.record_sale(&usd, at).await.unwrap();
    tx.record_sale(&order, at - chrono::Duration::days(1))
        .await
        .unwrap();
    tx.record_sale(&order, at - chrono::Duration::days(30))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut sales: Vec<_> = store
        .daily_sales(7)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.day, d.currency, d.orders, d.revenue_cents))
        .collect();
    sales.sort();
    let total = order.total_cents;
    let mut expected = vec![
        (today, "EUR".to_owned(), 2, 2 * total),
        (today, "USD".to_owned(), 1, 700),
        (yesterday, "EUR".to_owned(), 1, total),
    ];
    expected.sort();
    assert_eq!(
        sales, expected,
        "daily_sales(7) sums per day and currency over the last 7 days"
    );
    assert!(
        store
            .daily_sales(1)
            .await
            .unwrap()
            .iter()
            .all(|d| d.day == today),
        "daily_sales(1) is today only"
    );
}

/// Revenue in tumbling windows of event time, a minute and a day wide, per
/// currency; the top products by revenue over a range, per currency.
pub async fn sales_windows(store: Arc<dyn Store>) {
    use orderflow_domain::sales::{Granularity, WindowRange};
    let ann = given_user(&store, "Ann").await;
    let mug = given_product(&store, 100).await; // 2.50
    let pen = store
        .insert_product(uuid::Uuid::now_v7(), &draft("Pen", 120, 100), now())
        .await
        .unwrap();
    let at = |text: &str| -> orderflow_domain::Timestamp { text.parse().unwrap() };
    let mugs_and_pen = order_of(ann.id, &[(&mug, 2), (&pen, 1)], now()); // 6.20, 3 units
    let pens = order_of(ann.id, &[(&pen, 3)], now()); // 3.60, 3 units
    let usd = {
        let mut o = order_of(ann.id, &[(&mug, 1)], now());
        o.currency = orderflow_domain::money::Currency::parse("USD").unwrap();
        o
    };
    let mut tx = store.begin().await.unwrap();
    for (sale, when) in [
        (&mugs_and_pen, "2026-03-01T23:58:30Z"),
        (&pens, "2026-03-01T23:58:59.999Z"),
        (&usd, "2026-03-01T23:58:30Z"),
        (&mugs_and_pen, "2026-03-01T23:59:00Z"),
        (&pens, "2026-03-02T00:00:00Z"),
    ] {
        tx.record_sale(sale, at(when)).await.unwrap();
    }
    tx.commit().await.unwrap();

    // The ranges read more than once: every minute window, every day window.
    let minutes = ("2026-03-01T23:58:00Z", "2026-03-02T00:01:00Z");
    let days = ("2026-03-01T00:00:00Z", "2026-03-03T00:00:00Z");
    let windows = |granularity, (from, to): (&str, &str)| {
        let store = store.clone();
        let range = WindowRange::new(granularity, at(from), at(to)).unwrap();
        async move {
            store
                .sales(range)
                .await
                .unwrap()
                .into_iter()
                .map(|w| {
                    assert_eq!(w.granularity, granularity);
                    (
                        w.window_start.to_rfc3339(),
                        w.currency,
                        w.orders,
                        w.units,
                        w.revenue_cents,
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let row = |start: &str, currency: &str, orders, units, revenue| {
        (
            at(start).to_rfc3339(),
            currency.to_owned(),
            orders,
            units,
            revenue,
        )
    };
    assert_eq!(
        windows(Granularity::Minute, minutes).await,
        [
            row("2026-03-01T23:58:00Z", "EUR", 2, 6, 980),
            row("2026-03-01T23:58:00Z", "USD", 1, 1, 250),
            row("2026-03-01T23:59:00Z", "EUR", 1, 3, 620),
            row("2026-03-02T00:00:00Z", "EUR", 1, 3, 360),
        ],
        "minute windows: half-open, oldest first, per currency"
    );
    assert_eq!(
        windows(
            Granularity::Minute,
            ("2026-03-01T23:59:00Z", "2026-03-02T00:00:00Z")
        )
        .await,
        [row("2026-03-01T23:59:00Z", "EUR", 1, 3, 620)],
        "a range reads the windows that start in it"
    );
    assert_eq!(
        windows(Granularity::Day, days).await,
        [
            row("2026-03-01T00:00:00Z", "EUR", 3, 9, 1600),
            row("2026-03-01T00:00:00Z", "USD", 1, 1, 250),
            row("2026-03-02T00:00:00Z", "EUR", 1, 3, 360),
        ],
        "day windows start at midnight UTC"
    );

    let top = |granularity, (from, to): (&str, &str), top: u32| {
        let store = store.clone();
        let range = WindowRange::new(granularity, at(from), at(to)).unwrap();
        async move {
            store
                .top_products(range, top)
                .await
                .unwrap()
                .into_iter()
                .map(|p| {
                    (
                        p.name.unwrap_or_default(),
                        p.currency,
                        p.orders,
                        p.units,
                        p.revenue_cents,
                        p.place,
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let product = |name: &str, currency: &str, orders, units, revenue, place| {
        (
            name.to_owned(),
            currency.to_owned(),
            orders,
            units,
            revenue,
            place,
        )
    };
    for (granularity, range, most, expected, why) in [
        (
            Granularity::Day,
            days,
            2,
            vec![
                product("Mug", "EUR", 2, 4, 1000, 1),
                product("Pen", "EUR", 4, 8, 960, 2),
                product("Mug", "USD", 1, 1, 250, 1),
            ],
            "by revenue, per currency",
        ),
        (
            Granularity::Day,
            days,
            1,
            vec![
                product("Mug", "EUR", 2, 4, 1000, 1),
                product("Mug", "USD", 1, 1, 250, 1),
            ],
            "the first `top` of each currency",
        ),
        (
            Granularity::Minute,
            ("2026-03-01T23:59:00Z", "2026-03-02T00:01:00Z"),
            5,
            vec![
                product("Mug", "EUR", 1, 2, 500, 1),
                product("Pen", "EUR", 2, 4, 480, 2),
            ],
            "over the windows that start in the range only",
        ),
    ] {
        assert_eq!(top(granularity, range, most).await, expected, "{why}");
    }

    // Retention: minute windows that start before the cut-off go, up to
    // `limit` rows of each table a batch; day windows stay.
    use crate::ports::store::Prunable;
    let cut_off = at("2026-03-01T23:59:00Z");
    let mut batches = Vec::new();
    for _ in 0..3 {
        batches.push(pruned(&store, Prunable::MinuteWindows, cut_off, 2).await);
    }
    assert_eq!(
        batches,
        [4, 1, 0],
        "3 product rows and 2 totals of 23:58, two of each per batch"
    );
    assert_eq!(
        windows(Granularity::Minute, minutes).await,
        [
            row("2026-03-01T23:59:00Z", "EUR", 1, 3, 620),
            row("2026-03-02T00:00:00Z", "EUR", 1, 3, 360),
        ]
    );
    assert!(
        top(
            Granularity::Minute,
            ("2026-03-01T23:58:00Z", "2026-03-01T23:59:00Z"),
            5
        )
        .await
        .is_empty()
    );
    assert_eq!(
        windows(Granularity::Day, days).await.len(),
        3,
        "day windows are kept"
    );
}

fn dead_letter_of(group: &str, offset: i64, at: orderflow_domain::Timestamp) -> DeadLetter {
    DeadLetter {
        id: uuid::Uuid::now_v7(),
        group: group.to_owned(),
        topic: "user.events".into(),
        partition: 3,
        offset,
        error: "smtp down".into(),
        attempts: 5,
        event: user_registered(uuid::Uuid::now_v7()),
        failed_at: at,
        replayed_at: None,
    }
}

/// Dead letters: stored with their original event, listed newest first,
/// replayed once; one per (group, event) until it is replayed.
pub async fn dead_letters(store: Arc<dyn Store>) {
    let t0 = now();
    let older = dead_letter_of("email", 7, t0);
    let newer = dead_letter_of("sms", 8, t0 + secs(1));
    let mut tx = store.begin().await.unwrap();
    assert!(tx.insert_dead_letter(&older).await.unwrap());
    assert!(tx.insert_dead_letter(&newer).await.unwrap());
    tx.commit().await.unwrap();
    // The same event failed again by the same group (redelivered after a
    // crash that came before the offset commit): not filed twice. Another
    // group's failure of it is its own.
    let twin = DeadLetter {
        id: uuid::Uuid::now_v7(),
        failed_at: t0 + secs(2),
        ..older.clone()
    };
    let other_group = DeadLetter {
        id: uuid::Uuid::now_v7(),
        group: "push".into(),
        ..older.clone()
    };
    let mut tx = store.begin().await.unwrap();
    assert!(!tx.insert_dead_letter(&twin).await.unwrap(), "filed once");
    assert!(tx.insert_dead_letter(&other_group).await.unwrap());
    tx.commit().await.unwrap();
    assert_eq!(store.dead_letter(twin.id).await.unwrap(), None);
    let mut tx = store.begin().await.unwrap();
    assert!(
        tx.mark_dead_letter_replayed(other_group.id, t0 + secs(3))
            .await
            .unwrap()
    );
    // Replayed, the event may fail and be filed again.
    let after_replay = DeadLetter {
        id: uuid::Uuid::now_v7(),
        failed_at: t0 + secs(4),
        ..other_group.clone()
    };
    assert!(tx.insert_dead_letter(&after_replay).await.unwrap());
    // Kept out of the listings below: replayed too.
    assert!(
        tx.mark_dead_letter_replayed(after_replay.id, t0 + secs(5))
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();

    assert_eq!(
        store.dead_letter(older.id).await.unwrap(),
        Some(older.clone()),
        "round-trip, event included"
    );
    assert_eq!(store.dead_letter(uuid::Uuid::now_v7()).await.unwrap(), None);
    assert_eq!(
        store.dead_letters(10, false).await.unwrap(),
        vec![newer.clone(), older.clone()],
        "newest first"
    );
    assert_eq!(
        store.dead_letters(1, false).await.unwrap(),
        vec![newer.clone()],
        "limit"
    );
    assert_eq!(store.count_dead_letters().await.unwrap(), 2);

    let replayed_at = t0 + secs(60);
    let mut tx = store.begin().await.unwrap();
    assert!(
        tx.mark_dead_letter_replayed(older.id, replayed_at)
            .await
            .unwrap()
    );
    assert!(
        !tx.mark_dead_letter_replayed(older.id, replayed_at)
            .await
            .unwrap(),
        "replayed once"
    );
    assert!(
        !tx.mark_dead_letter_replayed(uuid::Uuid::now_v7(), replayed_at)
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();

    assert_eq!(
        store.dead_letters(10, false).await.unwrap(),
        vec![newer.clone()],
        "replayed ones are hidden"
    );
    let all = store.dead_letters(10, true).await.unwrap();
    assert_eq!(all.len(), 4, "include_replayed shows them");
    let replayed = all.iter().find(|letter| letter.id == older.id).unwrap();
    assert_eq!(replayed.replayed_at, Some(replayed_at));
    assert_eq!(
        store.count_dead_letters().await.unwrap(),
        1,
        "counts the ones still waiting"
    );
}

// --- product versions, imports, view counters (issue 11) ---

async fn version_of(store: &Arc<dyn Store>, id: uuid::Uuid) -> i64 {
    stored(store, id).await.version
}

/// The versions of products `a` and `b`.
async fn versions_of(store: &Arc<dyn Store>, a: uuid::Uuid, b: uuid::Uuid) -> (i64, i64) {
    (version_of(store, a).await, version_of(store, b).await)
}

/// Every change of a product's row, fields or stock, bumps its version once,
/// in the transaction that makes the change: an admin edit, a reservation,
/// a release. A rolled-back change bumps nothing. The caches rely on it.
pub async fn product_versions(store: Arc<dyn Store>) {
    let user = given_user(&store, "Ann").await;
    let mug = given_product(&store, 5).await;
    let cup = given_product(&store, 5).await;
    assert_eq!(mug.version, 1, "a new product starts at version 1");
    assert_eq!(version_of(&store, mug.id).await, 1);

    let edited = store
        .update_product(mug.id, &draft("Big mug", 300, 7), now())
        .await
        .unwrap()
        .expect("exists");
    assert_eq!(
        edited.version, 2,
        "an admin edit returns the bumped version"
    );
    assert_eq!(version_of(&store, mug.id).await, 2);

    let order = given_order(&store, user.id, &[(&edited, 2), (&cup, 1)]).await;
    let mut tx = store.begin().await.unwrap();
    tx.reserve_stock(order.id, &[(mug.id, 2), (cup.id, 1)])
        .await
        .unwrap();
    drop(tx);
    assert_eq!(
        versions_of(&store, mug.id, cup.id).await,
        (2, 1),
        "a rolled-back reservation bumps nothing"
    );

    let mut tx = store.begin().await.unwrap();
    let Reservation::Reserved { products } = tx
        .reserve_stock(order.id, &[(mug.id, 2), (cup.id, 1)])
        .await
        .unwrap()
    else {
        panic!("every line is in stock");
    };
    tx.commit().await.unwrap();
    let reserved = store.product(mug.id).await.unwrap().unwrap();
    assert_eq!((reserved.stock, reserved.version), (5, 3), "reservation");
    assert_eq!(version_of(&store, cup.id).await, 2, "every reserved line");
    assert_eq!(
        products,
        store.products_by_ids(&[mug.id, cup.id]).await.unwrap(),
        "the reservation returns the rows it committed (for the caches)"
    );

    let mut tx = store.begin().await.unwrap();
    assert!(tx.release_stock(order.id).await.unwrap());
    tx.commit().await.unwrap();
    let released = store.product(mug.id).await.unwrap().unwrap();
    assert_eq!((released.stock, released.version), (7, 4), "release");

    // A reservation that fails for lack of stock changes nothing.
    let greedy = given_order(&store, user.id, &[(&edited, 100)]).await;
    assert!(matches!(
        reserve_committed(&store, greedy.id, &[(mug.id, 100)]).await,
        Reservation::Insufficient { .. }
    ));
    assert_eq!(version_of(&store, mug.id).await, 4);

    let listed = store.products_by_ids(&[mug.id]).await.unwrap();
    assert_eq!(listed[0].version, 4, "products_by_ids reads the version");
    let page = store.list_products(None, 10).await.unwrap();
    assert!(
        page.iter().any(|p| p.id == mug.id && p.version == 4),
        "list_products reads the version"
    );
}

/// The bulk import inserts new SKUs under the given ids and replaces the
/// fields of existing SKUs (same id, version bumped), in input order; a
/// failing row (a constraint) leaves nothing of the batch behind.
pub async fn product_imports(store: Arc<dyn Store>) {
    let existing = given_product(&store, 5).await;
    let replacement = ProductDraft::new(&existing.sku, "Mug, blue", 275, "EUR", 12).unwrap();
    let fresh = draft("Teapot", 1999, 3);
    let fresh_id = uuid::Uuid::now_v7();
    let at = now();
    let stored = store
        .import_products(
            &[
                (uuid::Uuid::now_v7(), replacement),
                (fresh_id, fresh.clone()),
            ],
            at,
        )
        .await
        .unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].id, existing.id, "an existing SKU keeps its id");
    assert_eq!(
        (
            stored[0].name.as_str(),
            stored[0].price_cents,
            stored[0].stock,
            stored[0].version
        ),
        ("Mug, blue", 275, 12, 2),
        "and gets the new fields and a new version"
    );
    assert_eq!(stored[0].updated_at, at);
    assert_eq!(
        (stored[1].id, stored[1].sku.as_str(), stored[1].version),
        (fresh_id, fresh.sku.as_str(), 1),
        "a new SKU is inserted under its id"
    );
    assert_eq!(
        store.product(existing.id).await.unwrap().as_ref(),
        Some(&stored[0])
    );
    assert_eq!(store.count_products().await.unwrap(), 2);

    // Two rows with one id but different SKUs: the second fails, so the
    // batch leaves nothing.
    let clash = uuid::Uuid::now_v7();
    assert!(
        store
            .import_products(
                &[(clash, draft("A", 1, 1)), (clash, draft("B", 1, 1))],
                now()
            )
            .await
            .is_err()
    );
    assert_eq!(store.count_products().await.unwrap(), 2, "all or nothing");
    assert_eq!(store.product(clash).await.unwrap(), None);
}

/// View counts add up, per product and per minute (the minute their time
/// falls in), and only when their transaction commits; unknown products
/// start at 0; the most viewed over a range of minutes, most first; minute
/// counts go with retention, totals stay; a reset for a rebuild forgets
/// them all.
pub async fn product_views(store: Arc<dyn Store>) {
    use crate::ports::store::Prunable;
    let mug = given_product(&store, 5).await;
    let cup = given_product(&store, 5).await;
    let at = |text: &str| -> orderflow_domain::Timestamp { text.parse().unwrap() };
    assert_eq!(store.product_views(mug.id).await.unwrap(), 0);
    // Two units of work: a background one, then an ordinary one.
    for (background, views) in [
        (
            true,
            [
                (mug.id, 3, "2026-03-01T10:00:30Z"),
                (cup.id, 1, "2026-03-01T10:00:59.999Z"),
            ],
        ),
        (
            false,
            [
                (mug.id, 4, "2026-03-01T10:01:10Z"),
                (cup.id, 9, "2026-03-01T10:02:00Z"),
            ],
        ),
    ] {
        let mut tx = if background {
            store.begin_background().await.unwrap()
        } else {
            store.begin().await.unwrap()
        };
        for (product, count, when) in views {
            tx.add_product_views(product, count, at(when))
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }
    let mut rolled_back = store.begin().await.unwrap();
    rolled_back
        .add_product_views(cup.id, 1000, at("2026-03-01T10:02:00Z"))
        .await
        .unwrap();
    drop(rolled_back);
    assert_eq!(store.product_views(mug.id).await.unwrap(), 7);
    assert_eq!(store.product_views(cup.id).await.unwrap(), 10);
    assert_eq!(
        version_of(&store, mug.id).await,
        1,
        "counting views is not a change of the product"
    );
    let most_viewed = |from: &str, to: &str, top: u32| {
        let store = store.clone();
        let (from, to) = (at(from), at(to));
        async move { store.most_viewed(from, to, top).await.unwrap() }
    };
    assert_eq!(
        most_viewed("2026-03-01T10:00:00Z", "2026-03-01T10:02:00Z", 5).await,
        [(mug.id, 7), (cup.id, 1)],
        "the minutes that start in the range, most viewed first"
    );
    assert_eq!(
        most_viewed("2026-03-01T10:01:00Z", "2026-03-01T10:03:00Z", 5).await,
        [(cup.id, 9), (mug.id, 4)]
    );
    assert_eq!(
        most_viewed("2026-03-01T10:00:00Z", "2026-03-01T10:03:00Z", 1).await,
        [(cup.id, 10)],
        "at most `top`"
    );
    assert_eq!(
        pruned(
            &store,
            Prunable::MinuteWindows,
            at("2026-03-01T10:01:00Z"),
            100
        )
        .await,
        2,
        "the two products' views of 10:00"
    );
    assert_eq!(
        most_viewed("2026-03-01T10:00:00Z", "2026-03-01T10:03:00Z", 5).await,
        [(cup.id, 9), (mug.id, 4)]
    );
    assert_eq!(
        store.product_views(mug.id).await.unwrap(),
        7,
        "totals are kept"
    );
    // A partial reset: the next day's views go, and from the total only
    // what they added.
    let mut tx = store.begin().await.unwrap();
    tx.add_product_views(mug.id, 5, at("2026-03-02T08:00:00Z"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.product_views(mug.id).await.unwrap(), 12);
    let since = crate::ports::store::Since {
        day: "2026-03-02".parse().unwrap(),
        marks_from: at("2026-03-01T23:00:00Z"),
    };
    store
        .reset_state(crate::ports::store::Rebuildable::Trending, Some(since))
        .await
        .unwrap();
    assert_eq!(store.product_views(mug.id).await.unwrap(), 7);
    assert_eq!(
        most_viewed("2026-03-01T10:00:00Z", "2026-03-03T00:00:00Z", 5).await,
        [(cup.id, 9), (mug.id, 4)],
        "the earlier day's minutes stay"
    );
    store
        .reset_state(crate::ports::store::Rebuildable::Trending, None)
        .await
        .unwrap();
    assert_eq!(store.product_views(mug.id).await.unwrap(), 0);
    assert_eq!(
        most_viewed("2026-03-01T10:00:00Z", "2026-03-01T10:03:00Z", 5).await,
        []
    );
}

/// Unique viewers are exact: an id recorded twice (in one list, in two
/// transactions, or by a rolled-back one) counts once, per product and per
/// day; a reset for a rebuild forgets them; retention drops whole days
/// before the cut-off's. A day's visitor-id salt is the first one stored,
/// whoever asks later, and goes once its day is over.
pub async fn unique_viewers(store: Arc<dyn Store>) {
    use crate::ports::store::{Prunable, Rebuildable};
    let mug = given_product(&store, 5).await;
    let cup = given_product(&store, 5).await;
    let day = |text: &str| -> chrono::NaiveDate { text.parse().unwrap() };
    let ids = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
    let (monday, tuesday) = (day("2026-03-02"), day("2026-03-03"));
    assert_eq!(store.unique_viewers(monday, mug.id).await.unwrap(), 0);

    let mut tx = store.begin().await.unwrap();
    tx.add_product_viewers(monday, mug.id, &ids(&["ann", "bob", "ann"]))
        .await
        .unwrap();
    tx.add_product_viewers(monday, mug.id, &[]).await.unwrap();
    tx.add_product_viewers(monday, cup.id, &ids(&["ann"]))
        .await
        .unwrap();
    tx.add_product_viewers(tuesday, mug.id, &ids(&["ann"]))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.add_product_viewers(monday, mug.id, &ids(&["bob", "cem"]))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut rolled_back = store.begin().await.unwrap();
    rolled_back
        .add_product_viewers(monday, mug.id, &ids(&["dan"]))
        .await
        .unwrap();
    drop(rolled_back);
    assert_eq!(store.unique_viewers(monday, mug.id).await.unwrap(), 3);
    assert_eq!(store.unique_viewers(monday, cup.id).await.unwrap(), 1);
    assert_eq!(store.unique_viewers(tuesday, mug.id).await.unwrap(), 1);

    // A partial reset from Tuesday keeps Monday's viewers.
    let since = crate::ports::store::Since {
        day: tuesday,
        marks_from: "2026-03-02T23:00:00Z".parse().unwrap(),
    };
    store
        .reset_state(Rebuildable::Trending, Some(since))
        .await
        .unwrap();
    assert_eq!(store.unique_viewers(monday, mug.id).await.unwrap(), 3);
    assert_eq!(store.unique_viewers(tuesday, mug.id).await.unwrap(), 0);
    let mut tx = store.begin().await.unwrap();
    tx.add_product_viewers(tuesday, mug.id, &ids(&["ann"]))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let cut_off: orderflow_domain::Timestamp = "2026-03-03T12:00:00Z".parse().unwrap();
    assert_eq!(
        pruned(&store, Prunable::ProductViewers, cut_off, 100).await,
        4,
        "Monday's rows, not Tuesday's"
    );
    assert_eq!(store.unique_viewers(monday, mug.id).await.unwrap(), 0);
    assert_eq!(store.unique_viewers(tuesday, mug.id).await.unwrap(), 1);
    store
        .reset_state(Rebuildable::Trending, None)
        .await
        .unwrap();
    assert_eq!(store.unique_viewers(tuesday, mug.id).await.unwrap(), 0);

    assert_eq!(store.viewer_salt(monday, "first").await.unwrap(), "first");
    assert_eq!(
        store.viewer_salt(monday, "second").await.unwrap(),
        "first",
        "every process gets the day's first salt"
    );
    assert_eq!(store.viewer_salt(tuesday, "other").await.unwrap(), "other");
    assert_eq!(
        pruned(&store, Prunable::ViewerSalts, cut_off, 100).await,
        1,
        "Monday's salt"
    );
    assert_eq!(store.viewer_salt(monday, "new").await.unwrap(), "new");
    assert_eq!(store.viewer_salt(tuesday, "new").await.unwrap(), "other");
}

/// The fraud check's memory: a shopper's watermark is their latest
/// remembered order; the window read returns their orders within the range
/// (both ends included), by event time, never another shopper's; a second
/// remember of one order changes nothing; a rolled-back remember is
/// forgotten; pruning removes orders placed before the cut-off.
pub async fn fraud_orders(store: Arc<dyn Store>) {
    use crate::ports::store::{FraudHistory, Prunable};
    use orderflow_domain::fraud::WindowOrder;
    use orderflow_domain::money::Currency;
    let ann = given_user(&store, "Ann").await;
    let bob = given_user(&store, "Bob").await;
    let at = |text: &str| -> orderflow_domain::Timestamp { text.parse().unwrap() };
    let order = |time: &str, total_cents: i64, currency: &str| WindowOrder {
        order_id: uuid::Uuid::now_v7(),
        at: at(time),
        total_cents,
        currency: Currency::parse(currency).unwrap(),
    };
    let history = |user, from: &str, to: &str| {
        let store = store.clone();
        let (from, to) = (at(from), at(to));
        async move { store.fraud_history(user, from, to).await.unwrap() }
    };
    assert_eq!(
        history(ann.id, "2026-03-01T10:00:00Z", "2026-03-01T11:00:00Z").await,
        FraudHistory::default(),
        "nothing remembered: no watermark"
    );
    let first = order("2026-03-01T10:00:00Z", 1_000, "EUR");
    let second = order("2026-03-01T10:04:59.999999Z", 250_000, "USD");
    let third = order("2026-03-01T10:10:00Z", 5, "EUR");
    let bobs = order("2026-03-01T10:05:00Z", 7, "EUR");
    let mut tx = store.begin().await.unwrap();
    // Out of event-time order, and the first one twice (a redelivery).
    for (user, remembered) in [
        (ann.id, &third),
        (ann.id, &first),
        (ann.id, &second),
        (ann.id, &first),
        (bob.id, &bobs),
    ] {
        tx.remember_for_fraud(user, remembered).await.unwrap();
    }
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.remember_for_fraud(ann.id, &order("2026-03-01T12:00:00Z", 1, "EUR"))
        .await
        .unwrap();
    drop(tx);

    assert_eq!(
        history(ann.id, "2026-03-01T10:00:00Z", "2026-03-01T10:10:00Z").await,
        FraudHistory {
            watermark: Some(third.at),
            orders: vec![first.clone(), second.clone(), third.clone()],
        },
        "both ends included, by event time, microseconds kept, once each; the rolled-back one is not there"
    );
    let summary = |user, from: &str, to: &str, currency: &str| {
        let store = store.clone();
        let (from, to) = (at(from), at(to));
        let currency = Currency::parse(currency).unwrap();
        async move {
            let summary = store
                .fraud_summary(user, from, to, &currency)
                .await
                .unwrap();
            (summary.watermark, summary.orders, summary.total_cents)
        }
    };
    assert_eq!(
        summary(
            ann.id,
            "2026-03-01T10:00:00Z",
            "2026-03-01T10:10:00Z",
            "EUR"
        )
        .await,
        (Some(third.at), 3, 1_005),
        "the same orders summed: three, and the euros of two of them"
    );
    assert_eq!(
        summary(
            ann.id,
            "2026-03-01T10:00:00Z",
            "2026-03-01T10:10:00Z",
            "USD"
        )
        .await,
        (Some(third.at), 3, 250_000)
    );
    assert_eq!(
        summary(
            ann.id,
            "2026-03-01T10:00:00.000001Z",
            "2026-03-01T10:09:59Z",
            "EUR"
        )
        .await,
        (Some(third.at), 1, 0),
        "the watermark is the shopper's latest order, whatever the range"
    );
    assert_eq!(
        summary(
            bob.id,
            "2026-03-01T09:00:00Z",
            "2026-03-01T11:00:00Z",
            "EUR"
        )
        .await,
        (Some(bobs.at), 1, 7)
    );
    let carl = given_user(&store, "Carl").await;
    assert_eq!(
        summary(
            carl.id,
            "2026-03-01T09:00:00Z",
            "2026-03-01T11:00:00Z",
            "EUR"
        )
        .await,
        (None, 0, 0),
        "nothing remembered"
    );
    assert_eq!(
        history(
            ann.id,
            "2026-03-01T10:00:00.000001Z",
            "2026-03-01T10:09:59Z"
        )
        .await,
        FraudHistory {
            watermark: Some(third.at),
            orders: vec![second.clone()],
        },
        "the watermark is the shopper's latest order, whatever the range"
    );
    assert_eq!(
        history(bob.id, "2026-03-01T09:00:00Z", "2026-03-01T11:00:00Z").await,
        FraudHistory {
            watermark: Some(bobs.at),
            orders: vec![bobs.clone()],
        }
    );
    assert_eq!(
        pruned(
            &store,
            Prunable::FraudOrders,
            at("2026-03-01T10:05:00Z"),
            100
        )
        .await,
        2,
        "Ann's first two; Bob's is placed at the cut-off"
    );
    assert_eq!(
        history(ann.id, "2026-03-01T10:00:00Z", "2026-03-01T10:10:00Z").await,
        FraudHistory {
            watermark: Some(third.at),
            orders: vec![third],
        }
    );
    assert_eq!(
        history(bob.id, "2026-03-01T09:00:00Z", "2026-03-01T11:00:00Z")
            .await
            .orders,
        [bobs]
    );
}

/// Live channels read the order history: a shopper's steps after a
/// position, in position order and bounded, never another shopper's; the
/// last position; a rolled-back step is never seen; concurrent steps of one
/// shopper's orders all appear, in the order their positions say.
pub async fn live_channels(store: Arc<dyn Store>) {
    let ann = given_user(&store, "Ann").await;
    let bob = given_user(&store, "Bob").await;
    let product = given_product(&store, 100).await;
    assert_eq!(
        store.last_order_change(Some(ann.id)).await.unwrap(),
        0,
        "no step yet"
    );
    assert!(
        store
            .order_changes(Some(ann.id), ChangesPage::After(0), 10)
            .await
            .unwrap()
            .is_empty()
    );

    let first = given_order(&store, ann.id, &[(&product, 1)]).await;
    given_order(&store, bob.id, &[(&product, 1)]).await;
    let step = |steps: &'static [OrderStatus], commit: bool| {
        let (store, id) = (store.clone(), first.id);
        async move {
            let mut tx = store.begin().await.unwrap();
            tx.set_order_status(id, steps, now()).await.unwrap();
            if commit {
                tx.commit().await.unwrap();
            }
        }
    };
    step(&[OrderStatus::Reserved], true).await;
    let paid = &[OrderStatus::Paid, OrderStatus::Confirmed];
    step(paid, false).await; // rolled back: never seen
    step(paid, true).await;

    let all = store
        .order_changes(Some(ann.id), ChangesPage::After(0), 10)
        .await
        .unwrap();
    let statuses: Vec<OrderStatus> = all.iter().map(|c| c.status).collect();
    assert_eq!(
        statuses,
        [
            OrderStatus::Pending,
            OrderStatus::Reserved,
            OrderStatus::Paid,
            OrderStatus::Confirmed
        ]
    );
    assert!(
        all.iter().all(|c| c.order_id == first.id),
        "only Ann's orders"
    );
    assert!(
        all.windows(2).all(|w| w[0].position < w[1].position),
        "positions grow"
    );
    let last = all.last().unwrap().position;
    assert_eq!(store.last_order_change(Some(ann.id)).await.unwrap(), last);
    let after_first = store
        .order_changes(Some(ann.id), ChangesPage::After(all[0].position), 1)
        .await
        .unwrap();
    assert_eq!(
        after_first,
        vec![all[1].clone()],
        "after a position, bounded"
    );
    assert!(
        store
            .order_changes(Some(ann.id), ChangesPage::After(last), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .order_changes(Some(bob.id), ChangesPage::After(0), 10)
            .await
            .unwrap()
            .len(),
        1
    );

    // Concurrent steps of one shopper's orders: each appears once, and the
    // positions read back are in the order they were read (no lower
    // position committed after a higher one was readable: the store makes
    // one shopper's history writers take turns where it must).
    let orders = 6;
    let mut ids = Vec::new();
    for _ in 0..orders {
        ids.push(given_order(&store, ann.id, &[(&product, 1)]).await.id);
    }
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let (store, id) = (store.clone(), *id);
            tokio::spawn(async move {
                let mut tx = store.begin().await.expect("begin");
                tx.set_order_status(id, &[OrderStatus::Reserved], now())
                    .await
                    .expect("move");
                tx.commit().await.expect("commit");
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer task");
    }
    let reserved: Vec<OrderChange> = store
        .order_changes(Some(ann.id), ChangesPage::After(last), 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.status == OrderStatus::Reserved)
        .collect();
    let mut seen: Vec<_> = reserved.iter().map(|c| c.order_id).collect();
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids, "every concurrent step once");

    // Everyone's steps (`admin:orders`): Ann's and Bob's, in position
    // order, each carrying its shopper.
    let everyone = store
        .order_changes(None, ChangesPage::After(0), 1_000)
        .await
        .unwrap();
    assert!(everyone.windows(2).all(|w| w[0].position < w[1].position));
    assert!(everyone.iter().any(|c| c.user_id == bob.id));
    let anns: Vec<OrderChange> = everyone
        .iter()
        .filter(|c| c.user_id == ann.id)
        .cloned()
        .collect();
    assert_eq!(
        anns,
        store
            .order_changes(Some(ann.id), ChangesPage::After(0), 1_000)
            .await
            .unwrap(),
        "a shopper's steps are everyone's steps of that shopper"
    );
    assert_eq!(
        store.last_order_change(None).await.unwrap(),
        everyone.last().unwrap().position
    );

    // Notifications (`notifications:{user}`): Ann's only, in position
    // order, bounded; concurrent writers of one shopper's notifications
    // (the e-mail, SMS and push groups) each appear once.
    assert_eq!(store.last_notification(ann.id).await.unwrap(), 0);
    let note = |user_id, channel| NotificationRecord {
        user_id,
        channel,
        kind: NotificationKind::OrderConfirmed,
        order_id: Some(first.id),
        sent_at: chrono::SubsecRound::trunc_subsecs(now(), 6),
    };
    let mut tx = store.begin().await.unwrap();
    tx.record_notification(&note(ann.id, Channel::Email))
        .await
        .unwrap();
    tx.record_notification(&note(bob.id, Channel::Email))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let writers: Vec<_> = [Channel::Sms, Channel::Push, Channel::Sms, Channel::Push]
        .into_iter()
        .map(|channel| {
            let (store, record) = (store.clone(), note(ann.id, channel));
            tokio::spawn(async move {
                let mut tx = store.begin().await.expect("begin");
                tx.record_notification(&record).await.expect("record");
                tx.commit().await.expect("commit");
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("notification writer");
    }
    let notes = store
        .notification_changes(ann.id, ChangesPage::After(0), 100)
        .await
        .unwrap();
    assert_eq!(notes.len(), 5, "Ann's five, not Bob's: {notes:?}");
    assert!(notes.iter().all(|n| n.notification.user_id == ann.id));
    assert!(notes.windows(2).all(|w| w[0].position < w[1].position));
    let first_note = &notes[0].notification;
    assert_eq!(
        (first_note.channel, first_note.kind, first_note.order_id),
        (
            Channel::Email,
            NotificationKind::OrderConfirmed,
            Some(first.id)
        ),
        "written first, read first"
    );
    assert_eq!(
        store.last_notification(ann.id).await.unwrap(),
        notes.last().unwrap().position
    );
    let after_first = store
        .notification_changes(ann.id, ChangesPage::After(notes[0].position), 2)
        .await
        .unwrap();
    assert_eq!(
        after_first,
        notes[1..3].to_vec(),
        "after a position, bounded"
    );

    // The newest page (a snapshot), oldest first: the last `limit` of each.
    let latest = store
        .notification_changes(ann.id, ChangesPage::Latest, 2)
        .await
        .unwrap();
    assert_eq!(latest, notes[3..].to_vec(), "the newest two, oldest first");
    let anns_all = store
        .order_changes(Some(ann.id), ChangesPage::After(0), 1_000)
        .await
        .unwrap();
    let anns_latest = store
        .order_changes(Some(ann.id), ChangesPage::Latest, 3)
        .await
        .unwrap();
    assert_eq!(anns_latest, anns_all[anns_all.len() - 3..].to_vec());
    let everyones_latest = store
        .order_changes(None, ChangesPage::Latest, 2)
        .await
        .unwrap();
    assert_eq!(everyones_latest, everyone[everyone.len() - 2..].to_vec());
}

// --- retention (issue 16) ---

/// Retention of processed marks, idempotency keys and replayed dead
/// letters: by age, in batches of at most `limit`, and nothing younger than
/// the cut-off; a processed mark that stays still recognises a redelivery.
pub async fn retention(store: Arc<dyn Store>) {
    use crate::ports::store::Prunable;
    let user = super::given_user(&store, "Retention").await;
    let later = now() + secs(60);
    let long_ago = now() - secs(3600);

    let marks: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::now_v7()).collect();
    let mut tx = store.begin().await.unwrap();
    for mark in &marks {
        assert!(tx.mark_processed("email", *mark).await.unwrap());
    }
    assert_eq!(
        claim(&mut tx, user.id, "retained", "hash").await,
        IdempotencyClaim::Claimed
    );
    let letter = dead_letter_of("email", 9, now());
    assert!(tx.insert_dead_letter(&letter).await.unwrap());
    let waiting = dead_letter_of("sms", 10, now());
    assert!(tx.insert_dead_letter(&waiting).await.unwrap());
    assert!(
        tx.mark_dead_letter_replayed(letter.id, now())
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();

    for what in [
        Prunable::ProcessedMarks,
        Prunable::IdempotencyKeys,
        Prunable::ReplayedDeadLetters,
    ] {
        assert_eq!(
            pruned(&store, what, long_ago, 100).await,
            0,
            "{what:?} younger than the cut-off stay"
        );
    }
    assert!(
        store.is_processed("email", marks[0]).await.unwrap(),
        "a redelivered event is still recognised while its mark is kept"
    );
    let mut batches = Vec::new();
    for _ in 0..3 {
        batches.push(pruned(&store, Prunable::ProcessedMarks, later, 2).await);
    }
    assert_eq!(batches, [2, 1, 0], "a batch is at most its limit");
    assert!(!store.is_processed("email", marks[0]).await.unwrap());
    assert_eq!(
        pruned(&store, Prunable::IdempotencyKeys, later, 100).await,
        1
    );
    assert_eq!(
        pruned(&store, Prunable::ReplayedDeadLetters, later, 100).await,
        1,
        "only the replayed one"
    );
    assert_eq!(store.dead_letter(letter.id).await.unwrap(), None);
    assert!(store.dead_letter(waiting.id).await.unwrap().is_some());
    assert_eq!(
        pruned(&store, Prunable::SentOutbox, later, 100).await,
        0,
        "nothing was sent through an outbox here"
    );
}
