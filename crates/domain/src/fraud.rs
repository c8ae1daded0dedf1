//! The fraud rules: too many orders, or too much money, from one shopper
//! within any window of event time. Pure: the consumer that applies them
//! keeps each shopper's recent orders in the database and hands them here.
//!
//! - **Sliding and exact**: every window position counts, not buckets. Six
//!   orders between 04:59 and 05:01 are six in one window, although a
//!   bucketed count would split them at 05:00.
//! - **Half-open windows** `[start, start + window)`: two orders exactly
//!   `window` apart never share one. With the defaults, five orders in five
//!   minutes are not fraud and a sixth within them is.
//! - **Thresholds are exclusive**: *more than* `max_orders` orders, *more
//!   than* `max_total_cents` (orders in `currency` only; an order in another
//!   currency counts for the order rule, not the money rule).
//! - **Event time**: an order's time is its event's `time`, so a backlog
//!   replayed an hour later finds the same windows it would have found live.
//!   Events may come out of order; an event older than the shopper's
//!   watermark (the latest order time seen) by more than `grace` is
//!   [`Verdict::Late`]: its windows may have been forgotten
//!   ([`FraudRules::keep_for`]), so it is counted by the caller, not judged.
//!
//! Why checking only the windows that start at an order is exact: any
//! window holding the new order holds a subset of the orders of the window
//! that starts at its own earliest order, which still holds the new one.

use chrono::TimeDelta;
use serde::{Deserialize, Serialize};

use crate::money::Currency;
use crate::{OrderId, Timestamp};

/// The rules' settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FraudRules {
    /// More orders than this within `window` is fraud.
    pub max_orders: usize,
    /// More than this (in `currency`'s cents) within `window` is fraud.
    pub max_total_cents: i64,
    pub currency: Currency,
    pub window: TimeDelta,
    /// How far behind the watermark an order may be and still be judged.
    pub grace: TimeDelta,
}

impl FraudRules {
    /// The rules: more than 5 orders or more than 10,000.00 (in
    /// `currency`) in any 5 minutes, with a minute of grace for late events.
    pub fn standard(currency: Currency) -> Self {
        Self {
            max_orders: 5,
            max_total_cents: 1_000_000,
            currency,
            window: TimeDelta::minutes(5),
            grace: TimeDelta::minutes(1),
        }
    }

    /// The orders [`check`](Self::check) needs to see around an order at
    /// `at`: those in `[at - window, at + window]`.
    pub fn neighbourhood(&self, at: Timestamp) -> (Timestamp, Timestamp) {
        (at - self.window, at + self.window)
    }

    /// Whether a neighbourhood ([`neighbourhood`](Self::neighbourhood)) of
    /// at most `orders` orders and `total_cents` (in `currency`), the new
    /// order included, breaks no rule. Every window that holds the new order
    /// lies inside its neighbourhood, so then none can, and
    /// [`check`](Self::check) needs no orders but the new one.
    pub fn cannot_flag(&self, orders: u64, total_cents: i64) -> bool {
        orders <= self.max_orders as u64 && total_cents <= self.max_total_cents
    }

    /// How long after the watermark a shopper's orders must be kept: an
    /// order judged later is at most `grace` older than the watermark, and
    /// looks back at most `window` from there.
    pub fn keep_for(&self) -> TimeDelta {
        self.window + self.grace
    }

    /// Judges `new` against the shopper's other `known` orders (those of
    /// [`neighbourhood`](Self::neighbourhood); others are ignored) and the
    /// shopper's `watermark`. A `known` order with `new`'s id (a
    /// redelivery) counts once.
    pub fn check(
        &self,
        watermark: Option<Timestamp>,
        known: &[WindowOrder],
        new: &WindowOrder,
    ) -> Verdict {
        if let Some(watermark) = watermark
            && new.at < watermark - self.grace
        {
            return Verdict::Late {
                behind: watermark - new.at,
            };
        }
        let mut orders: Vec<&WindowOrder> = known
            .iter()
            .filter(|o| o.order_id != new.order_id && (o.at - new.at).abs() < self.window)
            .chain(std::iter::once(new))
            .collect();
        orders.sort_by_key(|o| (o.at, o.order_id));
        let mut end = 0;
        for (start, first) in orders.iter().enumerate() {
            if first.at > new.at {
                break;
            }
            let window_end = first.at + self.window;
            if new.at >= window_end {
                continue;
            }
            end = end.max(start);
            while end < orders.len() && orders[end].at < window_end {
                end += 1;
            }
            let inside = &orders[start..end];
            let total: i64 = inside
                .iter()
                .filter(|o| o.currency == self.currency)
                .map(|o| o.total_cents)
                .sum();
            let rule = if inside.len() > self.max_orders {
                Some(Rule::OrdersPerWindow)
            } else if total > self.max_total_cents {
                Some(Rule::TotalPerWindow)
            } else {
                None
            };
            if let Some(rule) = rule {
                return Verdict::Flagged(Violation {
                    rule,
                    window_start: first.at,
                    window_end,
                    orders: inside.iter().map(|o| o.order_id).collect(),
                    total_cents: total,
                });
            }
        }
        Verdict::Clear
    }
}

