//! The catalog, read through a two-level cache: L1 in process (moka),
//! optionally L2 shared by every process (the [`SharedCache`] port, Redis in
//! the scaled setup), then the database. Caches here never lie: a change
//! reaches every cache right after its commit, and no cache write can put an
//! older product over a newer one.
//!
//! # Coherence
//! - Every product row has a version, bumped by the database in the same
//!   transaction as any change of the row ([`Product::version`]). Each cache
//!   entry carries the version it was made from, and every cache write is
//!   conditional on it: L2 through [`SharedCache::set_versioned`] (atomic in
//!   Redis), L1 through moka's per-key `and_compute_with`, which runs one
//!   closure per key at a time, loads included.
//! - A change ([`CatalogService::products_changed`], called after the
//!   commit by whoever changed stock or fields: the admin edit, the
//!   inventory and orders consumers, the inline order path, the import)
//!   writes the new version into this process's L1 and L2 (write-through),
//!   or only a *floor* of it (write-around: "version N exists, nothing older
//!   may be stored"), then publishes it so every other process stores the
//!   same in its L1: `product:{id}:{version}:{json}` carries a written-through
//!   value (no reload anywhere, so a change costs other processes no miss),
//!   `product:{id}:{version}` a floor. A loader that read the row before
//!   the change finds the floor when it comes to store its result, and its
//!   older value is refused: the stale-set race cannot bring the old stock
//!   back. A reader that finds a floor treats it as a miss and loads a value
//!   at least that new (L2 holds it already when the change wrote through).
//! - A lost invalidation heals at the next versioned write for the key: any
//!   later change's floor or value replaces every older entry, whichever
//!   message was lost. A listener that lost its subscription drops its whole
//!   L1, since messages published meanwhile are gone. If the process that
//!   committed dies before it publishes, other processes' L1 entries live out
//!   their TTL: the one window left, and the reason the TTL stays short.
//! - Pages of the product list hold ids, not products: their items are read
//!   through the same versioned product entries, so a stock change shows in
//!   the list exactly as in `GET /products/{id}`; an item changed since
//!   (a floor in L1) is read alone through that path, so a stock change does
//!   not cost a page query in every other process. A page is dropped only when
//!   the list's membership changes (a product created or imported), by an
//!   epoch every page records at its load: a page loaded before the change
//!   is refused at read time.
//! - L2 down (or empty): L2 misses go to the database, with
//!   `orderflow_cache_l2_errors_total` and one warning per outage; L2 is
//!   used again as soon as it answers. While the invalidation subscription
//!   is lost (Redis gone), this process could miss other processes'
//!   changes, so its reads bypass L1 too and go to the database
//!   (`orderflow_cache_bypassed_total`) until it is subscribed again and has
//!   dropped its L1: nothing stale is served.
//!
//! # The notes' strategies, where each sits
//! - read-through with request collapsing: [`CatalogService::product`]. In
//!   process, concurrent misses of one key wait for one load (moka's per-key
//!   compute); across processes the loader takes a short L2 lock (`SET NX
//!   PX`) and the others wait for L2 to fill. Both count in
//!   `orderflow_cache_loads_collapsed_total{scope}`.
//! - write-through: [`CatalogService::update`] / [`create`](CatalogService::create)
//!   write the database, then the caches, in the same call.
//! - write-around: [`CatalogService::import`] writes the database only and
//!   leaves floors for what it touched.
//! - write-behind: product views ([`CatalogService::record_view`]), counted
//!   in memory per product and minute and appended to the log in batches
//!   ([`CatalogService::flush_views`]) as `product.viewed` events, which the
//!   `trending` group adds up (so the rankings can be rebuilt from the log).
//! - refresh-ahead: an entry read at least `refresh_ahead_hits` times is
//!   reloaded in the background when less than `refresh_ahead` of its life
//!   is left, so the hottest products never miss.
//! - negative caching: unknown ids are cached as misses (version 0) for a
//!   short time, so a client probing random ids cannot turn every request
//!   into a query.
//! - TTL jitter: each entry lives for the TTL plus a random jitter, so
//!   entries loaded together do not expire together and stampede the
//!   database.
//!
//! With the cache switched off (`ORDERFLOW_CACHE=off`, the notes' version 1)
//! every read goes to the database.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;
use moka::ops::compute::{CompResult, Op};
use orderflow_domain::events::{Envelope, EventData};
use orderflow_domain::product::{Product, ProductDraft, ProductSearch};
use orderflow_domain::{ProductId, Timestamp, ValidationError};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::CoreError;
use crate::per_core::PerCore;
use crate::ports::cache::{CacheError, CacheEvent, SharedCache, Subscription, Versioned};
use crate::ports::read_models::{HYPERLOGLOG_STANDARD_ERROR, ViewerSketches};
use crate::ports::store::{Store, StoreError};
use crate::services::live::{LiveChannel, LiveHub};
use crate::services::lock;

/// At most this many items of a cached page are read one by one (see
/// [`CatalogService::page_items`]); more, and the page is loaded again.
const PAGE_ITEMS_READ_ALONE: usize = 8;

/// The pub/sub channel of catalog invalidations.
const INVALIDATIONS: &str = "catalog.invalidations";
/// The invalidation message that drops every cached page (membership changed).
const PAGES_CHANGED: &str = "pages";
/// The invalidation message that drops every cached search (a product's
/// searched fields or price changed).
const SEARCHES_CHANGED: &str = "searches";
/// How long a search's result (its ids) and the category list are kept: the
/// bound on how late a product shows in a search after a change whose
/// message was lost. The products themselves are read through their
/// versioned entries, always current.
pub const SEARCH_CACHED_FOR: Duration = Duration::from_secs(5);
/// How often changes that could not be announced are tried again.
const RESEND_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub enabled: bool,
    pub ttl: Duration,
    /// Up to this much is added at random to each entry's TTL.
    pub ttl_jitter: Duration,
    /// How long an unknown id is remembered as missing.
    pub negative_ttl: Duration,
    /// How long a page of the product list (its ids) is kept.
    pub page_ttl: Duration,
    pub max_products: u64,
    /// How long the L2 lock of a loading key lives (it outlives a slow query;
    /// a loader that died frees it by expiry).
    pub lock_ttl: Duration,
    /// How long a process that lost the L2 lock waits for the winner to fill
    /// L2 before it queries the database itself.
    pub lock_wait: Duration,
    /// A hot entry is reloaded in the background when less than this much of
    /// its life is left (zero: never).
    pub refresh_ahead: Duration,
    /// Reads of an entry that make it hot.
    pub refresh_ahead_hits: u32,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl: Duration::from_secs(60),
            ttl_jitter: Duration::from_secs(15),
            negative_ttl: Duration::from_secs(5),
            page_ttl: Duration::from_secs(30),
            max_products: 100_000,
            lock_ttl: Duration::from_secs(2),
            lock_wait: Duration::from_millis(500),
            refresh_ahead: Duration::from_secs(10),
            refresh_ahead_hits: 8,
        }
    }
}

/// A page of the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductPage {
    pub items: Vec<Product>,
    pub next_cursor: Option<ProductId>,
}

/// A page of search results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPage {
    pub items: Vec<Product>,
    /// Where the next page starts; none on the last page.
    pub next_offset: Option<u32>,
}

/// What an L1 (or L2) entry of a product says.
#[derive(Debug, Clone)]
enum Slot {
    /// The product at its version.
    Found(Arc<Product>),
    /// No such product (version 0: any created product is newer).
    Missing,
    /// Only a version: a change happened, nothing older may be stored, and a
    /// reader must load (it is a miss).
    Floor(i64),
}

