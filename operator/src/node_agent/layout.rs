//! Where the trust directories are, as the host sees them and as the agent
//! (in its container) sees them.
//!
//! The DaemonSet mounts each host directory at the same path under a prefix
//! (`--host-root`, `/host` in the chart): files are written through
//! `<host-root>/<host path>`, while `hosts.toml`'s `ca = ...` line names the
//! host path, which is what the host's containerd opens.

use std::path::{Component, Path, PathBuf};

/// A container runtime whose per-registry trust the agent writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Runtime {
    /// `<certs.d>/<host>/hosts.toml` + `ca.crt` (containerd `config_path`).
    Containerd,
    /// `<certs.d>/<host>/ca.crt` (dockerd, and podman/cri-o which read the
    /// same layout under `/etc/containers/certs.d`).
    Docker,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Containerd => "containerd",
            Self::Docker => "docker",
        }
    }
}

/// One runtime's certs directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Base {
    pub runtime: Runtime,
    /// The path on the host, e.g. `/etc/containerd/certs.d`.
    pub host_dir: PathBuf,
    /// The same directory as the agent opens it, e.g.
    /// `/host/etc/containerd/certs.d`.
    pub local_dir: PathBuf,
}

impl Base {
    /// `host_dir` seen through `host_root` (`/` when the agent runs on the
    /// host itself).
    pub fn new(runtime: Runtime, host_dir: &Path, host_root: &Path) -> crate::Result<Self> {
        if !host_dir.is_absolute() {
            return Err(crate::Error::Host(format!(
                "the {} certs directory {} is not an absolute path",
                runtime.as_str(),
                host_dir.display()
            )));
        }
        if host_dir
            .components()
            .any(|c| matches!(c, Component::ParentDir))
        {
            return Err(crate::Error::Host(format!(
                "the {} certs directory {} contains '..'",
                runtime.as_str(),
                host_dir.display()
            )));
        }
        let relative: PathBuf = host_dir
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        Ok(Self {
            runtime,
            host_dir: host_dir.to_owned(),
            local_dir: host_root.join(relative),
        })
    }
}

/// The runtimes configured on this node (either may be switched off).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    pub bases: Vec<Base>,
}

impl Layout {
    /// From the agent's flags: an empty directory switches that runtime off.
    pub fn new(containerd: &str, docker: &str, host_root: &Path) -> crate::Result<Self> {
        let mut bases = Vec::new();
        for (runtime, dir) in [(Runtime::Containerd, containerd), (Runtime::Docker, docker)] {
            if !dir.is_empty() {
                bases.push(Base::new(runtime, Path::new(dir), host_root)?);
            }
        }
        Ok(Self { bases })
    }

    pub fn base(&self, runtime: Runtime) -> Option<&Base> {
        self.bases.iter().find(|b| b.runtime == runtime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_are_seen_through_the_host_root() {
        let layout = Layout::new(
            "/etc/containerd/certs.d",
            "/etc/docker/certs.d",
            Path::new("/host"),
        )
        .expect("layout");
        let containerd = layout.base(Runtime::Containerd).expect("containerd");
        assert_eq!(containerd.host_dir, Path::new("/etc/containerd/certs.d"));
        assert_eq!(
            containerd.local_dir,
            Path::new("/host/etc/containerd/certs.d")
        );
        let on_host =
            Layout::new("/var/lib/rancher/k3s/certs.d", "", Path::new("/")).expect("layout");
        assert_eq!(on_host.bases.len(), 1);
        assert_eq!(
            on_host.bases[0].local_dir,
            Path::new("/var/lib/rancher/k3s/certs.d")
        );
    }

    #[test]
    fn relative_or_climbing_base_paths_are_refused() {
        assert!(Layout::new("etc/containerd", "", Path::new("/")).is_err());
        assert!(Layout::new("/etc/../root", "", Path::new("/")).is_err());
    }
}
