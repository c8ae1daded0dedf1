//! Scenarios for the cart port ([`Carts`]): lines in the order they were
//! added, a new token with every change, and a compare-and-clear that never
//! empties a cart changed since it was read.

use std::sync::Arc;

use orderflow_domain::cart::CartLine;

use crate::ports::carts::Carts;
use crate::ports::store::{Prunable, Store};

fn line(product_id: uuid::Uuid, quantity: u32) -> CartLine {
    CartLine {
        product_id,
        quantity,
    }
}

/// Lines keep their place, quantities change in place, 0 removes a line,
/// and every change gives a new token; an empty cart has none.
pub async fn lines_and_tokens(carts: Arc<dyn Carts>) {
    let user = uuid::Uuid::now_v7();
    let (a, b, c) = (
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
    );
    let empty = carts.cart(user).await.unwrap();
    assert!(empty.is_empty() && empty.token.is_none(), "{empty:?}");

    let first = carts.set_quantity(user, a, 2).await.unwrap();
    assert_eq!(first.lines, vec![line(a, 2)]);
    let second = carts.set_quantity(user, b, 1).await.unwrap();
    assert_eq!(second.lines, vec![line(a, 2), line(b, 1)]);
    assert!(first.token.is_some() && second.token.is_some());
    assert_ne!(first.token, second.token, "a change gives a new token");
    let third = carts.set_quantity(user, a, 5).await.unwrap();
    assert_eq!(
        third.lines,
        vec![line(a, 5), line(b, 1)],
        "A keeps its place"
    );
    assert_ne!(third.token, second.token);
    assert_eq!(
        carts.cart(user).await.unwrap(),
        third,
        "read back as written"
    );

    let fourth = carts.set_quantity(user, a, 0).await.unwrap();
    assert_eq!(fourth.lines, vec![line(b, 1)]);
    let gone = carts.set_quantity(user, b, 0).await.unwrap();
    assert!(gone.is_empty() && gone.token.is_none(), "{gone:?}");
    assert!(carts.set_quantity(user, c, 0).await.unwrap().is_empty());

    let replaced = carts
        .replace(user, &[line(c, 1), line(a, 3)])
        .await
        .unwrap();
    assert_eq!(
        replaced.lines,
        vec![line(c, 1), line(a, 3)],
        "in the order given"
    );
    assert_eq!(carts.cart(user).await.unwrap().lines, replaced.lines);
    let cleared = carts.replace(user, &[]).await.unwrap();
    assert!(cleared.is_empty() && cleared.token.is_none());
    assert!(carts.cart(user).await.unwrap().is_empty());
}

/// `clear_if` empties the cart only while its token is the one given.
pub async fn clear_only_while_unchanged(carts: Arc<dyn Carts>) {
    let user = uuid::Uuid::now_v7();
    let other = uuid::Uuid::now_v7();
    let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let read = carts.set_quantity(user, a, 1).await.unwrap();
    let theirs = carts.set_quantity(other, a, 4).await.unwrap();
    // Refilled after the read: the old token clears nothing.
    let refilled = carts.set_quantity(user, b, 2).await.unwrap();
    assert!(
        !carts
            .clear_if(user, read.token.as_deref().unwrap())
            .await
            .unwrap()
    );
    assert_eq!(carts.cart(user).await.unwrap(), refilled);
    // Another shopper's token clears nothing either.
    assert!(
        !carts
            .clear_if(user, theirs.token.as_deref().unwrap())
            .await
            .unwrap()
    );
    let token = refilled.token.unwrap();
    assert!(carts.clear_if(user, &token).await.unwrap());
    assert!(carts.cart(user).await.unwrap().is_empty());
    assert!(!carts.clear_if(user, &token).await.unwrap(), "once");
    assert_eq!(
        carts.cart(other).await.unwrap(),
        theirs,
        "other carts untouched"
    );
}

