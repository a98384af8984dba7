//! The upstream list, from the mirror config file (`--mirror-config`,
//! JSON: [`berth_access::mirror::MirrorConfig`]), made ready to serve: one
//! HTTP client, tag freshness window and set of fetches in flight per
//! upstream.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth_access::mirror::{MirrorConfig, MirrorConfigError};

use super::fetch::Flights;
use super::freshness::Freshness;
use super::upstream::{Client, ClientError, CredentialFiles};

/// Why the mirror config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the mirror config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the mirror config {path} is not valid JSON of the expected shape ({{\"upstreams\": [{{\"prefix\": \"docker.io\", \"url\": \"https://registry-1.docker.io\"}}]}}): {reason}"
    )]
    Parse { path: String, reason: String },
    #[error(transparent)]
    Invalid(#[from] MirrorConfigError),
    #[error("mirror {prefix}: {source}")]
    Client {
        prefix: String,
        #[source]
        source: ClientError,
    },
}

/// One upstream, ready to serve.
pub struct Upstream {
    pub config: berth_access::mirror::Upstream,
    pub client: Arc<Client>,
    pub freshness: Freshness,
    pub flights: Flights,
}

/// Reads and checks the file.
pub fn load(path: &Path) -> Result<MirrorConfig, ConfigError> {
    let text = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let config: MirrorConfig = serde_json::from_slice(&text).map_err(|e| ConfigError::Parse {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    config.validate()?;
    Ok(config)
}

/// The upstreams of a checked config.
pub fn upstreams(config: &MirrorConfig) -> Result<Vec<Arc<Upstream>>, ConfigError> {
    config.validate()?;
    config
        .upstreams
        .iter()
        .map(|u| {
            let credentials = match (&u.username_file, &u.password_file) {
                (Some(user), Some(password)) => Some(CredentialFiles {
                    username: user.clone(),
                    password: password.clone(),
                }),
                _ => None,
            };
            let client =
                Client::new(&u.url, credentials, u.ca_file.as_deref()).map_err(|source| {
                    ConfigError::Client {
                        prefix: u.prefix.clone(),
                        source,
                    }
                })?;
            Ok(Arc::new(Upstream {
                config: u.clone(),
                client: Arc::new(client),
                freshness: Freshness::new(Duration::from_secs(u.tag_freshness_seconds)),
                flights: Flights::default(),
            }))
        })
        .collect()
}
