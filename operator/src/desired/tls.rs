//! The Secrets of SelfSigned mode: the serving certificate
//! (`<name>-tls`, type kubernetes.io/tls, with `ca.crt` beside it so a
//! client can take the chain from one place) and the CA key pair
//! (`<name>-ca-key`), which only the operator reads.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use crate::crd::Registry;
use crate::desired::owner;
use crate::names::Names;
use crate::pki::KeyedCert;

pub const TLS_TYPE: &str = "kubernetes.io/tls";

/// The serving Secret the registry pod mounts.
pub fn serving_secret(
    registry: &Registry,
    names: &Names,
    serving: &KeyedCert,
    ca_bundle_pem: &str,
) -> Secret {
    tls_secret(
        registry,
        names,
        names.tls_secret(),
        serving,
        Some(ca_bundle_pem),
    )
}

/// Keys of the CA Secret that hold the CA being rotated out, while it still
/// signs the serving certificate (until every node trusts the new CA).
pub const PREVIOUS_CRT: &str = "previous.crt";
pub const PREVIOUS_KEY: &str = "previous.key";

/// The CA's certificate and private key, and during a rotation the
/// previous CA's.
pub fn ca_secret(
    registry: &Registry,
    names: &Names,
    ca: &KeyedCert,
    previous: Option<&KeyedCert>,
) -> Secret {
    let mut secret = tls_secret(registry, names, names.ca_secret(), ca, None);
    if let (Some(previous), Some(data)) = (previous, secret.data.as_mut()) {
        data.insert(
            PREVIOUS_CRT.to_owned(),
            ByteString(previous.cert_pem.clone().into_bytes()),
        );
        data.insert(
            PREVIOUS_KEY.to_owned(),
            ByteString(previous.key_pem.clone().into_bytes()),
        );
    }
    secret
}

/// The previous CA kept in a CA Secret during a rotation, if any.
pub fn previous_ca(secret: &Secret) -> Option<KeyedCert> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| {
        data.get(key)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    Some(KeyedCert {
        cert_pem: text(PREVIOUS_CRT)?,
        key_pem: text(PREVIOUS_KEY)?,
    })
}

fn tls_secret(
    registry: &Registry,
    names: &Names,
    name: String,
    pair: &KeyedCert,
    ca: Option<&str>,
) -> Secret {
    let mut data = BTreeMap::from([
        (
            "tls.crt".to_owned(),
            ByteString(pair.cert_pem.clone().into_bytes()),
        ),
        (
            "tls.key".to_owned(),
            ByteString(pair.key_pem.clone().into_bytes()),
        ),
    ]);
    if let Some(ca) = ca {
        data.insert("ca.crt".to_owned(), ByteString(ca.as_bytes().to_vec()));
    }
    Secret {
        metadata: owner::child_meta(registry, names, name, true),
        type_: Some(TLS_TYPE.to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

/// The certificate and key PEM stored in a kubernetes.io/tls Secret read
/// from the cluster, if both keys are there and are text.
pub fn keyed_cert(secret: &Secret) -> Option<KeyedCert> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| {
        data.get(key)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    Some(KeyedCert {
        cert_pem: text("tls.crt")?,
        key_pem: text("tls.key")?,
    })
}

/// `ca.crt` of a Secret, if present.
pub fn ca_of(secret: &Secret) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get("ca.crt")
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn pair(tag: &str) -> KeyedCert {
        KeyedCert {
            cert_pem: format!("CERT {tag}"),
            key_pem: format!("KEY {tag}"),
        }
    }

    #[test]
    fn the_serving_secret_is_kubernetes_tls_with_the_ca_beside_it() {
        let secret = serving_secret(
            &fixtures::registry(),
            &fixtures::names(),
            &pair("leaf"),
            "CA BUNDLE",
        );
        assert_eq!(secret.metadata.name.as_deref(), Some("hub-tls"));
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        let data = secret.data.clone().expect("data");
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            ["ca.crt", "tls.crt", "tls.key"]
        );
        assert_eq!(keyed_cert(&secret), Some(pair("leaf")));
        assert_eq!(ca_of(&secret).as_deref(), Some("CA BUNDLE"));
        assert!(secret.metadata.owner_references.is_some());
    }

    #[test]
    fn the_ca_secret_holds_the_ca_pair_only() {
        let secret = ca_secret(&fixtures::registry(), &fixtures::names(), &pair("ca"), None);
        assert_eq!(secret.metadata.name.as_deref(), Some("hub-ca-key"));
        assert_eq!(keyed_cert(&secret), Some(pair("ca")));
        assert_eq!(ca_of(&secret), None);
        assert_eq!(previous_ca(&secret), None);
    }

    #[test]
    fn during_a_rotation_the_ca_secret_keeps_the_previous_ca() {
        let secret = ca_secret(
            &fixtures::registry(),
            &fixtures::names(),
            &pair("new"),
            Some(&pair("old")),
        );
        assert_eq!(keyed_cert(&secret), Some(pair("new")));
        assert_eq!(previous_ca(&secret), Some(pair("old")));
    }
}
