//! The server's secret signing key: a file of hex, created on first start
//! with mode 0600 unless the deployment says it is production.

use std::io::Write;
use std::path::Path;

use rtunnel_auth::HmacSigner;
use rtunnel_auth::launch_token::LaunchSigner;
use rtunnel_auth::secret::generate_hex;

use crate::server::ServerError;

/// Key id of a key loaded from a file.
pub const FILE_KID: &str = "k1";

/// Loads the signing key from `path`, creating it (0600) if it is missing
/// and this is not production.
pub fn load_or_create_signer(path: &Path, production: bool) -> Result<HmacSigner, ServerError> {
    let key = load_or_create_key(path, production, "--secret-key-file")?;
    HmacSigner::new(FILE_KID, &key).map_err(|_| too_short(path))
}

/// Loads the session launcher's key from `path` (the key external gateways
/// verify session tokens with), creating it like the signing key.
pub fn load_or_create_launch_signer(
    path: &Path,
    production: bool,
) -> Result<LaunchSigner, ServerError> {
    let key = load_or_create_key(path, production, "--launch-key-file")?;
    LaunchSigner::new(&key).map_err(|_| too_short(path))
}

/// Loads the cluster key from `path` (every node of a cluster holds the
/// same), creating it like the signing key: the node channel's key, and
/// the seal of what the nodes write to Redis.
pub fn load_or_create_cluster_key(
    path: &Path,
    production: bool,
) -> Result<
    (
        rtunnel_auth::node::NodeKey,
        rtunnel_core::store::redis::Seal,
    ),
    ServerError,
> {
    let key = load_or_create_key(path, production, "--cluster-key-file")?;
    let node = rtunnel_auth::node::NodeKey::new(&key).map_err(|_| too_short(path))?;
    Ok((node, rtunnel_core::store::redis::Seal::new(&key)))
}

fn too_short(path: &Path) -> ServerError {
    ServerError::Config(format!(
        "the key in {} is too short (16 bytes at least)",
        path.display()
    ))
}

/// Reads a hex key file; creates one of 32 random bytes if it is missing,
/// except in production, where a missing key is an error naming `flag`.
fn load_or_create_key(path: &Path, production: bool, flag: &str) -> Result<Vec<u8>, ServerError> {
    let hex_key = match std::fs::read_to_string(path) {
        Ok(s) => s.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !production => {
            let key = generate_hex(32);
            write_private(path, &key).map_err(|e| {
                ServerError::Config(format!("cannot create {}: {e}", path.display()))
            })?;
            tracing::info!(path = %path.display(), "generated a new key");
            key
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ServerError::Config(format!(
                "RTUNNEL_ENV=production and no key at {}: create one (32 random bytes, hex) or set {flag}",
                path.display()
            )));
        }
        Err(e) => {
            return Err(ServerError::Config(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    hex::decode(&hex_key)
        .map_err(|_| ServerError::Config(format!("{} does not hold a hex key", path.display())))
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtunnel_core::token::TokenSigner;

    #[test]
    fn key_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let a = load_or_create_signer(&path, false).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let b = load_or_create_signer(&path, false).unwrap();
        assert_eq!(b.verify(&a.sign(b"x")).unwrap(), b"x");
    }

    #[test]
    fn production_refuses_to_invent_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_or_create_signer(&dir.path().join("secret.key"), true).unwrap_err();
        assert!(err.to_string().contains("production"), "{err}");
    }
}
