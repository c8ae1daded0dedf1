//! One handle to Redis, standalone or cluster, chosen by the URL.
//!
//! - `redis://host:port[/db]`: one server, through
//!   [`redis::aio::ConnectionManager`], which reconnects by itself after the
//!   server went away.
//! - `rediss://…`: the same over TLS (rustls). The server's certificate is
//!   checked against the web PKI roots, or only against a private CA when
//!   [`RedisTls::ca_cert`] is set; [`RedisTls::client_cert`] adds a client
//!   certificate for servers that require one (`tls-auth-clients yes`).
//! - `redis+cluster://h1:p1,h2:p2,…` (`rediss+cluster://` for TLS, optional
//!   `user:password@` before the first host): a Redis Cluster through
//!   [`redis::cluster_async`], which follows the slot map and its changes.
//!
//! Pub/sub: on one server, classic channels, one connection per
//! subscription; on a cluster, sharded channels (`SSUBSCRIBE`/`SPUBLISH`,
//! see [`super::sharded`]), so a message goes to its channel's shard only
//! instead of every node.
//!
//! Both are created lazily: building a [`RedisConnection`] never touches the
//! network, so a process starts while Redis is down and uses it once it is up.
//! Every command runs under a short timeout ([`RedisSettings::command_timeout`]):
//! a dead Redis makes callers fall back in milliseconds instead of hanging.
//!
//! Keys: every adapter builds its keys with [`RedisConnection::key`], which
//! puts the configured prefix first, so tenants and tests never collide. In
//! a cluster a multi-key command must stay in one slot; adapters that read
//! keys together give them one hash tag (`{…}`), which is why the prefix
//! itself may not contain braces.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use orderflow_core::ports::cache::CacheEvent;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Pipeline, PushInfo, RedisError, RedisFuture, RedisResult, Value};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{OnceCell, mpsc};

use super::sharded::ShardedPubSub;

/// How to reach Redis. The URL may hold a password, so it never prints.
#[derive(Clone)]
pub struct RedisSettings {
    pub url: SecretString,
    /// Put before every key and channel name (`orderflow:` by default).
    pub key_prefix: String,
    /// The longest a command may take, connecting included, before the caller
    /// gets an error and falls back.
    pub command_timeout: Duration,
    /// The longest one attempt to open a connection may take.
    pub connect_timeout: Duration,
    /// Certificates for a `rediss://` URL beyond the web PKI roots.
    pub tls: RedisTls,
}

/// TLS material for a `rediss://` URL, as PEM: a private CA to trust
/// instead of the web PKI roots (a self-hosted Redis has no public
/// certificate), and a client certificate and key for a server that
/// authenticates its clients (mutual TLS). The key never prints.
#[derive(Clone, Default)]
pub struct RedisTls {
    pub ca_cert: Option<Vec<u8>>,
    pub client_cert: Option<Vec<u8>>,
    pub client_key: Option<SecretString>,
}

impl fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca_cert", &self.ca_cert.is_some())
            .field("client_cert", &self.client_cert.is_some())
            .field(
                "client_key",
                &self.client_key.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

impl RedisTls {
    /// Reads the PEM files that are given (the CA, the client certificate
    /// and its key); an error names the file that could not be read.
    pub fn from_files(
        ca_cert: Option<&Path>,
        client_cert: Option<&Path>,
        client_key: Option<&Path>,
    ) -> Result<Self, RedisConfigError> {
        let read = |path: &Path| {
            std::fs::read(path)
                .map_err(|e| RedisConfigError::Tls(format!("reading {}: {e}", path.display())))
        };
        Ok(Self {
            ca_cert: ca_cert.map(read).transpose()?,
            client_cert: client_cert.map(read).transpose()?,
            client_key: client_key
                .map(|path| {
                    read(path)
                        .map(|pem| SecretString::from(String::from_utf8_lossy(&pem).into_owned()))
                })
                .transpose()?,
        })
    }

    fn is_set(&self) -> bool {
        self.ca_cert.is_some() || self.client_cert.is_some() || self.client_key.is_some()
    }

    /// The certificates for redis-rs, or an error for half a client
    /// identity (a certificate without its key or the reverse).
    fn certificates(&self) -> Result<redis::TlsCertificates, RedisConfigError> {
        let client_tls = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.expose_secret().as_bytes().to_vec(),
            }),
            (None, None) => None,
            _ => {
                return Err(RedisConfigError::Tls(
                    "a client certificate needs its key, and a key its certificate".into(),
                ));
            }
        };
        Ok(redis::TlsCertificates {
            client_tls,
            root_cert: self.ca_cert.clone(),
        })
    }
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &"[redacted]")
            .field("key_prefix", &self.key_prefix)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

