//! The token keys from the directory the operator's Secret is mounted at
//! ([`berth_access::keys::SIGNING_KEY_FILE`] and
//! [`berth_access::keys::VERIFY_KEYS_FILE`]), re-read when they change so a
//! rotation needs no restart. A broken version keeps the keys loaded
//! before and logs why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use berth_access::keys::{SIGNING_KEY_FILE, VERIFY_KEYS_FILE};
use berth_access::{KeyError, Signer, Verifier};

use super::watch::Stamp;

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error(
        "cannot read {path}: {source}; the token keys directory must hold {SIGNING_KEY_FILE} and {VERIFY_KEYS_FILE} (the operator writes them; by hand: `openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt > {SIGNING_KEY_FILE}` and `openssl ec -in {SIGNING_KEY_FILE} -pubout > {VERIFY_KEYS_FILE}`)"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Key { path: PathBuf, source: KeyError },
}

/// One consistent version of the keys.
pub struct Keys {
    pub signer: Signer,
    pub verifier: Verifier,
}

pub struct KeyStore {
    dir: PathBuf,
    state: RwLock<(Vec<Stamp>, Arc<Keys>)>,
}

impl KeyStore {
    /// Loads the keys; any error is fatal here (at start-up).
    pub fn load(dir: &Path) -> Result<KeyStore, KeysError> {
        let stamps = stamps(dir);
        let keys = read(dir)?;
        Ok(KeyStore {
            dir: dir.to_owned(),
            state: RwLock::new((stamps, Arc::new(keys))),
        })
    }

    pub fn current(&self) -> Arc<Keys> {
        match self.state.read() {
            Ok(s) => s.1.clone(),
            Err(p) => p.into_inner().1.clone(),
        }
    }

    /// Re-reads the keys if a file changed. Returns whether they changed.
    pub fn reload(&self) -> bool {
        let now = stamps(&self.dir);
        let old = match self.state.read() {
            Ok(s) => s.0.clone(),
            Err(p) => p.into_inner().0.clone(),
        };
        if now == old {
            return false;
        }
        let result = read(&self.dir);
        let Ok(mut state) = self.state.write() else {
            return false;
        };
        state.0 = now;
        match result {
            Ok(keys) => {
                tracing::info!(
                    signing_kid = keys.signer.kid(),
                    accepted_kids = ?keys.verifier.kids(),
                    "token keys reloaded"
                );
                state.1 = Arc::new(keys);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "token keys changed but cannot be used; keeping the keys loaded before");
                false
            }
        }
    }
}

fn stamps(dir: &Path) -> Vec<Stamp> {
    Stamp::of_all(&[&dir.join(SIGNING_KEY_FILE), &dir.join(VERIFY_KEYS_FILE)])
}

fn read(dir: &Path) -> Result<Keys, KeysError> {
    let file = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path)
            .map(|b| (path.clone(), b))
            .map_err(|source| KeysError::Read { path, source })
    };
    let (signing_path, signing) = file(SIGNING_KEY_FILE)?;
    let (verify_path, verify) = file(VERIFY_KEYS_FILE)?;
    let signer = Signer::from_pem(&signing).map_err(|source| KeysError::Key {
        path: signing_path,
        source,
    })?;
    let verifier = Verifier::from_pem(&verify).map_err(|source| KeysError::Key {
        path: verify_path,
        source,
    })?;
    if !verifier.kids().iter().any(|k| k == signer.kid()) {
        // Tokens we sign would then be refused by ourselves: say so, but
        // go on (the operator may be half-way through a rotation).
        tracing::warn!(
            signing_kid = signer.kid(),
            accepted_kids = ?verifier.kids(),
            "the signing key's public key is not among the accepted keys: tokens issued now will be refused until it is added to {VERIFY_KEYS_FILE}"
        );
    }
    Ok(Keys { signer, verifier })
}
