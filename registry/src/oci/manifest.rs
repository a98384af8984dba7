//! Manifests: which media types the registry accepts, and what a manifest
//! references (so a push that points at missing content can be refused).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Every manifest media type the registry stores.
pub const MEDIA_TYPES: [&str; 4] = [
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

/// The largest manifest accepted: the spec asks registries to take at least 4 MiB.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// Layers that by definition are not pushed to the registry.
const NON_DISTRIBUTABLE: [&str; 3] = [
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
];
const DOCKER_FOREIGN: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// An OCI descriptor, with the fields the registry reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing)]
    pub data: Option<String>,
}

impl Descriptor {
    /// True for content that lives outside the registry (foreign layers):
    /// a manifest may reference it without it having been pushed.
    pub fn is_external(&self) -> bool {
        NON_DISTRIBUTABLE.contains(&self.media_type.as_str())
            || self.media_type == DOCKER_FOREIGN
            || !self.urls.is_empty()
    }
}

/// Whether a manifest points at blobs (an image) or at other manifests (an index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Image,
    Index,
}

/// A parsed, validated manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub media_type: String,
    pub kind: Kind,
    pub config: Option<Descriptor>,
    pub layers: Vec<Descriptor>,
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    pub artifact_type: Option<String>,
    pub annotations: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    NotJson(String),
    #[error("manifest media type {0:?} is not supported; push one of: {list}", list = MEDIA_TYPES.join(", "))]
    UnsupportedMediaType(String),
    #[error("manifest mediaType field {field:?} does not match the Content-Type header {header:?}")]
    MediaTypeMismatch { field: String, header: String },
    #[error("manifest schemaVersion must be 2")]
    SchemaVersion,
    #[error("manifest is invalid: {0}")]
    Invalid(String),
    #[error("descriptor {digest} has a data field that does not match its digest and size")]
    DataMismatch { digest: String },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<i64>,
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    artifact_type: Option<String>,
    annotations: Option<Map<String, Value>>,
}

/// Parses and validates a manifest body sent with `content_type`.
///
/// The media type is the body's `mediaType` field when present (it must then
/// agree with a manifest Content-Type), else the Content-Type header.
pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Manifest, ManifestError> {
    let raw: Raw = serde_json::from_slice(body).map_err(|e| classify_json_error(body, e))?;
    let header = content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_owned());
    let header_is_manifest = header.as_deref().is_some_and(|h| MEDIA_TYPES.contains(&h));
    let media_type = match (&raw.media_type, &header) {
        (Some(field), Some(h)) if header_is_manifest && field != h => {
            return Err(ManifestError::MediaTypeMismatch {
                field: field.clone(),
                header: h.clone(),
            });
        }
        (Some(field), _) => field.clone(),
        (None, Some(h)) if header_is_manifest => h.clone(),
        (None, Some(h)) if !h.is_empty() => {
            return Err(ManifestError::UnsupportedMediaType(h.clone()));
        }
        (None, _) => {
            return Err(ManifestError::Invalid(
                "no mediaType field and no manifest Content-Type header".into(),
            ));
        }
    };
    let kind = match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => Kind::Image,
        OCI_INDEX | DOCKER_MANIFEST_LIST => Kind::Index,
        _ => return Err(ManifestError::UnsupportedMediaType(media_type)),
    };
    if raw.schema_version != Some(2) {
        return Err(ManifestError::SchemaVersion);
    }
    match kind {
        Kind::Image if raw.config.is_none() => {
            return Err(ManifestError::Invalid(
                "an image manifest needs a config descriptor".into(),
            ));
        }
        Kind::Image if raw.layers.is_none() && media_type == DOCKER_MANIFEST => {
            return Err(ManifestError::Invalid(
                "a Docker image manifest needs a layers array".into(),
            ));
        }
        Kind::Index if raw.manifests.is_none() => {
            return Err(ManifestError::Invalid(
                "an index needs a manifests array".into(),
            ));
        }
        _ => {}
    }
    let manifest = Manifest {
        media_type,
        kind,
        config: raw.config,
        layers: raw.layers.unwrap_or_default(),
        manifests: raw.manifests.unwrap_or_default(),
        subject: raw.subject,
        artifact_type: raw.artifact_type,
        annotations: raw.annotations,
    };
    for d in manifest.descriptors() {
        check_data_field(d)?;
    }
    Ok(manifest)
}

/// Distinguishes "not JSON at all" from "JSON of the wrong shape".
fn classify_json_error(body: &[u8], e: serde_json::Error) -> ManifestError {
    if serde_json::from_slice::<Value>(body).is_ok() {
        ManifestError::Invalid(e.to_string())
    } else {
        ManifestError::NotJson(e.to_string())
    }
}