/// One order as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowOrder {
    pub order_id: OrderId,
    /// Event time: when the order was placed.
    pub at: Timestamp,
    pub total_cents: i64,
    pub currency: Currency,
}

/// Which rule an order broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// More than `max_orders` orders in one window.
    OrdersPerWindow,
    /// More than `max_total_cents` in one window.
    TotalPerWindow,
}

impl Rule {
    /// The `rule` label of `orderflow_fraud_alerts_total`, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::OrdersPerWindow => "orders_per_window",
            Rule::TotalPerWindow => "total_per_window",
        }
    }
}

/// The window an order broke a rule in, and the orders in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub rule: Rule,
    pub window_start: Timestamp,
    /// Exclusive.
    pub window_end: Timestamp,
    /// In event-time order, the new one among them.
    pub orders: Vec<OrderId>,
    /// The orders' total in the rules' currency.
    pub total_cents: i64,
}

/// What [`FraudRules::check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Clear,
    Flagged(Violation),
    /// Older than the watermark by more than the grace: not judged.
    Late {
        behind: TimeDelta,
    },
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    fn at(minutes: i64, seconds: i64) -> Timestamp {
        Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap()
            + TimeDelta::minutes(minutes)
            + TimeDelta::seconds(seconds)
    }

    fn order(n: u128, at: Timestamp, total_cents: i64) -> WindowOrder {
        WindowOrder {
            order_id: uuid::Uuid::from_u128(n),
            at,
            total_cents,
            currency: eur(),
        }
    }

    /// Feeds `orders` one by one, as the consumer would, each judged
    /// against the ones before it; the verdicts.
    fn feed(rules: &FraudRules, orders: &[WindowOrder]) -> Vec<Verdict> {
        let mut known: Vec<WindowOrder> = Vec::new();
        let mut watermark: Option<Timestamp> = None;
        orders
            .iter()
            .map(|new| {
                let verdict = rules.check(watermark, &known, new);
                if !matches!(verdict, Verdict::Late { .. }) {
                    known.push(new.clone());
                    watermark = watermark.max(Some(new.at));
                }
                verdict
            })
            .collect()
    }

    fn flagged(verdict: &Verdict) -> Option<&Violation> {
        match verdict {
            Verdict::Flagged(violation) => Some(violation),
            _ => None,
        }
    }

    #[test]
    fn five_orders_in_five_minutes_are_not_fraud_and_the_sixth_is() {
        let rules = FraudRules::standard(eur());
        let orders: Vec<_> = (0..6).map(|n| order(n, at(n as i64, 0), 100)).collect();
        let verdicts = feed(&rules, &orders[..5]);
        assert!(
            verdicts.iter().all(|v| *v == Verdict::Clear),
            "{verdicts:?}"
        );
        let sixth = rules.check(Some(at(4, 0)), &orders[..5], &orders[5]);
        // The sixth, at 5:00, is exactly five minutes after the first: the
        // window [0:00, 5:00) does not hold it, [1:00, 6:00) holds five.
        assert_eq!(sixth, Verdict::Clear);
        let sixth = order(6, at(4, 59), 100);
        let violation = flagged(&rules.check(Some(at(4, 0)), &orders[..5], &sixth))
            .cloned()
            .expect("six orders within 4:59");
        assert_eq!(violation.rule, Rule::OrdersPerWindow);
        assert_eq!(violation.orders.len(), 6);
        assert_eq!(violation.window_start, at(0, 0));
        assert_eq!(violation.window_end, at(5, 0));
        assert_eq!(violation.orders.last(), Some(&sixth.order_id));
    }

    #[test]
    fn windows_slide_and_are_not_buckets() {
        // Six orders from 04:50 to 05:10: a five-minute bucket boundary at
        // 05:00 would split them three and three.
        let rules = FraudRules::standard(eur());
        let orders: Vec<_> = (0..6)
            .map(|n| order(n, at(4, 50 + 4 * n as i64), 100))
            .collect();
        let verdicts = feed(&rules, &orders);
        assert!(verdicts[..5].iter().all(|v| *v == Verdict::Clear));
        assert_eq!(
            flagged(&verdicts[5]).map(|v| v.rule),
            Some(Rule::OrdersPerWindow)
        );
    }

    #[test]
    fn more_than_the_money_threshold_is_fraud_and_exactly_it_is_not() {
        let rules = FraudRules::standard(eur());
        let first = order(1, at(0, 0), 600_000);
        let exactly = order(2, at(4, 0), 400_000);
        assert_eq!(
            feed(&rules, &[first.clone(), exactly]),
            [Verdict::Clear, Verdict::Clear]
        );
        let over = order(3, at(4, 0), 400_001);
        let verdicts = feed(&rules, &[first, over]);
        let violation = flagged(&verdicts[1]).expect("10,000.01 in 4 minutes");
        assert_eq!(violation.rule, Rule::TotalPerWindow);
        assert_eq!(violation.total_cents, 1_000_001);
    }

    #[test]
    fn the_money_rule_counts_the_rules_currency_only() {
        let rules = FraudRules::standard(eur());
        let mut in_dollars = order(2, at(1, 0), 900_000);
        in_dollars.currency = Currency::parse("USD").unwrap();
        let verdicts = feed(&rules, &[order(1, at(0, 0), 900_000), in_dollars]);
        assert_eq!(verdicts, [Verdict::Clear, Verdict::Clear]);
    }

    #[test]
    fn out_of_order_events_find_the_same_windows() {
        let rules = FraudRules::standard(eur());
        // Newest first, each within the grace of the watermark.
        let orders: Vec<_> = (0..6)
            .rev()
            .map(|n| order(n, at(2, 10 * n as i64), 100))
            .collect();
        let verdicts = feed(&rules, &orders);
        assert!(verdicts[..5].iter().all(|v| *v == Verdict::Clear));
        let violation = flagged(&verdicts[5]).expect("the sixth, whenever it comes");
        assert_eq!(violation.window_start, at(2, 0));
        assert_eq!(violation.orders.len(), 6);
    }

    #[test]
    fn late_events_within_the_grace_are_judged_and_beyond_it_are_not() {
        let rules = FraudRules::standard(eur());
        let mut orders: Vec<_> = (0..5).map(|n| order(n, at(10, n as i64), 100)).collect();
        // 50 s behind the watermark (10:04): within the minute of grace,
        // and the sixth in the window.
        orders.push(order(5, at(9, 14), 100));
        let verdicts = feed(&rules, &orders);
        assert!(flagged(&verdicts[5]).is_some(), "{verdicts:?}");
        // 61 s behind: late, not judged (the caller counts it).
        orders[5] = order(5, at(9, 3), 100);
        let verdicts = feed(&rules, &orders);
        assert_eq!(
            verdicts[5],
            Verdict::Late {
                behind: TimeDelta::seconds(61)
            }
        );
    }

    #[test]
    fn a_redelivered_order_counts_once() {
        let rules = FraudRules::standard(eur());
        let orders: Vec<_> = (0..5).map(|n| order(n, at(0, n as i64), 100)).collect();
        let again = orders[4].clone();
        assert_eq!(rules.check(Some(at(0, 4)), &orders, &again), Verdict::Clear);
    }

    #[test]
    fn the_neighbourhood_and_retention_cover_every_window() {
        let rules = FraudRules::standard(eur());
        let (from, to) = rules.neighbourhood(at(10, 0));
        assert_eq!((from, to), (at(5, 0), at(15, 0)));
        assert_eq!(rules.keep_for(), TimeDelta::minutes(6));
    }
}
