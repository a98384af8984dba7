//! Installs berth's image credential provider on the node (chart value
//! `credentialProvider.enabled`): the agent's own executable, copied into
//! the kubelet's `--image-credential-provider-bin-dir` as
//! [`PLUGIN_NAME`], and optionally the `CredentialProviderConfig` naming it.
//!
//! The operator image holds one static binary, which is also the plugin
//! (`berth-operator credential-provider`), so what runs on the host is
//! always the version the chart deployed. The kubelet's flags stay the
//! cluster admin's job: the kubelet reads its config only when it starts,
//! and refuses to start when a configured plugin is missing.
//!
//! Both files are written like the trust files ([`super::writer`]): only
//! when the content differs, to a temporary name in the same directory,
//! synced, then renamed over the target, so the kubelet never runs half a
//! binary; a symlink where a file should be is refused.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Component, Path, PathBuf};

pub use crate::credential_provider::PLUGIN_NAME;
use crate::credential_provider::{KubeletConfig, kubelet_config};

/// What to install, with every path both as the host sees it (for
/// messages) and as the agent opens it (through `--host-root`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginInstall {
    /// The executable to copy: the agent's own (`/proc/self/exe`).
    pub source: PathBuf,
    pub bin_dir: HostPath,
    /// Where to write the kubelet's `CredentialProviderConfig`; `None`:
    /// the admin writes it.
    pub config: Option<(HostPath, KubeletConfig)>,
}

/// A path on the host, and the same file as the agent opens it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPath {
    pub host: PathBuf,
    pub local: PathBuf,
}

impl HostPath {
    /// `host` seen through `host_root`; refuses relative paths and `..`.
    pub fn new(host: &Path, host_root: &Path, what: &str) -> crate::Result<Self> {
        if !host.is_absolute() || host.components().any(|c| c == Component::ParentDir) {
            return Err(crate::Error::Host(format!(
                "the {what} {} must be an absolute path without '..'",
                host.display()
            )));
        }
        let relative: PathBuf = host
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        Ok(Self {
            host: host.to_path_buf(),
            local: host_root.join(relative),
        })
    }

    fn shown(&self) -> String {
        self.host.display().to_string()
    }
}

/// Size, modification time and inode of a file: when the installed plugin
/// still has the stamp it had after the last check, it was not touched, and
/// the agent does not read both binaries again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: (i64, i64),
    ino: u64,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Self {
        Self {
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ino: meta.ino(),
        }
    }
}

/// What one pass changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Installed {
    pub binary_written: bool,
    pub config_written: bool,
}

/// Keeps the plugin installed; remembers what it last checked.
#[derive(Debug)]
pub struct Installer {
    install: PluginInstall,
    checked: Option<(Stamp, Stamp)>,
}

impl Installer {
    pub fn new(install: PluginInstall) -> Self {
        Self {
            install,
            checked: None,
        }
    }

    pub fn install(&self) -> &PluginInstall {
        &self.install
    }

    /// Make the bin dir hold the plugin and, if asked, the config file hold
    /// berth's provider. Errors name the host path and what to do.
    pub fn sync(&mut self) -> crate::Result<Installed> {
        let binary_written = self.sync_binary()?;
        let config_written = match &self.install.config {
            Some((path, config)) => sync_config(path, config)?,
            None => false,
        };
        Ok(Installed {
            binary_written,
            config_written,
        })
    }

    fn sync_binary(&mut self) -> crate::Result<bool> {
        let source = &self.install.source;
        let source_meta = fs::metadata(source).map_err(|e| {
            crate::Error::Host(format!(
                "cannot read this agent's executable {}: {e}",
                source.display()
            ))
        })?;
        let dir = &self.install.bin_dir;
        ensure_dir(dir)?;
        let target = dir.local.join(PLUGIN_NAME);
        let shown = format!("{}/{PLUGIN_NAME}", dir.shown());
        let target_meta = match fs::symlink_metadata(&target) {
            Ok(meta) if meta.file_type().is_symlink() || !meta.is_file() => {
                return Err(crate::Error::Host(format!(
                    "{shown} exists and is not a plain file; remove it so the agent can install the plugin"
                )));
            }
            Ok(meta) => Some(meta),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(crate::Error::Host(format!("cannot inspect {shown}: {e}"))),
        };
        let stamps = target_meta
            .as_ref()
            .map(|t| (Stamp::of(&source_meta), Stamp::of(t)));
        if stamps.is_some() && stamps == self.checked {
            return Ok(false);
        }
        let same = match &target_meta {
            Some(meta) if meta.len() == source_meta.len() && meta.mode() & 0o111 != 0 => {
                same_content(source, &target)
                    .map_err(|e| crate::Error::Host(format!("cannot compare {shown}: {e}")))?
            }
            _ => false,
        };
        if !same {
            let mut from = File::open(source).map_err(|e| {
                crate::Error::Host(format!(
                    "cannot read this agent's executable {}: {e}",
                    source.display()
                ))
            })?;
            replace(&dir.local, PLUGIN_NAME, 0o755, |file| {
                io::copy(&mut from, file).map(|_| ())
            })
            .map_err(|e| crate::Error::Host(format!("cannot write {shown}: {e}")))?;
        }
        let target_meta = fs::metadata(&target)
            .map_err(|e| crate::Error::Host(format!("cannot inspect {shown}: {e}")))?;
        self.checked = Some((Stamp::of(&source_meta), Stamp::of(&target_meta)));
        Ok(!same)
    }
}

