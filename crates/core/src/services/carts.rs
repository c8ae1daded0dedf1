//! The shopper's cart and its checkout.
//!
//! A cart holds product ids and quantities only; what it shows (names,
//! prices, totals) is read from the catalog at every read, so a price
//! changed since a product was added shows at once, and the checkout prices
//! the order from the catalog too ([`OrderService::place`]).
//!
//! # Checkout
//! One call places the order and empties the cart:
//! 1. A retry (an `Idempotency-Key` with a saved answer) gets that answer,
//!    whatever the cart holds now: a cart refilled since is never touched.
//! 2. Otherwise the cart is read with its token, and the order is placed
//!    with the key (the cart's token when the client sent none, so two
//!    checkouts of one cart make one order) and the token as what a retry
//!    must match.
//! 3. A placed order empties the cart only if its token is still the one
//!    read ([`Carts::clear_if`], atomic): a line added during the checkout
//!    keeps the cart.
//!
//! The order and the emptying are two steps (the cart may be in Redis,
//! outside the order's transaction). A process that dies between them
//! leaves the order placed and the cart full: the retry with the same key
//! (step 1) finds the cart still holding what it ordered (the same token)
//! and empties it then. Nothing is lost either way: a cart is emptied only
//! after its order committed.

use std::collections::HashMap;
use std::sync::Arc;

use orderflow_domain::cart::{Cart, CartLine};
use orderflow_domain::money::Currency;
use orderflow_domain::order::{self, OrderLine, RequestedLine};
use orderflow_domain::product::Product;
use orderflow_domain::{ProductId, UserId, ValidationError};

use crate::CoreError;
use crate::ports::carts::Carts;
use crate::ports::store::Store;
use crate::services::auth::sha256_hex;
use crate::services::catalog::CatalogService;
use crate::services::orders::{
    CHECKOUT_SCOPE, IDEMPOTENCY_KEY, OrderAnswer, OrderService, PlaceOrder,
};

/// How many times a line change is decided again when another change of
/// the same cart came first (a shopper's own tabs racing; more than a few
/// in a row means something keeps rewriting the cart).
const CHANGE_ATTEMPTS: usize = 5;

/// One priced line of a cart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartItem {
    pub line: OrderLine,
    pub currency: Currency,
}

/// A cart as the shopper sees it, priced from the catalog now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartContents {
    /// The lines whose products exist, in the cart's order, priced.
    pub items: Vec<CartItem>,
    /// Lines of products that no longer exist: shown so the shopper can
    /// remove them; a checkout with them is refused until they do.
    pub unavailable: Vec<ProductId>,
    /// The sum of `items`, when they share a currency (an order must).
    pub total: Option<orderflow_domain::money::Money>,
    /// Changes with every change of the cart; none for an empty cart.
    pub token: Option<String>,
}

pub struct CartService {
    carts: Arc<dyn Carts>,
    store: Arc<dyn Store>,
    catalog: Arc<CatalogService>,
    orders: Arc<OrderService>,
}

impl CartService {
    pub fn new(
        carts: Arc<dyn Carts>,
        store: Arc<dyn Store>,
        catalog: Arc<CatalogService>,
        orders: Arc<OrderService>,
    ) -> Self {
        Self {
            carts,
            store,
            catalog,
            orders,
        }
    }

    /// The shopper's cart, priced now.
    pub async fn get(&self, user: UserId) -> Result<CartContents, CoreError> {
        let cart = self.carts.cart(user).await?;
        self.contents(cart).await
    }

    /// Sets the quantity of one product (0 removes it). The product must
    /// exist; a cart holds at most [`order::MAX_LINES`] products, as an
    /// order does.
    pub async fn set(
        &self,
        user: UserId,
        product: ProductId,
        quantity: i64,
    ) -> Result<CartContents, CoreError> {
        if quantity == 0 {
            return self.remove(user, product).await;
        }
        self.change_line(user, product, |_| quantity).await
    }

    /// How many of `product` the cart holds (0: none), without pricing the
    /// cart.
    pub async fn quantity_of(&self, user: UserId, product: ProductId) -> Result<u32, CoreError> {
        Ok(self.carts.cart(user).await?.quantity_of(product))
    }

    /// Adds `more` of a product to what the cart holds of it (a product
    /// page's "add to cart"), within the same limits as [`Self::set`]; two
    /// adds at once both count.
    pub async fn add(
        &self,
        user: UserId,
        product: ProductId,
        more: i64,
    ) -> Result<CartContents, CoreError> {
        self.change_line(user, product, |held| i64::from(held).saturating_add(more))
            .await
    }

    /// Sets one product's line to `quantity(what the cart holds of it)`,
    /// checked against the cart it was decided on and written only while
    /// the cart is still that one; decided again on the new cart when
    /// another change came first.
    async fn change_line(
        &self,
        user: UserId,
        product: ProductId,
        quantity: impl Fn(u32) -> i64,
    ) -> Result<CartContents, CoreError> {
        if self.catalog.product(product).await?.is_none() {
            return Err(
                ValidationError::new("product_id", format!("unknown product {product}")).into(),
            );
        }
        for _ in 0..CHANGE_ATTEMPTS {
            let cart = self.carts.cart(user).await?;
            let held = cart.quantity_of(product);
            let wanted = quantity(held);
            if wanted == 0 {
                return self.remove(user, product).await;
            }
            let wanted = order::QUANTITY.check("quantity", wanted)? as u32;
            if held == 0 && cart.lines.len() >= order::MAX_LINES {
                return Err(ValidationError::new(
                    "items",
                    format!("a cart holds at most {} products", order::MAX_LINES),
                )
                .into());
            }
            if let Some(cart) = self
                .carts
                .set_quantity_if(user, product, wanted, cart.token.as_deref())
                .await?
            {
                return self.contents(cart).await;
            }
        }
        Err(CoreError::Conflict(format!(
            "the cart kept changing while this change was made ({CHANGE_ATTEMPTS} tries): \
             read it and try again"
        )))
    }