impl Slot {
    fn version(&self) -> i64 {
        match self {
            Slot::Found(product) => product.version,
            Slot::Missing => 0,
            Slot::Floor(version) => *version,
        }
    }

    /// The answer to a read, unless this is a floor.
    fn answer(&self) -> Option<Option<Arc<Product>>> {
        match self {
            Slot::Found(product) => Some(Some(product.clone())),
            Slot::Missing => Some(None),
            Slot::Floor(_) => None,
        }
    }

    /// [`Versioned::replaces`] for slots: newer, or the value of a floor's
    /// own version.
    fn replaces(&self, current: &Slot) -> bool {
        self.version() > current.version()
            || (self.version() == current.version()
                && matches!(current, Slot::Floor(_))
                && !matches!(self, Slot::Floor(_)))
    }

    fn from_product(product: Option<Product>) -> Self {
        product.map_or(Slot::Missing, |p| Slot::Found(Arc::new(p)))
    }
}

/// An L1 entry: the slot, when it expires, what refresh-ahead needs, and
/// the bytes a caller rendered of its product
/// ([`CatalogService::product_rendered`]).
#[derive(Debug)]
struct Cached {
    slot: Slot,
    expires_at: Instant,
    hits: AtomicU32,
    refreshing: AtomicBool,
    rendered: OnceLock<Rendered>,
}

/// The bytes a caller made of a product: the API's JSON body of a product
/// read. Shared, so an answer holds them without a copy.
pub type Rendered = Arc<[u8]>;

/// How a product read was answered.
enum ProductRead {
    /// By this L1 entry, with its answer (`None`: no such product).
    Hit(Arc<Cached>, Option<Arc<Product>>),
    /// By a load (a miss, or the cache off or bypassed).
    Loaded(Option<Arc<Product>>),
}

/// Entry lifetimes, shared by L1 and L2.
#[derive(Debug, Clone)]
struct Lifetimes {
    ttl: Duration,
    jitter: Duration,
    negative_ttl: Duration,
}

impl Lifetimes {
    fn of(&self, slot: &Slot) -> Duration {
        match slot {
            Slot::Missing => self.negative_ttl,
            // A floor must outlive any load that started before its change
            // (bounded by the lock TTL and a query); the TTL is plenty.
            Slot::Floor(_) => self.ttl,
            Slot::Found(_) => {
                let jitter_ms = self.jitter.as_millis() as u64;
                let extra = if jitter_ms == 0 {
                    0
                } else {
                    rand::random_range(0..=jitter_ms)
                };
                self.ttl + Duration::from_millis(extra)
            }
        }
    }

    fn entry(&self, slot: Slot) -> Arc<Cached> {
        Arc::new(Cached {
            expires_at: Instant::now() + self.of(&slot),
            slot,
            hits: AtomicU32::new(0),
            refreshing: AtomicBool::new(false),
            rendered: OnceLock::new(),
        })
    }
}

/// moka expires an entry at the instant it records.
struct ExpiresAt;

impl Expiry<ProductId, Arc<Cached>> for ExpiresAt {
    fn expire_after_create(
        &self,
        _key: &ProductId,
        value: &Arc<Cached>,
        now: Instant,
    ) -> Option<Duration> {
        Some(value.expires_at.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _key: &ProductId,
        value: &Arc<Cached>,
        now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.expires_at.saturating_duration_since(now))
    }
}

/// A page is cached by (cursor, page size).
type PageKey = (Option<ProductId>, u32);

/// A cached page: the ids on it, and the membership epoch it was loaded in.
#[derive(Debug)]
struct CachedPage {
    ids: Vec<ProductId>,
    next_cursor: Option<ProductId>,
    epoch: u64,
}

/// Product ids and their views, most viewed first.
type Ranking = Arc<Vec<(ProductId, i64)>>;

/// The in-process layer.
#[derive(Clone)]
struct L1 {
    products: Cache<ProductId, Arc<Cached>>,
    pages: Cache<PageKey, Arc<CachedPage>>,
    /// Bumped when the list's membership changes; pages of an older epoch
    /// are misses.
    page_epoch: Arc<AtomicU64>,
    /// False while this process cannot hear other processes' invalidations
    /// (its subscription is lost): reads then bypass the caches.
    trusted: Arc<AtomicBool>,
    /// Trending rankings (product ids and views) by (minutes, top), for
    /// [`TRENDING_CACHED_FOR`]; concurrent misses of one key share a load.
    trending: Cache<(u64, u32), Ranking>,
    /// Searches' results (ids) and the category list, for
    /// [`SEARCH_CACHED_FOR`], dropped on any change of what they select by.
    searches: Cache<ProductSearch, Arc<Vec<ProductId>>>,
    categories: Cache<(), Arc<Vec<(String, i64)>>>,
}

/// Whether an offered value of the same version as the entry is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offer {
    /// Only newer values (or a floor's own value) are taken.
    Newer,
    /// A value of the same version is taken too: a refresh renews its life.
    Renewing,
}

impl L1 {
    /// Puts `slot` if it [replaces](Slot::replaces) the entry (or there is
    /// none), atomically for the key.
    async fn offer(&self, id: ProductId, slot: Slot, lifetimes: &Lifetimes, offer: Offer) {
        self.products
            .entry(id)
            .and_compute_with(|current| {
                let taken = current
                    .map(|entry| entry.into_value())
                    .is_none_or(|current| {
                        let renews = offer == Offer::Renewing
                            && slot.answer().is_some()
                            && slot.version() == current.slot.version();
                        slot.replaces(&current.slot) || renews
                    });
                std::future::ready(if taken {
                    Op::Put(lifetimes.entry(slot))
                } else {
                    Op::Nop
                })
            })
            .await;
    }

    fn pages_changed(&self) {
        self.page_epoch.fetch_add(1, Ordering::SeqCst);
        self.pages.invalidate_all();
        self.searches_changed();
    }

    /// Moka drops what was inserted before the call, so a search loaded
    /// before the change and stored after it is the one window left, and
    /// [`SEARCH_CACHED_FOR`] bounds it.
    fn searches_changed(&self) {
        self.searches.invalidate_all();
        self.categories.invalidate_all();
    }
}

/// The L2 layer: the shared cache and how to use it.
struct SharedLayer {
    cache: Arc<dyn SharedCache>,
    lifetimes: Lifetimes,
    lock_ttl: Duration,
    lock_wait: Duration,
    /// True while L2 fails, so an outage is logged once, not per request.
    down: AtomicBool,
    /// Changes of this process that L2 or the other processes may not have
    /// (an L2 write or publish failed): sent again once subscribed again.
    unsent: Mutex<HashMap<ProductId, i64>>,
}

