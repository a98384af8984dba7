//! Noticing that a mounted file changed, cheaply: its modification time,
//! size and inode. A Kubernetes Secret volume swaps a symlink, which changes
//! all three of the file it resolves to.

use std::path::Path;
use std::time::SystemTime;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp(Option<(SystemTime, u64, u64)>);

impl Stamp {
    /// The stamp of `path` now (following symlinks); a missing file has
    /// its own stamp, so its return is noticed too.
    pub fn of(path: &Path) -> Stamp {
        use std::os::unix::fs::MetadataExt as _;
        Stamp(std::fs::metadata(path).ok().map(|m| {
            (
                m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                m.len(),
                m.ino(),
            )
        }))
    }

    /// The stamps of several files, as one.
    pub fn of_all(paths: &[&Path]) -> Vec<Stamp> {
        paths.iter().map(|p| Stamp::of(p)).collect()
    }
}
