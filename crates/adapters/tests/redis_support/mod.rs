//! What the Redis test binaries share: connections with a key prefix of
//! their own, to the shared plain servers and to the shared secured ones
//! (TLS only, logged in as the shipped ACL's `orderflow` user).

use orderflow_adapters::redis::{RedisConnection, RedisSettings, RedisTls};
use orderflow_testkit::redis::{
    RedisSecurity, fresh_prefix, shared_cluster_url, shared_secured_cluster,
    shared_secured_standalone, shared_standalone_url,
};

/// A connection to `url` with a key prefix of its own.
pub fn connect(url: &str) -> RedisConnection {
    connect_with(RedisSettings::from_url(url))
}

/// A connection with `settings` and a key prefix of its own, under the
/// settings' prefix (`orderflow:`, the only keys the shipped ACL lets
/// orderflow's user touch).
pub fn connect_with(settings: RedisSettings) -> RedisConnection {
    let prefix = format!("{}{}", settings.key_prefix, fresh_prefix());
    RedisConnection::open(&settings.with_key_prefix(prefix)).expect("valid Redis settings")
}

/// The shared plain standalone server.
pub fn plain_standalone() -> RedisSettings {
    RedisSettings::from_url(&shared_standalone_url())
}

/// The shared plain cluster.
pub fn plain_cluster() -> RedisSettings {
    RedisSettings::from_url(&shared_cluster_url())
}

/// The shared secured standalone server, over TLS as the ACL's user.
pub fn secured_standalone() -> RedisSettings {
    let server = shared_secured_standalone();
    secured(&server.url(), server.security().expect("a secured server"))
}

/// The shared secured cluster, over TLS as the ACL's user.
pub fn secured_cluster() -> RedisSettings {
    let cluster = shared_secured_cluster();
    secured(
        &cluster.url(),
        cluster.security().expect("a secured cluster"),
    )
}

/// Settings for `url` that trust `security`'s test CA and present its
/// client certificate.
pub fn secured(url: &str, security: &RedisSecurity) -> RedisSettings {
    let pki = security.pki();
    let tls = RedisTls::from_files(
        Some(&pki.ca_cert()),
        Some(&pki.client_cert()),
        Some(&pki.client_key()),
    )
    .expect("reading the test certificates");
    RedisSettings::from_url(url).with_tls(tls)
}
