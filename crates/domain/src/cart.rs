//! A shopper's cart: lines of products and quantities, and a token that
//! changes with every change of the cart.
//!
//! The token is what a checkout orders: it reads the cart, places the
//! order, and then empties the cart only if the token is still the one it
//! read, so a cart changed (refilled) meanwhile is never emptied.

use serde::{Deserialize, Serialize};

use crate::ProductId;

/// One line: a product and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartLine {
    pub product_id: ProductId,
    pub quantity: u32,
}

/// A cart as stored: its lines, oldest first, and its token (none for an
/// empty cart, which is not stored at all).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cart {
    pub lines: Vec<CartLine>,
    pub token: Option<String>,
}

impl Cart {
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The quantity of `product` in the cart (0 when absent).
    pub fn quantity_of(&self, product: ProductId) -> u32 {
        self.lines
            .iter()
            .find(|line| line.product_id == product)
            .map_or(0, |line| line.quantity)
    }
}

/// A new cart token: unique, so a token once ordered never names a later
/// cart.
pub fn new_token() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}
