//! The access-token signing key set, kept in the data dir so tokens survive
//! a restart.
//!
//! Generated on first start (`jwt-keys.json`, the name from before PASETO;
//! mode 0600, one Ed25519 key for the configured token format). A process
//! started with a token format the file has no key for adds one (the
//! switch-over: the old format's keys keep verifying). The file holds the
//! secrets; nothing else ever prints them (`keys list` shows kid, algorithm,
//! age and which key signs).
//!
//! Rotation (`orderflow keys rotate`) adds a key that signs from then on;
//! older keys keep verifying until every token they signed has expired
//! (access-token TTL + clock skew after they stopped signing), and are
//! dropped by the next `keys rotate` or `keys prune`. A running server reads
//! the file at start and again on SIGHUP ([`reload_on_sighup`]): after a
//! rotation, send it SIGHUP or restart it (every process, when there are
//! several).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use orderflow_core::audit::AuditEvent;
use orderflow_core::services::auth::{AuthService, KeyAlgorithm, KeySet, SigningKey, TokenFormat};

pub const KEY_FILE: &str = "jwt-keys.json";

/// Reads the key set; an error if the file is missing or holds no keys.
pub fn load(data_dir: &Path) -> anyhow::Result<KeySet> {
    let path = data_dir.join(KEY_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let keys: KeySet = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a key set", path.display()))?;
    anyhow::ensure!(!keys.keys.is_empty(), "{} holds no keys", path.display());
    Ok(keys)
}

/// Adds a key that signs its format's tokens from now on and drops keys
/// whose tokens have all expired when `format` signs. Returns the new key
/// and the kids dropped.
pub fn rotate(
    data_dir: &Path,
    alg: KeyAlgorithm,
    keep_for: Duration,
    format: TokenFormat,
) -> anyhow::Result<(SigningKey, Vec<String>)> {
    let mut keys = load_or_create(data_dir, format)?;
    let before: Vec<String> = keys.keys.iter().map(|k| k.kid.clone()).collect();
    let key = keys.rotate(alg, keep_for, format);
    let dropped_kids: Vec<String> = before
        .into_iter()
        .filter(|kid| !keys.keys.iter().any(|k| &k.kid == kid))
        .collect();
    save(data_dir, &keys)?;
    AuditEvent::KeyRotated {
        kid: &key.kid,
        alg: key.alg.as_str(),
    }
    .record();
    audit_pruned(&dropped_kids);
    Ok((key, dropped_kids))
}

/// Re-reads the key file whenever the process gets SIGHUP, so a rotation
/// takes effect without a restart. A file that does not load is reported and
/// the keys in use stay.
pub fn reload_on_sighup(auth: Arc<AuthService>, data_dir: PathBuf) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; key rotations need a restart");
            return;
        };
        while hangups.recv().await.is_some() {
            match reload(&auth, &data_dir) {
                Ok(kid) => AuditEvent::KeysReloaded { signing_kid: &kid }.record(),
                Err(error) => {
                    tracing::error!(error = %format!("{error:#}"), "reloading the access-token signing keys failed; keeping the current ones")
                }
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (auth, data_dir);
}

/// Loads the key file into a running service; returns the signing kid.
pub fn reload(auth: &AuthService, data_dir: &Path) -> anyhow::Result<String> {
    let keys = load(data_dir)?;
    auth.reload_keys(&keys)?;
    Ok(auth.signing_kid())
}

/// Drops the keys that no longer have live tokens when `format` signs;
/// returns their kids.
pub fn prune(
    data_dir: &Path,
    keep_for: Duration,
    format: TokenFormat,
) -> anyhow::Result<Vec<String>> {
    let mut keys = load(data_dir)?;
    let dropped = keys.prune(keep_for, chrono::Utc::now(), format);
    if !dropped.is_empty() {
        save(data_dir, &keys)?;
    }
    audit_pruned(&dropped);
    Ok(dropped)
}

fn audit_pruned(kids: &[String]) {
    for kid in kids {
        AuditEvent::KeyPruned { kid }.record();
    }
}

/// Loads the key set, creating it with one fresh key of `format` when
/// missing, and adding one when it has none of `format`.
pub fn load_or_create(data_dir: &Path, format: TokenFormat) -> anyhow::Result<KeySet> {
    let path = data_dir.join(KEY_FILE);
    let mut keys = if path.exists() {
        load(data_dir)?
    } else {
        KeySet { keys: Vec::new() }
    };
    if let Some(key) = keys.ensure_format(format) {
        save(data_dir, &keys).with_context(|| {
            format!("adding a {format} signing key (or run `orderflow keys rotate` where the key file is writable)")
        })?;
        tracing::info!(path = %path.display(), "generated a new signing key for {format} tokens");
        AuditEvent::KeyRotated {
            kid: &key.kid,
            alg: key.alg.as_str(),
        }
        .record();
    }
    Ok(keys)
}

/// Writes the key set (mode 0600) through a temporary file and a rename,
/// so a crash never leaves half a key file.
fn save(data_dir: &Path, keys: &KeySet) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let path = data_dir.join(KEY_FILE);
    let text = serde_json::to_string_pretty(keys)?;
    // Write to a temporary file and rename, so a crash never leaves half a key file.
    let tmp = data_dir.join(format!("{KEY_FILE}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    restrict_permissions(&tmp)?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(unix)]
fn restrict_permissions(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

#[cfg(not(unix))]
fn restrict_permissions(_path: &Path) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), TokenFormat::Jwt).unwrap();
        let second = load_or_create(dir.path(), TokenFormat::Jwt).unwrap();
        assert_eq!(first.keys.len(), 1);
        assert_eq!(first.keys[0].kid, second.keys[0].kid);
        assert_eq!(first.keys[0].secret_b64, second.keys[0].secret_b64);
        assert_eq!(first.keys[0].alg, KeyAlgorithm::EdDSA);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn rotate_adds_a_signing_key_and_keeps_the_old_one_verifying() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), TokenFormat::Jwt).unwrap();
        let ttl = Duration::from_secs(930);
        let (key, dropped) =
            rotate(dir.path(), KeyAlgorithm::HS256, ttl, TokenFormat::Jwt).unwrap();
        assert!(dropped.is_empty());
        let now = load(dir.path()).unwrap();
        assert_eq!(now.keys.len(), 2);
        assert_eq!(now.signing_key(TokenFormat::Jwt).unwrap().kid, key.kid);
        assert!(now.keys.iter().any(|k| k.kid == first.keys[0].kid));
        // With no retention, the superseded key is pruned.
        assert_eq!(
            prune(dir.path(), Duration::ZERO, TokenFormat::Jwt).unwrap(),
            vec![first.keys[0].kid.clone()]
        );
        assert_eq!(load(dir.path()).unwrap().keys.len(), 1);
    }
}
