//! Storage quotas: `spec.quotas` as the registry's quota config file
//! (`berth_access::quota::QuotaConfig`, limits in bytes) in the ConfigMap
//! `<name>-quota`, mounted into the pod. The registry re-reads the file
//! when it changes, so a changed limit applies without restarting pods
//! (once the kubelet updates the mounted ConfigMap, within a minute or
//! two): the pod template carries no hash of it.

use berth_access::quota::QuotaConfig;
use k8s_openapi::api::core::v1::{ConfigMap, ConfigMapVolumeSource, Volume, VolumeMount};

use crate::crd::{Quotas, Registry};
use crate::desired::config_file;
use crate::names::Names;

/// Where the pod finds the config file.
pub const QUOTA_DIR: &str = "/etc/berth/quota";
pub const CONFIG_FILE: &str = "quotas.json";

/// The config file for `registry`, or `None` without `spec.quotas` (the
/// registry then runs without `--quota-config`). A limit that does not
/// parse (the CRD refuses it first) is left out.
pub fn quota_config(registry: &Registry) -> Option<QuotaConfig> {
    let Quotas {
        default,
        namespaces,
    } = registry.spec.quotas.as_ref()?;
    let parsed = |q: &str| {
        let b = crate::quantity::bytes(q);
        if b.is_none() {
            tracing::warn!(
                quantity = q,
                "a spec.quotas limit is not a quantity; left out"
            );
        }
        b
    };
    Some(QuotaConfig {
        default_bytes: default.as_deref().and_then(parsed),
        namespaces: namespaces
            .iter()
            .filter_map(|(ns, q)| Some((ns.clone(), parsed(q)?)))
            .collect(),
    })
}

/// The ConfigMap `<name>-quota` holding [`CONFIG_FILE`].
pub fn quota_config_map(registry: &Registry, names: &Names, config: &QuotaConfig) -> ConfigMap {
    config_file::config_map(
        registry,
        names,
        names.quota_config_map(),
        CONFIG_FILE,
        config,
    )
}

/// `--quota-config <file>` when there is a config.
pub fn args(config: Option<&QuotaConfig>) -> Vec<String> {
    config.map_or_else(Vec::new, |_| {
        vec![
            "--quota-config".to_owned(),
            format!("{QUOTA_DIR}/{CONFIG_FILE}"),
        ]
    })
}

/// The ConfigMap, read-only, with quotas; nothing without.
pub fn volumes(registry: &Registry, names: &Names) -> (Vec<VolumeMount>, Vec<Volume>) {
    if registry.spec.quotas.is_none() {
        return (Vec::new(), Vec::new());
    }
    (
        vec![VolumeMount {
            name: "quota".into(),
            mount_path: QUOTA_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }],
        vec![Volume {
            name: "quota".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names.quota_config_map(),
                default_mode: Some(0o444),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        }],
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures;
    use std::collections::BTreeMap;

    #[test]
    fn spec_quotas_become_the_registry_config_file_with_its_flag_and_volume() {
        let r = fixtures::registry_with(|s| {
            s.gc.interval = Some("6h".into());
            s.quotas = Some(Quotas {
                default: Some("10Gi".into()),
                namespaces: BTreeMap::from([
                    ("team-a".into(), "50Gi".into()),
                    ("frozen".into(), "0".into()),
                ]),
            });
        });
        let config = quota_config(&r).unwrap();
        assert_eq!(config.default_bytes, Some(10 << 30));
        assert_eq!(config.limit("team-a"), Some(50 << 30));
        assert_eq!(config.limit("frozen"), Some(0));
        assert_eq!(config.limit("other"), Some(10 << 30));
        let cm = quota_config_map(&r, &fixtures::names(), &config);
        assert_eq!(cm.metadata.name.as_deref(), Some("hub-quota"));
        let back: QuotaConfig = serde_json::from_str(&cm.data.unwrap()[CONFIG_FILE]).unwrap();
        assert_eq!(back, config);
        assert_eq!(
            args(Some(&config)),
            ["--quota-config", "/etc/berth/quota/quotas.json"]
        );
        let (mounts, volumes) = volumes(&r, &fixtures::names());
        assert_eq!(mounts[0].mount_path, QUOTA_DIR);
        assert_eq!(volumes[0].config_map.as_ref().unwrap().name, "hub-quota");
    }

    #[test]
    fn without_quotas_nothing_is_passed() {
        let r = fixtures::registry();
        assert!(quota_config(&r).is_none());
        assert!(args(None).is_empty());
        assert!(volumes(&r, &fixtures::names()).0.is_empty());
    }
}
