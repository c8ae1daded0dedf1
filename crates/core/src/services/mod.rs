//! Use cases, built only on [`crate::ports`].

pub mod admin;
pub mod auth;
pub mod carts;
pub mod catalog;
pub mod effects;
pub mod live;
pub mod orders;
pub mod queries;
pub mod relay;
pub mod retention;

/// Locks `mutex`, going on with its data if a holder panicked: the
/// services' maps stay usable (each update is a single step).
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
