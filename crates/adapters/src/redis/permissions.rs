//! The start-up check that the Redis user may run every command orderflow
//! sends, on the keys and channels it uses.
//!
//! Why: orderflow's Redis user should have an ACL that allows exactly what
//! it needs (`deploy/redis/orderflow.acl`). A command missing from such an
//! ACL would otherwise fail only when some request first needs it, and
//! quietly: every Redis failure has a fallback (Redis may lose everything),
//! so a denied `PEXPIRETIME` would only make every logout slower, a denied
//! `LPOS` would leave notifications uncached forever. So orderflow runs each
//! command once when it starts, on probe keys and a probe channel under its
//! key prefix, and refuses to start when Redis answers `NOPERM`, naming the
//! command.
//!
//! Why not `ACL DRYRUN`: it answers without running anything, but it is an
//! admin command, which orderflow's own user must not have.
//!
//! [`REQUIRED`] is the list; a test checks that the shipped ACL file grants
//! exactly it.

use redis::{Cmd, ErrorKind, RedisError, ServerErrorKind, cmd};

use super::RedisConnection;

/// Where a command is needed: on a standalone server, on a cluster, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deployment {
    Both,
    Standalone,
    Cluster,
}

/// Every command orderflow sends, as ACL rules name it, and where: the
/// adapters' own commands, the commands inside their Lua scripts (Redis
/// checks those against the caller's ACL too), what redis-rs sends for
/// scripts (`EVALSHA`, then `SCRIPT LOAD` after a restart), for pub/sub and
/// for a cluster's slot map. `SELECT` is not here: redis-rs sends it only
/// for a URL that names a database other than 0.
pub const REQUIRED: &[(&str, Deployment)] = &[
    ("ping", Deployment::Both),
    ("get", Deployment::Both),
    ("set", Deployment::Both),
    ("del", Deployment::Both),
    ("exists", Deployment::Both),
    ("pexpire", Deployment::Both),
    ("pexpiretime", Deployment::Both),
    ("hset", Deployment::Both),
    ("hget", Deployment::Both),
    ("hmget", Deployment::Both),
    ("hgetall", Deployment::Both),
    ("hdel", Deployment::Both),
    ("zadd", Deployment::Both),
    ("zscore", Deployment::Both),
    ("zrange", Deployment::Both),
    ("zrevrange", Deployment::Both),
    ("zremrangebyscore", Deployment::Both),
    ("lpush", Deployment::Both),
    ("rpush", Deployment::Both),
    ("lpos", Deployment::Both),
    ("ltrim", Deployment::Both),
    ("lrange", Deployment::Both),
    ("pfadd", Deployment::Both),
    ("pfcount", Deployment::Both),
    ("sadd", Deployment::Both),
    ("smembers", Deployment::Both),
    ("time", Deployment::Both),
    ("script|load", Deployment::Both),
    ("evalsha", Deployment::Both),
    ("publish", Deployment::Standalone),
    ("subscribe", Deployment::Standalone),
    ("spublish", Deployment::Cluster),
    ("ssubscribe", Deployment::Cluster),
    ("sunsubscribe", Deployment::Cluster),
    ("cluster|slots", Deployment::Cluster),
    ("asking", Deployment::Cluster),
];

/// Why the start-up check did not pass.
#[derive(Debug, thiserror::Error)]
pub enum RedisCheckError {
    /// Redis did not answer (down, or not up yet). Not a reason to stop:
    /// orderflow works without Redis and uses it once it is up.
    #[error("Redis did not answer the start-up check: {0}")]
    Unreachable(RedisError),
    /// The user may not run `command`, or not on orderflow's keys or
    /// channels.
    #[error(
        "the Redis user may not run {command}: {detail}. orderflow needs every command, key \
         pattern and channel pattern of deploy/redis/orderflow.acl (with the key prefix in them)"
    )]
    Denied { command: String, detail: String },
    /// Anything else: a refused password, a TLS handshake that failed, an
    /// unexpected answer.
    #[error("the Redis start-up check failed at {command}: {error}")]
    Failed {
        command: &'static str,
        error: RedisError,
    },
}

impl RedisCheckError {
    pub fn is_unreachable(&self) -> bool {
        matches!(self, RedisCheckError::Unreachable(_))
    }
}

