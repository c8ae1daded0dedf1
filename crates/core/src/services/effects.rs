//! Side effects shared by the consumer groups (`orderflow-workers`) and the
//! synchronous "inline" order path ([`crate::services::orders`]).
//!
//! Both architectures of DESIGN.md §5 must do exactly the same thing to the
//! shopper (same points, same message text, same charge), so the small pieces
//! of logic they share live here, once:
//!
//! - [`points_for`]: loyalty points for a confirmed order.
//! - [`notification_message`]: the text of a notification, per kind.
//! - [`payment_idempotency_key`] and [`charge_request`]: what the payment
//!   provider is asked, keyed by order so a retried charge is never taken twice.
//! - [`Notifiers`]: the three notification providers, picked by channel.
//! - [`RetryPolicy`]: bounded exponential backoff with full jitter, used by
//!   the consumer runtime between attempts and by inline mode around
//!   provider calls.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use orderflow_domain::OrderId;
use orderflow_domain::money::Money;
use orderflow_domain::notification::{Channel, NotificationKind};
use orderflow_domain::order::Order;
use rand::Rng;

use crate::ports::providers::{ChargeRequest, Notifier, OutgoingMessage};
use crate::ports::store::UserRecord;

/// Loyalty points for a confirmed order: one point per whole currency unit of
/// the total, rounded down (12.99 EUR → 12 points). Never negative.
pub fn points_for(total: &Money) -> i64 {
    total.whole_units().max(0)
}

/// The idempotency key of an order's charge: `order:{order_id}`.
///
/// It is derived from the order, not from the event that triggered the charge,
/// so every attempt to charge one order (a redelivery, a replay from the
/// dead-letter queue, a retried inline request) is deduplicated by the provider.
pub fn payment_idempotency_key(order_id: OrderId) -> String {
    format!("order:{order_id}")
}

/// The charge for an order's total. Pass [`payment_idempotency_key`] as the
/// key unless there is a reason to charge one order twice (there is none today).
pub fn charge_request(order: &Order, idempotency_key: String) -> ChargeRequest {
    ChargeRequest {
        idempotency_key,
        order_id: order.id,
        user_id: order.user_id,
        amount_cents: order.total_cents,
        currency: order.currency.to_string(),
    }
}

/// The message a shopper gets about `kind`, addressed from the stored user.
///
/// The subject is [`NotificationKind::subject`]; the body is a short plain
/// text that is the same on every channel, so an e-mail, an SMS and a push
/// notification about one order never contradict each other. The idempotency
/// key is the caller's (the consumers use `"{group}:{event_id}"`), so the
/// provider can drop the duplicate a redelivery causes.
pub fn notification_message(
    kind: NotificationKind,
    user: &UserRecord,
    order_id: Option<OrderId>,
    idempotency_key: String,
) -> OutgoingMessage {
    let order = match order_id {
        Some(id) => format!("order {id}"),
        None => "order".to_owned(),
    };
    let name = &user.name;
    let body = match kind {
        NotificationKind::Welcome => {
            format!(
                "Hi {name}, welcome to the shop! Your account {} is ready.",
                user.email
            )
        }
        NotificationKind::OrderConfirmed => {
            format!("Hi {name}, your {order} is confirmed. Thank you for shopping with us.")
        }
        NotificationKind::OrderHeld => format!(
            "Hi {name}, your {order} is being reviewed before we go on with it. \
             Nothing has been charged; we will tell you how it ends."
        ),
        // Out of stock or refused after a review: the shopper's account of
        // it is the same, and the review's reasons are not theirs to read.
        NotificationKind::OrderRejected => {
            format!("Hi {name}, we could not fulfil your {order}. You have not been charged.")
        }
        NotificationKind::PaymentFailed => format!(
            "Hi {name}, the payment for your {order} did not go through, so the order was not placed. \
             Nothing was charged."
        ),
        // The message cannot know yet whether a refund is due (a charge may
        // still be under way when the order is cancelled), so it promises
        // what is always true.
        NotificationKind::OrderCancelled => format!(
            "Hi {name}, your {order} is cancelled. Anything you were charged for it \
             is refunded to your card."
        ),
    };
    OutgoingMessage {
        idempotency_key,
        user_id: user.id,
        email: user.email.clone(),
        name: user.name.clone(),
        kind,
        order_id,
        subject: kind.subject().to_owned(),
        body,
    }
}