impl RedisSettings {
    /// Settings for `url` with the default prefix and timeouts.
    pub fn from_url(url: &str) -> Self {
        Self {
            url: SecretString::from(url.to_owned()),
            key_prefix: "orderflow:".to_owned(),
            command_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(500),
            tls: RedisTls::default(),
        }
    }

    pub fn with_tls(mut self, tls: RedisTls) -> Self {
        self.tls = tls;
        self
    }

    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }
}

/// Why a [`RedisConnection`] could not be built (a bad URL or prefix; the
/// network is not touched at that point).
#[derive(Debug, thiserror::Error)]
pub enum RedisConfigError {
    #[error("invalid Redis URL: {0}")]
    Url(String),
    #[error(
        "invalid Redis key prefix {0:?}: it may not contain `{{` or `}}` (hash tags are the adapters' business)"
    )]
    Prefix(String),
    #[error("Redis TLS settings: {0}")]
    Tls(String),
}

/// A cheap-to-clone handle for commands, scripts and pub/sub on one Redis
/// deployment (standalone or cluster).
#[derive(Clone)]
pub struct RedisConnection {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Conn,
    /// Where to open a standalone server's pub/sub connections.
    pubsub_clients: Vec<redis::Client>,
    /// A cluster's first node alone, for the start-up check: the cluster
    /// client reports a node it could not use without Redis's reason.
    cluster_seed: Option<redis::Client>,
    /// A cluster's sharded pub/sub, connected at the first subscription.
    sharded: Option<Sharded>,
    prefix: String,
    command_timeout: Duration,
    cluster: bool,
}

/// A cluster's sharded pub/sub: a RESP3 client whose pushes arrive on
/// `pushes`, and the connection made from it at the first subscription.
struct Sharded {
    client: redis::cluster::ClusterClient,
    pushes: std::sync::Mutex<Option<mpsc::UnboundedReceiver<PushInfo>>>,
    pubsub: OnceCell<Arc<ShardedPubSub>>,
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConnection")
            .field("cluster", &self.inner.cluster)
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

/// The two kinds of multiplexed connection, behind one `ConnectionLike`.
#[derive(Clone)]
enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Standalone(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Standalone(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl RedisConnection {
    /// Builds the handle for `settings` without connecting (see the module docs).
    pub fn open(settings: &RedisSettings) -> Result<Self, RedisConfigError> {
        if settings.key_prefix.contains(['{', '}']) {
            return Err(RedisConfigError::Prefix(settings.key_prefix.clone()));
        }
        let url = settings.url.expose_secret();
        let bad = |e: RedisError| RedisConfigError::Url(e.to_string());
        // Certificates with a plain URL would silently not be used: a
        // setting that says "TLS" must mean TLS.
        let certificates = if settings.tls.is_set() {
            if !url.starts_with("rediss://") && !url.starts_with("rediss+cluster://") {
                return Err(RedisConfigError::Tls(
                    "certificates are set, so the URL must be rediss:// or rediss+cluster://"
                        .into(),
                ));
            }
            Some(settings.tls.certificates()?)
        } else {
            None
        };
        let client = |url: &str| match &certificates {
            Some(certificates) => redis::Client::build_with_tls(url, certificates.clone()),
            None => redis::Client::open(url),
        };
        let (conn, pubsub_clients, sharded, cluster_seed) = if let Some(nodes) = cluster_nodes(url)?
        {
            let seed = client(&nodes[0]).map_err(bad)?;
            let with_tls = |builder: redis::cluster::ClusterClientBuilder| match &certificates {
                Some(certificates) => builder.certs(certificates.clone()),
                None => builder,
            };
            let (push_sender, pushes) = mpsc::unbounded_channel();
            let sharded = Sharded {
                client: with_tls(redis::cluster::ClusterClientBuilder::new(nodes.clone()))
                    .connection_timeout(settings.connect_timeout)
                    .response_timeout(settings.command_timeout)
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(push_sender)
                    .build()
                    .map_err(bad)?,
                pushes: std::sync::Mutex::new(Some(pushes)),
                pubsub: OnceCell::new(),
            };
            let client = with_tls(redis::cluster::ClusterClientBuilder::new(nodes))
                .connection_timeout(settings.connect_timeout)
                .response_timeout(settings.command_timeout)
                .retries(2)
                .min_retry_wait(10)
                .max_retry_wait(100)
                .build()
                .map_err(bad)?;
            let config = redis::cluster::ClusterConfig::new()
                .set_connection_timeout(settings.connect_timeout)
                .set_response_timeout(settings.command_timeout);
            let conn = client.get_pending_async_connection_with_config(config);
            (Conn::Cluster(conn), Vec::new(), Some(sharded), Some(seed))
        } else {
            let client = client(url).map_err(bad)?;
            // Few, quick reconnection attempts: a command waiting for a
            // reconnection must still fail within the command timeout.
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(settings.connect_timeout))
                .set_response_timeout(Some(settings.command_timeout))
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(10))
                .set_max_delay(Duration::from_millis(100));
            let manager =
                ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(bad)?;
            (Conn::Standalone(manager), vec![client], None, None)
        };
        Ok(Self {
            inner: Arc::new(Inner {
                conn,
                pubsub_clients,
                cluster_seed,
                cluster: sharded.is_some(),
                sharded,
                prefix: settings.key_prefix.clone(),
                command_timeout: settings.command_timeout,
            }),
        })
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.inner.cluster
    }

    /// The configured key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// `name` with the prefix in front: the only way adapters make keys and
    /// channel names.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.inner.prefix)
    }