/// A descriptor's embedded `data` must be exactly the bytes it describes.
fn check_data_field(d: &Descriptor) -> Result<(), ManifestError> {
    use base64::Engine as _;
    let Some(data) = &d.data else { return Ok(()) };
    let mismatch = || ManifestError::DataMismatch {
        digest: d.digest.to_string(),
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| mismatch())?;
    if bytes.len() as u64 != d.size || d.digest.algorithm().digest(&bytes) != d.digest {
        return Err(mismatch());
    }
    Ok(())
}

impl Manifest {
    fn descriptors(&self) -> impl Iterator<Item = &Descriptor> {
        self.config
            .iter()
            .chain(&self.layers)
            .chain(&self.manifests)
            .chain(&self.subject)
    }

    /// Blobs that must already be in the repository for this push to be accepted.
    pub fn required_blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config
            .iter()
            .chain(self.layers.iter().filter(|d| !d.is_external()))
    }

    /// Manifests (of an index) that must already be in the repository.
    pub fn required_manifests(&self) -> impl Iterator<Item = &Descriptor> {
        self.manifests.iter()
    }

    /// The artifact type shown in a referrers listing: the manifest's own
    /// `artifactType`, else (for an image) its config's media type.
    pub fn effective_artifact_type(&self) -> Option<String> {
        self.artifact_type.clone().or_else(|| match self.kind {
            Kind::Image => self.config.as_ref().map(|c| c.media_type.clone()),
            Kind::Index => None,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const CFG: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
    const LAYER: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{CFG}","size":2}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{LAYER}","size":0}}]{extra}}}"#
        )
    }

    #[test]
    fn parses_an_image_and_lists_what_it_needs() {
        let m = parse(image("").as_bytes(), Some(OCI_MANIFEST)).unwrap();
        assert_eq!(m.kind, Kind::Image);
        let needed: Vec<String> = m.required_blobs().map(|d| d.digest.to_string()).collect();
        assert_eq!(needed, [CFG, LAYER]);
        assert_eq!(
            m.effective_artifact_type().as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }

    #[test]
    fn foreign_layers_are_not_required() {
        let body = image("").replace(
            "application/vnd.oci.image.layer.v1.tar\"",
            "application/vnd.oci.image.layer.nondistributable.v1.tar\"",
        );
        let m = parse(body.as_bytes(), None).unwrap();
        assert_eq!(m.required_blobs().count(), 1);
    }

    #[test]
    fn refuses_non_json_and_wrong_shapes() {
        assert!(matches!(
            parse(b"not json", Some(OCI_MANIFEST)),
            Err(ManifestError::NotJson(_))
        ));
        assert!(matches!(
            parse(b"[]", Some(OCI_MANIFEST)),
            Err(ManifestError::Invalid(_))
        ));
        let no_config =
            format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","layers":[]}}"#);
        assert!(matches!(
            parse(no_config.as_bytes(), None),
            Err(ManifestError::Invalid(_))
        ));
        let v1 = image("").replace("\"schemaVersion\":2", "\"schemaVersion\":1");
        assert_eq!(
            parse(v1.as_bytes(), None).unwrap_err(),
            ManifestError::SchemaVersion
        );
    }

    #[test]
    fn refuses_unknown_and_mismatched_media_types() {
        let body = image("");
        assert!(matches!(
            parse(body.as_bytes(), Some(OCI_INDEX)),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
        let odd = body.replace(OCI_MANIFEST, "application/vnd.example+json");
        assert!(matches!(
            parse(odd.as_bytes(), None),
            Err(ManifestError::UnsupportedMediaType(_))
        ));
        let untyped = body.replace(&format!(r#""mediaType":"{OCI_MANIFEST}","#), "");
        assert!(parse(untyped.as_bytes(), Some(OCI_MANIFEST)).is_ok());
        assert!(matches!(
            parse(untyped.as_bytes(), Some("text/plain")),
            Err(ManifestError::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn refuses_a_bad_digest_in_a_descriptor() {
        let body = image("").replace(LAYER, "sha256:nothex");
        assert!(matches!(
            parse(body.as_bytes(), None),
            Err(ManifestError::Invalid(_))
        ));
    }

    #[test]
    fn checks_embedded_data_against_its_digest() {
        // "{}" is the config's content; its base64 is "e30=".
        let good = image("").replace(r#""size":2}"#, r#""size":2,"data":"e30="}"#);
        assert!(parse(good.as_bytes(), None).is_ok());
        let bad = image("").replace(r#""size":2}"#, r#""size":2,"data":"e31="}"#);
        assert!(matches!(
            parse(bad.as_bytes(), None),
            Err(ManifestError::DataMismatch { .. })
        ));
    }

    #[test]
    fn reads_subject_and_artifact_type() {
        let body = image(&format!(
            r#","artifactType":"application/x.sig","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{LAYER}","size":7}}"#
        ));
        let m = parse(body.as_bytes(), None).unwrap();
        assert_eq!(m.subject.as_ref().unwrap().digest.to_string(), LAYER);
        assert_eq!(
            m.effective_artifact_type().as_deref(),
            Some("application/x.sig")
        );
    }
}
