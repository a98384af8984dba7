//! Pull-through cache: `spec.mirrors` as the registry's mirror config file
//! (`berth_access::mirror::MirrorConfig`) in a ConfigMap, and the pod's
//! volumes: that ConfigMap, and per upstream the user's credentials and
//! CA Secrets as files the config names. Credentials never sit in the
//! ConfigMap.

use std::path::PathBuf;
use std::str::FromStr;

use berth_access::mirror::{DEFAULT_TAG_FRESHNESS_SECONDS, MirrorConfig, Upstream};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, KeyToPath, SecretVolumeSource, Volume, VolumeMount,
};

use crate::crd::{Mirror, Registry};
use crate::desired::config_file;
use crate::names::Names;

/// Where the pod finds the config file.
pub const MIRROR_DIR: &str = "/etc/berth/mirror";
pub const CONFIG_FILE: &str = "config.json";
/// Per upstream, `<SECRETS_DIR>/<prefix>/credentials/{username,password}`
/// and `<SECRETS_DIR>/<prefix>/ca/ca.crt`.
pub const SECRETS_DIR: &str = "/etc/berth/mirror-secrets";
/// The keys the credentials Secret must hold (also the file names).
pub const USERNAME_KEY: &str = "username";
pub const PASSWORD_KEY: &str = "password";
const CA_FILE: &str = "ca.crt";

/// The config file for `registry`, or `None` without mirrors (the
/// registry then runs without `--mirror-config`).
pub fn mirror_config(registry: &Registry) -> Option<MirrorConfig> {
    let mirrors = &registry.spec.mirrors;
    if mirrors.is_empty() {
        return None;
    }
    Some(MirrorConfig {
        upstreams: mirrors.iter().map(upstream).collect(),
    })
}

fn upstream(m: &Mirror) -> Upstream {
    let credentials = m
        .credentials_secret
        .as_ref()
        .map(|_| secret_dir(&m.prefix, "credentials"));
    Upstream {
        prefix: m.prefix.clone(),
        url: m.url.clone(),
        username_file: credentials.as_ref().map(|d| d.join(USERNAME_KEY)),
        password_file: credentials.as_ref().map(|d| d.join(PASSWORD_KEY)),
        repositories: m.repositories.clone(),
        tag_freshness_seconds: tag_freshness_seconds(m),
        ca_file: m
            .ca_secret
            .as_ref()
            .map(|_| secret_dir(&m.prefix, "ca").join(CA_FILE)),
        max_age_seconds: max_age_seconds(m),
        max_size_bytes: m.max_size.as_deref().and_then(quantity_bytes),
    }
}

/// The bytes in `maxSize`, at least 1 (the registry refuses 0); `None`
/// when it does not read (the CRD's pattern refuses it first).
pub fn quantity_bytes(q: &str) -> Option<u64> {
    crate::quantity::bytes(q).map(|b| b.max(1))
}

/// Seconds in `maxAge` (at least 1: the CRD asks for 1m or more, and the
/// registry refuses 0); `None` when unset or unreadable.
pub fn max_age_seconds(m: &Mirror) -> Option<u64> {
    m.max_age
        .as_deref()
        .and_then(|s| kube::core::Duration::from_str(s).ok())
        .filter(|d| !d.is_negative())
        .map(|d| std::time::Duration::from(d).as_secs().max(1))
}

/// Seconds in `tagFreshness`; the default when unset or unreadable (the
/// CRD's pattern makes the latter impossible in practice). `0s` is kept:
/// every pull of a tag then checks the upstream.
pub fn tag_freshness_seconds(m: &Mirror) -> u64 {
    m.tag_freshness
        .as_deref()
        .and_then(|s| kube::core::Duration::from_str(s).ok())
        .filter(|d| !d.is_negative())
        .map_or(DEFAULT_TAG_FRESHNESS_SECONDS, |d| {
            std::time::Duration::from(d).as_secs()
        })
}

/// The prefix is a checked host name (CRD rule), so one path component.
fn secret_dir(prefix: &str, what: &str) -> PathBuf {
    PathBuf::from(format!("{SECRETS_DIR}/{prefix}/{what}"))
}

/// The ConfigMap `<name>-mirror` holding [`CONFIG_FILE`].
pub fn mirror_config_map(registry: &Registry, names: &Names, config: &MirrorConfig) -> ConfigMap {
    config_file::config_map(
        registry,
        names,
        names.mirror_config_map(),
        CONFIG_FILE,
        config,
    )
}

/// `--mirror-config <file>` when there is a config.
pub fn args(config: Option<&MirrorConfig>) -> Vec<String> {
    config.map_or_else(Vec::new, |_| {
        vec![
            "--mirror-config".to_owned(),
            format!("{MIRROR_DIR}/{CONFIG_FILE}"),
        ]
    })
}

