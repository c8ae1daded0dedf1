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
    /// What the shop says about it (may be empty).
    #[serde(default)]
    pub description: String,
    /// The shelf it is on: a name such as "Kitchen"; none for products
    /// not filed anywhere.
    #[serde(default)]
    pub category: Option<String>,
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
    pub description: String,
    pub category: Option<String>,
}

pub const MAX_SKU_CHARS: usize = 64;
pub const MAX_PRODUCT_NAME_CHARS: usize = 200;
pub const MAX_DESCRIPTION_CHARS: usize = 2_000;
pub const MAX_CATEGORY_CHARS: usize = 60;
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
/// A product's description: line breaks and tabs allowed, no other control
/// characters; may be empty.
pub static DESCRIPTION: TextRule = TextRule::new(
    0,
    MAX_DESCRIPTION_CHARS,
    Some(r"^[^\x00-\x08\x0B-\x1F\x7F-\x9F]*$"),
    "characters without control characters other than line breaks and tabs",
);
/// A category's name: stored trimmed, like a product's name.
pub static CATEGORY: TextRule = TextRule::new(
    1,
    MAX_CATEGORY_CHARS,
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
            description: String::new(),
            category: None,
        })
    }

    /// Adds the shop's words about it: a description (checked against
    /// [`DESCRIPTION`]) and a category ([`CATEGORY`]; none files it
    /// nowhere, a blank one is refused like a blank name).
    pub fn described(
        mut self,
        description: &str,
        category: Option<&str>,
    ) -> Result<Self, ValidationError> {
        self.description = DESCRIPTION
            .check("description", description)?
            .trim()
            .to_owned();
        self.category = match category {
            Some(category) => Some(CATEGORY.check("category", category)?.trim().to_owned()),
            None => None,
        };
        Ok(self)
    }
}

/// What a shopper looks for in the catalog: words, a category, a price
/// range, an order, a page.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProductSearch {
    /// Each must begin a word of the name, description or category (all
    /// of them must match); see [`search_words`].
    pub words: Vec<String>,
    /// Exactly this category (as stored, trimmed).
    pub category: Option<String>,
    pub min_price_cents: Option<i64>,
    pub max_price_cents: Option<i64>,
    pub sort: ProductSort,
    pub offset: u32,
    pub limit: u32,
}

impl ProductSearch {
    /// Whether `product` passes the filters a row can be checked against
    /// (all but the words): what a cached result is re-checked with.
    pub fn admits(&self, product: &Product) -> bool {
        self.category
            .as_ref()
            .is_none_or(|c| product.category.as_ref() == Some(c))
            && self
                .min_price_cents
                .is_none_or(|min| product.price_cents >= min)
            && self
                .max_price_cents
                .is_none_or(|max| product.price_cents <= max)
    }
}

/// The order of search results; ties go by id (creation order).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ProductSort {
    /// Best match first with words; without words, creation order.
    #[default]
    Relevance,
    PriceAsc,
    PriceDesc,
    Name,
    Newest,
}

pub const MAX_SEARCH_WORDS: usize = 8;
pub const MAX_SEARCH_WORD_CHARS: usize = 40;
/// How deep a search may page: past this, narrow the search instead.
pub const MAX_SEARCH_OFFSET: u32 = 10_000;

/// The words of a search text: runs of letters and digits, lower-cased, at
/// most [`MAX_SEARCH_WORDS`] of at most [`MAX_SEARCH_WORD_CHARS`]
/// characters each. Everything else separates words, so no input can carry
/// query syntax (FTS5's or `tsquery`'s) into the database.
pub fn search_words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(|word| {
            word.chars()
                .take(MAX_SEARCH_WORD_CHARS)
                .collect::<String>()
                .to_lowercase()
        })
        .take(MAX_SEARCH_WORDS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_text_becomes_plain_words() {
        assert_eq!(search_words("  Blue MUG, 0.5l"), ["blue", "mug", "0", "5l"]);
        assert_eq!(search_words("tea\"* OR x:* & !y"), ["tea", "or", "x", "y"]);
        assert_eq!(search_words("Çay bardağı"), ["çay", "bardağı"]);
        assert!(search_words(" -*- ").is_empty());
        assert_eq!(search_words(&"a ".repeat(20)).len(), MAX_SEARCH_WORDS);
        assert_eq!(
            search_words(&"x".repeat(99))[0].len(),
            MAX_SEARCH_WORD_CHARS
        );
    }

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
        let mug = ProductDraft::new("S", "Mug", 1, "EUR", 1).unwrap();
        let described = mug
            .clone()
            .described(" Holds tea.\nDishwasher safe. ", Some(" Kitchen "))
            .unwrap();
        assert_eq!(described.description, "Holds tea.\nDishwasher safe.");
        assert_eq!(described.category.as_deref(), Some("Kitchen"));
        assert_eq!(
            mug.clone().described("", Some("  ")).unwrap_err().field,
            "category"
        );
        assert_eq!(mug.clone().described("", None).unwrap().category, None);
        let bell = mug.clone().described("ding\u{7}", None).unwrap_err();
        assert_eq!(bell.field, "description");
        let long = "k".repeat(MAX_CATEGORY_CHARS + 1);
        assert_eq!(
            mug.described("", Some(&long)).unwrap_err().field,
            "category"
        );
    }
}
