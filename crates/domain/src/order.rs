//! Orders: what a shopper may ask for, how it is priced, and the state machine.
//!
//! States (DESIGN.md §4): `pending → reserved → paid → confirmed`, or
//! `rejected` (out of stock, or refused after a fraud review),
//! `payment_failed`, `cancelled`. The fraud check may hold a pending order
//! (`pending → held`) until an admin approves it (`held → pending`, and the
//! flow goes on: stock, payment) or rejects it (`held → rejected`). Every change goes
//! through [`OrderStatus::on`], which answers with the states to walk through or
//! [`Transition::Ignored`] when the fact does not fit the current state, so a
//! redelivered or late event is never applied twice.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::money::{Currency, Money};
use crate::product::Product;
use crate::rules::{CountRule, IntRule};
use crate::{OrderId, ProductId, Timestamp, UserId, ValidationError};

pub const MAX_LINES: usize = 50;
pub const MAX_QUANTITY: u32 = 100;

/// How many lines an order may have.
pub const LINES: CountRule = CountRule {
    min_items: 1,
    max_items: MAX_LINES,
};
/// The quantity of one line (and of one product over all lines, see
/// [`validate_request`]).
pub const QUANTITY: IntRule = IntRule {
    min: 1,
    max: MAX_QUANTITY as i64,
};

/// Where an order is: `pending → reserved → paid → confirmed`; `held` waits
/// for a fraud review; `rejected`, `payment_failed` and `cancelled` end it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Pending,
    /// Flagged by the fraud check: nothing reserved, nothing charged, until
    /// an admin approves or rejects it.
    Held,
    Reserved,
    Paid,
    Confirmed,
    Rejected,
    PaymentFailed,
    Cancelled,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 8] = [
        OrderStatus::Pending,
        OrderStatus::Held,
        OrderStatus::Reserved,
        OrderStatus::Paid,
        OrderStatus::Confirmed,
        OrderStatus::Rejected,
        OrderStatus::PaymentFailed,
        OrderStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Held => "held",
            OrderStatus::Reserved => "reserved",
            OrderStatus::Paid => "paid",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Rejected => "rejected",
            OrderStatus::PaymentFailed => "payment_failed",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }

    /// Final states end the order's flow: no stock or payment result moves
    /// one again. The one way out is the shopper's cancellation of a
    /// confirmed order, which refunds it.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            OrderStatus::Confirmed
                | OrderStatus::Rejected
                | OrderStatus::PaymentFailed
                | OrderStatus::Cancelled
        )
    }

    /// Whether the shopper has been charged: cancelling from here owes them
    /// a refund.
    pub fn is_charged(self) -> bool {
        matches!(self, OrderStatus::Paid | OrderStatus::Confirmed)
    }

    /// Applies a fact about the order to this state.
    ///
    /// Facts may arrive out of order across topics (the payment result can
    /// overtake the stock result, since they travel on different topics), so a
    /// payment outcome on a `pending` order walks through `reserved` too:
    /// payment only ever charges reserved orders.
    pub fn on(self, fact: OrderFact) -> Transition {
        use OrderFact as F;
        use OrderStatus as S;
        let steps: &[OrderStatus] = match (self, fact) {
            (S::Pending, F::StockReserved) => &[S::Reserved],
            (S::Pending, F::StockRejected) => &[S::Rejected],
            (S::Pending, F::PaymentSucceeded) => &[S::Reserved, S::Paid, S::Confirmed],
            (S::Reserved, F::PaymentSucceeded) => &[S::Paid, S::Confirmed],
            (S::Pending, F::PaymentFailed) => &[S::Reserved, S::PaymentFailed],
            (S::Reserved, F::PaymentFailed) => &[S::PaymentFailed],
            (S::Pending, F::FraudSuspected) => &[S::Held],
            (S::Held, F::Approve) => &[S::Pending],
            (S::Held, F::Reject) => &[S::Rejected],
            // Before the charge nothing is owed back but the stock; after
            // it (`paid` is only ever walked through on the way to
            // `confirmed`) the cancellation is a refund.
            (S::Pending | S::Held | S::Reserved | S::Paid | S::Confirmed, F::Cancel) => {
                &[S::Cancelled]
            }
            _ => return Transition::Ignored { from: self, fact },
        };
        Transition::Apply(steps.to_vec())
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something that happened to an order, as the state machine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderFact {
    StockReserved,
    StockRejected,
    PaymentSucceeded,
    PaymentFailed,
    /// The fraud check flagged the order.
    FraudSuspected,
    /// An admin cleared a held order.
    Approve,
    /// An admin refused a held order.
    Reject,
    /// The shopper cancelled the order.
    Cancel,
}

/// The answer of the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Walk through these states in order; the last one is the new status.
    Apply(Vec<OrderStatus>),
    /// The fact does not fit the current state (a duplicate or a late event).
    Ignored { from: OrderStatus, fact: OrderFact },
}

