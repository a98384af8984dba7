//! Htpasswd users: `user:hash` lines, bcrypt hashes only (as `htpasswd -B`
//! writes them; Distribution and zot accept nothing else either).
//!
//! The file is re-read when it changes (a mounted Secret is swapped in
//! place); a file that no longer parses keeps the users already loaded and
//! logs why.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use super::watch::Stamp;

#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    #[error("cannot read the htpasswd file {path}: {source}; check that it exists and is readable")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} line {line}: user {user:?} has {kind} password hash; berth accepts only bcrypt: regenerate the entry with `htpasswd -B {path} {user}`"
    )]
    NotBcrypt {
        path: PathBuf,
        line: usize,
        user: String,
        kind: &'static str,
    },
    #[error("{path} line {line} is not `user:hash`; regenerate the file with `htpasswd -B`")]
    Malformed { path: PathBuf, line: usize },
    #[error("{path} line {line}: user {user:?} appears twice; keep one entry per user")]
    Duplicate {
        path: PathBuf,
        line: usize,
        user: String,
    },
}

/// The users of one version of the file.
#[derive(Default)]
pub struct Users {
    hashes: HashMap<String, String>,
}

impl Users {
    pub fn parse(path: &Path, text: &str) -> Result<Users, HtpasswdError> {
        let mut hashes = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err(HtpasswdError::Malformed {
                    path: path.into(),
                    line: line_no,
                });
            };
            if user.is_empty() || hash.is_empty() {
                return Err(HtpasswdError::Malformed {
                    path: path.into(),
                    line: line_no,
                });
            }
            if let Some(kind) = not_bcrypt(hash) {
                return Err(HtpasswdError::NotBcrypt {
                    path: path.into(),
                    line: line_no,
                    user: user.to_owned(),
                    kind,
                });
            }
            if hashes.insert(user.to_owned(), hash.to_owned()).is_some() {
                return Err(HtpasswdError::Duplicate {
                    path: path.into(),
                    line: line_no,
                    user: user.to_owned(),
                });
            }
        }
        Ok(Users { hashes })
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    pub fn contains(&self, user: &str) -> bool {
        self.hashes.contains_key(user)
    }

    /// Whether `password` is `user`'s. Slow on purpose (bcrypt): call it
    /// off the async threads. An unknown user costs the same as a known
    /// one, so timing does not tell which users exist.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        match self.hashes.get(user) {
            Some(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            None => {
                let _ = bcrypt::verify(password, dummy_hash());
                false
            }
        }
    }
}

/// A bcrypt hash of nothing anyone knows, at the usual cost, to spend the
/// same time on unknown users.
fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| {
        bcrypt::hash(berth_access::keys::random_id(), bcrypt::DEFAULT_COST).unwrap_or_default()
    })
}

/// What kind of non-bcrypt hash `hash` is, or None for bcrypt.
fn not_bcrypt(hash: &str) -> Option<&'static str> {
    for p in ["$2a$", "$2b$", "$2y$", "$2x$"] {
        if hash.starts_with(p) {
            return None;
        }
    }
    Some(if hash.starts_with("$apr1$") {
        "an MD5 ($apr1$)"
    } else if hash.starts_with("{SHA}") {
        "a SHA-1 ({SHA})"
    } else if hash.starts_with("$5$") || hash.starts_with("$6$") {
        "a SHA-crypt ($5$/$6$)"
    } else if hash.starts_with("$1$") {
        "an MD5-crypt ($1$)"
    } else if hash.len() == 13
        && hash
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/')
    {
        "a DES crypt"
    } else {
        "a plain-text or unknown"
    })
}

/// The file and the users last loaded from it.
pub struct Htpasswd {
    path: PathBuf,
    state: RwLock<(Stamp, Arc<Users>)>,
}

impl Htpasswd {
    /// Loads the file; any error is fatal here (at start-up).
    pub fn load(path: &Path) -> Result<Htpasswd, HtpasswdError> {
        let (stamp, users) = read(path)?;
        Ok(Htpasswd {
            path: path.to_owned(),
            state: RwLock::new((stamp, Arc::new(users))),
        })
    }

    pub fn users(&self) -> Arc<Users> {
        match self.state.read() {
            Ok(s) => s.1.clone(),
            Err(p) => p.into_inner().1.clone(),
        }
    }

    /// Re-reads the file if it changed. Returns whether the users changed.
    pub fn reload(&self) -> bool {
        let current = Stamp::of(&self.path);
        let old = match self.state.read() {
            Ok(s) => s.0.clone(),
            Err(p) => p.into_inner().0.clone(),
        };
        if current == old {
            return false;
        }
        match read(&self.path) {
            Ok((stamp, users)) => {
                tracing::info!(file = %self.path.display(), users = users.len(), "htpasswd file reloaded");
                if let Ok(mut s) = self.state.write() {
                    *s = (stamp, Arc::new(users));
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "htpasswd file changed but cannot be used; keeping the users loaded before");
                // Remember the broken version so the warning is not repeated every poll.
                if let Ok(mut s) = self.state.write() {
                    s.0 = current;
                }
                false
            }
        }
    }
}

fn read(path: &Path) -> Result<(Stamp, Users), HtpasswdError> {
    let stamp = Stamp::of(path);
    let text = std::fs::read_to_string(path).map_err(|source| HtpasswdError::Read {
        path: path.into(),
        source,
    })?;
    Ok((stamp, Users::parse(path, &text)?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bcrypt_entries_verify() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let users = Users::parse(Path::new("f"), &format!("# c\n\nalice:{hash}\n")).unwrap();
        assert!(users.verify("alice", "pw"));
        assert!(!users.verify("alice", "wrong"));
        assert!(!users.verify("bob", "pw"));
    }

    #[test]
    fn other_hash_kinds_are_named_with_user_and_line() {
        for (hash, kind) in [
            ("$apr1$abc$def", "MD5 ($apr1$)"),
            ("{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "SHA-1"),
            ("abJnggxhB/yWI", "DES crypt"),
            ("plaintext-password", "plain-text"),
        ] {
            let e = Users::parse(
                Path::new("/etc/htpasswd"),
                &format!("ok:$2y$05$x\nbob:{hash}\n"),
            )
            .err()
            .unwrap()
            .to_string();
            assert!(e.contains("line 2"), "{e}");
            assert!(e.contains("\"bob\""), "{e}");
            assert!(e.contains(kind), "{e}");
            assert!(e.contains("htpasswd -B"), "{e}");
        }
    }

    #[test]
    fn a_broken_file_keeps_the_users_loaded_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        let hash = bcrypt::hash("pw", 4).unwrap();
        std::fs::write(&path, format!("alice:{hash}\n")).unwrap();
        let h = Htpasswd::load(&path).unwrap();
        assert!(h.users().contains("alice"));
        std::fs::write(&path, "alice:$apr1$x$y\nand more\n").unwrap();
        assert!(!h.reload());
        assert!(h.users().contains("alice"));
        std::fs::write(&path, format!("bob:{hash}\n")).unwrap();
        assert!(h.reload());
        assert!(h.users().contains("bob"));
        assert!(!h.users().contains("alice"));
    }
}