/// `set_quantity_if` changes the cart only while its token is the one the
/// change was decided on (none: the cart is still empty).
pub async fn change_only_while_unchanged(carts: Arc<dyn Carts>) {
    let user = uuid::Uuid::now_v7();
    let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let first = carts
        .set_quantity_if(user, a, 1, None)
        .await
        .unwrap()
        .expect("an empty cart, as seen");
    assert_eq!(first.lines, vec![line(a, 1)]);
    assert!(
        carts
            .set_quantity_if(user, b, 1, None)
            .await
            .unwrap()
            .is_none(),
        "decided on an empty cart, which it no longer is"
    );
    let second = carts
        .set_quantity_if(user, a, 2, first.token.as_deref())
        .await
        .unwrap()
        .expect("the token read");
    assert_eq!(second.lines, vec![line(a, 2)]);
    assert_ne!(second.token, first.token);
    assert!(
        carts
            .set_quantity_if(user, b, 3, first.token.as_deref())
            .await
            .unwrap()
            .is_none(),
        "an old token changes nothing"
    );
    assert_eq!(carts.cart(user).await.unwrap(), second, "untouched");
    let emptied = carts
        .set_quantity_if(user, a, 0, second.token.as_deref())
        .await
        .unwrap()
        .unwrap();
    assert!(emptied.is_empty() && emptied.token.is_none(), "{emptied:?}");
    assert!(carts.cart(user).await.unwrap().is_empty());
}

/// "One more" decided on what the cart held, by many at once (all read the
/// cart before any writes), each deciding again when another came first:
/// every one counts.
pub async fn concurrent_increments_all_count(carts: Arc<dyn Carts>) {
    const ADDERS: usize = 8;
    let user = uuid::Uuid::now_v7();
    let product = uuid::Uuid::now_v7();
    let all_read = Arc::new(tokio::sync::Barrier::new(ADDERS));
    let tasks: Vec<_> = (0..ADDERS)
        .map(|_| {
            let (carts, all_read) = (carts.clone(), all_read.clone());
            tokio::spawn(async move {
                let mut first = true;
                loop {
                    let cart = carts.cart(user).await.unwrap();
                    if std::mem::take(&mut first) {
                        all_read.wait().await;
                    }
                    let more = cart.quantity_of(product) + 1;
                    if carts
                        .set_quantity_if(user, product, more, cart.token.as_deref())
                        .await
                        .unwrap()
                        .is_some()
                    {
                        break;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        carts.cart(user).await.unwrap().lines,
        vec![line(product, ADDERS as u32)]
    );
}

/// Changes racing on one cart all land: none is lost.
pub async fn concurrent_changes_all_land(carts: Arc<dyn Carts>) {
    let user = uuid::Uuid::now_v7();
    let products: Vec<uuid::Uuid> = (0..16).map(|_| uuid::Uuid::now_v7()).collect();
    let tasks: Vec<_> = products
        .iter()
        .map(|product| {
            let (carts, product) = (carts.clone(), *product);
            tokio::spawn(async move { carts.set_quantity(user, product, 1).await.unwrap() })
        })
        .collect();
    let mut tokens = std::collections::HashSet::new();
    for task in tasks {
        tokens.insert(task.await.unwrap().token.unwrap());
    }
    assert_eq!(tokens.len(), products.len(), "every change its own token");
    let cart = carts.cart(user).await.unwrap();
    let mut held: Vec<uuid::Uuid> = cart.lines.iter().map(|l| l.product_id).collect();
    held.sort();
    let mut expected = products.clone();
    expected.sort();
    assert_eq!(held, expected);
}

/// Carts in the database go with retention once unchanged for long enough,
/// lines and all, counted in carts, a batch at a time.
pub async fn database_carts_expire(store: Arc<dyn Store>, carts: Arc<dyn Carts>) {
    let mut users = [uuid::Uuid::now_v7(), uuid::Uuid::now_v7()];
    users.sort();
    let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    carts.set_quantity(users[0], a, 1).await.unwrap();
    carts.set_quantity(users[0], b, 2).await.unwrap();
    let kept = carts.set_quantity(users[1], a, 3).await.unwrap();
    let long_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    assert_eq!(
        store.prune(Prunable::Carts, long_ago, 10).await.unwrap(),
        0,
        "changed since"
    );
    let later = chrono::Utc::now() + chrono::Duration::minutes(1);
    assert_eq!(
        store.prune(Prunable::Carts, later, 1).await.unwrap(),
        1,
        "one cart a batch"
    );
    let gone = carts.cart(users[0]).await.unwrap();
    assert!(
        gone.is_empty() && gone.token.is_none(),
        "lines and all: {gone:?}"
    );
    assert_eq!(
        carts.cart(users[1]).await.unwrap(),
        kept,
        "the next batch's"
    );
    assert_eq!(store.prune(Prunable::Carts, later, 10).await.unwrap(), 1);
    assert!(carts.cart(users[1]).await.unwrap().is_empty());
    assert_eq!(store.prune(Prunable::Carts, later, 10).await.unwrap(), 0);
}