fn product_key(id: ProductId) -> String {
    format!("product:{id}")
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

    /// The L2 entry of a product, when L2 has one (and it decodes).
    async fn get(&self, id: ProductId) -> Result<Option<Slot>, CacheError> {
        let Some(entry) = self.cache.get_versioned(&product_key(id)).await? else {
            return Ok(None);
        };
        let Some(bytes) = entry.value else {
            return Ok(Some(Slot::Floor(entry.version)));
        };
        match serde_json::from_slice::<Option<Product>>(&bytes) {
            Ok(product) => Ok(Some(Slot::from_product(product))),
            Err(error) => {
                // Written by another version, or damaged: a miss.
                tracing::warn!(%error, %id, "undecodable catalog L2 entry ignored");
                Ok(None)
            }
        }
    }

    /// Writes `slot` to L2 unless L2 holds something newer; false when L2
    /// could not be reached.
    async fn put(&self, id: ProductId, slot: &Slot) -> bool {
        let entry = match slot {
            Slot::Floor(version) => Versioned::floor(*version),
            Slot::Found(product) => match serde_json::to_vec(&Some(&**product)) {
                Ok(bytes) => Versioned::value(product.version, bytes),
                Err(_) => return true,
            },
            Slot::Missing => Versioned::value(0, b"null".to_vec()),
        };
        let ttl = self.lifetimes.of(slot);
        match self
            .cache
            .set_versioned(&product_key(id), &entry, ttl)
            .await
        {
            Ok(_) => {
                self.answered();
                true
            }
            Err(error) => {
                self.failed("set", &error);
                false
            }
        }
    }

    /// Announces a change of this process: L2, then every other process.
    /// What does not get through is kept for [`resend`](Self::resend).
    async fn announce(&self, id: ProductId, slot: &Slot) {
        let version = slot.version();
        let stored = self.put(id, slot).await;
        let value = match slot {
            Slot::Found(product) => serde_json::to_string(&**product).ok(),
            Slot::Floor(_) | Slot::Missing => None,
        };
        let message = match value {
            Some(json) => format!("product:{id}:{version}:{json}"),
            None => format!("product:{id}:{version}"),
        };
        let published = self.publish(&message).await;
        if !(stored && published) {
            let mut unsent = lock(&self.unsent);
            let kept = unsent.entry(id).or_insert(version);
            *kept = (*kept).max(version);
        }
    }

    fn has_unsent(&self) -> bool {
        !lock(&self.unsent).is_empty()
    }

    /// Once subscribed again: the changes that did not get through, as
    /// floors (L2 may still hold what they replaced, if it only was out of
    /// reach) and messages.
    async fn resend(&self) {
        let unsent = std::mem::take(&mut *lock(&self.unsent));
        for (id, version) in unsent {
            self.announce(id, &Slot::Floor(version)).await;
        }
    }

    /// An L2 answer at least as new as `floor`, if L2 has one.
    async fn usable(&self, id: ProductId, floor: i64) -> Result<Option<Slot>, CacheError> {
        Ok(self
            .get(id)
            .await?
            .filter(|slot| slot.answer().is_some() && slot.version() >= floor))
    }

    /// L2, then (under the L2 lock) the database. See the module docs.
    async fn load(&self, store: &dyn Store, id: ProductId, floor: i64) -> Result<Slot, StoreError> {
        match self.usable(id, floor).await {
            Ok(Some(slot)) => {
                self.answered();
                metrics::counter!("orderflow_cache_hits_total", "layer" => "l2", "kind" => "product")
                    .increment(1);
                return Ok(slot);
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
        let key = product_key(id);
        match self.cache.try_lock(&key, self.lock_ttl).await {
            Ok(Some(token)) => {
                // Another process may have filled L2 and released the lock
                // between our miss and our lock: look again first.
                let slot = match self.usable(id, floor).await {
                    Ok(Some(slot)) => {
                        count_collapsed("across_processes");
                        slot
                    }
                    _ => {
                        let slot = load_from_store(store, id).await?;
                        // Unreachable L2: the caller answers from the database anyway.
                        let _ = self.put(id, &slot).await;
                        slot
                    }
                };
                if let Err(error) = self.cache.unlock(&key, &token).await {
                    self.failed("unlock", &error);
                }
                Ok(slot)
            }
            Ok(None) => {
                // Another process is loading this key: wait for its result.
                count_collapsed("across_processes");
                let deadline = tokio::time::Instant::now() + self.lock_wait;
                let mut pause = Duration::from_millis(5);
                while tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                    match self.usable(id, floor).await {
                        Ok(Some(slot)) => return Ok(slot),
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

    /// False when the message could not be sent.
    async fn publish(&self, message: &str) -> bool {
        match self.cache.publish(INVALIDATIONS, message).await {
            Ok(()) => true,
            Err(error) => {
                self.failed("publish", &error);
                false
            }
        }
    }
}

fn count_collapsed(scope: &'static str) {
    metrics::counter!("orderflow_cache_loads_collapsed_total", "kind" => "product", "scope" => scope)
        .increment(1);
}

async fn load_from_store(store: &dyn Store, id: ProductId) -> Result<Slot, StoreError> {
    metrics::counter!("orderflow_cache_loads_total", "kind" => "product").increment(1);
    store.product(id).await.map(Slot::from_product)
}

/// Everything a read needs; cheap to clone into a refresh-ahead task.
#[derive(Clone)]
struct Layers {
    store: Arc<dyn Store>,
    l1: Option<L1>,
    shared: Option<Arc<SharedLayer>>,
    lifetimes: Lifetimes,
    refresh_ahead: Duration,
    refresh_ahead_hits: u32,
}

impl Layers {
    /// L2 (when there is one), then the database.
    async fn load(&self, id: ProductId, floor: i64) -> Result<Slot, StoreError> {
        match &self.shared {
            Some(shared) => shared.load(self.store.as_ref(), id, floor).await,
            None => load_from_store(self.store.as_ref(), id).await,
        }
    }

    /// An L1 miss: loads under the key's compute, so concurrent misses of
    /// one key make one load, and a change that lands meanwhile waits for
    /// the load and then replaces its result.
    async fn load_into_l1(&self, l1: &L1, id: ProductId) -> Result<Slot, CoreError> {
        let mut collapsed = false;
        let mut refused = None;
        let result = l1
            .products
            .entry(id)
            .and_try_compute_with(|current| {
                let collapsed = &mut collapsed;
                let refused = &mut refused;
                async move {
                    let floor = match current.as_ref().map(|entry| &entry.value().slot) {
                        // Loaded by the caller we waited for.
                        Some(slot) if slot.answer().is_some() => {
                            *collapsed = true;
                            return Ok(Op::Nop);
                        }
                        Some(slot) => slot.version(),
                        None => 0,
                    };
                    let slot = self.load(id, floor).await?;
                    if slot.version() < floor {
                        // Only possible when the database answered older
                        // than a floor published after a commit: answer
                        // it, never store it.
                        *refused = Some(slot);
                        return Ok(Op::Nop);
                    }
                    Ok::<_, StoreError>(Op::Put(self.lifetimes.entry(slot)))
                }
            })
            .await
            .map_err(CoreError::Store)?;
        if collapsed {
            count_collapsed("in_process");
        }
        if let Some(slot) = refused {
            return Ok(slot);
        }
        match result {
            CompResult::Inserted(entry)
            | CompResult::ReplacedWith(entry)
            | CompResult::Unchanged(entry)
            | CompResult::Removed(entry) => Ok(entry.into_value().slot.clone()),
            CompResult::StillNone(_) => Err(CoreError::Internal(
                "catalog L1 compute stored nothing".into(),
            )),
        }
    }

    /// Starts a background reload of a hot entry close to its expiry (once
    /// per entry). See the module docs.
    fn maybe_refresh_ahead(&self, id: ProductId, entry: &Cached) {
        if self.refresh_ahead.is_zero() || matches!(entry.slot, Slot::Missing) {
            return;
        }
        // Counted only up to the bar: a hot entry is read by every core, and
        // a write per read would move its counter between them each time.
        if entry.hits.load(Ordering::Relaxed) < self.refresh_ahead_hits
            && entry.hits.fetch_add(1, Ordering::Relaxed) + 1 < self.refresh_ahead_hits
        {
            return;
        }
        if entry.expires_at.saturating_duration_since(Instant::now()) > self.refresh_ahead
            || entry.refreshing.swap(true, Ordering::Relaxed)
        {
            return;
        }
        let layers = self.clone();
        tokio::spawn(async move {
            metrics::counter!("orderflow_cache_refresh_ahead_total", "kind" => "product")
                .increment(1);
            // From the database: L2's copy was loaded about when L1's was,
            // and may be about to expire too.
            match load_from_store(layers.store.as_ref(), id).await {
                Ok(slot) => layers.renew(id, slot).await,
                Err(error) => tracing::warn!(%error, %id, "refresh-ahead failed"),
            }
        });
    }

    /// A refreshed value: into L2 (only if newer: an equal version is left
    /// to live out its TTL), then L1, where the same version counts too, to
    /// give the hot entry a new life.
    async fn renew(&self, id: ProductId, slot: Slot) {
        if let Some(shared) = &self.shared {
            let _ = shared.put(id, &slot).await;
        }
        if let Some(l1) = &self.l1 {
            l1.offer(id, slot, &self.lifetimes, Offer::Renewing).await;
        }
    }
}

pub const MAX_PAGE_SIZE: u32 = 100;
/// The widest trending window ([`CatalogService::trending`]).
pub const TRENDING_WINDOWS_UP_TO: Duration = Duration::from_secs(24 * 3600);
/// The longest trending list.
pub const TRENDING_TOP_UP_TO: u32 = 50;
/// How long a trending ranking is served from memory: it is one aggregate
/// over up to a day of minutes on a public route, and views reach it a
/// flush late anyway. The products in it are read like any product (their
/// stock is as fresh as the product cache's).
pub const TRENDING_CACHED_FOR: Duration = Duration::from_secs(5);
pub const DEFAULT_PAGE_SIZE: u32 = 20;

/// How a change reaches the caches (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Propagation {
    /// The new value into L1 and L2 (write-through).
    Value,
    /// Only its version as a floor (write-around).
    Floor,
}

/// `orderflow_cache_hits_total{layer="l1",kind="product"}`, made once: the
/// macro builds the key and looks it up in the registry at every call, and
/// this one counts every product read.
fn l1_product_hits() -> &'static metrics::Counter {
    static HITS: OnceLock<metrics::Counter> = OnceLock::new();
    HITS.get_or_init(
        || metrics::counter!("orderflow_cache_hits_total", "layer" => "l1", "kind" => "product"),
    )
}

/// Who read a product, as far as unique viewers go: a digest of the
/// reader's address and User-Agent. It never leaves the process: the flush
/// turns it into the day's visitor id ([`visitor_id`]), salted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ViewerKey([u8; 32]);

impl ViewerKey {
    pub fn of(address: std::net::IpAddr, user_agent: &[u8]) -> Self {
        let mut digest = Sha256::new();
        match address {
            std::net::IpAddr::V4(v4) => digest.update(v4.octets()),
            std::net::IpAddr::V6(v6) => digest.update(v6.octets()),
        }
        digest.update([0]);
        digest.update(user_agent);
        Self(digest.finalize().into())
    }
}

/// A reader's visitor id on the day of `salt`: 128 bits of
/// SHA-256(salt ‖ key), in hex. The same reader is one id all day in every
/// process (they share the day's salt), and a new one the next day; once
/// the salt is deleted (the day after), nobody can tell whose id it was,
/// not even by hashing every address again (the scheme of Plausible
/// Analytics).
fn visitor_id(salt: &str, key: &ViewerKey) -> String {
    let mut digest = Sha256::new();
    digest.update(salt.as_bytes());
    digest.update(key.0);
    hex::encode(&digest.finalize()[..16])
}

/// At most this many visitor ids go in one `product.viewed` event (about
/// 35 KB): a hot product's minute is split over several events, well under
/// any broker's message size limit.
const VIEWERS_PER_EVENT: usize = 1000;

/// A product's unique viewers of a day.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UniqueViewers {
    pub count: u64,
    /// The count's relative standard error: 0 when exact, 0.81% from a
    /// HyperLogLog (about 68% of counts within one, 99.7% within three).
    pub standard_error: f64,
}

/// A time on the view counts' clock: milliseconds since the Unix epoch.
///
/// Every product read counts a view, so the read path keeps to integers:
/// `chrono::Utc::now()` and a minute's start as a `Timestamp` each turn a
/// day number into a calendar date, which cost a product read more than
/// the rest of its count; the flush makes `Timestamp`s of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct ViewClock(i64);

impl ViewClock {
    fn now() -> Self {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
    }

    /// The start of the minute this time falls in.
    fn minute(self) -> Self {
        Self(orderflow_domain::sales::Granularity::Minute.window_start_millis(self.0))
    }

    fn timestamp(self) -> Timestamp {
        chrono::DateTime::from_timestamp_millis(self.0).unwrap_or_default()
    }
}

/// One product's views within one minute, not flushed yet.
#[derive(Debug, Clone)]
struct ViewTally {
    views: u64,
    /// When the last of them was counted: the event time of their event.
    last: ViewClock,
    /// foldhash, not SipHash: the keys are SHA-256 digests already, which a
    /// client cannot choose, and the map's seed is random.
    viewers: foldhash::HashSet<ViewerKey>,
}

impl ViewTally {
    fn new(last: ViewClock) -> Self {
        Self {
            views: 0,
            last,
            viewers: foldhash::HashSet::default(),
        }
    }

    /// `views` more, the last of them at `last`, read by `viewers`.
    fn add(&mut self, views: u64, last: ViewClock, viewers: impl IntoIterator<Item = ViewerKey>) {
        self.views += views;
        self.last = self.last.max(last);
        self.viewers.extend(viewers);
    }
}

/// Views counted since the last flush, per minute and product, in one
/// shard per core ([`PerCore`]): every product read counts a view, and with
/// one map behind one lock the cores serving reads took turns at it. A
/// thread keeps to its shard, so its lock is uncontended; a flush takes
/// every shard and merges them.
#[derive(Default)]
struct ViewCounts {
    shards: PerCore<Mutex<Tallies>>,
}

/// Views per (minute's start, product). The keys are the server's own
/// minutes and the ids of products that exist, so foldhash will do.
type Tallies = foldhash::HashMap<(ViewClock, ProductId), ViewTally>;

impl ViewCounts {
    fn add(
        &self,
        key: (ViewClock, ProductId),
        views: u64,
        last: ViewClock,
        viewers: impl IntoIterator<Item = ViewerKey>,
    ) {
        count(&mut lock(self.shards.own()), key, views, last, viewers);
    }

    /// Everything counted so far, merged across shards; the counts start
    /// again from nothing.
    fn take(&self) -> Vec<((ViewClock, ProductId), ViewTally)> {
        let mut merged = Tallies::default();
        for shard in self.shards.shards() {
            for (key, tally) in std::mem::take(&mut *lock(shard)) {
                count(&mut merged, key, tally.views, tally.last, tally.viewers);
            }
        }
        merged.into_iter().collect()
    }
}

/// Adds `views`, the last of them at `last`, read by `viewers`, to what
/// `tallies` counted for `key`.
fn count(
    tallies: &mut Tallies,
    key: (ViewClock, ProductId),
    views: u64,
    last: ViewClock,
    viewers: impl IntoIterator<Item = ViewerKey>,
) {
    tallies
        .entry(key)
        .or_insert_with(|| ViewTally::new(last))
        .add(views, last, viewers);
}

pub struct CatalogService {
    layers: Layers,
    /// Views counted since the last flush (write-behind).
    views: ViewCounts,
    /// The visitor-id salt of the day the flush last needed (one read of
    /// the database a day, see [`Store::viewer_salt`]).
    salt: Mutex<Option<(chrono::NaiveDate, String)>>,
    /// Where unique viewers are counted when not in the database.
    sketches: Option<Arc<dyn ViewerSketches>>,
    /// Rung after every product change, for the `product:{id}` channels.
    live: Option<Arc<LiveHub>>,
}

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
        let lifetimes = Lifetimes {
            ttl: settings.ttl,
            jitter: settings.ttl_jitter,
            negative_ttl: settings.negative_ttl,
        };
        let enabled = settings.enabled;
        if enabled {
            // Exported from the start, at zero: with write-through a process
            // may serve for long without a load, and an absent series
            // breaks rate() and alerts.
            metrics::counter!("orderflow_cache_loads_total", "kind" => "product").increment(0);
            for scope in ["in_process", "across_processes"] {
                metrics::counter!("orderflow_cache_loads_collapsed_total", "kind" => "product", "scope" => scope)
                    .increment(0);
            }
        }
        let shared = shared.filter(|_| enabled).map(|cache| {
            Arc::new(SharedLayer {
                cache,
                lifetimes: lifetimes.clone(),
                lock_ttl: settings.lock_ttl,
                lock_wait: settings.lock_wait,
                down: AtomicBool::new(false),
                unsent: Mutex::new(HashMap::new()),
            })
        });
        let l1 = enabled.then(|| L1 {
            products: Cache::builder()
                .max_capacity(settings.max_products)
                .expire_after(ExpiresAt)
                .eviction_listener(|_, _, cause| {
                    if cause.was_evicted() {
                        metrics::counter!("orderflow_cache_evictions_total", "layer" => "l1")
                            .increment(1);
                    }
                })
                .build(),
            pages: Cache::builder()
                .max_capacity(1_000)
                .time_to_live(settings.page_ttl)
                .build(),
            page_epoch: Arc::new(AtomicU64::new(0)),
            trusted: Arc::new(AtomicBool::new(true)),
            trending: Cache::builder()
                .max_capacity(256)
                .time_to_live(TRENDING_CACHED_FOR)
                .build(),
            searches: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(SEARCH_CACHED_FOR)
                .build(),
            categories: Cache::builder()
                .max_capacity(1)
                .time_to_live(SEARCH_CACHED_FOR)
                .build(),
        });
        Self {
            layers: Layers {
                store,
                l1,
                shared,
                lifetimes,
                refresh_ahead: settings.refresh_ahead,
                refresh_ahead_hits: settings.refresh_ahead_hits.max(1),
            },
            views: ViewCounts::default(),
            salt: Mutex::new(None),
            sketches: None,
            live: None,
        }
    }

    /// Rings `hub`'s `product:{id}` channel after each change of a product,
    /// whether or not the cache is on.
    pub fn with_live(mut self, hub: Arc<LiveHub>) -> Self {
        self.live = Some(hub);
        self
    }

    /// Reads unique viewers from `sketches` (Redis HyperLogLogs, which the
    /// `trending` group keeps there instead of the exact table); `None`:
    /// from the database.
    pub fn with_sketches(mut self, sketches: Option<Arc<dyn ViewerSketches>>) -> Self {
        self.sketches = sketches;
        self
    }

    fn ring_live(&self, ids: impl IntoIterator<Item = ProductId>) {
        if let Some(hub) = &self.live {
            for id in ids {
                hub.publish(&LiveChannel::Product(id).name());
            }
        }
    }

    pub fn cache_enabled(&self) -> bool {
        self.layers.l1.is_some()
    }

    /// Whether an L2 (shared cache) sits under the in-process cache.
    pub fn has_shared_cache(&self) -> bool {
        self.layers.shared.is_some()
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
        let shared = self.layers.shared.clone()?;
        let l1 = self.layers.l1.clone()?;
        let first = match shared.cache.subscribe(INVALIDATIONS).await {
            Ok(subscription) => Some(subscription),
            Err(error) => {
                shared.failed("subscribe", &error);
                l1.trusted.store(false, Ordering::SeqCst);
                None
            }
        };
        Some(tokio::spawn(listen(
            first,
            shared,
            l1,
            self.layers.lifetimes.clone(),
            shutdown,
        )))
    }

    /// L1, unless there is none or it cannot be trusted now (see
    /// [`L1::trusted`]).
    fn usable_l1(&self) -> Option<&L1> {
        let l1 = self.layers.l1.as_ref()?;
        if l1.trusted.load(Ordering::Relaxed) {
            Some(l1)
        } else {
            metrics::counter!("orderflow_cache_bypassed_total").increment(1);
            None
        }
    }

    /// One product, from the cache when it is on.
    pub async fn product(&self, id: ProductId) -> Result<Option<Product>, CoreError> {
        Ok(match self.read_product(id).await? {
            ProductRead::Hit(_, product) => product.map(|p| (*p).clone()),
            ProductRead::Loaded(product) => product.map(Arc::unwrap_or_clone),
        })
    }

    /// One product and what `render` makes of it (the API's JSON body).
    ///
    /// On an L1 hit the bytes are made once and kept in the entry: every
    /// change of the product replaces its entry (a newer version, or the
    /// invalidation), so bytes kept there never outlive the version they
    /// were made from, and a product read answers with the same bytes, not
    /// serialised again, until the product changes. On a miss, or with the
    /// cache off or bypassed, `render` runs each time.
    pub async fn product_rendered(
        &self,
        id: ProductId,
        render: impl FnOnce(&Product) -> Vec<u8>,
    ) -> Result<Option<(Arc<Product>, Rendered)>, CoreError> {
        Ok(match self.read_product(id).await? {
            ProductRead::Hit(entry, product) => product.map(|product| {
                let rendered = entry.rendered.get_or_init(|| render(&product).into());
                (Arc::clone(&product), Arc::clone(rendered))
            }),
            ProductRead::Loaded(product) => product.map(|product| {
                let rendered = render(&product).into();
                (product, rendered)
            }),
        })
    }

    /// A product read: the L1 entry that answered it, or the product loaded.
    ///
    /// A hit has no span of its own (a span costs more than the L1 lookup,
    /// on the hottest path of the API); a miss is a `cache.load` span with
    /// the load under it, so a trace shows where a slow read waited.
    async fn read_product(&self, id: ProductId) -> Result<ProductRead, CoreError> {
        let Some(l1) = self.usable_l1() else {
            return Ok(ProductRead::Loaded(
                self.layers.store.product(id).await?.map(Arc::new),
            ));
        };
        if let Some(entry) = l1.products.get(&id).await
            && let Some(answer) = entry.slot.answer()
        {
            l1_product_hits().increment(1);
            self.layers.maybe_refresh_ahead(id, &entry);
            return Ok(ProductRead::Hit(entry, answer));
        }
        metrics::counter!("orderflow_cache_misses_total", "layer" => "l1", "kind" => "product")
            .increment(1);
        // Boxed: the load is a large future, and a read's future has room
        // for it inline even when it hits, which every product read then
        // moved whole (into the handler's box, on every request).
        let slot = Box::pin(self.layers.load_into_l1(l1, id).instrument(
            tracing::info_span!("cache.load", cache.kind = "product", product.id = %id),
        ))
        .await?;
        Ok(ProductRead::Loaded(match slot {
            Slot::Found(product) => Some(product),
            Slot::Missing => None,
            // Loads never end in a floor; answered from the database if one did.
            Slot::Floor(_) => self.layers.store.product(id).await?.map(Arc::new),
        }))
    }

    /// Several products (for pricing an order); unknown ids are left out.
    pub async fn products(&self, ids: &[ProductId]) -> Result<Vec<Product>, CoreError> {
        if self.layers.l1.is_none() {
            return Ok(self.layers.store.products_by_ids(ids).await?);
        }
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(product) = self.product(*id).await? {
                found.push(product);
            }
        }
        Ok(found)
    }

    /// A page of products ordered by id, after `cursor`. Spans as
    /// [`product`](Self::product): only a load has one.
    pub async fn list(
        &self,
        cursor: Option<ProductId>,
        limit: Option<u32>,
    ) -> Result<ProductPage, CoreError> {
        let limit = limit.unwrap_or(DEFAULT_PAGE_SIZE).clamp(1, MAX_PAGE_SIZE);
        let Some(l1) = self.usable_l1() else {
            return self.load_page(cursor, limit).await;
        };
        let epoch = l1.page_epoch.load(Ordering::SeqCst);
        let cached = match l1.pages.get(&(cursor, limit)).await {
            Some(page) if page.epoch == epoch => self
                .page_items(l1, &page.ids)
                .await?
                .map(|items| (items, page.next_cursor)),
            _ => None,
        };
        if let Some((items, next_cursor)) = cached {
            metrics::counter!("orderflow_cache_hits_total", "layer" => "l1", "kind" => "page")
                .increment(1);
            return Ok(ProductPage { items, next_cursor });
        }
        metrics::counter!("orderflow_cache_misses_total", "layer" => "l1", "kind" => "page")
            .increment(1);
        let page = self
            .load_page(cursor, limit)
            .instrument(tracing::info_span!("cache.load", cache.kind = "page"))
            .await?;
        // Each product read is a versioned entry like any other: offered to
        // L1, kept only where nothing newer is there.
        for product in &page.items {
            l1.offer(
                product.id,
                Slot::Found(Arc::new(product.clone())),
                &self.layers.lifetimes,
                Offer::Newer,
            )
            .await;
        }
        l1.pages
            .insert(
                (cursor, limit),
                Arc::new(CachedPage {
                    ids: page.items.iter().map(|p| p.id).collect(),
                    next_cursor: page.next_cursor,
                    epoch,
                }),
            )
            .await;
        Ok(page)
    }

    /// A cached page's items: the current L1 entries, and the few that are
    /// not (a change elsewhere left a floor, or the entry was evicted) read
    /// through [`product`](Self::product), from L2 when the change wrote it
    /// there. `None` when more than [`PAGE_ITEMS_READ_ALONE`] are missing:
    /// then one query for the page beats one per product.
    async fn page_items(
        &self,
        l1: &L1,
        ids: &[ProductId],
    ) -> Result<Option<Vec<Product>>, CoreError> {
        let mut items = Vec::with_capacity(ids.len());
        let mut read_alone = 0;
        for id in ids {
            let cached = match l1.products.get(id).await {
                Some(entry) => entry.slot.answer(),
                None => None,
            };
            let product = match cached {
                Some(answer) => answer.map(|p| (*p).clone()),
                None if read_alone < PAGE_ITEMS_READ_ALONE => {
                    read_alone += 1;
                    self.product(*id).await?
                }
                None => return Ok(None),
            };
            items.extend(product);
        }
        Ok(Some(items))
    }

    async fn load_page(
        &self,
        cursor: Option<ProductId>,
        limit: u32,
    ) -> Result<ProductPage, CoreError> {
        // One extra row tells whether another page follows.
        let mut items = self.layers.store.list_products(cursor, limit + 1).await?;
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|p| p.id)
        } else {
            None
        };
        Ok(ProductPage { items, next_cursor })
    }

    /// Creates a product (admin), then puts it in the caches
    /// (write-through). `Conflict` when the SKU is taken.
    pub async fn create(&self, draft: ProductDraft) -> Result<Product, CoreError> {
        let product = self
            .layers
            .store
            .insert_product(uuid::Uuid::now_v7(), &draft, chrono::Utc::now())
            .await
            .map_err(sku_conflict)?;
        self.propagate(std::slice::from_ref(&product), Propagation::Value)
            .await;
        self.pages_changed().await;
        Ok(product)
    }

    /// Replaces a product's fields (admin): the database, then the caches,
    /// in the same call (write-through), so the next read anywhere shows it.
    pub async fn update(&self, id: ProductId, draft: ProductDraft) -> Result<Product, CoreError> {
        let product = self
            .layers
            .store
            .update_product(id, &draft, chrono::Utc::now())
            .await
            .map_err(sku_conflict)?
            .ok_or(CoreError::NotFound("product"))?;
        self.propagate(std::slice::from_ref(&product), Propagation::Value)
            .await;
        self.searches_changed().await;
        Ok(product)
    }

    /// Inserts or replaces products by SKU straight in the database, one
    /// transaction per call (write-around: the bulk import), then leaves a
    /// floor of each new version in the caches, so nothing older is served
    /// and the next read loads the imported row.
    pub async fn import(&self, drafts: Vec<ProductDraft>) -> Result<Vec<Product>, CoreError> {
        let rows: Vec<_> = drafts
            .into_iter()
            .map(|draft| (uuid::Uuid::now_v7(), draft))
            .collect();
        let stored = self
            .layers
            .store
            .import_products(&rows, chrono::Utc::now())
            .await?;
        self.propagate(&stored, Propagation::Floor).await;
        if stored.iter().any(|p| p.version == 1) {
            self.pages_changed().await;
        }
        Ok(stored)
    }

    /// After a commit that left `products` as they are here (the rows its
    /// writes returned): writes them through to every cache, as
    /// [`Self::products_changed`] does without reading them back.
    pub async fn products_written(&self, products: &[Product]) {
        if !products.is_empty() {
            self.propagate(products, Propagation::Value).await;
        }
    }

    /// After a commit that changed the stock or fields of `ids` (a
    /// reservation, a release, a cancellation): reads the committed rows and
    /// writes them through to every cache (see the module docs). Never
    /// fails: an error is logged, and the entries heal at their TTL.
    pub async fn products_changed(&self, ids: &[ProductId]) {
        if self.layers.l1.is_none() || ids.is_empty() {
            self.ring_live(ids.iter().copied());
            return;
        }
        match self.layers.store.products_by_ids(ids).await {
            Ok(products) => self.products_written(&products).await,
            Err(error) => {
                self.ring_live(ids.iter().copied());
                metrics::counter!("orderflow_cache_invalidation_errors_total").increment(1);
                tracing::warn!(%error, "changed products not read back; caches may serve them until their TTL");
            }
        }
    }

    /// This process's L1 and L2, then every other process over pub/sub.
    async fn propagate(&self, products: &[Product], how: Propagation) {
        if let Some(hub) = &self.live {
            for product in products {
                hub.publish_product(product);
            }
        }
        if self.layers.l1.is_none() {
            return;
        }
        for product in products {
            let slot = match how {
                Propagation::Value => Slot::Found(Arc::new(product.clone())),
                Propagation::Floor => Slot::Floor(product.version),
            };
            if let Some(l1) = &self.layers.l1 {
                l1.offer(
                    product.id,
                    slot.clone(),
                    &self.layers.lifetimes,
                    Offer::Newer,
                )
                .await;
            }
            if let Some(shared) = &self.layers.shared {
                shared.announce(product.id, &slot).await;
            }
        }
    }

    /// The list's membership changed: every process drops its pages.
    async fn pages_changed(&self) {
        if let Some(l1) = &self.layers.l1 {
            l1.pages_changed();
        }
        if let Some(shared) = &self.layers.shared {
            // Pages live only in L1, for `page_ttl`: a lost message costs at
            // most that long for a new product to show in other lists.
            let _ = shared.publish(PAGES_CHANGED).await;
        }
    }

    /// A product's searched fields or price changed: every process drops
    /// its searches.
    async fn searches_changed(&self) {
        if let Some(l1) = &self.layers.l1 {
            l1.searches_changed();
        }
        if let Some(shared) = &self.layers.shared {
            let _ = shared.publish(SEARCHES_CHANGED).await;
        }
    }

    /// A page of the products a search finds, in its order: the ids from
    /// the database (full text, filters, order, page, and one more to tell
    /// whether a next page follows), kept in L1 for [`SEARCH_CACHED_FOR`];
    /// the products through their versioned entries like any read, so
    /// stock and price are current, and each re-checked against the
    /// category and price filters, so a product moved or repriced since
    /// never shows where it no longer belongs.
    pub async fn search(&self, search: &ProductSearch) -> Result<SearchPage, CoreError> {
        let query = ProductSearch {
            limit: search.limit + 1,
            ..search.clone()
        };
        let ids = match self.usable_l1() {
            Some(l1) => {
                let store = self.layers.store.clone();
                let key = query.clone();
                l1.searches
                    .try_get_with(query, async move {
                        store.search_products(&key).await.map(Arc::new)
                    })
                    .await
                    .map_err(|error| CoreError::Store((*error).clone()))?
            }
            None => Arc::new(self.layers.store.search_products(&query).await?),
        };
        let limit = search.limit as usize;
        let page: Vec<ProductId> = ids.iter().take(limit).copied().collect();
        // One query for the page when the cache is off, cached entries
        // otherwise; then back in the search's order.
        let mut found: HashMap<ProductId, Product> = self
            .products(&page)
            .await?
            .into_iter()
            .map(|product| (product.id, product))
            .collect();
        let items = page
            .iter()
            .filter_map(|id| found.remove(id))
            .filter(|product| search.admits(product))
            .collect();
        Ok(SearchPage {
            items,
            next_offset: (ids.len() > limit).then(|| search.offset + search.limit),
        })
    }

    /// Every category and how many products it holds, by name; kept like a
    /// search.
    pub async fn categories(&self) -> Result<Vec<(String, i64)>, CoreError> {
        let Some(l1) = self.usable_l1() else {
            return Ok(self.layers.store.categories().await?);
        };
        let store = self.layers.store.clone();
        let categories = l1
            .categories
            .try_get_with((), async move { store.categories().await.map(Arc::new) })
            .await
            .map_err(|error| CoreError::Store((*error).clone()))?;
        Ok(categories.as_ref().clone())
    }

    /// Counts one view of a product by `viewer` (write-behind: in memory
    /// until the next [`flush_views`](Self::flush_views)).
    pub fn record_view(&self, id: ProductId, viewer: ViewerKey) {
        let now = ViewClock::now();
        self.views.add((now.minute(), id), 1, now, [viewer]);
    }

    /// Appends the views counted since the last flush to the log, as
    /// `product.viewed` events (per product and minute, with the readers'
    /// visitor ids of that day), in one background transaction (requests
    /// go first); when that fails they are kept for the next flush. How
    /// many events it appended.
    pub async fn flush_views(&self) -> Result<usize, CoreError> {
        let batch = self.views.take();
        if batch.is_empty() {
            return Ok(0);
        }
        let appended = self.append_views(&batch).await;
        let counted: u64 = batch.iter().map(|(_, tally)| tally.views).sum();
        if appended.is_err() {
            for (key, tally) in batch {
                self.views.add(key, tally.views, tally.last, tally.viewers);
            }
        }
        let appended = appended?;
        metrics::counter!("orderflow_product_views_flushed_total").increment(counted);
        Ok(appended)
    }

    /// The events of `batch`, appended in one transaction.
    async fn append_views(
        &self,
        batch: &[((ViewClock, ProductId), ViewTally)],
    ) -> Result<usize, CoreError> {
        let mut events = Vec::with_capacity(batch.len());
        for ((minute, product_id), tally) in batch {
            let salt = self.viewer_salt(minute.timestamp().date_naive()).await?;
            let mut viewers: Vec<String> = tally
                .viewers
                .iter()
                .map(|key| visitor_id(&salt, key))
                .collect();
            viewers.sort_unstable();
            let mut views = tally.views;
            let mut chunks: Vec<&[String]> = viewers.chunks(VIEWERS_PER_EVENT).collect();
            if chunks.is_empty() {
                chunks.push(&[]);
            }
            // The views go on the first event of the minute.
            for chunk in chunks {
                let mut event = Envelope::new(
                    EventData::ProductViewed {
                        product_id: *product_id,
                        views: std::mem::take(&mut views),
                        viewers: chunk.to_vec(),
                    },
                    None,
                );
                event.time = tally.last.timestamp();
                events.push(event);
            }
        }
        let mut tx = self.layers.store.begin_background().await?;
        tx.append(&events).await?;
        tx.commit().await?;
        Ok(events.len())
    }

    /// How many distinct visitors read product `id` on `day` (UTC), as
    /// the `trending` group counted them: exactly in the database, or
    /// estimated from Redis's HyperLogLog. Readers are told apart by
    /// address and User-Agent (see [`ViewerKey`]).
    pub async fn unique_viewers(
        &self,
        id: ProductId,
        day: chrono::NaiveDate,
    ) -> Result<UniqueViewers, CoreError> {
        if self.product(id).await?.is_none() {
            return Err(CoreError::NotFound("product"));
        }
        Ok(match &self.sketches {
            Some(sketches) => UniqueViewers {
                count: sketches.count(day, id).await?,
                standard_error: HYPERLOGLOG_STANDARD_ERROR,
            },
            None => UniqueViewers {
                count: u64::try_from(self.layers.store.unique_viewers(day, id).await?).unwrap_or(0),
                standard_error: 0.0,
            },
        })
    }

    /// The visitor-id salt of `day`: the one in the database, or a new
    /// random one stored there now (every process gets the same).
    async fn viewer_salt(&self, day: chrono::NaiveDate) -> Result<String, CoreError> {
        if let Some((known, salt)) = &*lock(&self.salt)
            && *known == day
        {
            return Ok(salt.clone());
        }
        let candidate = hex::encode(rand::random::<[u8; 32]>());
        let salt = self.layers.store.viewer_salt(day, &candidate).await?;
        *lock(&self.salt) = Some((day, salt.clone()));
        Ok(salt)
    }

    /// The `top` products by views over the last `window` (whole minutes,
    /// 1 minute to [`TRENDING_WINDOWS_UP_TO`]), most first: a hopping
    /// window of minutes that ends with the current one and advances every
    /// minute. Views reach it at the next flush of each API process (every
    /// second by default) once the `trending` group has added them up (the
    /// ranking is kept [`TRENDING_CACHED_FOR`] when the cache is on). Products deleted since are left out; the rest come
    /// from the cache like any product read.
    pub async fn trending(
        &self,
        window: Duration,
        top: u32,
    ) -> Result<Vec<(Product, i64)>, CoreError> {
        let minutes = window.as_secs() / 60;
        if window.subsec_nanos() != 0
            || !window.as_secs().is_multiple_of(60)
            || !(1..=TRENDING_WINDOWS_UP_TO.as_secs() / 60).contains(&minutes)
        {
            return Err(ValidationError::new(
                "window",
                format!(
                    "must be whole minutes from 1m to {}h, not {} s",
                    TRENDING_WINDOWS_UP_TO.as_secs() / 3600,
                    window.as_secs_f64()
                ),
            )
            .into());
        }
        if !(1..=TRENDING_TOP_UP_TO).contains(&top) {
            return Err(ValidationError::new(
                "top",
                format!("must be between 1 and {TRENDING_TOP_UP_TO}, not {top}"),
            )
            .into());
        }
        let minute = orderflow_domain::sales::Granularity::Minute;
        let to = minute.window_start(chrono::Utc::now()) + minute.width();
        let from = to - chrono::Duration::minutes(minutes as i64);
        let load = async {
            let ranked = self.layers.store.most_viewed(from, to, top).await?;
            Ok::<_, StoreError>(Arc::new(ranked))
        };
        let ranked = match &self.layers.l1 {
            Some(l1) => l1
                .trending
                .try_get_with((minutes, top), load)
                .await
                .map_err(|error| CoreError::from((*error).clone()))?,
            None => load.await?,
        };
        let mut trending = Vec::with_capacity(ranked.len());
        for &(id, views) in ranked.iter() {
            if let Some(product) = self.product(id).await? {
                trending.push((product, views));
            }
        }
        Ok(trending)
    }

    /// Flushes the view counters every `every` until `shutdown`. The caller
    /// flushes once more after its last request (see `App::run`): a
    /// shutdown loses no view; a crash loses at most one interval's.
    pub async fn run_view_flusher(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if let Err(error) = self.flush_views().await {
                tracing::warn!(%error, "product views not flushed; kept for the next flush");
            }
        }
    }
}