/// One requested line, as the shopper sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestedLine {
    pub product_id: ProductId,
    pub quantity: i64,
}

/// A priced, validated line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderLine {
    #[schema(value_type = uuid::Uuid)]
    pub product_id: ProductId,
    pub sku: String,
    pub name: String,
    pub quantity: u32,
    pub unit_price_cents: i64,
    pub line_total_cents: i64,
}

/// An order as stored and served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: OrderId,
    pub user_id: UserId,
    pub status: OrderStatus,
    pub total_cents: i64,
    pub currency: Currency,
    pub items: Vec<OrderLine>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Order {
    pub fn total(&self) -> Money {
        Money::new(self.total_cents, self.currency.clone())
    }
}

/// One step of an order's life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub status: OrderStatus,
    pub at: Timestamp,
}

/// Checks the shape of a request before any product is looked up:
/// 1..=50 lines, each quantity 1..=100. Repeated products are merged, so
/// stock is reserved once per product.
pub fn validate_request(lines: &[RequestedLine]) -> Result<Vec<(ProductId, u32)>, ValidationError> {
    LINES.check("items", lines.len())?;
    let mut merged: Vec<(ProductId, u32)> = Vec::with_capacity(lines.len());
    for (index, line) in lines.iter().enumerate() {
        QUANTITY.check(&format!("items[{index}].quantity"), line.quantity)?;
        let quantity = line.quantity as u32;
        match merged.iter_mut().find(|(id, _)| *id == line.product_id) {
            Some((_, existing)) => {
                *existing += quantity;
                if *existing > MAX_QUANTITY {
                    return Err(ValidationError::new(
                        format!("items[{index}].quantity"),
                        format!("total quantity of one product must be at most {MAX_QUANTITY}"),
                    ));
                }
            }
            None => merged.push((line.product_id, quantity)),
        }
    }
    Ok(merged)
}

