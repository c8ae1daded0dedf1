//! A helper for `tokio::select!` loops whose branches come and go.

use std::future::Future;

/// Awaits `future` when there is one; never completes for `None`. For a
/// `select!` branch whose future may not exist this turn (no claim started,
/// no timer set, no poll in flight), so the branch can stay in the macro.
pub async fn or_never<F: Future>(future: Option<F>) -> F::Output {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}