/// The invalidation listener's loop (see
/// [`CatalogService::start_invalidation_listener`]).
async fn listen(
    mut subscription: Option<Subscription>,
    shared: Arc<SharedLayer>,
    l1: L1,
    lifetimes: Lifetimes,
    shutdown: CancellationToken,
) {
    // Called once subscribed again: what L1 holds may have missed changes.
    let drop_everything = || {
        l1.products.invalidate_all();
        l1.pages_changed();
        metrics::counter!("orderflow_cache_l1_flushes_total").increment(1);
        l1.trusted.store(true, Ordering::SeqCst);
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
                    shared.resend().await;
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
            // A resend that failed too (the first command after an outage
            // may meet the dead connection) is tried again until it gets
            // through.
            () = tokio::time::sleep(RESEND_EVERY), if shared.has_unsent() => {
                shared.resend().await;
                continue;
            }
        };
        match event {
            Some(CacheEvent::Message(message)) => {
                match parse_invalidation(&message) {
                    Some(Invalidation::Product { id, version, value }) => {
                        let slot = match value {
                            Some(product) => Slot::Found(Arc::new(product)),
                            None => Slot::Floor(version),
                        };
                        l1.offer(id, slot, &lifetimes, Offer::Newer).await;
                    }
                    Some(Invalidation::Pages) => l1.pages_changed(),
                    Some(Invalidation::Searches) => l1.searches_changed(),
                    None => drop_everything(),
                }
                metrics::counter!("orderflow_cache_invalidations_received_total").increment(1);
            }
            Some(CacheEvent::Lost) => {
                l1.trusted.store(false, Ordering::SeqCst);
                tracing::warn!(
                    "catalog invalidations lost; reading from the database until they are back"
                );
            }
            Some(CacheEvent::Resubscribed) => {
                drop_everything();
                shared.resend().await;
            }
            None => {
                l1.trusted.store(false, Ordering::SeqCst);
                subscription = None;
            }
        }
    }
}

