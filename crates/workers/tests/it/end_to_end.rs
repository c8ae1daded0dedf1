//! Every consumer group end to end: orders placed the way the API places
//! them, then all eight groups driven until nothing is left to do.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use orderflow_adapters::providers::{Breaker, BreakerSettings, WithBreaker};
use orderflow_core::ports::providers::Notifier;

use orderflow_core::ports::log::EventLog;
use orderflow_core::ports::store::Store;
use orderflow_domain::events::{Envelope, EventData, topics};
use orderflow_domain::notification::{Channel, NotificationKind};
use orderflow_domain::order::OrderStatus;
use orderflow_workers::{GROUPS, Notifiers, WorkerDeps, WorkerError};
use tokio_util::sync::CancellationToken;

use crate::support::{Harness, drain, tiny_retry};

fn kinds(h: &Harness, channel: Channel) -> Vec<NotificationKind> {
    h.providers
        .notifier(channel)
        .delivered()
        .iter()
        .map(|m| m.kind)
        .collect()
}

#[tokio::test]
async fn an_order_is_confirmed_and_every_group_does_its_part_once() {
    let h = Harness::new(None, tiny_retry(3)).await;
    let ann = h.user("Ann").await;
    let mug = h.product(1299, 10).await;
    let (order, _) = h.place_order(&ann, &[(&mug, 2)]).await;
    let mut consumers = h.consumers().await;
    let totals = drain(&mut consumers).await;

    assert_eq!(h.status(&order).await, OrderStatus::Confirmed);
    let (_, history) = h.store.order(order.id).await.unwrap().unwrap();
    let steps: Vec<_> = history.iter().map(|entry| entry.status).collect();
    use OrderStatus::*;
    assert_eq!(steps, [Pending, Reserved, Paid, Confirmed]);
    assert_eq!(h.stock(&mug).await, 8);

    for channel in Channel::ALL {
        let delivered = h.providers.notifier(channel).delivered();
        assert_eq!(delivered.len(), 1, "{channel:?}");
        assert_eq!(delivered[0].kind, NotificationKind::OrderConfirmed);
        assert_eq!(delivered[0].order_id, Some(order.id));
        assert_eq!(delivered[0].user_id, ann.id);
    }
    let recorded = h.store.notifications_of_user(ann.id, 10).await.unwrap();
    let channels: HashSet<_> = recorded.iter().map(|n| n.channel).collect();
    assert_eq!((recorded.len(), channels.len()), (3, 3));

    assert_eq!(h.providers.payment.charge_count(), 1);
    assert_eq!(
        h.store.points(ann.id).await.unwrap().points,
        25,
        "25.98 EUR gives 25 points"
    );
    let sales = h.store.daily_sales(1).await.unwrap();
    assert_eq!(sales.len(), 1);
    assert_eq!(
        (
            sales[0].orders,
            sales[0].revenue_cents,
            sales[0].currency.as_str()
        ),
        (1, 2598, "EUR")
    );

    for group in GROUPS {
        let report = totals[group];
        assert_eq!(
            (report.dead_lettered, report.retries, report.duplicates),
            (0, 0, 0),
            "{group}: {report:?}"
        );
        assert_eq!(h.lag(group).await, 0, "{group}");
    }
    let handled = |group: &str| totals[group].handled;
    assert_eq!(handled("inventory"), 1);
    assert_eq!(handled("payment"), 1);
    assert_eq!(
        handled("orders"),
        2,
        "stock reserved, then payment succeeded"
    );
    for group in ["email", "sms", "push", "loyalty", "analytics"] {
        assert_eq!(handled(group), 1, "{group}");
    }
}

#[tokio::test]
async fn an_order_without_stock_is_rejected_and_nothing_is_charged() {
    let h = Harness::new(None, tiny_retry(3)).await;
    let ann = h.user("Ann").await;
    let mug = h.product(1299, 1).await;
    let (order, _) = h.place_order(&ann, &[(&mug, 2)]).await;
    drain(&mut h.consumers().await).await;

    assert_eq!(h.status(&order).await, OrderStatus::Rejected);
    assert_eq!(h.stock(&mug).await, 1, "stock untouched");
    for channel in Channel::ALL {
        assert_eq!(
            kinds(&h, channel),
            [NotificationKind::OrderRejected],
            "{channel:?}"
        );
    }
    assert_eq!(h.providers.payment.controls().calls(), 0);
    assert_eq!(h.store.points(ann.id).await.unwrap().points, 0);
    assert!(h.store.daily_sales(1).await.unwrap().is_empty());

    let stock_events = h.events_on(topics::STOCK_EVENTS).await;
    let [rejected] = stock_events.as_slice() else {
        panic!("{stock_events:?}")
    };
    let EventData::StockRejected {
        product_id, reason, ..
    } = &rejected.envelope.data
    else {
        panic!("{:?}", rejected.envelope.data)
    };
    assert_eq!(*product_id, Some(mug.id));
    assert!(reason.contains("2 requested, 1 available"), "{reason}");
}

