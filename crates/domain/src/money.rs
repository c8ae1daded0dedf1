//! Money as integer minor units (cents) plus an ISO 4217 code.
//!
//! Floats never touch prices: totals are sums of `i64` cents with overflow
//! checks, and two amounts in different currencies are never added.

use serde::{Deserialize, Serialize};

use crate::ValidationError;
use crate::rules::TextRule;

/// An ISO 4217 code as the API takes it.
pub static CURRENCY: TextRule = TextRule::new(
    3,
    3,
    Some("^[A-Z]{3}$"),
    "upper-case letters of an ISO 4217 code such as EUR",
);

/// An ISO 4217 currency code such as `EUR`; always three upper-case ASCII letters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(String);

impl Currency {
    pub fn parse(code: &str) -> Result<Self, ValidationError> {
        Ok(Self(CURRENCY.check("currency", code)?.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Currency {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Currency> for String {
    fn from(value: Currency) -> Self {
        value.0
    }
}

impl std::fmt::Display for Currency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An amount in minor units of one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    pub cents: i64,
    pub currency: Currency,
}

impl Money {
    pub fn new(cents: i64, currency: Currency) -> Self {
        Self { cents, currency }
    }

    /// `self * quantity`, or `None` on overflow.
    pub fn times(&self, quantity: u32) -> Option<Money> {
        self.cents
            .checked_mul(i64::from(quantity))
            .map(|cents| Money::new(cents, self.currency.clone()))
    }

    /// `self + other`; `None` on overflow or when the currencies differ.
    pub fn plus(&self, other: &Money) -> Option<Money> {
        if self.currency != other.currency {
            return None;
        }
        self.cents
            .checked_add(other.cents)
            .map(|cents| Money::new(cents, self.currency.clone()))
    }

    /// Whole currency units, rounded down (loyalty gives one point per unit).
    pub fn whole_units(&self) -> i64 {
        self.cents.div_euclid(100)
    }
}

/// `12.99 EUR`, `-0.50 EUR`: minor units as hundredths, as every amount
/// here is kept.
impl std::fmt::Display for Money {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.cents < 0 { "-" } else { "" };
        let cents = self.cents.unsigned_abs();
        write!(
            f,
            "{sign}{}.{:02} {}",
            cents / 100,
            cents % 100,
            self.currency
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_read_as_hundredths() {
        assert_eq!(eur(1299).to_string(), "12.99 EUR");
        assert_eq!(eur(5).to_string(), "0.05 EUR");
        assert_eq!(eur(-50).to_string(), "-0.50 EUR");
    }

    fn eur(cents: i64) -> Money {
        Money::new(cents, Currency::parse("EUR").unwrap())
    }

    #[test]
    fn currency_codes_are_three_upper_case_letters() {
        assert!(Currency::parse("EUR").is_ok());
        assert!(Currency::parse("eur").is_err());
        assert!(Currency::parse("EURO").is_err());
        assert!(Currency::parse("E1R").is_err());
    }

    #[test]
    fn arithmetic_is_checked() {
        assert_eq!(eur(250).times(3), Some(eur(750)));
        assert_eq!(eur(i64::MAX).times(2), None);
        assert_eq!(eur(1).plus(&eur(2)), Some(eur(3)));
        assert_eq!(eur(i64::MAX).plus(&eur(1)), None);
        let usd = Money::new(1, Currency::parse("USD").unwrap());
        assert_eq!(eur(1).plus(&usd), None, "different currencies never add up");
    }

    #[test]
    fn whole_units_round_down() {
        assert_eq!(eur(1999).whole_units(), 19);
        assert_eq!(eur(2000).whole_units(), 20);
        assert_eq!(eur(99).whole_units(), 0);
    }
}
