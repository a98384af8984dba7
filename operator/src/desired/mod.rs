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
pub mod config_file;
pub mod deployment;
pub mod disruption_budget;
pub mod gc;
pub mod ingress;
pub mod labels;
pub mod mirror;
pub mod notify;
pub mod owner;
pub mod pull_secret;
pub mod pvc;
pub mod quota;
pub mod service;
pub mod storage;
pub mod tls;
pub mod token_keys;
pub mod ui_session;

/// The registry image this operator was built and tested with.
pub fn default_image() -> String {
    format!("berth.dev/berth-registry:{}", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_image_matches_the_operator_version() {
        assert_eq!(
            default_image(),
            format!("berth.dev/berth-registry:{}", env!("CARGO_PKG_VERSION"))
        );
    }
}