#[tokio::test]
async fn a_declined_payment_fails_the_order_and_releases_stock_exactly_once() {
    let h = Harness::new(Some(1000), tiny_retry(3)).await;
    let ann = h.user("Ann").await;
    let lamp = h.product(2000, 5).await;
    let (order, _) = h.place_order(&ann, &[(&lamp, 1)]).await;
    let mut consumers = h.consumers().await;
    drain(&mut consumers).await;

    assert_eq!(h.status(&order).await, OrderStatus::PaymentFailed);
    let (_, history) = h.store.order(order.id).await.unwrap().unwrap();
    let steps: Vec<_> = history.iter().map(|entry| entry.status).collect();
    assert_eq!(
        steps,
        [
            OrderStatus::Pending,
            OrderStatus::Reserved,
            OrderStatus::PaymentFailed
        ]
    );
    assert_eq!(h.stock(&lamp).await, 5, "reserved, then released");
    assert_eq!(h.providers.payment.controls().declines(), 1);
    for channel in Channel::ALL {
        assert_eq!(
            kinds(&h, channel),
            [NotificationKind::PaymentFailed],
            "{channel:?}"
        );
    }
    assert_eq!(h.store.points(ann.id).await.unwrap().points, 0);

    // The failure delivered again releases nothing more.
    let payment_events: Vec<_> = h
        .events_on(topics::PAYMENT_EVENTS)
        .await
        .into_iter()
        .map(|d| d.envelope)
        .collect();
    assert!(
        matches!(payment_events.as_slice(), [e] if matches!(e.data, EventData::PaymentFailed { .. }))
    );
    h.append(&payment_events).await;
    let totals = drain(&mut consumers).await;
    assert_eq!(totals["orders"].duplicates, 1);
    assert_eq!(h.stock(&lamp).await, 5, "released exactly once");
    assert_eq!(h.status(&order).await, OrderStatus::PaymentFailed);
}

#[tokio::test]
async fn a_provider_that_keeps_failing_sends_one_dead_letter_and_a_replay_delivers_once() {
    let h = Harness::new(None, tiny_retry(3)).await;
    let email = h.providers.email.controls();
    email.set_failure_rate(1.0);
    let ann = h.user("Ann").await;
    let mug = h.product(1299, 10).await;
    let (order, _) = h.place_order(&ann, &[(&mug, 1)]).await;
    let mut consumers = h.consumers().await;
    let totals = drain(&mut consumers).await;

    assert_eq!(
        h.status(&order).await,
        OrderStatus::Confirmed,
        "the other groups are not held up"
    );
    assert_eq!(
        (totals["email"].retries, totals["email"].dead_lettered),
        (2, 1)
    );
    assert_eq!(email.calls(), 3, "max_attempts calls, then given up");
    assert!(h.providers.email.delivered().is_empty());
    assert_eq!(kinds(&h, Channel::Sms), [NotificationKind::OrderConfirmed]);
    assert_eq!(kinds(&h, Channel::Push), [NotificationKind::OrderConfirmed]);
    assert_eq!(h.lag("email").await, 0, "the group moved on");

    let dead = h.store.dead_letters(10, false).await.unwrap();
    let [dead] = dead.as_slice() else {
        panic!("{dead:?}")
    };
    assert_eq!(
        (dead.group.as_str(), dead.topic.as_str(), dead.attempts),
        ("email", topics::ORDER_EVENTS, 3)
    );
    assert!(
        matches!(dead.event.data, EventData::OrderConfirmed { order_id, .. } if order_id == order.id)
    );
    assert!(!h.store.is_processed("email", dead.event.id).await.unwrap());
    let failed = h.events_on(topics::FAILED_MESSAGES).await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].envelope.id, dead.id);

    // The provider recovers; the operator replays the dead letter.
    email.set_failure_rate(0.0);
    let mut tx = h.store.begin().await.unwrap();
    assert!(
        tx.mark_dead_letter_replayed(dead.id, chrono::Utc::now())
            .await
            .unwrap()
    );
    tx.append(std::slice::from_ref(&dead.event)).await.unwrap();
    tx.commit().await.unwrap();
    let totals = drain(&mut consumers).await;

    assert_eq!(
        kinds(&h, Channel::Email),
        [NotificationKind::OrderConfirmed]
    );
    assert_eq!(totals["email"].handled, 1);
    for group in ["sms", "push", "loyalty", "analytics"] {
        assert_eq!(
            (totals[group].handled, totals[group].duplicates),
            (0, 1),
            "{group} already did its part"
        );
    }
    assert_eq!(kinds(&h, Channel::Sms).len(), 1);
    assert_eq!(h.store.points(ann.id).await.unwrap().points, 12);
    assert_eq!(
        h.store
            .notifications_of_user(ann.id, 10)
            .await
            .unwrap()
            .len(),
        3
    );
    assert!(h.store.dead_letters(10, false).await.unwrap().is_empty());
    assert!(
        h.store
            .dead_letter(dead.id)
            .await
            .unwrap()
            .unwrap()
            .replayed_at
            .is_some()
    );
}

