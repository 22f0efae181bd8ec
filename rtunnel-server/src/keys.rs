//! The server's secret signing key: a file of hex, created on first start
//! with mode 0600 unless the deployment says it is production.

use std::io::Write;
use std::path::Path;

use rtunnel_auth::HmacSigner;
use rtunnel_auth::launch_token::LaunchSigner;
use rtunnel_auth::secret::generate_hex;

use crate::server::ServerError;

/// Key id of a key loaded from a file.
pub(crate) const FILE_KID: &str = "k1";

/// Loads the signing key from `path`, creating it (0600) if it is missing
/// and this is not production.
pub(crate) fn load_or_create_signer(
    path: &Path,
    production: bool,
) -> Result<HmacSigner, ServerError> {
    let key = load_or_create_key(path, production, "--secret-key-file")?;
    HmacSigner::new(FILE_KID, &key).map_err(|_| too_short(path))
}

/// Loads the session launcher's key from `path` (the key external gateways
/// verify session tokens with), creating it like the signing key.
pub(crate) fn load_or_create_launch_signer(
    path: &Path,
    production: bool,
) -> Result<LaunchSigner, ServerError> {
    let key = load_or_create_key(path, production, "--launch-key-file")?;
    LaunchSigner::new(&key).map_err(|_| too_short(path))
}

#[cfg(feature = "redis")]
/// Loads the cluster key from `path` (every node of a cluster holds the
/// same), creating it like the signing key: the node mesh's key, and
/// the seal of what the nodes write to Redis.
pub(crate) fn load_or_create_cluster_key(
    path: &Path,
    production: bool,
) -> Result<
    (
        rtunnel_auth::node::NodeKey,
        rtunnel_auth::mesh::MeshIdentity,
        rtunnel_core::store::redis::Seal,
    ),
    ServerError,
> {
    let key = load_or_create_key(path, production, "--cluster-key-file")?;
    let node = rtunnel_auth::node::NodeKey::new(&key).map_err(|_| too_short(path))?;
    let identity = rtunnel_auth::mesh::MeshIdentity::from_cluster_key(&key)
        .map_err(|e| ServerError::Config(e.to_string()))?;
    Ok((node, identity, rtunnel_core::store::redis::Seal::new(&key)))
}

fn too_short(path: &Path) -> ServerError {
    ServerError::Config(format!(
        "the key in {} is too short (16 bytes at least)",
        path.display()
    ))
}

/// Makes every file and directory this process creates from now on
/// private to its user (umask 077): the database and its WAL, keys, the
/// node id, recordings. The binaries call it first thing; an embedding
/// service decides for itself.
#[cfg(feature = "cli")]
pub(crate) fn private_files() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Creates the data directory (mode 0700) if it is missing; warns when an
/// existing one is open to other users.
pub(crate) fn ensure_data_dir(dir: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                ServerError::Config(format!(
                    "cannot create the data directory {}: {e}",
                    dir.display()
                ))
            })?;
        return Ok(());
    }
    if let Ok(meta) = std::fs::metadata(dir) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                dir = %dir.display(),
                mode = format!("{mode:o}"),
                "the data directory is open to other users; chmod 700 it (it holds the database and keys)"
            );
        }
    }
    Ok(())
}

/// Refuses a key file other users can read or write.
fn check_key_file_mode(path: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| ServerError::Config(format!("cannot read {}: {e}", path.display())))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o007 != 0 {
        return Err(ServerError::Config(format!(
            "{} is open to every user (mode {mode:o}): run chmod 600 {} (or 640 for a group of its own)",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

/// Reads a hex key file; creates one of 32 random bytes if it is missing,
/// except in production, where a missing key is an error naming `flag`.
/// A key file other users can read is refused.
fn load_or_create_key(path: &Path, production: bool, flag: &str) -> Result<Vec<u8>, ServerError> {
    let hex_key = match std::fs::read_to_string(path) {
        Ok(s) => {
            check_key_file_mode(path)?;
            s.trim().to_owned()
        }
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
    fn a_key_file_open_to_every_user_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        load_or_create_signer(&path, false).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create_signer(&path, false).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(load_or_create_signer(&path, false).is_ok());
    }

    #[test]
    fn production_refuses_to_invent_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_or_create_signer(&dir.path().join("secret.key"), true).unwrap_err();
        assert!(err.to_string().contains("production"), "{err}");
    }
}
