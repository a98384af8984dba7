//! berth-operator: turns a `Registry` resource into a running registry that
//! every node trusts.
//!
//! Pure parts (the CRD types, certificate issuance, the desired child objects
//! and the status computation) are kept apart from the parts that talk to the
//! cluster, so most behaviour is tested without one.

pub mod api_requests;
pub(crate) mod apply;
pub mod auth;
pub(crate) mod certificates;
pub mod controller;
pub mod crd;
pub mod crdgen;
pub mod credential_provider;
pub mod desired;
/// Test builders: compiled into unit tests only, never the library.
#[cfg(test)]
pub(crate) mod fixtures;
pub mod gc;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod node_agent;
pub mod pki;
pub mod quantity;
pub mod quota;
pub(crate) mod readiness;
pub mod status;
pub(crate) mod trust;

/// Every error of the operator crate. Each kind has a short, stable name
/// ([`Error::kind`]) for the failure metric: a conflict retries by itself,
/// a forbidden write needs RBAC, a missing CRD needs installing, an invalid
/// spec needs the user, so an operator of the operator must tell them apart.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the Registry has no name or namespace")]
    MissingMetadata,
    /// A call to the apiserver failed; `action` says what it was for.
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Certificate(#[from] pki::PkiError),
    #[error("token signing keys: {0}")]
    TokenKeys(#[from] berth_access::keys::KeyError),
    /// The web UI's session key could not be made (no randomness).
    #[error("cannot make the UI session key: {0}; retrying")]
    UiSessionKey(#[from] rustls::Error),
    /// The spec asks for something that cannot be done; the message says
    /// which field and how to fix it.
    #[error("{0}")]
    InvalidSpec(String),
    /// A node's trust files or the credential provider could not be
    /// written as planned; the message names the host path.
    #[error("{0}")]
    Host(String),
    #[error(transparent)]
    Crd(#[from] crdgen::CrdError),
    #[error(transparent)]
    Leader(#[from] leader::LeaderError),
    #[error(transparent)]
    CredentialProvider(#[from] credential_provider::Error),
    /// A watch's cache went away: the process is shutting down.
    #[error("the watch of {0} stopped")]
    WatchStopped(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The metric label of this error: the variant, with API refusals told
    /// apart by status code.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::MissingMetadata => "MissingMetadata",
            Self::Kube { source, .. } => kube_kind(source),
            Self::Certificate(_) => "Certificate",
            Self::TokenKeys(_) => "TokenKeys",
            Self::UiSessionKey(_) => "UiSessionKey",
            Self::InvalidSpec(_) => "InvalidSpec",
            Self::Host(_) => "HostFiles",
            Self::Crd(_) => "CrdRender",
            Self::Leader(_) => "LeaderLost",
            Self::CredentialProvider(_) => "CredentialProvider",
            Self::WatchStopped(_) => "WatchStopped",
        }
    }
}

/// An apiserver refusal by what it takes to fix it. A 404 naming no object
/// is the apiserver not serving the kind at all: its CRD is missing (such
/// as cert-manager's Certificate), not an object.
fn kube_kind(error: &kube::Error) -> &'static str {
    let kube::Error::Api(status) = error else {
        return "ApiUnreachable";
    };
    match status.code {
        409 => "Conflict",
        403 => "Forbidden",
        404 if status.details.as_ref().is_none_or(|d| d.name.is_empty()) => "MissingCrd",
        404 => "NotFound",
        422 => "Invalid",
        500.. => "ApiServerError",
        _ => "ApiRefused",
    }
}

/// Wrap a kube error with what the call was for.
pub(crate) fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Kube { action, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: u16, named: Option<&str>) -> &'static str {
        let mut status = kube::core::Status::failure("refused", "Refused").with_code(code);
        if let Some(name) = named {
            status.details =
                Some(serde_json::from_value(serde_json::json!({ "name": name })).expect("details"));
        }
        kube_err("writing")(kube::Error::Api(status.boxed())).kind()
    }

    #[test]
    fn api_refusals_are_counted_by_what_fixes_them() {
        assert_eq!(refused(409, Some("hub")), "Conflict");
        assert_eq!(refused(403, None), "Forbidden");
        assert_eq!(refused(404, Some("hub")), "NotFound");
        assert_eq!(refused(404, None), "MissingCrd");
        assert_eq!(refused(422, Some("hub")), "Invalid");
        assert_eq!(refused(500, None), "ApiServerError");
        assert_eq!(refused(400, None), "ApiRefused");
    }

    #[test]
    fn other_errors_are_counted_by_variant() {
        assert_eq!(Error::MissingMetadata.kind(), "MissingMetadata");
        assert_eq!(Error::InvalidSpec("x".into()).kind(), "InvalidSpec");
        assert_eq!(Error::Host("x".into()).kind(), "HostFiles");
        let pki = pki::PkiError::TimeRange(jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(Error::from(pki).kind(), "Certificate");
    }
}