/// The SMS provider goes down behind its circuit breaker: the breaker opens
/// after a few failures, the SMS deliveries wait instead of burning their
/// attempts, the other groups confirm the orders meanwhile, nothing is
/// dead-lettered, and every SMS goes out once the provider is back.
#[tokio::test]
async fn a_provider_outage_behind_its_breaker_dead_letters_nothing_and_sends_everything_after() {
    let h = Harness::new(None, tiny_retry(3)).await;
    let sms = h.providers.sms.controls();
    sms.set_failure_rate(1.0);
    let breaker = Breaker::new(
        "sms",
        BreakerSettings {
            consecutive_failures: 3,
            open_for: Duration::from_millis(300),
            ..BreakerSettings::default()
        },
    );
    let guarded_sms = Arc::new(WithBreaker::new(
        h.providers.sms.clone() as Arc<dyn Notifier>,
        breaker.clone(),
    ));
    let deps = WorkerDeps::new(
        h.store.clone(),
        h.log.clone(),
        h.providers.payment.clone(),
        Notifiers::new(
            h.providers.email.clone(),
            guarded_sms,
            h.providers.push.clone(),
        ),
        tiny_retry(3),
    );
    let ann = h.user("Ann").await;
    let mug = h.product(1299, 10).await;
    let mut orders = Vec::new();
    for _ in 0..5 {
        orders.push(h.place_order(&ann, &[(&mug, 1)]).await.0);
    }
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(orderflow_workers::run_consumers(
        deps.all_consumers().await.unwrap(),
        shutdown.clone(),
    ));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut confirmed = 0;
    while confirmed < orders.len() || breaker.open_for().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{confirmed} confirmed; breaker open: {:?}",
            breaker.open_for()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        confirmed = 0;
        for order in &orders {
            confirmed += usize::from(h.status(order).await == OrderStatus::Confirmed);
        }
    }
    // Keep it down through a few open periods and failed probes.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(h.store.dead_letters(10, false).await.unwrap().is_empty());
    assert!(h.providers.sms.delivered().is_empty());
    let calls_while_down = sms.calls();

    sms.set_failure_rate(0.0);
    while kinds(&h, Channel::Sms).len() < orders.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} SMS sent after the outage",
            kinds(&h, Channel::Sms).len(),
            orders.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    running.await.unwrap();

    assert_eq!(
        kinds(&h, Channel::Sms),
        [NotificationKind::OrderConfirmed; 5],
        "each order's SMS once"
    );
    assert!(h.store.dead_letters(10, false).await.unwrap().is_empty());
    assert_eq!(h.lag("sms").await, 0);
    eprintln!(
        "[breaker] {} SMS calls failed while the provider was down (3 attempts x 5 orders would have dead-lettered all 5 without the breaker)",
        calls_while_down
    );
}