/// The ConfigMap and each upstream's Secrets, read-only; nothing without
/// mirrors.
pub fn volumes(registry: &Registry, names: &Names) -> (Vec<VolumeMount>, Vec<Volume>) {
    let mirrors = &registry.spec.mirrors;
    if mirrors.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let mount = |name: String, path: String| VolumeMount {
        name,
        mount_path: path,
        read_only: Some(true),
        ..VolumeMount::default()
    };
    let secret = |name: String, secret_name: &str, items: Vec<(&str, &str)>| Volume {
        name,
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret_name.to_owned()),
            default_mode: Some(0o440),
            items: Some(
                items
                    .into_iter()
                    .map(|(key, path)| KeyToPath {
                        key: key.to_owned(),
                        path: path.to_owned(),
                        mode: None,
                    })
                    .collect(),
            ),
            optional: Some(false),
        }),
        ..Volume::default()
    };
    let mut mounts = vec![mount("mirror".into(), MIRROR_DIR.into())];
    let mut volumes = vec![Volume {
        name: "mirror".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: names.mirror_config_map(),
            default_mode: Some(0o444),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    // Volume names are DNS labels of at most 63 characters and a prefix
    // may be 253: they are numbered by position instead (at most 32).
    for (i, m) in mirrors.iter().enumerate() {
        if let Some(name) = &m.credentials_secret {
            let volume = format!("mirror-{i}-credentials");
            mounts.push(mount(
                volume.clone(),
                secret_dir(&m.prefix, "credentials").display().to_string(),
            ));
            volumes.push(secret(
                volume,
                name,
                vec![(USERNAME_KEY, USERNAME_KEY), (PASSWORD_KEY, PASSWORD_KEY)],
            ));
        }
        if let Some(r) = &m.ca_secret {
            let volume = format!("mirror-{i}-ca");
            mounts.push(mount(
                volume.clone(),
                secret_dir(&m.prefix, "ca").display().to_string(),
            ));
            volumes.push(secret(volume, &r.name, vec![(r.key.as_str(), CA_FILE)]));
        }
    }
    (mounts, volumes)
}

/// `<prefix>/*` for each mirror: what nodes pull through a containerd
/// mirror entry, which never sends credentials.
pub fn anonymous_pull_patterns(registry: &Registry) -> Vec<String> {
    registry
        .spec
        .mirrors
        .iter()
        .map(|m| format!("{}/*", m.prefix))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::SecretKeyRef;
    use crate::fixtures;

    fn with_mirrors(mirrors: Vec<Mirror>) -> Registry {
        fixtures::registry_with(|s| s.mirrors = mirrors)
    }

    fn hub() -> Mirror {
        Mirror {
            prefix: "docker.io".into(),
            url: "https://registry-1.docker.io".into(),
            credentials_secret: Some("hub-login".into()),
            repositories: vec!["library/*".into()],
            tag_freshness: Some("1h30m".into()),
            ca_secret: None,
            max_age: Some("168h".into()),
            max_size: Some("20Gi".into()),
        }
    }

    fn private() -> Mirror {
        Mirror {
            prefix: "registry.corp.example".into(),
            url: "https://registry.corp.example:8443".into(),
            credentials_secret: None,
            repositories: Vec::new(),
            tag_freshness: None,
            ca_secret: Some(SecretKeyRef {
                name: "corp-ca".into(),
                key: "root.pem".into(),
            }),
            max_age: None,
            max_size: None,
        }
    }

    #[test]
    fn no_mirrors_means_no_config_no_args_and_no_volumes() {
        let r = fixtures::registry();
        assert_eq!(mirror_config(&r), None);
        assert!(args(None).is_empty());
        assert_eq!(volumes(&r, &fixtures::names()), (Vec::new(), Vec::new()));
        assert!(anonymous_pull_patterns(&r).is_empty());
    }

    #[test]
    fn a_mirror_becomes_an_upstream_pointing_at_its_mounted_secret_files() {
        let config = mirror_config(&with_mirrors(vec![hub(), private()])).expect("config");
        config.validate().expect("the registry accepts it");
        let u = &config.upstreams[0];
        assert_eq!(u.prefix, "docker.io");
        assert_eq!(u.url, "https://registry-1.docker.io");
        assert_eq!(
            u.username_file,
            Some(PathBuf::from(
                "/etc/berth/mirror-secrets/docker.io/credentials/username"
            ))
        );
        assert_eq!(
            u.password_file,
            Some(PathBuf::from(
                "/etc/berth/mirror-secrets/docker.io/credentials/password"
            ))
        );
        assert_eq!(u.repositories, vec!["library/*".to_owned()]);
        assert_eq!(u.tag_freshness_seconds, 5400);
        assert_eq!(u.ca_file, None);
        assert_eq!(u.max_age_seconds, Some(168 * 3600));
        assert_eq!(u.max_size_bytes, Some(20 << 30));
        let p = &config.upstreams[1];
        assert_eq!(p.max_age_seconds, None);
        assert_eq!(p.max_size_bytes, None);
        assert_eq!(p.username_file, None);
        assert_eq!(p.password_file, None);
        assert_eq!(p.tag_freshness_seconds, DEFAULT_TAG_FRESHNESS_SECONDS);
        assert_eq!(
            p.ca_file,
            Some(PathBuf::from(
                "/etc/berth/mirror-secrets/registry.corp.example/ca/ca.crt"
            ))
        );
    }

    #[test]
    fn a_zero_size_cap_reads_as_one_byte() {
        assert_eq!(quantity_bytes("0"), Some(1));
        assert_eq!(quantity_bytes("20Gi"), Some(20 << 30));
        assert_eq!(quantity_bytes("1 Gi"), None);
    }

    #[test]
    fn secrets_are_mounted_read_only_with_the_keys_the_config_names() {
        let r = with_mirrors(vec![hub(), private()]);
        let (mounts, vols) = volumes(&r, &fixtures::names());
        let paths: Vec<(&str, &str)> = mounts
            .iter()
            .map(|m| (m.name.as_str(), m.mount_path.as_str()))
            .collect();
        assert_eq!(
            paths,
            [
                ("mirror", "/etc/berth/mirror"),
                (
                    "mirror-0-credentials",
                    "/etc/berth/mirror-secrets/docker.io/credentials"
                ),
                (
                    "mirror-1-ca",
                    "/etc/berth/mirror-secrets/registry.corp.example/ca"
                ),
            ]
        );
        assert!(mounts.iter().all(|m| m.read_only == Some(true)));
        assert_eq!(
            vols[0].config_map.as_ref().map(|c| c.name.as_str()),
            Some("hub-mirror")
        );
        let items = |v: &Volume| -> (String, Vec<(String, String)>) {
            let s = v.secret.as_ref().expect("secret");
            (
                s.secret_name.clone().expect("name"),
                s.items
                    .iter()
                    .flatten()
                    .map(|i| (i.key.clone(), i.path.clone()))
                    .collect(),
            )
        };
        assert_eq!(
            items(&vols[1]),
            (
                "hub-login".into(),
                vec![
                    ("username".into(), "username".into()),
                    ("password".into(), "password".into())
                ]
            )
        );
        assert_eq!(
            items(&vols[2]),
            ("corp-ca".into(), vec![("root.pem".into(), "ca.crt".into())])
        );
        assert!(vols.iter().all(|v| v.name.len() <= 63));
    }

    #[test]
    fn the_config_map_holds_no_secret_and_reads_back() {
        let r = with_mirrors(vec![hub()]);
        let config = mirror_config(&r).expect("config");
        let cm = mirror_config_map(&r, &fixtures::names(), &config);
        assert_eq!(cm.metadata.name.as_deref(), Some("hub-mirror"));
        assert!(cm.metadata.owner_references.is_some());
        let text = &cm.data.expect("data")[CONFIG_FILE];
        let back: MirrorConfig = serde_json::from_str(text).expect("json");
        assert_eq!(back, config);
        assert!(
            !text.contains("hub-login"),
            "only file paths, not the Secret"
        );
    }

    #[test]
    fn the_hash_follows_the_config_and_the_args_name_the_file() {
        let one = mirror_config(&with_mirrors(vec![hub()])).expect("one");
        let mut fresher = hub();
        fresher.tag_freshness = Some("1m".into());
        let two = mirror_config(&with_mirrors(vec![fresher])).expect("two");
        assert_ne!(config_file::hash(&one), config_file::hash(&two));
        assert_eq!(config_file::hash(&one), config_file::hash(&one.clone()));
        assert_eq!(
            args(Some(&one)),
            ["--mirror-config", "/etc/berth/mirror/config.json"]
        );
    }

    #[test]
    fn tag_freshness_reads_durations_and_keeps_zero() {
        let mut m = hub();
        for (text, seconds) in [("5m", 300), ("0s", 0), ("2h", 7200), ("1500ms", 1)] {
            m.tag_freshness = Some(text.into());
            assert_eq!(tag_freshness_seconds(&m), seconds, "{text}");
        }
        m.tag_freshness = None;
        assert_eq!(tag_freshness_seconds(&m), DEFAULT_TAG_FRESHNESS_SECONDS);
    }

    #[test]
    fn every_prefix_is_pullable_anonymously_by_nodes() {
        let r = with_mirrors(vec![hub(), private()]);
        assert_eq!(
            anonymous_pull_patterns(&r),
            ["docker.io/*", "registry.corp.example/*"]
        );
    }
}
