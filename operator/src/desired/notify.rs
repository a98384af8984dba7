//! Notifications: `spec.notifications` as the registry's notification
//! config file (`berth_access::notify::NotifyConfig`) in a ConfigMap, and
//! the pod's volumes: that ConfigMap, and per endpoint the user's Secret
//! keys (header value, CA) as files the config names. Header values never
//! sit in the ConfigMap.

use std::path::PathBuf;

use berth_access::Action;
use berth_access::notify::{self as access_notify, Endpoint, Header, NotifyConfig};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, KeyToPath, SecretVolumeSource, Volume, VolumeMount,
};

use crate::crd::{NotificationEndpoint, Registry, RepositoryAction, SecretKeyRef};
use crate::desired::config_file;
use crate::names::Names;

/// Where the pod finds the config file.
pub const NOTIFY_DIR: &str = "/etc/berth/notify";
pub const CONFIG_FILE: &str = "config.json";
/// Per endpoint, `<SECRETS_DIR>/<endpoint>-header/value` and
/// `<SECRETS_DIR>/<endpoint>-ca/ca.crt`.
pub const SECRETS_DIR: &str = "/etc/berth/notify-secrets";
const HEADER_FILE: &str = "value";
const CA_FILE: &str = "ca.crt";

/// The config file for `registry`, or `None` without endpoints (the
/// registry then runs without `--notify-config`).
pub fn notify_config(registry: &Registry) -> Option<NotifyConfig> {
    let endpoints = &registry.spec.notifications.as_ref()?.endpoints;
    if endpoints.is_empty() {
        return None;
    }
    Some(NotifyConfig {
        endpoints: endpoints.iter().map(endpoint).collect(),
    })
}

fn endpoint(e: &NotificationEndpoint) -> Endpoint {
    Endpoint {
        name: e.name.clone(),
        url: e.url.clone(),
        header: e.header.as_ref().map(|h| Header {
            name: h.name.clone(),
            value_file: secret_dir(&e.name, "header").join(HEADER_FILE),
        }),
        events: e
            .events
            .iter()
            .map(|a| match a {
                RepositoryAction::Pull => Action::Pull,
                RepositoryAction::Push => Action::Push,
                RepositoryAction::Delete => Action::Delete,
            })
            .collect(),
        repositories: e.repositories.clone(),
        timeout_seconds: e
            .timeout_seconds
            .map_or(access_notify::DEFAULT_TIMEOUT_SECONDS, u64::from),
        ca_file: e
            .ca
            .as_ref()
            .map(|_| secret_dir(&e.name, "ca").join(CA_FILE)),
        queue: access_notify::DEFAULT_QUEUE,
        max_attempts: access_notify::DEFAULT_MAX_ATTEMPTS,
    }
}

fn secret_dir(endpoint: &str, what: &str) -> PathBuf {
    PathBuf::from(format!("{SECRETS_DIR}/{endpoint}-{what}"))
}

/// The ConfigMap `<name>-notify` holding [`CONFIG_FILE`].
pub fn notify_config_map(registry: &Registry, names: &Names, config: &NotifyConfig) -> ConfigMap {
    config_file::config_map(
        registry,
        names,
        names.notify_config_map(),
        CONFIG_FILE,
        config,
    )
}

/// `--notify-config <file>` when there is a config.
pub fn args(config: Option<&NotifyConfig>) -> Vec<String> {
    config.map_or_else(Vec::new, |_| {
        vec![
            "--notify-config".to_owned(),
            format!("{NOTIFY_DIR}/{CONFIG_FILE}"),
        ]
    })
}

