//! Catalog products and the rules for writing them.

use serde::{Deserialize, Serialize};

use crate::money::Currency;
use crate::rules::{IntRule, PRINTABLE_TEXT, TextRule};
use crate::{ProductId, Timestamp, ValidationError};

/// A product as the catalog serves it. `stock` is the quantity that can still be
/// reserved; the inventory consumer is the only writer of it after creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub id: ProductId,
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    pub currency: Currency,
    pub stock: i64,
    /// When the row last changed, its stock included (a reservation or a
    /// release sets it too): the `at` of the product's live messages.
    pub updated_at: Timestamp,
    /// Bumped by the database in the same transaction as every change of the
    /// row (fields or stock), starting at 1. Caches store a product with its
    /// version and refuse to replace a newer one with an older one.
    pub version: i64,
}

/// Fields an admin sends to create or replace a product, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductDraft {
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    pub currency: Currency,
    pub stock: i64,
}

pub const MAX_SKU_CHARS: usize = 64;
pub const MAX_PRODUCT_NAME_CHARS: usize = 200;
/// A price cap well below `i64::MAX / (100 * 50)`, so a full order can never overflow.
pub const MAX_PRICE_CENTS: i64 = 10_000_000_000;
pub const MAX_STOCK: i64 = 1_000_000_000;

/// A stock-keeping unit: letters, digits, `-`, `_`, `.`, nothing else.
pub static SKU: TextRule = TextRule::new(
    1,
    MAX_SKU_CHARS,
    Some("^[A-Za-z0-9._-]+$"),
    "characters of A-Z, a-z, 0-9, '-', '_' or '.'",
);
/// A product's name: stored trimmed, limited as sent.
pub static PRODUCT_NAME: TextRule = TextRule::new(
    1,
    MAX_PRODUCT_NAME_CHARS,
    Some(PRINTABLE_TEXT),
    "characters without control characters, not all blank",
);
pub const PRICE_CENTS: IntRule = IntRule {
    min: 0,
    max: MAX_PRICE_CENTS,
};
pub const STOCK: IntRule = IntRule {
    min: 0,
    max: MAX_STOCK,
};

impl ProductDraft {
    /// Validates raw input against [`SKU`], [`PRODUCT_NAME`],
    /// [`PRICE_CENTS`], [`STOCK`] and the currency rule; each error names
    /// the field.
    pub fn new(
        sku: &str,
        name: &str,
        price_cents: i64,
        currency: &str,
        stock: i64,
    ) -> Result<Self, ValidationError> {
        Ok(Self {
            sku: SKU.check("sku", sku)?.to_owned(),
            name: PRODUCT_NAME.check("name", name)?.trim().to_owned(),
            price_cents: PRICE_CENTS.check("price_cents", price_cents)?,
            currency: Currency::parse(currency)?,
            stock: STOCK.check("stock", stock)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drafts_are_validated_field_by_field() {
        assert!(ProductDraft::new("SKU-1", "Mug", 1299, "EUR", 10).is_ok());
        assert_eq!(
            ProductDraft::new("", "Mug", 1, "EUR", 1).unwrap_err().field,
            "sku"
        );
        assert_eq!(
            ProductDraft::new("a b", "Mug", 1, "EUR", 1)
                .unwrap_err()
                .field,
            "sku"
        );
        assert_eq!(
            ProductDraft::new("S", " ", 1, "EUR", 1).unwrap_err().field,
            "name"
        );
        assert_eq!(
            ProductDraft::new("S", "Mug", -1, "EUR", 1)
                .unwrap_err()
                .field,
            "price_cents"
        );
        assert_eq!(
            ProductDraft::new("S", "Mug", 1, "euro", 1)
                .unwrap_err()
                .field,
            "currency"
        );
        assert_eq!(
            ProductDraft::new("S", "Mug", 1, "EUR", -5)
                .unwrap_err()
                .field,
            "stock"
        );
    }
}
