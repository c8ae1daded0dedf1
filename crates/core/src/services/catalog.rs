//! The catalog, read through a two-level cache (cache-aside): L1 in process
//! (moka), optionally L2 shared by every process (the [`SharedCache`] port,
//! Redis in the scaled setup), then the database.
//!
//! - A burst of concurrent misses for one product makes one database query:
//!   moka's `try_get_with` runs one loader per key and lets the others wait
//!   for its result (request collapsing in process). Across processes the
//!   loader first asks L2; on an L2 miss it takes a short L2 lock for the key
//!   (`SET NX PX`): the winner queries the database and fills L2, the others
//!   wait briefly for L2 to fill (`orderflow_cache_loads_collapsed_total`)
//!   and fall back to the database if it does not.
//! - An update deletes the L2 entry and publishes an invalidation; every
//!   process's listener ([`CatalogService::start_invalidation_listener`])
//!   drops the product (and the cached pages) from its L1. A listener that
//!   lost its subscription for a while drops its whole L1, since it may have
//!   missed invalidations.
//! - L2 down (or empty): reads keep working from L1 and the database, with
//!   `orderflow_cache_l2_errors_total` and one warning per outage; L2 is used
//!   again as soon as it answers, without a restart. Pages of the product
//!   list stay in L1 only (short-lived, cleared by every invalidation).
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;
use orderflow_domain::ProductId;
use orderflow_domain::product::{Product, ProductDraft};

use tokio_util::sync::CancellationToken;

use crate::CoreError;
use crate::ports::cache::{CacheError, CacheEvent, SharedCache, Subscription};
use crate::ports::store::{Store, StoreError};

/// The pub/sub channel of catalog invalidations.
const INVALIDATIONS: &str = "catalog.invalidations";

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
    /// How long the L2 lock of a loading key lives (it outlives a slow query;
    /// a loader that died frees it by expiry).
    pub lock_ttl: Duration,
    /// How long a process that lost the L2 lock waits for the winner to fill
    /// L2 before it queries the database itself.
    pub lock_wait: Duration,
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
            lock_ttl: Duration::from_secs(2),
            lock_wait: Duration::from_millis(500),
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
    shared: Option<Arc<SharedLayer>>,
}

/// The L2 layer: the shared cache and how to use it.
struct SharedLayer {
    cache: Arc<dyn SharedCache>,
    ttl: Duration,
    ttl_jitter: Duration,
    negative_ttl: Duration,
    lock_ttl: Duration,
    lock_wait: Duration,
    /// True while L2 fails, so an outage is logged once, not per request.
    down: AtomicBool,
}