impl RedisConnection {
    /// Runs every command of [`REQUIRED`] for this deployment once, on
    /// probe keys (`{prefix}startup-check:{random}:…`, deleted afterwards)
    /// and a probe channel under the prefix. Fails at the first command
    /// Redis refuses.
    pub async fn check_permissions(&self) -> Result<(), RedisCheckError> {
        let probe = self.key(&format!("startup-check:{}", uuid::Uuid::now_v7().simple()));
        let keys =
            ["string", "hash", "zset", "list", "hll", "set"].map(|kind| format!("{probe}:{kind}"));
        let result = self.run_probes(&probe, &keys).await;
        if result.is_err() {
            // Best effort: the probe keys of a check that stopped half-way.
            for key in &keys {
                let _ = self.query::<i64>(cmd("DEL").arg(key)).await;
            }
        }
        result
    }

    async fn run_probes(&self, channel: &str, keys: &[String; 6]) -> Result<(), RedisCheckError> {
        if let Some(seed) = self.cluster_seed() {
            // The slot map first, from one node directly: through the
            // cluster client a refused `CLUSTER SLOTS` reads "no nodes found".
            let slots = async {
                let mut node = seed.get_multiplexed_async_connection().await?;
                cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async::<redis::Value>(&mut node)
                    .await
            };
            self.timed(slots)
                .await
                .map_err(|error| classify("cluster|slots", error))?;
        }
        let [string, hash, zset, list, hll, set] = keys;
        const SCRIPT: &str = "return redis.call('EXISTS', KEYS[1])";
        let script = redis::Script::new(SCRIPT);
        let mut probes: Vec<(&'static str, Cmd)> = vec![
            ("ping", cmd("PING")),
            (
                "set",
                cmd("SET").arg(string).arg(1).arg("PX").arg(60_000).clone(),
            ),
            ("get", cmd("GET").arg(string).clone()),
            ("exists", cmd("EXISTS").arg(string).clone()),
            ("pexpire", cmd("PEXPIRE").arg(string).arg(60_000).clone()),
            ("pexpiretime", cmd("PEXPIRETIME").arg(string).clone()),
            ("hset", cmd("HSET").arg(hash).arg("f").arg(1).clone()),
            ("hget", cmd("HGET").arg(hash).arg("f").clone()),
            ("hmget", cmd("HMGET").arg(hash).arg("f").clone()),
            ("hgetall", cmd("HGETALL").arg(hash).clone()),
            ("hdel", cmd("HDEL").arg(hash).arg("g").clone()),
            (
                "zadd",
                cmd("ZADD").arg(zset).arg("GT").arg(1).arg("m").clone(),
            ),
            ("zscore", cmd("ZSCORE").arg(zset).arg("m").clone()),
            ("zrange", cmd("ZRANGE").arg(zset).arg(0).arg(-1).clone()),
            (
                "zrevrange",
                cmd("ZREVRANGE").arg(zset).arg(0).arg(-1).clone(),
            ),
            (
                "zremrangebyscore",
                cmd("ZREMRANGEBYSCORE").arg(zset).arg("-inf").arg(0).clone(),
            ),
            ("rpush", cmd("RPUSH").arg(list).arg("a").clone()),
            ("lpush", cmd("LPUSH").arg(list).arg("a").clone()),
            ("lpos", cmd("LPOS").arg(list).arg("a").clone()),
            ("ltrim", cmd("LTRIM").arg(list).arg(0).arg(9).clone()),
            ("lrange", cmd("LRANGE").arg(list).arg(0).arg(-1).clone()),
            ("pfadd", cmd("PFADD").arg(hll).arg("v").clone()),
            ("pfcount", cmd("PFCOUNT").arg(hll).clone()),
            ("sadd", cmd("SADD").arg(set).arg("m").clone()),
            ("smembers", cmd("SMEMBERS").arg(set).clone()),
            ("time", cmd("TIME")),
            ("script|load", cmd("SCRIPT").arg("LOAD").arg(SCRIPT).clone()),
            // With a key, so that a cluster runs it where the key lives.
            (
                "evalsha",
                cmd("EVALSHA")
                    .arg(script.get_hash())
                    .arg(1)
                    .arg(string)
                    .clone(),
            ),
        ];
        if self.is_cluster() {
            probes.push(("cluster|slots", cmd("CLUSTER").arg("SLOTS").clone()));
            probes.push(("asking", cmd("ASKING")));
        }
        probes.extend(keys.iter().map(|key| ("del", cmd("DEL").arg(key).clone())));
        for (command, probe) in &probes {
            self.query::<redis::Value>(probe)
                .await
                .map_err(|error| classify(command, error))?;
        }
        self.check_pubsub(channel).await
    }

