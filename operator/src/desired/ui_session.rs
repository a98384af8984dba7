//! The key that signs the web UI's session cookies (Secret
//! `<name>-ui-session`), so logins survive registry restarts and work on
//! every replica.
//!
//! Made once when the UI is on, like the token keys, and never rewritten
//! while it holds a usable key: a new key logs everyone out. Deleting the
//! Secret is how an administrator forces every UI session to end; the next
//! reconcile makes a new key (the pods see it when the kubelet refreshes
//! the mounted copy; the registry reads it at start, so restart them).

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, SecretVolumeSource, Volume, VolumeMount};

use crate::crd::Registry;
use crate::desired::owner;
use crate::names::Names;

/// Where the registry container finds the key.
pub const DIR: &str = "/etc/berth/ui-session";
pub const KEY_FILE: &str = "session.key";
/// Random bytes in a new key (stored base64: 44 characters).
const KEY_BYTES: usize = 32;
/// The shortest key the registry accepts.
const KEY_MIN: usize = 32;

/// `--ui-session-key` when the UI is on.
pub fn args(registry: &Registry) -> Vec<String> {
    if registry.spec.ui.enabled {
        vec!["--ui-session-key".to_owned(), format!("{DIR}/{KEY_FILE}")]
    } else {
        Vec::new()
    }
}

/// The Secret's read-only mount, when the UI is on.
pub fn volumes(registry: &Registry, names: &Names) -> (Vec<VolumeMount>, Vec<Volume>) {
    if !registry.spec.ui.enabled {
        return (Vec::new(), Vec::new());
    }
    (
        vec![VolumeMount {
            name: "ui-session".into(),
            mount_path: DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }],
        vec![Volume {
            name: "ui-session".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(names.ui_session_secret()),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        }],
    )
}

/// Whether `stored` holds a key the registry accepts (else a new one is made).
pub fn usable(stored: Option<&Secret>) -> bool {
    stored
        .and_then(|s| s.data.as_ref())
        .and_then(|d| d.get(KEY_FILE))
        .is_some_and(|k| k.0.trim_ascii().len() >= KEY_MIN)
}

/// A new random key, base64 (printable, so `kubectl get secret` shows no
/// binary).
pub fn new_key() -> Result<String, rustls::Error> {
    let mut bytes = [0u8; KEY_BYTES];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| rustls::Error::FailedToGetRandomBytes)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The Secret holding `key`.
pub fn secret(registry: &Registry, names: &Names, key: &str) -> Secret {
    Secret {
        metadata: owner::child_meta(registry, names, names.ui_session_secret(), true),
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            KEY_FILE.to_owned(),
            ByteString(key.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn a_new_key_is_random_and_long_enough_and_a_stored_one_is_kept() {
        let a = new_key().unwrap();
        let b = new_key().unwrap();
        assert_ne!(a, b);
        let names = Names::new("hub", "team", "cluster.local");
        let s = secret(&fixtures::registry(), &names, &a);
        assert_eq!(s.metadata.name.as_deref(), Some("hub-ui-session"));
        assert!(usable(Some(&s)));
        assert!(!usable(None));
        let short = secret(&fixtures::registry(), &names, "too-short");
        assert!(!usable(Some(&short)));
    }
}