/// A message on the invalidation channel.
#[derive(Debug, PartialEq, Eq)]
enum Invalidation {
    /// `product:{id}:{version}`: the product is at `version` now; with
    /// `:{json}` after it, that version's value.
    Product {
        id: ProductId,
        version: i64,
        value: Option<Product>,
    },
    /// `pages`: the list's membership changed.
    Pages,
    /// `searches`: what searches select by changed.
    Searches,
}

/// `None` for a message this version does not know (then everything is
/// dropped: safe whatever it meant).
fn parse_invalidation(message: &str) -> Option<Invalidation> {
    if message == PAGES_CHANGED {
        return Some(Invalidation::Pages);
    }
    if message == SEARCHES_CHANGED {
        return Some(Invalidation::Searches);
    }
    let mut parts = message.strip_prefix("product:")?.splitn(3, ':');
    let id: ProductId = parts.next()?.parse().ok()?;
    let version: i64 = parts.next()?.parse().ok()?;
    // A value that does not decode, or is not this product at this
    // version, still tells the version: a floor.
    let value = parts
        .next()
        .and_then(|json| serde_json::from_str::<Product>(json).ok())
        .filter(|product| product.id == id && product.version == version);
    Some(Invalidation::Product { id, version, value })
}

fn sku_conflict(error: StoreError) -> CoreError {
    match error {
        StoreError::Conflict(_) => {
            CoreError::Conflict("a product with this SKU already exists".into())
        }
        other => CoreError::Store(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A product at `version`; the tests set what they look at.
    fn product_at(version: i64) -> Product {
        Product {
            id: uuid::Uuid::nil(),
            sku: "S".into(),
            name: "N".into(),
            price_cents: 1,
            currency: orderflow_domain::money::Currency::parse("EUR").unwrap(),
            stock: 1,
            description: String::new(),
            category: None,
            updated_at: chrono::Utc::now(),
            version,
        }
    }

    #[test]
    fn invalidation_messages_parse() {
        let id = uuid::Uuid::now_v7();
        assert_eq!(
            parse_invalidation(&format!("product:{id}:42")),
            Some(Invalidation::Product {
                id,
                version: 42,
                value: None
            })
        );
        let product = Product {
            id,
            sku: "S:1".into(),
            name: "Mug: big".into(),
            ..product_at(42)
        };
        let json = serde_json::to_string(&product).unwrap();
        assert_eq!(
            parse_invalidation(&format!("product:{id}:42:{json}")),
            Some(Invalidation::Product {
                id,
                version: 42,
                value: Some(product.clone())
            }),
            "colons inside the value are the value's"
        );
        assert_eq!(
            parse_invalidation(&format!("product:{id}:43:{json}")),
            Some(Invalidation::Product {
                id,
                version: 43,
                value: None
            }),
            "a value of another version is only a floor"
        );
        assert_eq!(
            parse_invalidation(&format!("product:{id}:42:{{broken")),
            Some(Invalidation::Product {
                id,
                version: 42,
                value: None
            })
        );
        assert_eq!(parse_invalidation("pages"), Some(Invalidation::Pages));
        assert_eq!(parse_invalidation(&format!("product:{id}")), None);
        assert_eq!(parse_invalidation("product:nope:1"), None);
        assert_eq!(
            parse_invalidation(SEARCHES_CHANGED),
            Some(Invalidation::Searches)
        );
    }

    #[test]
    fn slots_replace_only_older_ones() {
        let product = |version| Slot::Found(Arc::new(product_at(version)));
        assert!(product(2).replaces(&product(1)));
        assert!(!product(1).replaces(&product(2)));
        assert!(!product(2).replaces(&product(2)));
        assert!(
            product(2).replaces(&Slot::Floor(2)),
            "a value fills its floor"
        );
        assert!(!product(1).replaces(&Slot::Floor(2)), "the stale-set race");
        assert!(Slot::Floor(3).replaces(&product(2)));
        assert!(product(1).replaces(&Slot::Missing), "created after a miss");
    }

    /// The view counts' integer minutes are the minute windows the sales
    /// and trending read models use, also before 1970 (where truncating
    /// division would round towards the epoch) and at a minute's first and
    /// last millisecond.
    #[test]
    fn view_minutes_are_the_minute_windows() {
        use orderflow_domain::sales::Granularity;
        for millis in [
            0,
            59_999,
            60_000,
            1_796_561_031_516,
            1_796_561_040_000,
            -1,
            -60_000,
            -60_001,
        ] {
            let at = ViewClock(millis);
            assert_eq!(at.timestamp().timestamp_millis(), millis);
            assert_eq!(
                at.minute().timestamp(),
                Granularity::Minute.window_start(at.timestamp()),
                "{millis}"
            );
        }
        let now = ViewClock::now().timestamp();
        let drift = chrono::Utc::now() - now;
        assert!(
            drift >= chrono::TimeDelta::zero() && drift < chrono::TimeDelta::seconds(5),
            "the view clock reads the wall clock: {drift}"
        );
    }
}
