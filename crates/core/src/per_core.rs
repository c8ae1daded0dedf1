//! State kept once per core and merged when read: for what every request
//! writes and few read (a view counter, an in-flight count).

use crossbeam_utils::CachePadded;

/// One `T` per core (threads beyond the cores share them round robin),
/// each on its own cache lines.
///
/// A value every request writes, kept once, moves from core to core at
/// every write (each core's write takes the line from the other's cache);
/// a thread that keeps to its own shard writes memory no other core holds.
/// Readers go over [`shards`](Self::shards) and merge.
pub struct PerCore<T> {
    shards: Box<[CachePadded<T>]>,
}

impl<T: Default> Default for PerCore<T> {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            shards: (0..cores).map(|_| CachePadded::new(T::default())).collect(),
        }
    }
}

impl<T> PerCore<T> {
    /// The calling thread's shard (the same one for the thread's life).
    pub fn own(&self) -> &T {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        thread_local! {
            static THREAD: usize = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        &self.shards[THREAD.with(|thread| *thread) % self.shards.len()]
    }

    /// Every shard, to merge.
    pub fn shards(&self) -> impl Iterator<Item = &T> {
        self.shards.iter().map(|shard| &**shard)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::PerCore;

    #[test]
    fn counts_from_many_threads_sum_to_the_whole() {
        let counts = PerCore::<AtomicU64>::default();
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        counts.own().fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        let total: u64 = counts.shards().map(|c| c.load(Ordering::Relaxed)).sum();
        assert_eq!(total, 8000);
    }

    #[test]
    fn a_thread_keeps_its_shard() {
        let counts = PerCore::<AtomicU64>::default();
        let first: *const AtomicU64 = counts.own();
        assert!(std::ptr::eq(first, counts.own()));
    }
}
