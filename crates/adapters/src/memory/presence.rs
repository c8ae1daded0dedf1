//! The presence board of one process: the reports held in memory, with the
//! same time-to-live rule as the Redis board, so the hub counts the same
//! way whether it is alone or one of many.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use orderflow_core::ports::cache::CacheResult;
use orderflow_core::ports::presence::{PresenceBoard, PresenceTally};
use orderflow_domain::UserId;
use tokio::time::Instant;

/// A process's report and when it stops counting.
type Report = (HashMap<UserId, usize>, Instant);

/// [`PresenceBoard`] in process.
#[derive(Debug, Default)]
pub struct InProcessPresence {
    reports: Mutex<HashMap<String, Report>>,
}

impl InProcessPresence {
    pub fn new() -> Self {
        Self::default()
    }

    fn alive(&self) -> std::sync::MutexGuard<'_, HashMap<String, Report>> {
        let mut reports = self
            .reports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        reports.retain(|_, (_, expires)| *expires > now);
        reports
    }
}

#[async_trait]
impl PresenceBoard for InProcessPresence {
    async fn report(
        &self,
        process: &str,
        devices: &HashMap<UserId, usize>,
        ttl: Duration,
    ) -> CacheResult<()> {
        self.alive()
            .insert(process.to_owned(), (devices.clone(), Instant::now() + ttl));
        Ok(())
    }

    async fn keep_alive(&self, process: &str, ttl: Duration) -> CacheResult<bool> {
        Ok(match self.alive().get_mut(process) {
            Some((_, expires)) => {
                *expires = Instant::now() + ttl;
                true
            }
            None => false,
        })
    }

    async fn tally(&self) -> CacheResult<PresenceTally> {
        Ok(PresenceTally::of(
            self.alive().values().map(|(devices, _)| devices),
        ))
    }
}
