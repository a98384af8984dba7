//! A JSON config file the operator writes for the registry (auth, mirrors,
//! notifications): a ConfigMap holding it, mounted into the pod, and its
//! hash on the pod template, because the registry reads these files once at
//! start and a changed config must roll the pods.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::crd::Registry;
use crate::desired::owner;
use crate::names::Names;

/// The file's bytes: pretty JSON (plain types cannot fail to serialise,
/// and an empty object would be refused loudly at the registry's start).
pub fn json<T: Serialize>(config: &T) -> String {
    serde_json::to_string_pretty(config).unwrap_or_else(|_| "{}".to_owned())
}

/// The ConfigMap `name` holding `config` as `file`.
pub fn config_map<T: Serialize>(
    registry: &Registry,
    names: &Names,
    name: String,
    file: &str,
    config: &T,
) -> ConfigMap {
    ConfigMap {
        metadata: owner::child_meta(registry, names, name, true),
        data: Some(BTreeMap::from([(file.to_owned(), json(config))])),
        ..ConfigMap::default()
    }
}

/// `sha256:<hex>` of the file, for the pod template's annotation.
pub fn hash<T: Serialize>(config: &T) -> String {
    let digest = Sha256::digest(json(config).as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}