/// The ConfigMap and each endpoint's Secret keys, read-only; nothing
/// without a config.
pub fn volumes(registry: &Registry, names: &Names) -> (Vec<VolumeMount>, Vec<Volume>) {
    let Some(notifications) = &registry.spec.notifications else {
        return (Vec::new(), Vec::new());
    };
    if notifications.endpoints.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let mount = |name: String, path: String| VolumeMount {
        name,
        mount_path: path,
        read_only: Some(true),
        ..VolumeMount::default()
    };
    let secret = |name: String, r: &SecretKeyRef, file: &str| Volume {
        name,
        secret: Some(SecretVolumeSource {
            secret_name: Some(r.name.clone()),
            default_mode: Some(0o440),
            items: Some(vec![KeyToPath {
                key: r.key.clone(),
                path: file.into(),
                mode: None,
            }]),
            optional: Some(false),
        }),
        ..Volume::default()
    };
    let mut mounts = vec![mount("notify".into(), NOTIFY_DIR.into())];
    let mut volumes = vec![Volume {
        name: "notify".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: names.notify_config_map(),
            default_mode: Some(0o444),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    for e in &notifications.endpoints {
        let parts = [
            (
                "header",
                e.header.as_ref().map(|h| &h.secret_key_ref),
                HEADER_FILE,
            ),
            ("ca", e.ca.as_ref(), CA_FILE),
        ];
        for (what, r, file) in parts {
            let Some(r) = r else { continue };
            // Endpoint names are DNS labels of at most 40 characters: the
            // volume name stays a DNS label under 63.
            let volume = format!("notify-{}-{what}", e.name);
            mounts.push(mount(
                volume.clone(),
                secret_dir(&e.name, what).display().to_string(),
            ));
            volumes.push(secret(volume, r, file));
        }
    }
    (mounts, volumes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{NotificationHeader, Notifications};
    use crate::fixtures;

    fn with_endpoints(endpoints: Vec<NotificationEndpoint>) -> Registry {
        fixtures::registry_with(|s| s.notifications = Some(Notifications { endpoints }))
    }

    fn ci() -> NotificationEndpoint {
        NotificationEndpoint {
            name: "ci".into(),
            url: "https://ci.example/hook".into(),
            header: Some(NotificationHeader {
                name: "Authorization".into(),
                secret_key_ref: SecretKeyRef {
                    name: "ci-hook".into(),
                    key: "token".into(),
                },
            }),
            events: vec![RepositoryAction::Push, RepositoryAction::Delete],
            repositories: vec!["team/*".into()],
            timeout_seconds: Some(3),
            ca: Some(SecretKeyRef {
                name: "ci-ca".into(),
                key: "ca.crt".into(),
            }),
        }
    }

    #[test]
    fn no_endpoints_means_no_config_and_no_volumes() {
        let r = fixtures::registry();
        assert_eq!(notify_config(&r), None);
        assert_eq!(volumes(&r, &fixtures::names()), (Vec::new(), Vec::new()));
        let empty = with_endpoints(Vec::new());
        assert_eq!(notify_config(&empty), None);
        assert!(args(notify_config(&empty).as_ref()).is_empty());
    }

    #[test]
    fn an_endpoint_becomes_config_pointing_at_its_mounted_secret_files() {
        let r = with_endpoints(vec![ci()]);
        let config = notify_config(&r).expect("config");
        let e = &config.endpoints[0];
        assert_eq!(e.name, "ci");
        assert_eq!(e.url, "https://ci.example/hook");
        assert_eq!(e.events, vec![Action::Push, Action::Delete]);
        assert_eq!(e.repositories, vec!["team/*".to_owned()]);
        assert_eq!(e.timeout_seconds, 3);
        let header = e.header.as_ref().expect("header");
        assert_eq!(header.name, "Authorization");
        assert_eq!(
            header.value_file,
            PathBuf::from("/etc/berth/notify-secrets/ci-header/value")
        );
        assert_eq!(
            e.ca_file,
            Some(PathBuf::from("/etc/berth/notify-secrets/ci-ca/ca.crt"))
        );

        let (mounts, vols) = volumes(&r, &fixtures::names());
        let paths: Vec<&str> = mounts.iter().map(|m| m.mount_path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/etc/berth/notify",
                "/etc/berth/notify-secrets/ci-header",
                "/etc/berth/notify-secrets/ci-ca"
            ]
        );
        assert!(mounts.iter().all(|m| m.read_only == Some(true)));
        let header_volume = vols
            .iter()
            .find(|v| v.name == "notify-ci-header")
            .expect("header volume");
        let secret = header_volume.secret.as_ref().expect("secret");
        assert_eq!(secret.secret_name.as_deref(), Some("ci-hook"));
        let items = secret.items.as_ref().expect("items");
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("token", "value")
        );
        assert_eq!(
            vols[0].config_map.as_ref().map(|c| c.name.as_str()),
            Some("hub-notify")
        );
    }

    #[test]
    fn the_config_map_holds_no_secret_and_reads_back() {
        let r = with_endpoints(vec![ci()]);
        let config = notify_config(&r).expect("config");
        let cm = notify_config_map(&r, &fixtures::names(), &config);
        assert_eq!(cm.metadata.name.as_deref(), Some("hub-notify"));
        assert!(cm.metadata.owner_references.is_some());
        let text = &cm.data.expect("data")[CONFIG_FILE];
        let back: NotifyConfig = serde_json::from_str(text).expect("json");
        assert_eq!(back, config);
        assert!(
            !text.contains("ci-hook"),
            "only a file path, not the Secret"
        );
    }

    #[test]
    fn defaults_fill_what_the_spec_leaves_out_and_the_hash_follows_the_config() {
        let mut plain = ci();
        plain.header = None;
        plain.ca = None;
        plain.timeout_seconds = None;
        plain.events = Vec::new();
        let r = with_endpoints(vec![plain]);
        let config = notify_config(&r).expect("config");
        let e = &config.endpoints[0];
        assert_eq!(e.timeout_seconds, access_notify::DEFAULT_TIMEOUT_SECONDS);
        assert!(e.events.is_empty() && e.header.is_none() && e.ca_file.is_none());
        assert_eq!(volumes(&r, &fixtures::names()).1.len(), 1);
        let other = notify_config(&with_endpoints(vec![ci()])).expect("other");
        assert_ne!(config_file::hash(&config), config_file::hash(&other));
        assert_eq!(
            args(Some(&config)),
            ["--notify-config", "/etc/berth/notify/config.json"]
        );
    }
}
