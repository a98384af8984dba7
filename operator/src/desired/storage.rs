//! How a registry pod reaches its storage: the `serve` arguments, the
//! environment, and the volume, for each backend of `spec.storage`.
//!
//! Filesystem storage is the data claim mounted at [`DATA_DIR`]: one
//! ReadWriteOnce volume, so one pod, replaced with `Recreate`. Object
//! storage keeps nothing in the pod: any number of replicas share the
//! bucket and roll one at a time; the credentials come from the user's
//! Secret as environment variables, never as arguments (which `ps` and the
//! pod spec show).

use k8s_openapi::api::core::v1::{
    EnvVar, EnvVarSource, PersistentVolumeClaimVolumeSource, SecretKeySelector, Volume, VolumeMount,
};

use crate::crd::{FilesystemStorage, Registry, S3Storage};
use crate::names::Names;

/// Where the filesystem backend's volume is mounted.
pub const DATA_DIR: &str = "/var/lib/registry";
/// The keys of `storage.s3.credentialsSecret`.
pub const ACCESS_KEY_ID: &str = "accessKeyId";
pub const SECRET_ACCESS_KEY: &str = "secretAccessKey";

/// The storage part of the registry pod.
#[derive(Debug, Default, PartialEq)]
pub struct Wiring {
    pub args: Vec<String>,
    pub env: Vec<EnvVar>,
    pub mounts: Vec<VolumeMount>,
    pub volumes: Vec<Volume>,
    /// Whether pods can share the storage (a rolling update is safe).
    pub shared: bool,
}

pub fn wiring(registry: &Registry, names: &Names) -> Wiring {
    match &registry.spec.storage.s3 {
        Some(s3) => object_storage(s3),
        None => {
            let fs = registry.spec.storage.filesystem.clone().unwrap_or_default();
            filesystem(&fs, names)
        }
    }
}

fn filesystem(fs: &FilesystemStorage, names: &Names) -> Wiring {
    Wiring {
        args: vec!["--data".into(), DATA_DIR.into()],
        env: Vec::new(),
        mounts: vec![VolumeMount {
            name: "data".into(),
            mount_path: DATA_DIR.into(),
            ..VolumeMount::default()
        }],
        volumes: vec![Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: names.data_claim(),
                read_only: None,
            }),
            ..Volume::default()
        }],
        shared: fs.access_mode.shared(),
    }
}

fn object_storage(s3: &S3Storage) -> Wiring {
    let mut args = vec![
        "--s3-bucket".to_owned(),
        s3.bucket.clone(),
        "--s3-region".to_owned(),
        s3.region.clone(),
    ];
    if let Some(endpoint) = &s3.endpoint {
        args.extend(["--s3-endpoint".to_owned(), endpoint.clone()]);
    }
    if let Some(prefix) = s3.prefix.as_ref().filter(|p| !p.is_empty()) {
        args.extend(["--s3-prefix".to_owned(), prefix.clone()]);
    }
    if let Some(valid) = &s3.redirect {
        args.extend(["--s3-redirect".to_owned(), valid.clone()]);
    }
    let from_secret = |name: &str, key: &str| EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: s3.credentials_secret.name.clone(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    };
    Wiring {
        args,
        env: vec![
            from_secret("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
            from_secret("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
        ],
        mounts: Vec::new(),
        volumes: Vec::new(),
        shared: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::SecretName;
    use crate::fixtures;

    fn on_s3(endpoint: Option<&str>) -> Registry {
        let mut r = fixtures::registry();
        r.spec.storage.filesystem = None;
        r.spec.storage.s3 = Some(S3Storage {
            bucket: "images".into(),
            region: "us-east-1".into(),
            endpoint: endpoint.map(str::to_owned),
            prefix: Some("team-a".into()),
            credentials_secret: SecretName {
                name: "s3-creds".into(),
            },
            redirect: None,
        });
        r
    }

    #[test]
    fn a_read_write_many_volume_is_shared_by_the_pods() {
        let r = fixtures::registry_with(|s| {
            if let Some(fs) = s.storage.filesystem.as_mut() {
                fs.access_mode = crate::crd::VolumeAccessMode::ReadWriteMany;
            }
        });
        let w = wiring(&r, &fixtures::names());
        assert!(w.shared);
        assert_eq!(w.args, ["--data", DATA_DIR]);
    }

    #[test]
    fn filesystem_storage_is_the_data_claim_for_one_pod() {
        let r = fixtures::registry();
        let w = wiring(&r, &fixtures::names());
        assert_eq!(w.args, ["--data", DATA_DIR]);
        assert!(!w.shared);
        assert_eq!(
            w.volumes[0]
                .persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.as_str()),
            Some("hub-data")
        );
    }

    #[test]
    fn a_redirect_window_becomes_the_registrys_flag() {
        let mut r = on_s3(None);
        if let Some(s3) = r.spec.storage.s3.as_mut() {
            s3.redirect = Some("20m".into());
        }
        let w = wiring(&r, &fixtures::names());
        assert!(
            w.args
                .ends_with(&["--s3-redirect".to_owned(), "20m".to_owned()])
        );
    }

    #[test]
    fn object_storage_passes_the_bucket_as_arguments_and_the_keys_from_the_secret() {
        let r = on_s3(Some("http://10.0.0.1:7070"));
        let w = wiring(&r, &fixtures::names());
        assert_eq!(
            w.args,
            [
                "--s3-bucket",
                "images",
                "--s3-region",
                "us-east-1",
                "--s3-endpoint",
                "http://10.0.0.1:7070",
                "--s3-prefix",
                "team-a"
            ]
        );
        assert!(w.shared && w.volumes.is_empty() && w.mounts.is_empty());
        let keys: Vec<_> = w
            .env
            .iter()
            .map(|e| {
                let s = e
                    .value_from
                    .as_ref()
                    .and_then(|v| v.secret_key_ref.as_ref())
                    .expect("from the secret");
                (e.name.as_str(), s.name.as_str(), s.key.as_str())
            })
            .collect();
        assert_eq!(
            keys,
            [
                ("AWS_ACCESS_KEY_ID", "s3-creds", ACCESS_KEY_ID),
                ("AWS_SECRET_ACCESS_KEY", "s3-creds", SECRET_ACCESS_KEY)
            ]
        );
        assert!(
            w.env.iter().all(|e| e.value.is_none()),
            "no key in the spec"
        );
    }
}
