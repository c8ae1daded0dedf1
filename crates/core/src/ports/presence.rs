//! Presence across processes: how many live connections (devices) each
//! shopper has, summed over every API process, for the admin health channel.
//!
//! Each process holds its own connections in memory (the live hub counts
//! them) and reports them to the board: the whole map when it changed, a
//! cheap keep-alive when not, at least once per heartbeat. A report counts
//! until its time to live passes without another, so a process that dies
//! drops out of the totals by itself within that time, with no one to
//! clean up after it. A board that lost the reports (Redis restarted)
//! says so at the next keep-alive and gets the whole map again.
//!
//! Adapters: in process (one process: the board is its own memory) and
//! Redis (a hash per process and a sorted set of the processes, under one
//! hash tag so that one cluster node holds them all).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use orderflow_domain::UserId;

use super::cache::CacheResult;

/// Presence summed over the processes whose reports are alive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PresenceTally {
    /// Live connections, all processes together.
    pub devices: usize,
    /// Distinct users with at least one: a shopper connected to two
    /// processes counts once.
    pub users: usize,
    /// Processes whose alive report holds at least one connection.
    pub processes: usize,
    /// How many users have 1, 2, 3… devices connected.
    pub users_by_devices: BTreeMap<usize, usize>,
}

impl PresenceTally {
    /// The tally of one or more processes' reports.
    pub fn of<'a>(reports: impl IntoIterator<Item = &'a HashMap<UserId, usize>>) -> Self {
        let mut per_user: HashMap<UserId, usize> = HashMap::new();
        let mut processes = 0;
        for report in reports {
            if report.values().any(|devices| *devices > 0) {
                processes += 1;
            }
            for (user, devices) in report {
                *per_user.entry(*user).or_default() += devices;
            }
        }
        let mut users_by_devices = BTreeMap::new();
        for devices in per_user.values().filter(|devices| **devices > 0) {
            *users_by_devices.entry(*devices).or_default() += 1;
        }
        Self {
            devices: per_user.values().sum(),
            users: users_by_devices.values().sum(),
            processes,
            users_by_devices,
        }
    }
}

#[async_trait]
pub trait PresenceBoard: Send + Sync + 'static {
    /// Replaces what `process` reports: its users and how many connections
    /// each has there. It counts until `ttl` passes without a report or a
    /// keep-alive.
    async fn report(
        &self,
        process: &str,
        devices: &HashMap<UserId, usize>,
        ttl: Duration,
    ) -> CacheResult<()>;
    /// Keeps `process`'s last report alive for another `ttl`, unchanged.
    /// False when the board no longer holds it (it expired, or the board
    /// lost it): report the whole map again.
    async fn keep_alive(&self, process: &str, ttl: Duration) -> CacheResult<bool>;
    /// The processes' alive reports, summed.
    async fn tally(&self) -> CacheResult<PresenceTally>;
}
