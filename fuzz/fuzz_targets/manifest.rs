//! Manifests and indexes: parse never panics, whatever the bytes and the
//! content type, and the descriptors of a parsed manifest can be walked.
#![no_main]

use berth_registry::oci::manifest::parse;
use libfuzzer_sys::fuzz_target;

const TYPES: [Option<&str>; 5] = [
    None,
    Some("application/vnd.oci.image.manifest.v1+json"),
    Some("application/vnd.oci.image.index.v1+json"),
    Some("application/vnd.docker.distribution.manifest.v2+json"),
    Some("application/vnd.docker.distribution.manifest.list.v2+json"),
];

fuzz_target!(|data: &[u8]| {
    let Some((first, body)) = data.split_first() else { return };
    let content_type = TYPES[usize::from(*first) % TYPES.len()];
    if let Ok(m) = parse(body, content_type) {
        let _ = m.required_blobs().count();
        let _ = m.required_manifests().count();
        let _ = m.effective_artifact_type();
    }
});
