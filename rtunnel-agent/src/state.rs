//! The agent's state file (`--state-dir`): the session it holds and the
//! reconnect token of that session's last welcome, kept across restarts.
//!
//! An agent restarted (an upgrade, a reboot) within the server's grace
//! period presents them and gets its session back: the operators' forwards
//! and proxy links, which name the session, keep working. The token is a
//! secret: the directory is the agent's alone (0700) and the file 0600,
//! replaced atomically. The file is removed when the session is over for
//! good (closed, taken over, credentials revoked).

use std::io::Write;
use std::path::{Path, PathBuf};

use rtunnel_core::proto::Resume;

/// The file's name in the state directory.
pub const FILE_NAME: &str = "session.json";

/// The state file of one agent.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The state file in `dir`, created (0700) if missing.
    pub fn in_dir(dir: &Path) -> std::io::Result<StateFile> {
        let mut create = std::fs::DirBuilder::new();
        create.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut create, 0o700);
        create.create(dir)?;
        Ok(StateFile {
            path: dir.join(FILE_NAME),
        })
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The session to resume, if the file holds one. A file that cannot be
    /// read or parsed is reported and ignored (a new session starts).
    pub fn load(&self) -> Option<Resume> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), "cannot read the state file ({e}); starting a new session");
                return None;
            }
        };
        match serde_json::from_str::<Resume>(&text) {
            Ok(resume) => Some(resume),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), "the state file is not valid ({e}); starting a new session");
                None
            }
        }
    }

    /// Keeps `resume` (written to a temporary file, then renamed over the
    /// old one, so a crash leaves either the old state or the new).
    pub fn save(&self, resume: &Resume) {
        if let Err(e) = self.write(resume) {
            tracing::warn!(path = %self.path.display(), "cannot write the state file ({e}); a restart will start a new session");
        }
    }

    fn write(&self, resume: &Resume) -> std::io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut open = std::fs::OpenOptions::new();
        open.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
        let mut file = open.open(&tmp)?;
        file.write_all(&serde_json::to_vec(resume).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }

    /// Forgets the session (it is over for good).
    pub fn clear(&self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.path.display(), "cannot remove the state file ({e})");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_saved_session_loads_back_privately_and_clears() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateFile::in_dir(&dir.path().join("state")).unwrap();
        assert!(state.load().is_none());
        let resume = Resume {
            session_id: uuid::Uuid::new_v4().into(),
            token: "rt-secret".into(),
        };
        state.save(&resume);
        assert!(state.load() == Some(resume.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(state.path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
            let dir_mode = std::fs::metadata(dir.path().join("state"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(dir_mode & 0o077, 0, "{dir_mode:o}");
        }
        std::fs::write(state.path(), "{not json").unwrap();
        assert!(state.load().is_none(), "a broken file starts a new session");
        state.save(&resume);
        state.clear();
        assert!(state.load().is_none());
        state.clear();
    }
}