    /// Removes one product (nothing happens if it is not in the cart).
    pub async fn remove(
        &self,
        user: UserId,
        product: ProductId,
    ) -> Result<CartContents, CoreError> {
        let cart = self.carts.set_quantity(user, product, 0).await?;
        self.contents(cart).await
    }

    /// Replaces every line, checked as an order's lines are (lines of one
    /// product are merged); none empties the cart.
    pub async fn replace(
        &self,
        user: UserId,
        lines: &[RequestedLine],
    ) -> Result<CartContents, CoreError> {
        let merged = if lines.is_empty() {
            Vec::new()
        } else {
            order::validate_request(lines)?
        };
        let ids: Vec<ProductId> = merged.iter().map(|(id, _)| *id).collect();
        let known = self.catalog.products(&ids).await?;
        if let Some(missing) = ids.iter().find(|id| !known.iter().any(|p| p.id == **id)) {
            return Err(ValidationError::new("items", format!("unknown product {missing}")).into());
        }
        let lines: Vec<CartLine> = merged
            .into_iter()
            .map(|(product_id, quantity)| CartLine {
                product_id,
                quantity,
            })
            .collect();
        let cart = self.carts.replace(user, &lines).await?;
        self.contents(cart).await
    }

    /// Places the cart as an order and empties it (see the module docs).
    pub async fn checkout(
        &self,
        user: UserId,
        key: Option<String>,
        traceparent: Option<String>,
    ) -> Result<OrderAnswer, CoreError> {
        if let Some(key) = &key {
            IDEMPOTENCY_KEY.check("Idempotency-Key", key)?;
        }
        let cart = self.carts.cart(user).await?;
        if let Some(key) = &key
            && let Some(saved) = self
                .store
                .idempotency_record(user, &format!("{CHECKOUT_SCOPE}{key}"))
                .await?
            && saved.response_status != 0
        {
            if let Some(token) = &cart.token
                && saved.request_hash == sha256_hex(token)
            {
                // The cart this key ordered, never emptied (the process
                // died between the two steps): empty it now.
                self.carts.clear_if(user, token).await?;
            }
            metrics::counter!("orderflow_idempotent_replays_total").increment(1);
            return Ok(OrderAnswer {
                status: saved.response_status,
                body: saved.response_body,
                replayed: true,
            });
        }
        let Some(token) = cart.token.clone().filter(|_| !cart.is_empty()) else {
            return Err(CoreError::CartEmpty);
        };
        let answer = self
            .orders
            .place(PlaceOrder {
                user_id: user,
                idempotency_key: Some(key.unwrap_or_else(|| token.clone())),
                lines: cart
                    .lines
                    .iter()
                    .map(|line| RequestedLine {
                        product_id: line.product_id,
                        quantity: i64::from(line.quantity),
                    })
                    .collect(),
                traceparent,
                fingerprint: Some(token.clone()),
                idempotency_scope: CHECKOUT_SCOPE,
            })
            .await?;
        if answer.status == 201 {
            self.carts.clear_if(user, &token).await?;
        }
        Ok(answer)
    }

    /// `cart` priced from the catalog.
    async fn contents(&self, cart: Cart) -> Result<CartContents, CoreError> {
        let ids: Vec<ProductId> = cart.lines.iter().map(|line| line.product_id).collect();
        let products: HashMap<ProductId, Product> = self
            .catalog
            .products(&ids)
            .await?
            .into_iter()
            .map(|product| (product.id, product))
            .collect();
        let (known, unavailable): (Vec<CartLine>, Vec<CartLine>) = cart
            .lines
            .iter()
            .partition(|line| products.contains_key(&line.product_id));
        let wanted: Vec<(ProductId, u32)> = known
            .iter()
            .map(|line| (line.product_id, line.quantity))
            .collect();
        let (items, total) = if wanted.is_empty() {
            (Vec::new(), None)
        } else {
            match order::price(&wanted, &products) {
                Ok((items, total)) => (items, Some(total)),
                // Products in different currencies: shown, not summed (a
                // checkout says why it cannot order them together).
                Err(_) => (priced_alone(&wanted, &products), None),
            }
        };
        let items = items
            .into_iter()
            .map(|line| CartItem {
                currency: products[&line.product_id].currency.clone(),
                line,
            })
            .collect();
        Ok(CartContents {
            items,
            unavailable: unavailable.iter().map(|line| line.product_id).collect(),
            total,
            token: cart.token,
        })
    }
}

/// Each line priced on its own.
fn priced_alone(
    wanted: &[(ProductId, u32)],
    products: &HashMap<ProductId, Product>,
) -> Vec<OrderLine> {
    wanted
        .iter()
        .filter_map(|line| order::price(std::slice::from_ref(line), products).ok())
        .flat_map(|(lines, _)| lines)
        .collect()
}