    /// Runs one command under the command timeout.
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        let mut conn = self.inner.conn.clone();
        self.timed(cmd.query_async(&mut conn)).await
    }

    /// Runs a pipeline (all its keys in one slot when clustered) under the
    /// command timeout.
    pub async fn pipeline<T: FromRedisValue>(&self, pipe: &Pipeline) -> RedisResult<T> {
        let mut conn = self.inner.conn.clone();
        self.timed(pipe.query_async(&mut conn)).await
    }

    /// Runs a Lua script by its SHA (`EVALSHA`), loading it first when the
    /// server does not know it yet (after a restart or a flush).
    pub async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> RedisResult<T> {
        let mut conn = self.inner.conn.clone();
        self.timed(invocation.invoke_async(&mut conn)).await
    }

    /// `PING`: whether Redis answers now.
    pub async fn ping(&self) -> RedisResult<()> {
        self.query::<String>(&redis::cmd("PING")).await.map(|_| ())
    }

    /// Publishes `message` on `channel` (a full name: pass it through
    /// [`key`](Self::key)); on a cluster, on the channel's shard.
    pub async fn publish(&self, channel: &str, message: &str) -> RedisResult<()> {
        let command = if self.inner.cluster {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        self.query::<i64>(redis::cmd(command).arg(channel).arg(message))
            .await
            .map(|_| ())
    }

    /// Subscribes to the channel `channel` (a full name: pass it through
    /// [`key`](Self::key)); on a cluster, to the sharded channel. Returns
    /// once the server confirmed the subscription. Afterwards messages
    /// arrive on the receiver and, when the connection drops, it reports
    /// [`CacheEvent::Lost`], then, once subscribed again,
    /// [`CacheEvent::Resubscribed`]. Dropping the receiver unsubscribes.
    pub async fn subscribe(&self, channel: &str) -> RedisResult<mpsc::Receiver<CacheEvent>> {
        if let Some(pubsub) = self.sharded_pubsub().await {
            return pubsub?.subscribe(channel).await;
        }
        let pubsub = self.open_pubsub(channel).await?;
        let (tx, rx) = mpsc::channel(1024);
        let this = self.clone();
        let channel = channel.to_owned();
        tokio::spawn(async move { this.forward(pubsub, channel, tx).await });
        Ok(rx)
    }

    /// A cluster's sharded pub/sub, connected at the first call; `None` on
    /// a standalone server.
    pub(super) async fn sharded_pubsub(&self) -> Option<RedisResult<Arc<ShardedPubSub>>> {
        let sharded = self.inner.sharded.as_ref()?;
        let pubsub = sharded
            .pubsub
            .get_or_try_init(|| async {
                let conn = self
                    .timed(async { sharded.client.get_async_connection().await })
                    .await?;
                let pushes = sharded
                    .pushes
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take()
                    .ok_or_else(|| timeout_error("the sharded pub/sub pushes were taken"))?;
                Ok::<_, RedisError>(ShardedPubSub::start(
                    conn,
                    pushes,
                    self.inner.command_timeout,
                ))
            })
            .await;
        Some(pubsub.cloned())
    }

    /// A classic pub/sub connection subscribed to `channel` (standalone).
    pub(super) async fn open_pubsub(&self, channel: &str) -> RedisResult<redis::aio::PubSub> {
        let mut last_error = None;
        for client in &self.inner.pubsub_clients {
            let attempt = async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(channel).await?;
                Ok::<_, RedisError>(pubsub)
            };
            match self.timed(attempt).await {
                Ok(pubsub) => return Ok(pubsub),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| timeout_error("no Redis node to subscribe on")))
    }

    async fn forward(
        self,
        mut pubsub: redis::aio::PubSub,
        channel: String,
        tx: mpsc::Sender<CacheEvent>,
    ) {
        use futures::StreamExt;
        loop {
            {
                let mut messages = pubsub.on_message();
                loop {
                    tokio::select! {
                        () = tx.closed() => return,
                        message = messages.next() => match message {
                            Some(message) => {
                                let payload = String::from_utf8_lossy(message.get_payload_bytes()).into_owned();
                                if tx.send(CacheEvent::Message(payload)).await.is_err() {
                                    return;
                                }
                            }
                            // The connection is gone.
                            None => break,
                        },
                    }
                }
            }
            if tx.send(CacheEvent::Lost).await.is_err() {
                return;
            }
            tracing::warn!(%channel, "Redis subscription lost; resubscribing");
            metrics::counter!("orderflow_redis_resubscriptions_total").increment(1);
            let mut backoff = Duration::from_millis(50);
            pubsub = loop {
                tokio::select! {
                    () = tx.closed() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                match self.open_pubsub(&channel).await {
                    Ok(pubsub) => break pubsub,
                    Err(e) => {
                        tracing::debug!(%channel, error = %e, "Redis still unreachable for pub/sub");
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            };
            if tx.send(CacheEvent::Resubscribed).await.is_err() {
                return;
            }
        }
    }

    /// A cluster's first node as a client of its own (see `Inner`).
    pub(super) fn cluster_seed(&self) -> Option<&redis::Client> {
        self.inner.cluster_seed.as_ref()
    }

    pub(super) async fn timed<T>(
        &self,
        work: impl Future<Output = RedisResult<T>>,
    ) -> RedisResult<T> {
        match tokio::time::timeout(self.inner.command_timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(timeout_error(
                "Redis did not answer within the command timeout",
            )),
        }
    }
}

pub(super) fn timeout_error(what: &'static str) -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}

/// The node URLs of a `redis+cluster://` / `rediss+cluster://` URL, or `None`
/// for any other scheme.
fn cluster_nodes(url: &str) -> Result<Option<Vec<String>>, RedisConfigError> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        ("redis", rest)
    } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
        ("rediss", rest)
    } else {
        return Ok(None);
    };
    let (credentials, hosts) = match rest.rsplit_once('@') {
        Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
        None => (String::new(), rest),
    };
    let hosts = hosts.trim_end_matches('/');
    let nodes: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|host| !host.is_empty())
        .map(|host| format!("{scheme}://{credentials}{host}"))
        .collect();
    if nodes.is_empty() {
        return Err(RedisConfigError::Url(
            "a cluster URL needs at least one host:port".into(),
        ));
    }
    Ok(Some(nodes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_list_every_node_with_the_credentials() {
        assert_eq!(
            cluster_nodes("redis+cluster://a:1,b:2").unwrap(),
            Some(vec!["redis://a:1".to_owned(), "redis://b:2".to_owned()])
        );
        assert_eq!(
            cluster_nodes("rediss+cluster://u:p@a:1,b:2/").unwrap(),
            Some(vec![
                "rediss://u:p@a:1".to_owned(),
                "rediss://u:p@b:2".to_owned()
            ])
        );
        assert_eq!(cluster_nodes("redis://a:1").unwrap(), None);
        assert!(cluster_nodes("redis+cluster://").is_err());
    }

    #[tokio::test]
    async fn opening_never_touches_the_network_and_prefixes_are_checked() {
        let settings = RedisSettings::from_url("redis://127.0.0.1:1");
        let conn = RedisConnection::open(&settings).unwrap();
        assert_eq!(conn.key("x"), "orderflow:x");
        assert!(conn.ping().await.is_err(), "nothing listens on port 1");
        let braces = settings.with_key_prefix("{t}:");
        assert!(matches!(
            RedisConnection::open(&braces),
            Err(RedisConfigError::Prefix(_))
        ));
        assert!(RedisConnection::open(&RedisSettings::from_url("http://x")).is_err());
    }

    #[test]
    fn certificates_need_a_tls_url_and_a_whole_client_identity() {
        let ca = RedisTls {
            ca_cert: Some(b"not checked before connecting".to_vec()),
            ..RedisTls::default()
        };
        for url in ["redis://127.0.0.1:1", "redis+cluster://127.0.0.1:1"] {
            let settings = RedisSettings::from_url(url).with_tls(ca.clone());
            assert!(
                matches!(
                    RedisConnection::open(&settings),
                    Err(RedisConfigError::Tls(_))
                ),
                "{url}: certificates with a plain URL"
            );
        }
        let half = RedisTls {
            client_cert: Some(b"cert".to_vec()),
            ..RedisTls::default()
        };
        let settings = RedisSettings::from_url("rediss://127.0.0.1:1").with_tls(half);
        assert!(matches!(
            RedisConnection::open(&settings),
            Err(RedisConfigError::Tls(_))
        ));
        let missing = RedisTls::from_files(Some(Path::new("/nonexistent/ca.crt")), None, None)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("/nonexistent/ca.crt"), "{missing}");
        let key = RedisTls {
            client_key: Some(SecretString::from("-----BEGIN PRIVATE KEY-----".to_owned())),
            ..RedisTls::default()
        };
        assert!(
            !format!("{key:?}").contains("BEGIN"),
            "the key never prints"
        );
    }
}
