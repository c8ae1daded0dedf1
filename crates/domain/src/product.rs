//! Catalog products and the rules for writing them.

use serde::{Deserialize, Serialize};

use crate::money::Currency;
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
    pub updated_at: Timestamp,
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

impl ProductDraft {
    /// Validates raw input; each error names the field.
    pub fn new(
        sku: &str,
        name: &str,
        price_cents: i64,
        currency: &str,
        stock: i64,
    ) -> Result<Self, ValidationError> {
        let sku = sku.trim();
        if sku.is_empty()
            || sku.chars().count() > MAX_SKU_CHARS
            || !sku
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(ValidationError::new(
                "sku",
                format!(
                    "must be 1 to {MAX_SKU_CHARS} characters of A-Z, a-z, 0-9, '-', '_' or '.'"
                ),
            ));
        }
        let name = name.trim();
        let name_chars = name.chars().count();
        if name_chars == 0
            || name_chars > MAX_PRODUCT_NAME_CHARS
            || name.chars().any(char::is_control)
        {
            return Err(ValidationError::new(
                "name",
                format!("must be 1 to {MAX_PRODUCT_NAME_CHARS} printable characters"),
            ));
        }
        if !(0..=MAX_PRICE_CENTS).contains(&price_cents) {
            return Err(ValidationError::new(
                "price_cents",
                format!("must be between 0 and {MAX_PRICE_CENTS}"),
            ));
        }
        if !(0..=MAX_STOCK).contains(&stock) {
            return Err(ValidationError::new(
                "stock",
                format!("must be between 0 and {MAX_STOCK}"),
            ));
        }
        Ok(Self {
            sku: sku.to_owned(),
            name: name.to_owned(),
            price_cents,
            currency: Currency::parse(currency)?,
            stock,
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
