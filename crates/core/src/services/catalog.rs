//! The catalog, read through an in-process cache (cache-aside).
//!
//! - A burst of concurrent misses for one product makes one database query:
//!   moka's `try_get_with` runs one loader per key and lets the others wait
//!   for its result (request collapsing).
//! - Unknown ids are cached as misses for a short time, so a client probing
//!   random ids cannot turn every request into a query.
//! - Each entry lives for the TTL plus a random jitter, so entries loaded
//!   together do not all expire together and stampede the database.
//! - Writes through this service invalidate the product and every cached page.
//!
//! Stock shown by cached reads may lag the inventory by up to the TTL; the
//! inventory consumer decides availability atomically in the database, so a
//! stale number can only make a product look available, never oversell it.
//!
//! With the cache switched off (`ORDERFLOW_CACHE=off`, the notes' version 1)
//! every read goes to the database.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;
use orderflow_domain::ProductId;
use orderflow_domain::product::{Product, ProductDraft};

use crate::CoreError;
use crate::ports::store::{Store, StoreError};

#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub enabled: bool,
    pub ttl: Duration,
    /// Up to this much is added at random to each entry's TTL.
    pub ttl_jitter: Duration,
    /// How long an unknown id is remembered as missing.
    pub negative_ttl: Duration,
    /// How long a page of the product list is kept.
    pub page_ttl: Duration,
    pub max_products: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl: Duration::from_secs(60),
            ttl_jitter: Duration::from_secs(15),
            negative_ttl: Duration::from_secs(5),
            page_ttl: Duration::from_secs(5),
            max_products: 100_000,
        }
    }
}

/// A page of the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductPage {
    pub items: Vec<Product>,
    pub next_cursor: Option<ProductId>,
}

/// Entry lifetimes: positive entries get TTL + jitter, misses the short negative TTL.
struct EntryLifetime {
    ttl: Duration,
    jitter: Duration,
    negative_ttl: Duration,
}

impl Expiry<ProductId, Option<Arc<Product>>> for EntryLifetime {
    fn expire_after_create(
        &self,
        _key: &ProductId,
        value: &Option<Arc<Product>>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(match value {
            None => self.negative_ttl,
            Some(_) => {
                let jitter_ms = self.jitter.as_millis() as u64;
                let extra = if jitter_ms == 0 {
                    0
                } else {
                    rand::random_range(0..=jitter_ms)
                };
                self.ttl + Duration::from_millis(extra)
            }
        })
    }
}

/// A page is cached by (cursor, page size).
type PageKey = (Option<ProductId>, u32);

pub struct CatalogService {
    store: Arc<dyn Store>,
    products: Option<Cache<ProductId, Option<Arc<Product>>>>,
    pages: Option<Cache<PageKey, Arc<ProductPage>>>,
}

pub const MAX_PAGE_SIZE: u32 = 100;
pub const DEFAULT_PAGE_SIZE: u32 = 20;

impl CatalogService {
    pub fn new(store: Arc<dyn Store>, settings: &CacheSettings) -> Self {
        if !settings.enabled {
            return Self {
                store,
                products: None,
                pages: None,
            };
        }
        let products = Cache::builder()
            .max_capacity(settings.max_products)
            .expire_after(EntryLifetime {
                ttl: settings.ttl,
                jitter: settings.ttl_jitter,
                negative_ttl: settings.negative_ttl,
            })
            .eviction_listener(|_, _, cause| {
                if cause.was_evicted() {
                    metrics::counter!("orderflow_cache_evictions_total", "layer" => "l1")
                        .increment(1);
                }
            })
            .build();
        let pages = Cache::builder()
            .max_capacity(1_000)
            .time_to_live(settings.page_ttl)
            .build();
        Self {
            store,
            products: Some(products),
            pages: Some(pages),
        }
    }

    pub fn cache_enabled(&self) -> bool {
        self.products.is_some()
    }

