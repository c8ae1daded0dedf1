//! Scenarios for [`ReadModels`] adapters that keep data (Redis): absolute
//! writes that replays cannot inflate, reads that answer only when complete.
//! The do-nothing embedded adapter is not run through these: it answers
//! `None` to every read by design.

use std::sync::Arc;

use orderflow_domain::UserId;
use orderflow_domain::notification::{Channel, NotificationKind};

use crate::contract::now;
use crate::ports::read_models::ReadModels;
use crate::ports::store::{DailySales, LeaderboardEntry, NotificationRecord};

fn entry(user_id: UserId, name: &str, points: i64) -> LeaderboardEntry {
    LeaderboardEntry {
        user_id,
        name: name.to_owned(),
        points,
        rank: 0,
    }
}

fn ids(n: usize) -> Vec<UserId> {
    // Sorted, so the expected order of ties is the index order.
    let mut ids: Vec<UserId> = (0..n).map(|_| uuid::Uuid::new_v4()).collect();
    ids.sort();
    ids
}

/// A point total written twice (a redelivery) counts once, a lower total (a
/// late writer) never lowers it, and a board nobody seeded does not answer.
pub async fn points_are_absolute(models: Arc<dyn ReadModels>) {
    let [ann] = ids(1)[..] else { unreachable!() };
    models
        .publish_points(ann, "Ann", 40)
        .await
        .expect("publish");
    assert_eq!(
        models.top(10).await.expect("top"),
        None,
        "a board that was never seeded from the database must not answer"
    );
    models.seed_leaderboard(&[]).await.expect("seed");
    models
        .publish_points(ann, "Ann", 40)
        .await
        .expect("publish again");
    let top = models
        .top(10)
        .await
        .expect("top")
        .expect("a seeded board answers");
    assert_eq!(
        top,
        vec![LeaderboardEntry {
            rank: 1,
            ..entry(ann, "Ann", 40)
        }],
        "the same total twice is the same score"
    );
    models
        .publish_points(ann, "Ann", 25)
        .await
        .expect("stale publish");
    let top = models.top(10).await.expect("top").expect("answers");
    assert_eq!(
        top[0].points, 40,
        "a stale lower total must not lower the score"
    );
    models
        .publish_points(ann, "Ann", 55)
        .await
        .expect("publish");
    let top = models.top(10).await.expect("top").expect("answers");
    assert_eq!(top[0].points, 55);
}

/// The top entries come most points first, ties by user id, ranked like
/// SQL `RANK()`; a seed keeps scores that are already higher.
pub async fn top_orders_and_ranks(models: Arc<dyn ReadModels>) {
    let users = ids(5);
    models
        .publish_points(users[4], "Eve", 90)
        .await
        .expect("publish");
    models
        .seed_leaderboard(&[
            entry(users[0], "Ann", 50),
            entry(users[1], "Bob", 70),
            entry(users[2], "Cid", 50),
            entry(users[3], "Dan", 10),
            // Older than what was published since: kept at 90.
            entry(users[4], "Eve", 30),
        ])
        .await
        .expect("seed");
    let top = models.top(10).await.expect("top").expect("answers");
    let got: Vec<(UserId, i64, i64)> = top.iter().map(|e| (e.user_id, e.points, e.rank)).collect();
    assert_eq!(
        got,
        vec![
            (users[4], 90, 1),
            (users[1], 70, 2),
            (users[0], 50, 3),
            (users[2], 50, 3),
            (users[3], 10, 5),
        ]
    );
    assert_eq!(top[1].name, "Bob");
    let top3 = models.top(3).await.expect("top").expect("answers");
    assert_eq!(top3.len(), 3, "limit is kept");
    assert_eq!(
        top3[2].user_id, users[0],
        "a tie cut by the limit keeps the lower user id"
    );
    let top4 = models.top(4).await.expect("top").expect("answers");
    assert_eq!(top4[3].user_id, users[2]);
}

fn note(user_id: UserId, n: i64) -> NotificationRecord {
    NotificationRecord {
        user_id,
        channel: Channel::Email,
        kind: NotificationKind::OrderConfirmed,
        order_id: Some(uuid::Uuid::now_v7()),
        sent_at: now() + chrono::TimeDelta::milliseconds(n),
    }
}

/// A missing list is made from the caller's snapshot, then pushes go to the
/// front once each, and the list keeps the newest entries.
pub async fn notifications_are_capped_and_newest_first(models: Arc<dyn ReadModels>) {
    let user = uuid::Uuid::now_v7();
    assert_eq!(
        models.recent_notifications(user, 10).await.expect("read"),
        None
    );
    let first = note(user, 0);
    assert!(
        !models.push_notification(&first, &[]).await.expect("push"),
        "no list yet: the caller must supply the database snapshot"
    );
    assert_eq!(
        models.recent_notifications(user, 10).await.expect("read"),
        None,
        "a push without a snapshot must not create a partial list"
    );
    assert!(
        models
            .push_notification(&first, std::slice::from_ref(&first))
            .await
            .expect("push")
    );
    let mut sent = vec![first.clone()];
    for n in 1..120 {
        let record = note(user, n);
        assert!(models.push_notification(&record, &[]).await.expect("push"));
        sent.push(record);
    }
    // A redelivered push is not added twice.
    let last = sent.last().expect("sent").clone();
    assert!(
        models
            .push_notification(&last, &[])
            .await
            .expect("push again")
    );
    let newest: Vec<NotificationRecord> = sent.iter().rev().take(10).cloned().collect();
    assert_eq!(
        models.recent_notifications(user, 10).await.expect("read"),
        Some(newest),
        "the newest ten, newest first, each once"
    );
    let other = uuid::Uuid::now_v7();
    assert_eq!(
        models.recent_notifications(other, 10).await.expect("read"),
        None,
        "lists are per user"
    );
}

/// A day's totals are absolute: written twice they stay, a stale write does
/// not lower them, currencies are kept apart.
pub async fn sales_are_absolute(models: Arc<dyn ReadModels>) {
    let day = chrono::NaiveDate::from_ymd_opt(2026, 3, 14).expect("a date");
    assert_eq!(models.sales_of_day(day).await.expect("read"), None);
    let eur = DailySales {
        day,
        currency: "EUR".into(),
        orders: 3,
        revenue_cents: 1500,
    };
    let usd = DailySales {
        currency: "USD".into(),
        orders: 1,
        revenue_cents: 700,
        ..eur.clone()
    };
    models.record_sale(&eur).await.expect("record");
    models.record_sale(&eur).await.expect("record again");
    models.record_sale(&usd).await.expect("record");
    models
        .record_sale(&DailySales {
            orders: 2,
            revenue_cents: 1000,
            ..eur.clone()
        })
        .await
        .expect("stale record");
    assert_eq!(
        models.sales_of_day(day).await.expect("read"),
        Some(vec![eur, usd])
    );
}