/// Prices validated lines against the catalog. Unknown products and mixed
/// currencies are refused, naming the line.
pub fn price(
    lines: &[(ProductId, u32)],
    catalog: &HashMap<ProductId, Product>,
) -> Result<(Vec<OrderLine>, Money), ValidationError> {
    let mut priced = Vec::with_capacity(lines.len());
    let mut total: Option<Money> = None;
    for (index, (product_id, quantity)) in lines.iter().enumerate() {
        let product = catalog.get(product_id).ok_or_else(|| {
            ValidationError::new(
                format!("items[{index}].product_id"),
                format!("unknown product {product_id}"),
            )
        })?;
        let unit = Money::new(product.price_cents, product.currency.clone());
        let overflow = || ValidationError::new("items", "order total is too large");
        let line_total = unit.times(*quantity).ok_or_else(overflow)?;
        total = Some(match total {
            None => line_total.clone(),
            Some(sum) => sum.plus(&line_total).ok_or_else(|| {
                if sum.currency != line_total.currency {
                    ValidationError::new(
                        format!("items[{index}].product_id"),
                        "all products of one order must share a currency",
                    )
                } else {
                    overflow()
                }
            })?,
        });
        priced.push(OrderLine {
            product_id: *product_id,
            sku: product.sku.clone(),
            name: product.name.clone(),
            quantity: *quantity,
            unit_price_cents: product.price_cents,
            line_total_cents: line_total.cents,
        });
    }
    let total =
        total.ok_or_else(|| ValidationError::new("items", "must contain at least one line"))?;
    Ok((priced, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn product(id: ProductId, price_cents: i64, currency: &str) -> Product {
        Product {
            id,
            sku: format!("SKU-{}", &id.to_string()[..8]),
            name: "Thing".into(),
            price_cents,
            currency: Currency::parse(currency).unwrap(),
            stock: 10,
            description: String::new(),
            category: None,
            updated_at: chrono::Utc::now(),
            version: 1,
        }
    }

    #[test]
    fn happy_path_walks_to_confirmed() {
        let s = OrderStatus::Pending;
        assert_eq!(
            s.on(OrderFact::StockReserved),
            Transition::Apply(vec![OrderStatus::Reserved])
        );
        assert_eq!(
            OrderStatus::Reserved.on(OrderFact::PaymentSucceeded),
            Transition::Apply(vec![OrderStatus::Paid, OrderStatus::Confirmed])
        );
    }

    #[test]
    fn payment_result_overtaking_stock_result_still_walks_every_state() {
        assert_eq!(
            OrderStatus::Pending.on(OrderFact::PaymentSucceeded),
            Transition::Apply(vec![
                OrderStatus::Reserved,
                OrderStatus::Paid,
                OrderStatus::Confirmed
            ])
        );
        // ...and the late stock result is then ignored.
        assert!(matches!(
            OrderStatus::Confirmed.on(OrderFact::StockReserved),
            Transition::Ignored { .. }
        ));
    }

    #[test]
    fn final_states_ignore_everything_but_a_refund() {
        for status in OrderStatus::ALL.into_iter().filter(|s| s.is_final()) {
            for fact in [
                OrderFact::StockReserved,
                OrderFact::StockRejected,
                OrderFact::PaymentSucceeded,
                OrderFact::PaymentFailed,
                OrderFact::FraudSuspected,
                OrderFact::Approve,
                OrderFact::Reject,
                OrderFact::Cancel,
            ] {
                if (status, fact) == (OrderStatus::Confirmed, OrderFact::Cancel) {
                    continue;
                }
                assert!(
                    matches!(status.on(fact), Transition::Ignored { .. }),
                    "{status} on {fact:?}"
                );
            }
        }
        // A confirmed order cancelled by its shopper is refunded.
        assert_eq!(
            OrderStatus::Confirmed.on(OrderFact::Cancel),
            Transition::Apply(vec![OrderStatus::Cancelled])
        );
    }

    #[test]
    fn a_held_order_waits_for_the_review() {
        assert_eq!(
            OrderStatus::Pending.on(OrderFact::FraudSuspected),
            Transition::Apply(vec![OrderStatus::Held])
        );
        // Approved, it is pending again and the flow goes on from there.
        assert_eq!(
            OrderStatus::Held.on(OrderFact::Approve),
            Transition::Apply(vec![OrderStatus::Pending])
        );
        assert_eq!(
            OrderStatus::Held.on(OrderFact::Reject),
            Transition::Apply(vec![OrderStatus::Rejected])
        );
        assert_eq!(
            OrderStatus::Held.on(OrderFact::Cancel),
            Transition::Apply(vec![OrderStatus::Cancelled])
        );
        // Only a held order can be approved or rejected (a second click
        // finds it pending or rejected), and a held order takes no stock
        // or payment result: nothing was asked of inventory or payment.
        for (status, fact) in [
            (OrderStatus::Pending, OrderFact::Approve),
            (OrderStatus::Pending, OrderFact::Reject),
            (OrderStatus::Reserved, OrderFact::Approve),
            (OrderStatus::Held, OrderFact::FraudSuspected),
            (OrderStatus::Held, OrderFact::StockReserved),
            (OrderStatus::Held, OrderFact::PaymentSucceeded),
            (OrderStatus::Reserved, OrderFact::FraudSuspected),
        ] {
            assert!(
                matches!(status.on(fact), Transition::Ignored { .. }),
                "{status} on {fact:?}"
            );
        }
    }

    #[test]
    fn duplicates_are_ignored() {
        assert!(matches!(
            OrderStatus::Reserved.on(OrderFact::StockReserved),
            Transition::Ignored { .. }
        ));
        assert!(matches!(
            OrderStatus::Reserved.on(OrderFact::StockRejected),
            Transition::Ignored { .. }
        ));
        assert_eq!(
            OrderStatus::Reserved.on(OrderFact::PaymentFailed),
            Transition::Apply(vec![OrderStatus::PaymentFailed])
        );
        assert_eq!(
            OrderStatus::Pending.on(OrderFact::StockRejected),
            Transition::Apply(vec![OrderStatus::Rejected])
        );
    }

    #[test]
    fn request_shape_is_checked() {
        let id = Uuid::now_v7();
        let line = |quantity| RequestedLine {
            product_id: id,
            quantity,
        };
        assert_eq!(validate_request(&[]).unwrap_err().field, "items");
        assert_eq!(
            validate_request(&[line(0)]).unwrap_err().field,
            "items[0].quantity"
        );
        assert_eq!(
            validate_request(&[line(101)]).unwrap_err().field,
            "items[0].quantity"
        );
        let many: Vec<_> = (0..51)
            .map(|_| RequestedLine {
                product_id: Uuid::now_v7(),
                quantity: 1,
            })
            .collect();
        assert_eq!(validate_request(&many).unwrap_err().field, "items");
        assert_eq!(
            validate_request(&[line(2), line(3)]).unwrap(),
            vec![(id, 5)]
        );
        assert_eq!(
            validate_request(&[line(60), line(60)]).unwrap_err().field,
            "items[1].quantity"
        );
    }

    #[test]
    fn pricing_sums_lines_and_names_unknown_products() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let catalog: HashMap<_, _> =
            [(a, product(a, 250, "EUR")), (b, product(b, 1000, "EUR"))].into();
        let (lines, total) = price(&[(a, 3), (b, 1)], &catalog).unwrap();
        assert_eq!(total.cents, 1750);
        assert_eq!(lines[0].line_total_cents, 750);
        let unknown = Uuid::now_v7();
        assert_eq!(
            price(&[(a, 1), (unknown, 1)], &catalog).unwrap_err().field,
            "items[1].product_id"
        );
    }

    #[test]
    fn mixed_currencies_are_refused() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let catalog: HashMap<_, _> =
            [(a, product(a, 250, "EUR")), (b, product(b, 1000, "USD"))].into();
        assert_eq!(
            price(&[(a, 1), (b, 1)], &catalog).unwrap_err().field,
            "items[1].product_id"
        );
    }
}
