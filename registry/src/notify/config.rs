//! Reading `--notify-config`: the endpoints (`berth_access::notify`), each
//! header value read from its file, and an HTTP client per endpoint (its
//! timeout, its CA).

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use berth_access::notify::{Endpoint, NotifyConfig};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the notification config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the notification config {path} is not valid (JSON: endpoints[{{name, url, events, repositories, header{{name, valueFile}}, timeoutSeconds, caFile}}]): {source}"
    )]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("notification endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
}

/// An endpoint ready to deliver to.
#[derive(Clone, Debug)]
pub struct Target {
    pub endpoint: Endpoint,
    pub header: Option<HeaderSource>,
    pub client: reqwest::Client,
}

/// A header whose value lives in a file (a mounted Secret).
#[derive(Clone, Debug)]
pub struct HeaderSource {
    pub name: HeaderName,
    /// As read at start (marked sensitive: never printed).
    pub value: HeaderValue,
    pub file: PathBuf,
}

impl HeaderSource {
    /// The value in the file now, so a rotated Secret takes effect without
    /// a restart; the value read at start if the file cannot be read now.
    pub async fn current(&self) -> HeaderValue {
        match tokio::fs::read_to_string(&self.file).await {
            Ok(raw) => header_value(&raw).unwrap_or_else(|| self.value.clone()),
            Err(_) => self.value.clone(),
        }
    }
}

/// The file's text as a header value, trimmed, marked sensitive.
fn header_value(raw: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(raw.trim()).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// Reads and checks the file at `path`.
pub fn load(path: &Path) -> Result<Vec<Target>, ConfigError> {
    let text = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let config: NotifyConfig =
        serde_json::from_slice(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
    targets(config)
}

/// Checks `config` and builds its endpoints' clients.
pub fn targets(config: NotifyConfig) -> Result<Vec<Target>, ConfigError> {
    let mut names = std::collections::BTreeSet::new();
    config
        .endpoints
        .into_iter()
        .map(|endpoint| {
            if !names.insert(endpoint.name.clone()) {
                return Err(bad(
                    &endpoint,
                    "the name is used twice; give each endpoint its own",
                ));
            }
            target(endpoint)
        })
        .collect()
}

fn bad(endpoint: &Endpoint, reason: impl Into<String>) -> ConfigError {
    ConfigError::Endpoint {
        endpoint: endpoint.name.clone(),
        reason: reason.into(),
    }
}

fn target(endpoint: Endpoint) -> Result<Target, ConfigError> {
    if endpoint.name.is_empty() {
        return Err(bad(
            &endpoint,
            "the name is empty; give each endpoint a name",
        ));
    }
    let url = reqwest::Url::parse(&endpoint.url).map_err(|e| {
        // Not the URL itself: it may carry credentials.
        bad(&endpoint, format!("the url is not a valid URL ({e})"))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(
            &endpoint,
            "the url must start with http:// or https://",
        ));
    }
    if endpoint.queue == 0 || endpoint.max_attempts == 0 || endpoint.timeout_seconds == 0 {
        return Err(bad(
            &endpoint,
            "queue, maxAttempts and timeoutSeconds must be above zero",
        ));
    }
    let header = match &endpoint.header {
        None => None,
        Some(h) => {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| bad(&endpoint, format!("{:?} is not a header name", h.name)))?;
            let raw = std::fs::read_to_string(&h.value_file).map_err(|e| {
                bad(
                    &endpoint,
                    format!(
                        "cannot read the header value file {} ({e}); check the Secret is mounted",
                        h.value_file.display()
                    ),
                )
            })?;
            let value = header_value(&raw).ok_or_else(|| {
                bad(
                    &endpoint,
                    format!(
                        "the header value in {} holds characters a header cannot",
                        h.value_file.display()
                    ),
                )
            })?;
            Some(HeaderSource {
                name,
                value,
                file: h.value_file.clone(),
            })
        }
    };
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(endpoint.timeout_seconds))
        .connect_timeout(Duration::from_secs(endpoint.timeout_seconds))
        // A receiver's redirect could send the header elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("berth-registry/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &endpoint.ca_file {
        let pem = std::fs::read(ca).map_err(|e| {
            bad(
                &endpoint,
                format!("cannot read the CA file {} ({e})", ca.display()),
            )
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            bad(
                &endpoint,
                format!(
                    "the CA file {} holds no PEM certificate ({e})",
                    ca.display()
                ),
            )
        })?;
        if certs.is_empty() {
            return Err(bad(
                &endpoint,
                format!("the CA file {} holds no PEM certificate", ca.display()),
            ));
        }
        builder = builder.tls_certs_only(certs);
    }
    let client = builder
        .build()
        .map_err(|e| bad(&endpoint, format!("cannot build its HTTP client ({e})")))?;
    Ok(Target {
        endpoint,
        header,
        client,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Vec<Target>, ConfigError> {
        targets(serde_json::from_str(json).unwrap())
    }

    #[test]
    fn the_header_value_comes_from_its_file_trimmed_and_sensitive() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "Bearer s3cret\n").unwrap();
        let t = parse(&format!(
            r#"{{"endpoints":[{{"name":"ci","url":"http://127.0.0.1:1/hook","header":{{"name":"Authorization","valueFile":"{}"}}}}]}}"#,
            file.display()
        ))
        .unwrap();
        let h = t[0].header.clone().unwrap();
        assert_eq!(h.name, "authorization");
        assert_eq!(h.value, "Bearer s3cret");
        assert!(h.value.is_sensitive());
        assert!(!format!("{:?}", t[0]).contains("s3cret"));
    }

    #[tokio::test]
    async fn a_rotated_header_value_is_used_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "old").unwrap();
        let t = parse(&format!(
            r#"{{"endpoints":[{{"name":"ci","url":"http://127.0.0.1:1/","header":{{"name":"X-Token","valueFile":"{}"}}}}]}}"#,
            file.display()
        ))
        .unwrap();
        let h = t[0].header.clone().unwrap();
        std::fs::write(&file, "new\n").unwrap();
        assert_eq!(h.current().await, "new");
        std::fs::remove_file(&file).unwrap();
        assert_eq!(
            h.current().await,
            "old",
            "the value read at start when the file is gone"
        );
    }

    #[test]
    fn a_missing_header_file_says_to_mount_the_secret() {
        let err = parse(
            r#"{"endpoints":[{"name":"ci","url":"http://x/","header":{"name":"Authorization","valueFile":"/nonexistent/token"}}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("Secret is mounted"), "{err}");
    }

    #[test]
    fn bad_urls_and_duplicate_names_are_refused_without_echoing_the_url() {
        let err = parse(r#"{"endpoints":[{"name":"ci","url":"ftp://user:pw@x/"}]}"#).unwrap_err();
        assert!(!err.to_string().contains("pw"), "{err}");
        let err = parse(
            r#"{"endpoints":[{"name":"a","url":"http://x/"},{"name":"a","url":"http://y/"}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("used twice"), "{err}");
    }
}