/// The notification providers, one per channel.
#[derive(Clone)]
pub struct Notifiers {
    pub email: Arc<dyn Notifier>,
    pub sms: Arc<dyn Notifier>,
    pub push: Arc<dyn Notifier>,
}

impl Notifiers {
    pub fn new(email: Arc<dyn Notifier>, sms: Arc<dyn Notifier>, push: Arc<dyn Notifier>) -> Self {
        Self { email, sms, push }
    }

    /// The provider of one channel.
    pub fn get(&self, channel: Channel) -> &Arc<dyn Notifier> {
        match channel {
            Channel::Email => &self.email,
            Channel::Sms => &self.sms,
            Channel::Push => &self.push,
        }
    }
}

impl std::fmt::Debug for Notifiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifiers")
            .field("email", &self.email.channel())
            .field("sms", &self.sms.channel())
            .field("push", &self.push.channel())
            .finish()
    }
}

/// Bounded retries with exponential backoff and "full jitter".
///
/// After the `n`-th failed attempt the caller waits a uniformly random time in
/// `[0, min(max_delay, base_delay * 2^(n-1))]` (full jitter, as in the AWS
/// architecture blog's "Exponential Backoff and Jitter"): the random spread
/// keeps many consumers that failed at once from retrying in lock-step against
/// a provider that is just recovering. At most `max_attempts` attempts are
/// made in total (the first one included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first one included; `0` is treated as `1`.
    pub max_attempts: u32,
    /// The ceiling of the first wait.
    pub base_delay: Duration,
    /// No wait is longer than this.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, waits capped at 100 ms, 200 ms, 400 ms, 800 ms: a provider
    /// hiccup is ridden out within about 1.5 s on average, while a provider
    /// that is really down sends the message to the dead-letter queue quickly.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    pub const fn new(max_attempts: u32, base_delay: Duration, max_delay: Duration) -> Self {
        Self {
            max_attempts,
            base_delay,
            max_delay,
        }
    }

    /// A policy that makes one attempt and never waits.
    pub const fn no_retries() -> Self {
        Self::new(1, Duration::ZERO, Duration::ZERO)
    }

    /// Attempts in total, at least one.
    pub fn attempts(&self) -> u32 {
        self.max_attempts.max(1)
    }

    /// The longest wait after the `attempt`-th failed attempt (1-based):
    /// `min(max_delay, base_delay * 2^(attempt-1))`, without overflow.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(31);
        self.base_delay
            .saturating_mul(1u32 << exponent)
            .min(self.max_delay)
    }

    /// The wait after the `attempt`-th failed attempt (1-based): uniformly
    /// random in `[0, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, &mut rand::rng())
    }

    /// [`Self::delay`] with a given random source (seeded in tests).
    pub fn delay_with<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        let ceiling = u64::try_from(self.ceiling(attempt).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=ceiling))
    }

    /// Runs `operation` (given the 1-based attempt number) until it succeeds,
    /// fails with an error `retryable` refuses, or `max_attempts` are spent,
    /// sleeping [`Self::delay`] between attempts. Returns the last error.
    ///
    /// Inline mode wraps provider calls in this; the consumer runtime has its
    /// own loop because it dead-letters instead of giving the error back.
    pub async fn retry<T, E, F, Fut>(
        &self,
        mut operation: F,
        retryable: impl Fn(&E) -> bool,
    ) -> Result<T, E>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempt = 1;
        loop {
            match operation(attempt).await {
                Ok(value) => return Ok(value),
                Err(error) if attempt < self.attempts() && retryable(&error) => {
                    tokio::time::sleep(self.delay(attempt)).await;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderflow_domain::money::Currency;
    use orderflow_domain::user::Role;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn eur(cents: i64) -> Money {
        Money::new(cents, Currency::parse("EUR").unwrap())
    }

    fn user() -> UserRecord {
        UserRecord {
            id: uuid::Uuid::now_v7(),
            email: "ann@example.com".into(),
            name: "Ann".into(),
            password_hash: "x".into(),
            role: Role::Shopper,
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn one_point_per_whole_unit() {
        assert_eq!(points_for(&eur(1299)), 12);
        assert_eq!(points_for(&eur(99)), 0);
        assert_eq!(points_for(&eur(10_000)), 100);
        assert_eq!(
            points_for(&eur(-500)),
            0,
            "a negative total never takes points away"
        );
    }

    #[test]
    fn messages_name_the_shopper_and_the_order() {
        let user = user();
        let order_id = uuid::Uuid::now_v7();
        for kind in NotificationKind::ALL {
            let message = notification_message(kind, &user, Some(order_id), "email:1".into());
            assert_eq!(message.subject, kind.subject());
            assert_eq!(message.idempotency_key, "email:1");
            assert_eq!(message.user_id, user.id);
            assert_eq!(message.email, user.email);
            assert!(message.body.contains("Ann"), "{kind:?}: {}", message.body);
            if kind != NotificationKind::Welcome {
                assert!(
                    message.body.contains(&order_id.to_string()),
                    "{kind:?}: {}",
                    message.body
                );
            }
        }
        let welcome = notification_message(NotificationKind::Welcome, &user, None, "k".into());
        assert!(welcome.body.contains("ann@example.com"));
        assert_eq!(welcome.order_id, None);
    }

    #[test]
    fn charges_are_keyed_by_order() {
        let now = chrono::Utc::now();
        let order = Order {
            id: uuid::Uuid::now_v7(),
            user_id: uuid::Uuid::now_v7(),
            status: orderflow_domain::order::OrderStatus::Reserved,
            total_cents: 2599,
            currency: Currency::parse("EUR").unwrap(),
            items: vec![],
            created_at: now,
            updated_at: now,
        };
        let request = charge_request(&order, payment_idempotency_key(order.id));
        assert_eq!(request.idempotency_key, format!("order:{}", order.id));
        assert_eq!(request.amount_cents, 2599);
        assert_eq!(request.currency, "EUR");
        assert_eq!(request.user_id, order.user_id);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy::new(10, Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(policy.ceiling(1), Duration::from_millis(100));
        assert_eq!(policy.ceiling(2), Duration::from_millis(200));
        assert_eq!(policy.ceiling(3), Duration::from_millis(400));
        assert_eq!(policy.ceiling(4), Duration::from_millis(800));
        assert_eq!(policy.ceiling(5), Duration::from_secs(1));
        assert_eq!(
            policy.ceiling(u32::MAX),
            Duration::from_secs(1),
            "no overflow"
        );
        let huge = RetryPolicy::new(3, Duration::MAX, Duration::MAX);
        assert_eq!(huge.ceiling(40), Duration::MAX);
    }

    #[test]
    fn full_jitter_stays_within_the_ceiling_and_spreads() {
        let policy = RetryPolicy::new(10, Duration::from_millis(100), Duration::from_secs(1));
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..=8 {
            let delays: Vec<_> = (0..200)
                .map(|_| policy.delay_with(attempt, &mut rng))
                .collect();
            assert!(delays.iter().all(|d| *d <= policy.ceiling(attempt)));
            let min = delays.iter().min().unwrap();
            let max = delays.iter().max().unwrap();
            // Full jitter: waits spread over (nearly) the whole range.
            assert!(
                *min < policy.ceiling(attempt) / 4,
                "attempt {attempt}: min {min:?}"
            );
            assert!(
                *max > policy.ceiling(attempt) * 3 / 4,
                "attempt {attempt}: max {max:?}"
            );
        }
        assert_eq!(RetryPolicy::no_retries().delay(1), Duration::ZERO);
    }

    #[tokio::test]
    async fn retry_stops_at_max_attempts_or_on_permanent_errors() {
        let policy = RetryPolicy::new(4, Duration::from_millis(1), Duration::from_millis(2));
        let calls = AtomicU32::new(0);
        let result: Result<(), &str> = policy
            .retry(
                |_| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async { Err("down") }
                },
                |_| true,
            )
            .await;
        assert_eq!(result, Err("down"));
        assert_eq!(calls.load(Ordering::SeqCst), 4);

        calls.store(0, Ordering::SeqCst);
        let result: Result<(), &str> = policy
            .retry(
                |_| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async { Err("bad address") }
                },
                |_| false,
            )
            .await;
        assert_eq!(result, Err("bad address"));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "permanent errors are not retried"
        );

        let result: Result<u32, &str> = policy
            .retry(
                |attempt| async move {
                    if attempt < 3 {
                        Err("flaky")
                    } else {
                        Ok(attempt)
                    }
                },
                |_| true,
            )
            .await;
        assert_eq!(result, Ok(3));
    }
}
