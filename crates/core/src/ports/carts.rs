//! Carts: a shopper's lines before checkout. In the database, or in Redis
//! (a hash per shopper with a time to live, refreshed on use): a cart is a
//! draft, not an order, so losing Redis loses carts and nothing else.
//!
//! Every change gives the cart a new token ([`orderflow_domain::cart`]);
//! [`Carts::clear_if`] empties it, and [`Carts::set_quantity_if`] changes a
//! line, only while the token is unchanged, in one atomic step (a
//! transaction; a Lua script on Redis). A change decided on what the cart
//! held ("one more of this", "at most 50 products") is made with the token
//! it read, so two such changes racing on one cart never lose one.

use async_trait::async_trait;
use orderflow_domain::cart::{Cart, CartLine};
use orderflow_domain::{ProductId, UserId};

use crate::ports::store::StoreError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum CartError {
    /// The cart store did not answer (down, timed out, refused).
    #[error("cart store unavailable: {0}")]
    Unavailable(String),
    /// The cart store answered something this code cannot read.
    #[error("unreadable cart: {0}")]
    Corrupt(String),
}

impl From<StoreError> for CartError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Corrupt(detail) => CartError::Corrupt(detail),
            other => CartError::Unavailable(other.to_string()),
        }
    }
}

pub type CartResult<T> = Result<T, CartError>;

/// How long a cart is kept after its last use: the Redis key's time to
/// live (renewed by every read and change), and the database's retention
/// (from its last change).
pub const CART_LIFETIME: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

#[async_trait]
pub trait Carts: Send + Sync + 'static {
    /// The shopper's cart (empty when there is none); a read counts as use.
    async fn cart(&self, user: UserId) -> CartResult<Cart>;
    /// Sets one line's quantity (0 removes the line); a new line goes last.
    async fn set_quantity(
        &self,
        user: UserId,
        product: ProductId,
        quantity: u32,
    ) -> CartResult<Cart>;
    /// [`Self::set_quantity`], only while the cart's token is still `seen`
    /// (none: the cart is still empty); `None`, and nothing changed, when
    /// another change came first.
    async fn set_quantity_if(
        &self,
        user: UserId,
        product: ProductId,
        quantity: u32,
        seen: Option<&str>,
    ) -> CartResult<Option<Cart>>;
    /// Replaces every line (none empties the cart).
    async fn replace(&self, user: UserId, lines: &[CartLine]) -> CartResult<Cart>;
    /// Empties the cart if its token is still `token`; whether it did.
    async fn clear_if(&self, user: UserId, token: &str) -> CartResult<bool>;
}