fn ensure_dir(dir: &HostPath) -> crate::Result<()> {
    match fs::symlink_metadata(&dir.local) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(crate::Error::Host(format!(
            "{} is not a directory; point credentialProvider.binDir at the kubelet's --image-credential-provider-bin-dir",
            dir.shown()
        ))),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(crate::Error::Host(format!(
            "{} does not exist in the agent's view; the chart mounts credentialProvider.binDir there",
            dir.shown()
        ))),
        Err(e) => Err(crate::Error::Host(format!(
            "cannot inspect {}: {e}",
            dir.shown()
        ))),
    }
}

fn sync_config(path: &HostPath, config: &KubeletConfig) -> crate::Result<bool> {
    let mut wanted = serde_json::to_vec_pretty(&kubelet_config(config))
        .map_err(|e| crate::Error::Host(format!("rendering the kubelet config: {e}")))?;
    wanted.push(b'\n');
    let shown = path.shown();
    match fs::symlink_metadata(&path.local) {
        Ok(meta) if !meta.is_file() => {
            return Err(crate::Error::Host(format!(
                "{shown} exists and is not a plain file; left alone"
            )));
        }
        Ok(_) => {
            if fs::read(&path.local).is_ok_and(|have| have == wanted) {
                return Ok(false);
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(crate::Error::Host(format!("cannot inspect {shown}: {e}"))),
    }
    let (Some(dir), Some(name)) = (path.local.parent(), path.local.file_name()) else {
        return Err(crate::Error::Host(format!("{shown} names no file")));
    };
    let name = name.to_string_lossy().into_owned();
    replace(dir, &name, 0o644, |file| file.write_all(&wanted))
        .map_err(|e| crate::Error::Host(format!("cannot write {shown}: {e}")))?;
    Ok(true)
}

/// Write `dir/name` through a temporary file in `dir`: fill, sync, rename,
/// sync the directory.
fn replace(
    dir: &Path,
    name: &str,
    mode: u32,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.berth-tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        fill(&mut file)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, dir.join(name))?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn same_content(a: &Path, b: &Path) -> io::Result<bool> {
    let (mut a, mut b) = (File::open(a)?, File::open(b)?);
    let (mut buf_a, mut buf_b) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = read_full(&mut a, &mut buf_a)?;
        let m = read_full(&mut b, &mut buf_b)?;
        if buf_a[..n] != buf_b[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::credential_provider::default_match_images;

    struct Node {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        source: PathBuf,
    }

    /// A "host" seen through `<tmp>/root`, and an executable to install.
    fn node() -> Node {
        let tmp = tempfile::tempdir().expect("ok");
        let root = tmp.path().join("root");
        fs::create_dir_all(root.join("usr/libexec/cp")).expect("ok");
        fs::create_dir_all(root.join("etc/kubernetes")).expect("ok");
        let source = tmp.path().join("berth-operator");
        fs::write(&source, b"\x7fELF version one").expect("ok");
        Node {
            root,
            source,
            _tmp: tmp,
        }
    }

    fn installer(node: &Node, with_config: bool) -> Installer {
        let bin_dir =
            HostPath::new(Path::new("/usr/libexec/cp"), &node.root, "bin dir").expect("ok");
        let config = with_config.then(|| {
            (
                HostPath::new(
                    Path::new("/etc/kubernetes/berth-credential-provider.json"),
                    &node.root,
                    "config",
                )
                .expect("ok"),
                KubeletConfig {
                    match_images: default_match_images("cluster.local"),
                    log_path: None,
                },
            )
        });
        Installer::new(PluginInstall {
            source: node.source.clone(),
            bin_dir,
            config,
        })
    }

    fn plugin(node: &Node) -> PathBuf {
        node.root.join("usr/libexec/cp").join(PLUGIN_NAME)
    }

    #[test]
    fn the_agents_executable_is_installed_as_the_plugin() {
        let node = node();
        let mut installer = installer(&node, false);
        let done = installer.sync().expect("ok");
        assert!(done.binary_written && !done.config_written);
        assert_eq!(fs::read(plugin(&node)).expect("ok"), b"\x7fELF version one");
        let mode = fs::metadata(plugin(&node))
            .expect("ok")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        // No temporary file is left behind.
        assert_eq!(
            fs::read_dir(node.root.join("usr/libexec/cp"))
                .expect("ok")
                .count(),
            1
        );
    }

    #[test]
    fn an_unchanged_plugin_is_not_rewritten() {
        let node = node();
        let mut first = installer(&node, true);
        first.sync().expect("ok");
        let ino = fs::metadata(plugin(&node)).expect("ok").ino();
        assert_eq!(first.sync().expect("ok"), Installed::default());
        // A fresh agent (no memory) compares contents and leaves it too.
        let mut restarted = installer(&node, true);
        assert_eq!(restarted.sync().expect("ok"), Installed::default());
        assert_eq!(fs::metadata(plugin(&node)).expect("ok").ino(), ino);
    }

    #[test]
    fn a_changed_or_damaged_plugin_is_replaced() {
        let node = node();
        let mut installer = installer(&node, false);
        installer.sync().expect("ok");
        fs::write(&node.source, b"\x7fELF version two").expect("ok");
        assert!(installer.sync().expect("ok").binary_written);
        assert_eq!(fs::read(plugin(&node)).expect("ok"), b"\x7fELF version two");
        // Same length, other bytes, written on the host by someone else.
        fs::write(plugin(&node), b"\x7fELF version 2!!").expect("ok");
        assert!(installer.sync().expect("ok").binary_written);
        assert_eq!(fs::read(plugin(&node)).expect("ok"), b"\x7fELF version two");
        // A placeholder of another size (what e2e/cluster installs first).
        fs::write(plugin(&node), b"#!/bin/sh\n").expect("ok");
        assert!(installer.sync().expect("ok").binary_written);
        assert_eq!(fs::read(plugin(&node)).expect("ok"), b"\x7fELF version two");
    }

    #[test]
    fn a_symlink_in_place_of_the_plugin_is_refused() {
        let node = node();
        std::os::unix::fs::symlink("/bin/sh", plugin(&node)).expect("ok");
        let error = installer(&node, false)
            .sync()
            .expect_err("refused")
            .to_string();
        assert!(
            error.contains("/usr/libexec/cp/berth-credential-provider"),
            "{error}"
        );
        assert_eq!(
            fs::read_link(plugin(&node)).expect("ok"),
            Path::new("/bin/sh")
        );
    }

    #[test]
    fn a_missing_bin_dir_says_what_to_mount() {
        let node = node();
        fs::remove_dir(node.root.join("usr/libexec/cp")).expect("ok");
        let error = installer(&node, false)
            .sync()
            .expect_err("refused")
            .to_string();
        assert!(error.contains("credentialProvider.binDir"), "{error}");
    }

    #[test]
    fn the_config_file_holds_berths_provider_and_is_written_once() {
        let node = node();
        let mut installer = installer(&node, true);
        assert!(installer.sync().expect("ok").config_written);
        let path = node
            .root
            .join("etc/kubernetes/berth-credential-provider.json");
        let written: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).expect("ok")).expect("ok");
        assert_eq!(written["providers"][0]["name"], PLUGIN_NAME);
        assert!(!installer.sync().expect("ok").config_written);
        fs::write(&path, b"{}").expect("ok");
        assert!(installer.sync().expect("ok").config_written);
    }

    #[test]
    fn host_paths_must_be_absolute_and_plain() {
        let root = Path::new("/host");
        assert_eq!(
            HostPath::new(Path::new("/a/b"), root, "x")
                .expect("ok")
                .local,
            Path::new("/host/a/b")
        );
        assert!(HostPath::new(Path::new("a/b"), root, "x").is_err());
        assert!(HostPath::new(Path::new("/a/../b"), root, "x").is_err());
    }
}