    /// One product, from the cache when it is on.
    pub async fn product(&self, id: ProductId) -> Result<Option<Product>, CoreError> {
        let Some(cache) = &self.products else {
            return Ok(self.store.product(id).await?);
        };
        if let Some(hit) = cache.get(&id).await {
            metrics::counter!("orderflow_cache_hits_total", "layer" => "l1", "kind" => "product")
                .increment(1);
            return Ok(hit.map(|p| (*p).clone()));
        }
        metrics::counter!("orderflow_cache_misses_total", "layer" => "l1", "kind" => "product")
            .increment(1);
        let store = self.store.clone();
        let loaded = cache
            .try_get_with(id, async move {
                metrics::counter!("orderflow_cache_loads_total", "kind" => "product").increment(1);
                store.product(id).await.map(|p| p.map(Arc::new))
            })
            .await
            .map_err(|e: Arc<StoreError>| CoreError::Store((*e).clone()))?;
        Ok(loaded.map(|p| (*p).clone()))
    }

    /// Several products (for pricing an order); unknown ids are left out.
    pub async fn products(&self, ids: &[ProductId]) -> Result<Vec<Product>, CoreError> {
        if self.products.is_none() {
            return Ok(self.store.products_by_ids(ids).await?);
        }
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(product) = self.product(*id).await? {
                found.push(product);
            }
        }
        Ok(found)
    }

    /// A page of products ordered by id, after `cursor`.
    pub async fn list(
        &self,
        cursor: Option<ProductId>,
        limit: Option<u32>,
    ) -> Result<ProductPage, CoreError> {
        let limit = limit.unwrap_or(DEFAULT_PAGE_SIZE).clamp(1, MAX_PAGE_SIZE);
        let Some(pages) = &self.pages else {
            return self.load_page(cursor, limit).await;
        };
        if let Some(hit) = pages.get(&(cursor, limit)).await {
            metrics::counter!("orderflow_cache_hits_total", "layer" => "l1", "kind" => "page")
                .increment(1);
            return Ok((*hit).clone());
        }
        metrics::counter!("orderflow_cache_misses_total", "layer" => "l1", "kind" => "page")
            .increment(1);
        let page = pages
            .try_get_with((cursor, limit), async move {
                self.load_page(cursor, limit).await.map(Arc::new)
            })
            .await
            .map_err(|e: Arc<CoreError>| CoreError::Internal(e.to_string()))?;
        Ok((*page).clone())
    }

    async fn load_page(
        &self,
        cursor: Option<ProductId>,
        limit: u32,
    ) -> Result<ProductPage, CoreError> {
        // One extra row tells whether another page follows.
        let mut items = self.store.list_products(cursor, limit + 1).await?;
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|p| p.id)
        } else {
            None
        };
        Ok(ProductPage { items, next_cursor })
    }

    /// Creates a product (admin). `Conflict` when the SKU is taken.
    pub async fn create(&self, draft: ProductDraft) -> Result<Product, CoreError> {
        let product = self
            .store
            .insert_product(uuid::Uuid::now_v7(), &draft, chrono::Utc::now())
            .await
            .map_err(sku_conflict)?;
        self.invalidate(product.id).await;
        Ok(product)
    }

    /// Replaces a product's fields (admin).
    pub async fn update(&self, id: ProductId, draft: ProductDraft) -> Result<Product, CoreError> {
        let product = self
            .store
            .update_product(id, &draft, chrono::Utc::now())
            .await
            .map_err(sku_conflict)?
            .ok_or(CoreError::NotFound("product"))?;
        self.invalidate(id).await;
        Ok(product)
    }

    /// Drops a product and all pages from the cache.
    pub async fn invalidate(&self, id: ProductId) {
        if let Some(cache) = &self.products {
            cache.invalidate(&id).await;
        }
        if let Some(pages) = &self.pages {
            pages.invalidate_all();
        }
    }
}

fn sku_conflict(error: StoreError) -> CoreError {
    match error {
        StoreError::Conflict(_) => {
            CoreError::Conflict("a product with this SKU already exists".into())
        }
        other => CoreError::Store(other),
    }
}
