//! The objects a Registry should have, each built by a pure function of the
//! Registry (and, where the cluster decides something, of what was observed).
//!
//! Nothing here talks to the cluster. The controller applies what these
//! return with server-side apply, so each builder states every field the
//! operator cares about and nothing else, and returns the same object for
//! the same input (no timestamps, no random names): applying it twice
//! changes nothing.

pub mod auth;
pub mod ca_bundle;
pub mod certificate;
pub mod deployment;
pub mod ingress;
pub mod labels;
pub mod owner;
pub mod pull_secret;
pub mod pvc;
pub mod service;
pub mod tls;
pub mod token_keys;

use crate::crd::RegistrySpec;

/// The registry image this operator was built and tested with.
pub fn default_image() -> String {
    format!("berth.dev/berth-registry:{}", env!("CARGO_PKG_VERSION"))
}

/// A part of the spec the bundled registry cannot serve yet. The operator
/// then starts no registry pods, rather than run one that silently ignores
/// what was asked (an unauthenticated registry when auth was requested).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsupported {
    /// The condition reason (CamelCase).
    pub reason: &'static str,
    pub message: String,
    /// Whether it is the storage backend (reported on StorageReady too).
    pub storage: bool,
}

/// What in `spec` this version cannot serve, if anything.
pub fn unsupported(spec: &RegistrySpec) -> Option<Unsupported> {
    if spec.storage.s3.is_some() {
        return Some(Unsupported {
            reason: "StorageBackendUnsupported",
            message: "storage.s3 is not served by this version of berth-registry yet; use storage.filesystem".into(),
            storage: true,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AuthMode, S3Storage, SecretName};

    #[test]
    fn the_default_spec_is_fully_supported() {
        assert_eq!(unsupported(&RegistrySpec::default()), None);
    }

    #[test]
    fn s3_storage_is_reported_as_unsupported_storage() {
        let mut spec = RegistrySpec::default();
        spec.storage.filesystem = None;
        spec.storage.s3 = Some(S3Storage {
            bucket: "images".into(),
            region: "us-east-1".into(),
            endpoint: None,
            credentials_secret: SecretName { name: "s3".into() },
        });
        let unsupported = unsupported(&spec).expect("unsupported");
        assert!(unsupported.storage);
        assert_eq!(unsupported.reason, "StorageBackendUnsupported");
    }

    #[test]
    fn every_auth_mode_is_served() {
        for mode in [AuthMode::Kubernetes, AuthMode::Htpasswd, AuthMode::None] {
            let mut spec = RegistrySpec::default();
            spec.auth.mode = mode;
            assert_eq!(unsupported(&spec), None, "{mode:?}");
        }
    }

    #[test]
    fn the_default_image_matches_the_operator_version() {
        assert_eq!(
            default_image(),
            format!("berth.dev/berth-registry:{}", env!("CARGO_PKG_VERSION"))
        );
    }
}