impl SharedLayer {
    fn failed(&self, what: &str, error: &CacheError) {
        metrics::counter!("orderflow_cache_l2_errors_total").increment(1);
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(%error, operation = what, "catalog L2 cache unavailable; reading from L1 and the database");
        }
    }

    fn answered(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!("catalog L2 cache answers again");
        }
    }

    fn ttl_for(&self, value: &Option<Arc<Product>>) -> Duration {
        match value {
            None => self.negative_ttl,
            Some(_) => {
                let jitter_ms = self.ttl_jitter.as_millis() as u64;
                let extra = if jitter_ms == 0 {
                    0
                } else {
                    rand::random_range(0..=jitter_ms)
                };
                self.ttl + Duration::from_millis(extra)
            }
        }
    }

    /// The L2 value of a product, when L2 has one (and it decodes).
    async fn get(&self, key: &str) -> Result<Option<Option<Arc<Product>>>, CacheError> {
        let Some(bytes) = self.cache.get(key).await? else {
            return Ok(None);
        };
        match serde_json::from_slice::<Option<Product>>(&bytes) {
            Ok(product) => Ok(Some(product.map(Arc::new))),
            Err(error) => {
                // Written by another version, or damaged: a miss.
                tracing::warn!(%error, key, "undecodable catalog L2 entry ignored");
                Ok(None)
            }
        }
    }

    async fn put(&self, key: &str, value: &Option<Arc<Product>>) {
        let Ok(bytes) = serde_json::to_vec(&value.as_deref()) else {
            return;
        };
        match self.cache.set(key, &bytes, self.ttl_for(value)).await {
            Ok(()) => self.answered(),
            Err(error) => self.failed("set", &error),
        }
    }

    /// L2, then (under the L2 lock) the database. See the module docs.
    async fn load(
        &self,
        store: &dyn Store,
        id: ProductId,
    ) -> Result<Option<Arc<Product>>, StoreError> {
        let key = format!("product:{id}");
        match self.get(&key).await {
            Ok(Some(value)) => {
                self.answered();
                metrics::counter!("orderflow_cache_hits_total", "layer" => "l2", "kind" => "product")
                    .increment(1);
                return Ok(value);
            }
            Ok(None) => {
                self.answered();
                metrics::counter!("orderflow_cache_misses_total", "layer" => "l2", "kind" => "product")
                    .increment(1);
            }
            Err(error) => {
                self.failed("get", &error);
                return load_from_store(store, id).await;
            }
        }
        match self.cache.try_lock(&key, self.lock_ttl).await {
            Ok(Some(token)) => {
                // Another process may have filled L2 and released the lock
                // between our miss and our lock: look again first.
                if let Ok(Some(value)) = self.get(&key).await {
                    if let Err(error) = self.cache.unlock(&key, &token).await {
                        self.failed("unlock", &error);
                    }
                    metrics::counter!("orderflow_cache_loads_collapsed_total", "kind" => "product")
                        .increment(1);
                    return Ok(value);
                }
                let loaded = load_from_store(store, id).await;
                if let Ok(value) = &loaded {
                    self.put(&key, value).await;
                }
                if let Err(error) = self.cache.unlock(&key, &token).await {
                    self.failed("unlock", &error);
                }
                loaded
            }
            Ok(None) => {
                // Another process is loading this key: wait for its result.
                metrics::counter!("orderflow_cache_loads_collapsed_total", "kind" => "product")
                    .increment(1);
                let deadline = tokio::time::Instant::now() + self.lock_wait;
                let mut pause = Duration::from_millis(5);
                while tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                    match self.get(&key).await {
                        Ok(Some(value)) => return Ok(value),
                        Ok(None) => {}
                        Err(error) => {
                            self.failed("get", &error);
                            break;
                        }
                    }
                }
                metrics::counter!("orderflow_cache_lock_wait_timeouts_total").increment(1);
                load_from_store(store, id).await
            }
            Err(error) => {
                self.failed("lock", &error);
                load_from_store(store, id).await
            }
        }
    }
}

async fn load_from_store(
    store: &dyn Store,
    id: ProductId,
) -> Result<Option<Arc<Product>>, StoreError> {
    metrics::counter!("orderflow_cache_loads_total", "kind" => "product").increment(1);
    store.product(id).await.map(|p| p.map(Arc::new))
}

pub const MAX_PAGE_SIZE: u32 = 100;
pub const DEFAULT_PAGE_SIZE: u32 = 20;

impl CatalogService {
    /// The catalog with an in-process cache only (or none when
    /// `settings.enabled` is false): the embedded setup.
    pub fn new(store: Arc<dyn Store>, settings: &CacheSettings) -> Self {
        Self::build(store, settings, None)
    }

    /// The catalog with L1 in process and `shared` as L2 (the scaled setup).
    /// Call [`start_invalidation_listener`](Self::start_invalidation_listener)
    /// too, so updates made by other processes reach this one's L1. With
    /// `settings.enabled` false there is no cache at all, L2 included.
    pub fn with_shared_cache(
        store: Arc<dyn Store>,
        settings: &CacheSettings,
        shared: Arc<dyn SharedCache>,
    ) -> Self {
        Self::build(store, settings, Some(shared))
    }