#[tokio::test]
async fn a_payment_outage_is_dead_lettered_and_the_replay_confirms_the_order() {
    let h = Harness::new(None, tiny_retry(2)).await;
    let payment = h.providers.payment.controls();
    payment.set_failure_rate(1.0);
    let ann = h.user("Ann").await;
    let mug = h.product(1299, 10).await;
    let (order, _) = h.place_order(&ann, &[(&mug, 1)]).await;
    let mut consumers = h.consumers().await;
    drain(&mut consumers).await;
    assert_eq!(
        h.status(&order).await,
        OrderStatus::Reserved,
        "waiting for the payment"
    );

    payment.set_failure_rate(0.0);
    let [dead] = h
        .store
        .dead_letters(10, false)
        .await
        .unwrap()
        .try_into()
        .unwrap();
    assert_eq!(dead.group, "payment");
    let mut tx = h.store.begin().await.unwrap();
    tx.mark_dead_letter_replayed(dead.id, chrono::Utc::now())
        .await
        .unwrap();
    tx.append(std::slice::from_ref(&dead.event)).await.unwrap();
    tx.commit().await.unwrap();
    drain(&mut consumers).await;

    assert_eq!(h.status(&order).await, OrderStatus::Confirmed);
    assert_eq!(h.providers.payment.charge_count(), 1);
    assert_eq!(
        kinds(&h, Channel::Email),
        [NotificationKind::OrderConfirmed]
    );
}

#[tokio::test]
async fn an_event_delivered_twice_has_one_effect() {
    let h = Harness::new(None, tiny_retry(3)).await;
    let ann = h.user("Ann").await;
    let mug = h.product(1299, 10).await;
    let (order, _) = h.place_order(&ann, &[(&mug, 2)]).await;
    let mut consumers = h.consumers().await;
    drain(&mut consumers).await;
    assert_eq!(h.status(&order).await, OrderStatus::Confirmed);
    let payment_calls = h.providers.payment.controls().calls();
    let notifiers = [&h.providers.email, &h.providers.sms, &h.providers.push];
    let messages: Vec<u64> = notifiers.iter().map(|n| n.controls().calls()).collect();
    assert!(messages.iter().all(|&sent| sent > 0), "{messages:?}");

    // Every event of the flow, delivered once more.
    let mut again = Vec::new();
    for topic in [
        topics::ORDER_EVENTS,
        topics::STOCK_EVENTS,
        topics::PAYMENT_EVENTS,
    ] {
        again.extend(h.events_on(topic).await.into_iter().map(|d| d.envelope));
    }
    assert_eq!(again.len(), 5, "placed, cleared, confirmed, reserved, paid");
    h.append(&again).await;
    let totals = drain(&mut consumers).await;

    for group in GROUPS {
        assert_eq!(totals[group].handled, 0, "{group}: {:?}", totals[group]);
    }
    assert_eq!(totals["fraud"].duplicates, 1);
    assert_eq!(totals["inventory"].duplicates, 1);
    assert_eq!(totals["payment"].duplicates, 1);
    assert_eq!(totals["orders"].duplicates, 2);
    for group in ["email", "sms", "push", "loyalty", "analytics"] {
        assert_eq!(totals[group].duplicates, 1, "{group}");
    }
    assert_eq!(
        h.providers.payment.controls().calls(),
        payment_calls,
        "no second call to the provider"
    );
    assert_eq!(
        notifiers
            .iter()
            .map(|n| n.controls().calls())
            .collect::<Vec<_>>(),
        messages,
        "no message sent twice"
    );
    assert_eq!(h.stock(&mug).await, 8);
    assert_eq!(h.store.points(ann.id).await.unwrap().points, 25);
    assert_eq!(h.store.daily_sales(1).await.unwrap()[0].orders, 1);
    for channel in Channel::ALL {
        assert_eq!(kinds(&h, channel).len(), 1, "{channel:?}");
    }
}

