//! The committed CRD copies must be exactly what the types generate.

use std::path::Path;

use berth_operator::crdgen::{CRD_PATHS, REGENERATE, crd_yaml};

#[test]
fn committed_crd_files_match_the_rust_types() {
    let expected = crd_yaml().expect("the CRD renders");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for path in CRD_PATHS {
        let committed = std::fs::read_to_string(root.join(path)).unwrap_or_default();
        assert!(
            committed == expected,
            "{path} is stale (or missing): the Registry types changed. Regenerate from the workspace root with:\n  {REGENERATE}"
        );
    }
}