    fn build(
        store: Arc<dyn Store>,
        settings: &CacheSettings,
        shared: Option<Arc<dyn SharedCache>>,
    ) -> Self {
        if !settings.enabled {
            return Self {
                store,
                products: None,
                pages: None,
                shared: None,
            };
        }
        let shared = shared.map(|cache| {
            Arc::new(SharedLayer {
                cache,
                ttl: settings.ttl,
                ttl_jitter: settings.ttl_jitter,
                negative_ttl: settings.negative_ttl,
                lock_ttl: settings.lock_ttl,
                lock_wait: settings.lock_wait,
                down: AtomicBool::new(false),
            })
        });
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
            shared,
        }
    }

    pub fn cache_enabled(&self) -> bool {
        self.products.is_some()
    }

    /// Whether an L2 (shared cache) sits under the in-process cache.
    pub fn has_shared_cache(&self) -> bool {
        self.shared.is_some()
    }

    /// Subscribes to the invalidations other processes publish and spawns
    /// the task that applies them to this L1, until `shutdown`. Returns
    /// `None` without an L2. When it returns with L2 reachable, the
    /// subscription is active; when L2 is down, the task keeps trying (and
    /// drops the whole L1 once subscribed, as it may have missed updates).
    pub async fn start_invalidation_listener(
        &self,
        shutdown: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let shared = self.shared.clone()?;
        let products = self.products.clone()?;
        let pages = self.pages.clone()?;
        let first = match shared.cache.subscribe(INVALIDATIONS).await {
            Ok(subscription) => Some(subscription),
            Err(error) => {
                shared.failed("subscribe", &error);
                None
            }
        };
        Some(tokio::spawn(listen(
            first, shared, products, pages, shutdown,
        )))
    }

    /// One product, from the cache when it is on.
    #[tracing::instrument(name = "cache.get", skip(self), fields(cache.kind = "product", cache.hit = tracing::field::Empty))]
    pub async fn product(&self, id: ProductId) -> Result<Option<Product>, CoreError> {
        let Some(cache) = &self.products else {
            return Ok(self.store.product(id).await?);
        };
        if let Some(hit) = cache.get(&id).await {
            metrics::counter!("orderflow_cache_hits_total", "layer" => "l1", "kind" => "product")
                .increment(1);
            tracing::Span::current().record("cache.hit", true);
            return Ok(hit.map(|p| (*p).clone()));
        }
        metrics::counter!("orderflow_cache_misses_total", "layer" => "l1", "kind" => "product")
            .increment(1);
        tracing::Span::current().record("cache.hit", false);
        let store = self.store.clone();
        let shared = self.shared.clone();
        let loaded = cache
            .try_get_with(id, async move {
                match shared {
                    Some(shared) => shared.load(store.as_ref(), id).await,
                    None => load_from_store(store.as_ref(), id).await,
                }
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
    #[tracing::instrument(name = "cache.get", skip(self), fields(cache.kind = "page"))]
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

    /// Drops a product and all pages from every cache: this L1, L2, and
    /// (through the published invalidation) every other process's L1.
    pub async fn invalidate(&self, id: ProductId) {
        if let Some(cache) = &self.products {
            cache.invalidate(&id).await;
        }
        if let Some(pages) = &self.pages {
            pages.invalidate_all();
        }
        if let Some(shared) = &self.shared {
            if let Err(error) = shared.cache.delete(&format!("product:{id}")).await {
                shared.failed("delete", &error);
            }
            if let Err(error) = shared
                .cache
                .publish(INVALIDATIONS, &format!("product:{id}"))
                .await
            {
                shared.failed("publish", &error);
            }
        }
    }
}

/// The invalidation listener's loop (see
/// [`CatalogService::start_invalidation_listener`]).
async fn listen(
    mut subscription: Option<Subscription>,
    shared: Arc<SharedLayer>,
    products: Cache<ProductId, Option<Arc<Product>>>,
    pages: Cache<PageKey, Arc<ProductPage>>,
    shutdown: CancellationToken,
) {
    let drop_everything = || {
        products.invalidate_all();
        pages.invalidate_all();
        metrics::counter!("orderflow_cache_l1_flushes_total").increment(1);
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(current) = subscription.as_mut() else {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            match shared.cache.subscribe(INVALIDATIONS).await {
                Ok(fresh) => {
                    shared.answered();
                    subscription = Some(fresh);
                    backoff = Duration::from_millis(100);
                    drop_everything();
                }
                Err(error) => {
                    shared.failed("subscribe", &error);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
            continue;
        };
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            event = current.next() => event,
        };
        match event {
            Some(CacheEvent::Message(message)) => {
                let id = message
                    .strip_prefix("product:")
                    .and_then(|id| id.parse::<ProductId>().ok());
                match id {
                    Some(id) => {
                        products.invalidate(&id).await;
                        pages.invalidate_all();
                    }
                    None => drop_everything(),
                }
                metrics::counter!("orderflow_cache_invalidations_received_total").increment(1);
            }
            Some(CacheEvent::Resubscribed) => drop_everything(),
            None => subscription = None,
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
