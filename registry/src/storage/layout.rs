//! Where everything lives, as pure functions from validated names to keys.
//!
//! ```text
//! <root>/
//!   blobs/<alg>/<hex[..2]>/<hex>                      content, written once after verification
//!   repositories/<name>/                              <name> may have any number of components
//!     _layers/<alg>/<hex>                             link: the blob belongs to this repository
//!     _manifests/revisions/<alg>/<hex>                link: holds the manifest's media type
//!     _manifests/tags/<tag>                           holds the digest the tag points at
//!     _referrers/<alg>/<subject hex>/<alg>-<hex>      descriptor JSON of a manifest whose subject it is
//!     _uploads/<id>/data                              bytes received so far
//!     _uploads/<id>/startedat                         unix seconds the session began ("<secs> monolithic"
//!                                                     for a one-request push, which no client can resume)
//!   _probe/writable                                   rewritten every few seconds: can storage be written?
//!   _gc/last-run.json                                 the record of the newest GC run (any replica's)
//!   _gc/trash/<batch>/<key>                           quarantine: what GC took out of <key> (a blob or a
//!                                                     revision link), <batch> = unix millis it was moved
//! ```
//!
//! Repository name components start with `[a-z0-9]`, so the `_`-prefixed
//! directories can never collide with a nested repository. Blobs are shared
//! by all repositories (deduplicated); a repository sees only those linked
//! into it. Manifests are stored as blobs too.

use crate::oci::{Digest, Name, Tag};

pub const REPOSITORIES: &str = "repositories";

/// Directory names inside a repository that are not nested repositories.
pub fn is_reserved(component: &str) -> bool {
    component.starts_with('_')
}

pub fn blob(d: &Digest) -> String {
    format!(
        "blobs/{}/{}/{}",
        d.algorithm().as_str(),
        &d.hex()[..2],
        d.hex()
    )
}

pub fn repository(name: &Name) -> String {
    format!("{REPOSITORIES}/{name}")
}

pub fn layer_link(name: &Name, d: &Digest) -> String {
    format!(
        "{REPOSITORIES}/{name}/_layers/{}/{}",
        d.algorithm().as_str(),
        d.hex()
    )
}

pub fn manifest_revision(name: &Name, d: &Digest) -> String {
    format!(
        "{REPOSITORIES}/{name}/_manifests/revisions/{}/{}",
        d.algorithm().as_str(),
        d.hex()
    )
}

pub fn manifests_dir(name: &Name) -> String {
    format!("{REPOSITORIES}/{name}/_manifests")
}

pub fn tags_dir(name: &Name) -> String {
    format!("{REPOSITORIES}/{name}/_manifests/tags")
}

pub fn tag(name: &Name, tag: &Tag) -> String {
    format!("{}/{tag}", tags_dir(name))
}

pub fn referrers_dir(name: &Name, subject: &Digest) -> String {
    format!(
        "{REPOSITORIES}/{name}/_referrers/{}/{}",
        subject.algorithm().as_str(),
        subject.hex()
    )
}

pub fn referrer(name: &Name, subject: &Digest, manifest: &Digest) -> String {
    format!(
        "{}/{}-{}",
        referrers_dir(name, subject),
        manifest.algorithm().as_str(),
        manifest.hex()
    )
}

pub fn probe() -> &'static str {
    "_probe/writable"
}

/// The record of the newest GC run.
pub const GC_LAST_RUN: &str = "_gc/last-run.json";

/// Where GC's quarantine lives: one directory per batch.
pub const TRASH: &str = "_gc/trash";

/// A quarantine batch: `batch` is the unix time in milliseconds it began.
pub fn trash_batch(batch: u64) -> String {
    format!("{TRASH}/{batch}")
}

/// Where `key` goes in quarantine batch `batch` (the tree is mirrored, so
/// putting it back is one move).
pub fn trash(batch: u64, key: &str) -> String {
    format!("{TRASH}/{batch}/{key}")
}

pub fn revisions_dir(name: &Name, alg: &str) -> String {
    format!("{REPOSITORIES}/{name}/_manifests/revisions/{alg}")
}

pub fn layers_dir(name: &Name, alg: &str) -> String {
    format!("{REPOSITORIES}/{name}/_layers/{alg}")
}

pub fn upload_dir(name: &Name, id: &str) -> String {
    format!("{REPOSITORIES}/{name}/_uploads/{id}")
}

pub fn upload_data(name: &Name, id: &str) -> String {
    format!("{}/data", upload_dir(name, id))
}

pub fn upload_started(name: &Name, id: &str) -> String {
    format!("{}/startedat", upload_dir(name, id))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_drawn_tree() {
        let name: Name = "team/app".parse().unwrap();
        let d: Digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            .parse()
            .unwrap();
        assert_eq!(blob(&d), format!("blobs/sha256/e3/{}", d.hex()));
        assert_eq!(
            layer_link(&name, &d),
            format!("repositories/team/app/_layers/sha256/{}", d.hex())
        );
        assert_eq!(
            tag(&name, &"v1".parse().unwrap()),
            "repositories/team/app/_manifests/tags/v1"
        );
        assert_eq!(
            referrer(&name, &d, &d),
            format!(
                "repositories/team/app/_referrers/sha256/{0}/sha256-{0}",
                d.hex()
            )
        );
    }
}