#[tokio::test]
async fn a_delivery_handled_but_not_committed_is_redelivered_and_skipped() {
    let h = Harness::new(None, tiny_retry(3)).await;
    let ann = h.user("Ann").await;
    let mug = h.product(1299, 10).await;
    let (order, placed) = h.place_order(&ann, &[(&mug, 2)]).await;

    // A member of the first group handles the event, then dies before
    // committing its offset.
    {
        let fraud = h.deps.handler("fraud").unwrap();
        let mut subscription = h.log.subscribe("fraud", fraud.topics()).await.unwrap();
        let batch = subscription.poll(10, Duration::ZERO).await.unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].envelope.id, placed.id);
        assert_eq!(
            orderflow_workers::runtime::handle_once(fraud.as_ref(), h.store.as_ref(), &batch[0])
                .await
                .unwrap(),
            orderflow_workers::Handled::Applied
        );
    }
    let cleared = |events: &[orderflow_core::ports::log::Delivery]| {
        events
            .iter()
            .filter(|d| matches!(d.envelope.data, EventData::OrderCleared { .. }))
            .count()
    };
    assert_eq!(cleared(&h.events_on(topics::ORDER_EVENTS).await), 1);
    // The placed order, and the OrderCleared on the topic fraud reads.
    assert_eq!(h.lag("fraud").await, 2);

    let totals = drain(&mut h.consumers().await).await;
    assert_eq!(
        (totals["fraud"].handled, totals["fraud"].duplicates),
        (0, 1)
    );
    assert_eq!(
        cleared(&h.events_on(topics::ORDER_EVENTS).await),
        1,
        "cleared once"
    );
    assert_eq!(h.stock(&mug).await, 8, "reserved once");
    assert_eq!(h.status(&order).await, OrderStatus::Confirmed);
    assert_eq!(h.lag("fraud").await, 0);
}

#[tokio::test]
async fn a_new_user_gets_a_welcome_email_only() {
    let h = Harness::new(None, tiny_retry(3)).await;
    let ann = h.user("Ann").await;
    let welcome = orderflow_domain::events::Envelope::new(
        EventData::UserRegistered {
            user_id: ann.id,
            email: ann.email.clone(),
            name: ann.name.clone(),
        },
        None,
    );
    h.append(&[welcome]).await;
    let totals = drain(&mut h.consumers().await).await;
    assert_eq!(totals["email"].handled, 1);
    assert_eq!(kinds(&h, Channel::Email), [NotificationKind::Welcome]);
    assert!(kinds(&h, Channel::Sms).is_empty());
    assert!(kinds(&h, Channel::Push).is_empty());
    let recorded = h.store.notifications_of_user(ann.id, 10).await.unwrap();
    assert_eq!(
        (recorded.len(), recorded[0].kind, recorded[0].order_id),
        (1, NotificationKind::Welcome, None)
    );
}

#[tokio::test]
async fn notifications_wait_only_for_their_own_orders_messages() {
    let h = Harness::new(None, tiny_retry(3)).await;
    let ann = uuid::Uuid::now_v7();
    let confirmed = |order_id| {
        Envelope::new(
            EventData::OrderConfirmed {
                order_id,
                user_id: ann,
                items: Vec::new(),
                total_cents: 100,
                currency: "EUR".into(),
            },
            None,
        )
    };
    let (first, second) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let registered = Envelope::new(
        EventData::UserRegistered {
            user_id: ann,
            email: "ann@example.com".into(),
            name: "Ann".into(),
        },
        None,
    );
    for group in ["email", "sms", "push"] {
        let handler = h.deps.handler(group).unwrap();
        assert_eq!(
            handler.lane(&confirmed(first)),
            first.to_string(),
            "{group}"
        );
        assert_eq!(
            handler.lane(&confirmed(second)),
            second.to_string(),
            "{group}"
        );
        assert_eq!(handler.lane(&registered), registered.key, "{group}");
    }
    // The groups whose effects build on each other keep the shopper's order.
    let payment = h.deps.handler("payment").unwrap();
    assert_eq!(payment.lane(&confirmed(first)), ann.to_string());
}

#[tokio::test]
async fn groups_are_built_by_name() {
    let h = Harness::new(None, tiny_retry(3)).await;
    let consumers = h.consumers().await;
    let names: Vec<_> = consumers.iter().map(|c| c.group()).collect();
    assert_eq!(names, GROUPS);
    let Err(error) = h.deps.handler("shipping") else {
        panic!("shipping is not a group yet")
    };
    assert!(matches!(error, WorkerError::UnknownGroup(ref name) if name == "shipping"));
    assert!(
        error
            .to_string()
            .contains("fraud, inventory, payment, orders"),
        "{error}"
    );
}

