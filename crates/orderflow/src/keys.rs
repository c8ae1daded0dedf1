//! The JWT signing key set, kept in the data dir so tokens survive a restart.
//!
//! Generated on first start (`jwt-keys.json`, mode 0600). The file holds the
//! secrets; nothing else ever prints them.

use std::path::Path;

use anyhow::Context;
use orderflow_core::services::auth::{KeySet, SigningKey};

pub const KEY_FILE: &str = "jwt-keys.json";

/// Loads the key set, creating it with one fresh key when missing.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<KeySet> {
    let path = data_dir.join(KEY_FILE);
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let keys: KeySet = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a key set", path.display()))?;
        anyhow::ensure!(!keys.keys.is_empty(), "{} holds no keys", path.display());
        return Ok(keys);
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let keys = KeySet {
        keys: vec![SigningKey::generate()],
    };
    let text = serde_json::to_string_pretty(&keys)?;
    // Write to a temporary file and rename, so a crash never leaves half a key file.
    let tmp = data_dir.join(format!("{KEY_FILE}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    restrict_permissions(&tmp)?;
    std::fs::rename(&tmp, &path).with_context(|| format!("creating {}", path.display()))?;
    tracing::info!(path = %path.display(), "generated a new JWT signing key");
    Ok(keys)
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
        let first = load_or_create(dir.path()).unwrap();
        let second = load_or_create(dir.path()).unwrap();
        assert_eq!(first.keys.len(), 1);
        assert_eq!(first.keys[0].kid, second.keys[0].kid);
        assert_eq!(first.keys[0].secret_b64, second.keys[0].secret_b64);
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
}
