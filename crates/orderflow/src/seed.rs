//! The demo data set: a catalog of 240 products in six categories, with
//! descriptions and stock, and a few shoppers.
//! Deterministic, so every demo and benchmark run starts from the same data.

use orderflow_core::CoreError;
use orderflow_domain::product::ProductDraft;

use crate::app::App;

pub const DEMO_PRODUCTS: usize = 240;
/// The password of every demo shopper (printed by `serve --demo`).
pub const DEMO_PASSWORD: &str = "orderflow-demo-2026";
pub const DEMO_SHOPPERS: [(&str, &str); 5] = [
    ("alice@example.com", "Alice"),
    ("bao@example.com", "Bảo"),
    ("cem@example.com", "Cem"),
    ("dilek@example.com", "Dilek"),
    ("emma@example.com", "Emma"),
];

const ADJECTIVES: [&str; 12] = [
    "Classic",
    "Compact",
    "Deluxe",
    "Eco",
    "Everyday",
    "Heavy-duty",
    "Handmade",
    "Mini",
    "Pro",
    "Smart",
    "Travel",
    "Vintage",
];
/// Each product kind with its category.
const NOUNS: [(&str, &str); 20] = [
    ("Backpack", "Bags"),
    ("Bottle", "Kitchen"),
    ("Candle", "Home"),
    ("Chair", "Home"),
    ("Coffee Mug", "Kitchen"),
    ("Desk Lamp", "Home"),
    ("Headphones", "Electronics"),
    ("Jacket", "Clothing"),
    ("Keyboard", "Electronics"),
    ("Kettle", "Kitchen"),
    ("Notebook", "Stationery"),
    ("Pan", "Kitchen"),
    ("Pillow", "Home"),
    ("Plant Pot", "Home"),
    ("Scarf", "Clothing"),
    ("Sneakers", "Clothing"),
    ("Speaker", "Electronics"),
    ("Tea Set", "Kitchen"),
    ("Umbrella", "Clothing"),
    ("Watch", "Electronics"),
];

/// The `index`-th demo product.
pub fn demo_product(index: usize) -> ProductDraft {
    let adjective = ADJECTIVES[index % ADJECTIVES.len()];
    let (noun, category) = NOUNS[(index / ADJECTIVES.len()) % NOUNS.len()];
    let name = format!("{adjective} {noun}");
    let description = format!(
        "A {} {} for every day, from the demo shop's {} shelf. Item {} of {DEMO_PRODUCTS}.",
        adjective.to_lowercase(),
        noun.to_lowercase(),
        category.to_lowercase(),
        index + 1
    );
    // Prices from 1.99 to about 250.00, stock from 20 to 500: varied but reproducible.
    let price_cents = 199 + ((index as i64 * 7_919) % 24_800);
    let stock = 20 + ((index as i64 * 104_729) % 481);
    ProductDraft::new(
        &format!("DEMO-{:04}", index + 1),
        &name,
        price_cents,
        "EUR",
        stock,
    )
    .and_then(|draft| draft.described(&description, Some(category)))
    .expect("demo products are valid")
}

/// What [`seed`] did.
#[derive(Debug, Default)]
pub struct SeedReport {
    pub products_created: usize,
    pub shoppers_created: usize,
}

/// Seeds the demo catalog and shoppers. Existing SKUs and e-mails are left
/// alone, so seeding twice changes nothing.
pub async fn seed(app: &App) -> Result<SeedReport, CoreError> {
    let mut report = SeedReport::default();
    for index in 0..DEMO_PRODUCTS {
        match app.catalog.create(demo_product(index)).await {
            Ok(_) => report.products_created += 1,
            Err(CoreError::Conflict(_)) => {}
            Err(other) => return Err(other),
        }
    }
    for (email, name) in DEMO_SHOPPERS {
        match app.auth.register(email, DEMO_PASSWORD, name).await {
            Ok(_) => report.shoppers_created += 1,
            Err(CoreError::Conflict(_)) => {}
            Err(other) => return Err(other),
        }
    }
    Ok(report)
}

/// Seeds only when the catalog is empty (`serve --demo`).
pub async fn seed_if_empty(app: &App) -> Result<Option<SeedReport>, CoreError> {
    if app.store.count_products().await? > 0 {
        return Ok(None);
    }
    seed(app).await.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_products_are_valid_and_unique() {
        let skus: std::collections::HashSet<_> =
            (0..DEMO_PRODUCTS).map(|i| demo_product(i).sku).collect();
        assert_eq!(skus.len(), DEMO_PRODUCTS);
        assert!((0..DEMO_PRODUCTS).all(|i| demo_product(i).stock >= 20));
    }
}