#[tokio::test]
async fn a_fact_that_no_longer_fits_is_marked_counted_and_ignored() {
    let h = Harness::new(None, tiny_retry(3)).await;
    let ann = h.user("Ann").await;
    let mug = h.product(1299, 10).await;
    let (order, _) = h.place_order(&ann, &[(&mug, 1)]).await;
    let mut consumers = h.consumers().await;
    drain(&mut consumers).await;
    assert_eq!(h.status(&order).await, OrderStatus::Confirmed);

    // A stock rejection arriving after the order was confirmed (a new event,
    // not a redelivery): the state machine refuses it.
    let late = orderflow_domain::events::Envelope::new(
        EventData::StockRejected {
            order_id: order.id,
            user_id: ann.id,
            product_id: Some(mug.id),
            reason: "late".into(),
        },
        None,
    );
    h.append(std::slice::from_ref(&late)).await;
    let totals = drain(&mut consumers).await;
    assert_eq!((totals["orders"].stale, totals["orders"].handled), (1, 0));
    assert!(
        h.store.is_processed("orders", late.id).await.unwrap(),
        "marked, so it is not weighed again"
    );
    assert_eq!(h.status(&order).await, OrderStatus::Confirmed);
    assert_eq!(
        h.events_on(topics::ORDER_EVENTS).await.len(),
        3,
        "placed, cleared and confirmed, nothing more"
    );
    assert_eq!(
        kinds(&h, Channel::Email),
        [NotificationKind::OrderConfirmed]
    );
}

/// The fraud group reaches its verdict while preparing, and the runtime may
/// prepare a shopper's next order before the previous verdict commits: the
/// next order is judged against the uncommitted one too. An effect dropped
/// without committing (given up, or prepared again) takes its order back.
#[tokio::test]
async fn fraud_judges_a_shoppers_next_order_against_the_uncommitted_one() {
    use orderflow_domain::fraud::FraudRules;
    use orderflow_domain::money::Currency;
    use orderflow_workers::handlers::FraudHandler;
    use orderflow_workers::runtime::{Handler, Prepared};

    let h = Harness::new(None, tiny_retry(3)).await;
    let ann = h.user("Ann").await;
    let mug = h.product(1299, 10).await;
    // One order per window is allowed; the second is fraud.
    let rules = FraudRules {
        max_orders: 1,
        ..FraudRules::standard(Currency::parse("EUR").unwrap())
    };
    let fraud = FraudHandler::new(h.store.clone(), rules);
    let bob = h.user("Bob").await;
    let (ann_first, _) = h.place_order(&ann, &[(&mug, 1)]).await;
    let (ann_second, _) = h.place_order(&ann, &[(&mug, 1)]).await;
    let (bob_first, _) = h.place_order(&bob, &[(&mug, 1)]).await;
    let (bob_second, _) = h.place_order(&bob, &[(&mug, 1)]).await;
    let placed = h.events_on(topics::ORDER_EVENTS).await;
    let prepare = |order: &orderflow_domain::order::Order| {
        let fraud = &fraud;
        let delivery = placed
            .iter()
            .find(|d| {
                matches!(&d.envelope.data, EventData::OrderPlaced { order_id, .. } if *order_id == order.id)
            })
            .expect("the order was placed");
        async move {
            match fraud.prepare(delivery).await.unwrap() {
                Prepared::Effect(effect) => effect,
                other => panic!("an order placed is judged, not {other:?}"),
            }
        }
    };
    let commit = |effects: Vec<Box<dyn orderflow_workers::runtime::Effect>>| async {
        let mut effects = effects;
        let mut tx = h.store.begin().await.unwrap();
        for effect in &mut effects {
            effect.apply(tx.as_mut()).await.unwrap();
        }
        tx.commit().await.unwrap();
        for effect in effects {
            effect.committed().await;
        }
    };

    // Ann's first verdict is given up before it commits: her second order
    // is alone in its window and cleared.
    drop(prepare(&ann_first).await);
    commit(vec![prepare(&ann_second).await]).await;
    assert_eq!(h.status(&ann_second).await, OrderStatus::Pending);
    assert_eq!(h.status(&ann_first).await, OrderStatus::Pending);

    // Both of Bob's prepared before either commits: the second is held.
    let first = prepare(&bob_first).await;
    let second = prepare(&bob_second).await;
    commit(vec![first, second]).await;
    assert_eq!(h.status(&bob_first).await, OrderStatus::Pending);
    assert_eq!(h.status(&bob_second).await, OrderStatus::Held);
    let alerts: Vec<_> = h
        .events_on(topics::FRAUD_ALERTS)
        .await
        .into_iter()
        .filter_map(|d| match d.envelope.data {
            EventData::FraudAlerted { user_id, .. } => Some(user_id),
            _ => None,
        })
        .collect();
    assert_eq!(alerts, [bob.id], "one alert, Bob's");
}