    /// Publishes on the probe channel and subscribes to it (then
    /// unsubscribes): classic pub/sub on one server, sharded on a cluster.
    async fn check_pubsub(&self, channel: &str) -> Result<(), RedisCheckError> {
        let (publish, subscribe) = if self.is_cluster() {
            ("spublish", "ssubscribe")
        } else {
            ("publish", "subscribe")
        };
        self.publish(channel, "")
            .await
            .map_err(|error| classify(publish, error))?;
        match self.sharded_pubsub().await {
            Some(pubsub) => pubsub
                .map_err(|error| classify(subscribe, error))?
                .check(channel)
                .await
                .map_err(|(command, error)| classify(command, error)),
            None => self
                .open_pubsub(channel)
                .await
                .map(drop)
                .map_err(|error| classify(subscribe, error)),
        }
    }
}

/// Sorts `error`, which Redis gave for `command`, into the three cases.
fn classify(command: &'static str, error: RedisError) -> RedisCheckError {
    let text = error.to_string();
    // The kind, or the words when the error comes wrapped (a cluster's
    // connection refused its `CLUSTER SLOTS`).
    if error.kind() == ErrorKind::Server(ServerErrorKind::NoPerm)
        || text.contains("NOPERM")
        || text.contains("no permissions to")
    {
        // "…no permissions to run the 'select' command": the command
        // Redis names may be another than the probe's (one sent while
        // connecting).
        let named = text
            .split_once("to run the '")
            .and_then(|(_, rest)| rest.split_once('\''))
            .map(|(name, _)| name.to_uppercase());
        return RedisCheckError::Denied {
            command: named.unwrap_or_else(|| command.to_uppercase()),
            detail: text,
        };
    }
    if error.is_connection_refusal() || error.is_timeout() || error.is_connection_dropped() {
        return RedisCheckError::Unreachable(error);
    }
    RedisCheckError::Failed { command, error }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The rules of the `orderflow` user in the shipped ACL file.
    fn shipped_rules() -> Vec<String> {
        let acl = include_str!("../../../../deploy/redis/orderflow.acl");
        let line = acl
            .lines()
            .find(|line| line.starts_with("user orderflow "))
            .expect("the ACL file has a user orderflow");
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn the_shipped_acl_grants_exactly_what_orderflow_sends() {
        let rules = shipped_rules();
        let granted: BTreeSet<&str> = rules.iter().filter_map(|r| r.strip_prefix('+')).collect();
        let required: BTreeSet<&str> = REQUIRED.iter().map(|(name, _)| *name).collect();
        assert_eq!(granted, required, "deploy/redis/orderflow.acl vs REQUIRED");
        // Everything else denied first, keys and channels under the default
        // prefix only, no category granted whole.
        let at = |rule: &str| rules.iter().position(|r| r == rule);
        let deny_all = at("-@all").expect("-@all");
        assert!(
            rules
                .iter()
                .enumerate()
                .all(|(i, r)| !r.starts_with('+') || i > deny_all)
        );
        assert!(!rules.iter().any(|r| r.starts_with("+@")));
        assert!(at("~orderflow:*").is_some() && at("&orderflow:*").is_some());
        assert!(
            !rules
                .iter()
                .any(|r| r == "~*" || r == "&*" || r == "allkeys")
        );
    }

    #[test]
    fn nopermission_errors_name_the_command() {
        let named = |probe: &'static str, detail: &str| {
            let error = RedisError::from((
                ErrorKind::Server(ServerErrorKind::NoPerm),
                "",
                detail.to_owned(),
            ));
            match classify(probe, error) {
                RedisCheckError::Denied { command, .. } => command,
                other => panic!("a NOPERM is a denial, not {other}"),
            }
        };
        // The command Redis names (here one sent while connecting)…
        let select = "this user has no permissions to run the 'select' command";
        assert_eq!(named("ping", select), "SELECT");
        // …or the probe's, when Redis names keys or channels.
        let keys = "this user has no permissions to access one of the keys used as arguments";
        assert_eq!(named("get", keys), "GET");
    }
}
