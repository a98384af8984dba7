//! What this node should hold, as a pure function of the Registries, the
//! node's labels and the layout: the files of each trust directory (one per
//! host name of a Registry, and one containerd `hosts.toml` per upstream in
//! its `spec.mirrors`), and per Registry whether it applies here and what is
//! wrong with its input.
//!
//! Everything read from a Registry's status is checked here before any of
//! it reaches a path or a file: a host name must be a DNS name with an
//! optional port (no `/`, no `..`), the upstream an `https://<ip>:<port>`,
//! the CA bundle readable PEM certificates. A Registry that fails a check
//! gets no directory at all, and says why in the report.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use super::hosts_toml;
use super::layout::{Layout, Runtime};
use crate::crd::Registry;
use crate::pki;

pub const HOSTS_TOML: &str = "hosts.toml";
pub const CA_CRT: &str = "ca.crt";
/// The only file names the agent ever writes in a trust directory (besides
/// its marker); anything else there is left alone.
pub const FILE_NAMES: [&str; 2] = [HOSTS_TOML, CA_CRT];

/// The Registry a directory belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Owner {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl Owner {
    pub fn of(registry: &Registry) -> Option<Self> {
        Some(Self {
            namespace: registry.namespace()?,
            name: registry.metadata.name.clone()?,
            uid: registry.metadata.uid.clone()?,
        })
    }

    /// `namespace/name`, how reports and logs name a Registry.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One trust directory: `<base of runtime>/<dir>/` with these files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirPlan {
    pub runtime: Runtime,
    /// `host` or `host:port`, a single checked path component.
    pub dir: String,
    pub owner: Owner,
    /// File name → contents.
    pub files: BTreeMap<String, String>,
}

/// One Registry on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryPlan {
    pub owner: Owner,
    /// nodeTrust is enabled and its nodeSelector matches this node.
    pub selected: bool,
    /// The hosts it wants (checked ones only).
    pub hosts: Vec<String>,
    /// Fingerprints of the CAs in the bundle to install.
    pub fingerprints: Vec<String>,
    /// Why some or all of it cannot be written; empty when all is well.
    pub errors: Vec<String>,
}

/// Everything this node should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub dirs: Vec<DirPlan>,
    pub registries: Vec<RegistryPlan>,
}

/// Whether `host` is a lower-case DNS name (or IPv4 address) with an
/// optional `:port`, and so safe as one directory name.
pub fn check_host(host: &str) -> crate::Result<()> {
    let bad = |why: &str| {
        Err(crate::Error::InvalidSpec(format!(
            "host name {host:?} {why}"
        )))
    };
    if host.contains('/') || host.contains('\\') {
        return bad("contains a path separator");
    }
    if host.contains("..") {
        return bad("contains '..'");
    }
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    if let Some(port) = port
        && !(port.parse::<u16>().is_ok_and(|p| p > 0) && port.bytes().all(|b| b.is_ascii_digit()))
    {
        return bad("has a port that is not a number from 1 to 65535");
    }
    if name.is_empty() || name.len() > 253 {
        return bad("must be 1 to 253 characters before any :port");
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if !name.split('.').all(label_ok) {
        return bad("is not a lower-case DNS name (letters, digits, '-' and '.')");
    }
    Ok(())
}

/// `https://<ip>:<port>` (IPv6 in brackets) → the same string, checked.
pub fn check_upstream(upstream: &str) -> crate::Result<()> {
    let addr = upstream
        .strip_prefix("https://")
        .and_then(|rest| rest.parse::<std::net::SocketAddr>().ok());
    match addr {
        Some(addr) if addr.port() != 0 => Ok(()),
        _ => Err(crate::Error::InvalidSpec(format!(
            "upstream {upstream:?} is not https://<IP address>:<port>"
        ))),
    }
}

/// Whether every `nodeSelector` label is on the node.
fn selects(
    selector: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> crate::Result<bool> {
    if selector.is_empty() {
        return Ok(true);
    }
    let labels = labels.ok_or_else(|| {
        crate::Error::InvalidSpec(
            "this node's labels are unknown, so nodeTrust.nodeSelector cannot be matched".into(),
        )
    })?;
    Ok(selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// The plan for `registries` on a node with `labels` (`None`: unknown).
///
/// When two Registries want the same directory, the older one keeps it
/// (then the lower `namespace/name`); the other reports the clash.
pub fn plan(
    registries: &[Registry],
    labels: Option<&BTreeMap<String, String>>,
    layout: &Layout,
) -> Plan {
    let mut ordered: Vec<&Registry> = registries.iter().collect();
    ordered.sort_by_key(|r| {
        (
            r.metadata.creation_timestamp.clone().map(|t| t.0),
            r.namespace(),
            r.metadata.name.clone(),
        )
    });

    let mut plan = Plan::default();
    let mut claimed: BTreeMap<(Runtime, String), Owner> = BTreeMap::new();
    for registry in ordered {
        let Some(owner) = Owner::of(registry) else {
            continue;
        };
        let mut rp = RegistryPlan {
            owner: owner.clone(),
            selected: false,
            hosts: Vec::new(),
            fingerprints: Vec::new(),
            errors: Vec::new(),
        };
        let trust = &registry.spec.node_trust;
        if !trust.enabled {
            continue;
        }
        match selects(&trust.node_selector, labels) {
            Ok(true) => rp.selected = true,
            Ok(false) => {
                plan.registries.push(rp);
                continue;
            }
            Err(e) => {
                rp.errors.push(e.to_string());
                plan.registries.push(rp);
                continue;
            }
        }
        let Some(published) = registry.status.as_ref().and_then(|s| s.node_trust.as_ref()) else {
            rp.errors.push(
                "the operator has not published status.nodeTrust yet (the Service's ClusterIP or the CA is not ready, or the installed Registry CRD is older than the operator: kubectl apply --server-side -f crds/registries.berth.dev.yaml)".into(),
            );
            plan.registries.push(rp);
            continue;
        };
        let bundle = match pki::parse_bundle(&published.ca_bundle, "status.nodeTrust.caBundle") {
            Ok(certs) => certs,
            Err(e) => {
                rp.errors.push(format!("{e}; nothing written"));
                plan.registries.push(rp);
                continue;
            }
        };
        if let Err(e) = check_upstream(&published.upstream) {
            rp.errors.push(format!("{e}; nothing written"));
            plan.registries.push(rp);
            continue;
        }
        rp.fingerprints = bundle.into_iter().map(|c| c.fingerprint).collect();
        let ca_pem = normalized(&published.ca_bundle);

        // The CA file the mirrors' hosts.toml files name: the one written
        // for the Registry's first host in containerd's directory.
        let mut containerd_ca: Option<std::path::PathBuf> = None;
        let mut seen = BTreeSet::new();
        for host in &published.hosts {
            if let Err(e) = check_host(host) {
                rp.errors.push(format!("{e}; not written"));
                continue;
            }
            if !seen.insert(host.clone()) {
                continue;
            }
            rp.hosts.push(host.clone());
            for base in &layout.bases {
                let slot = (base.runtime, host.clone());
                if let Some(holder) = claimed.get(&slot) {
                    rp.errors.push(format!(
                        "host {host} is also claimed by Registry {}, which was there first; not written",
                        holder.key()
                    ));
                    continue;
                }
                claimed.insert(slot, owner.clone());
                let ca_path = base.host_dir.join(host).join(CA_CRT);
                let mut files = BTreeMap::from([(CA_CRT.to_owned(), ca_pem.clone())]);
                if base.runtime == Runtime::Containerd {
                    containerd_ca.get_or_insert_with(|| ca_path.clone());
                    files.insert(
                        HOSTS_TOML.to_owned(),
                        hosts_toml::render(host, &published.upstream, &ca_path, &owner.key()),
                    );
                }
                plan.dirs.push(DirPlan {
                    runtime: base.runtime,
                    dir: host.clone(),
                    owner: owner.clone(),
                    files,
                });
            }
        }
        if published.hosts.is_empty() {
            rp.errors.push("status.nodeTrust.hosts is empty".into());
        }
        plan_mirrors(
            registry,
            &owner,
            &published.upstream,
            containerd_ca.as_deref(),
            layout,
            &mut claimed,
            &mut plan.dirs,
            &mut rp.errors,
        );
        plan.registries.push(rp);
    }
    plan.registries.sort_by(|a, b| a.owner.cmp(&b.owner));
    plan
}

/// One containerd directory per mirrored upstream (`<certs.d>/docker.io/`)
/// holding only a `hosts.toml` that sends pulls of that upstream through
/// the Registry at `upstream`, trusting the CA at `ca_path`. Docker has no
/// per-host mirror file, so only containerd gets one.
#[allow(clippy::too_many_arguments)]
fn plan_mirrors(
    registry: &Registry,
    owner: &Owner,
    upstream: &str,
    ca_path: Option<&std::path::Path>,
    layout: &Layout,
    claimed: &mut BTreeMap<(Runtime, String), Owner>,
    dirs: &mut Vec<DirPlan>,
    errors: &mut Vec<String>,
) {
    if registry.spec.mirrors.is_empty() || layout.base(Runtime::Containerd).is_none() {
        return;
    }
    let Some(ca_path) = ca_path else {
        errors.push(
            "no host directory of this Registry was written for containerd, so its mirrors have no CA file to name; mirrors not written".into(),
        );
        return;
    };
    let mut seen = BTreeSet::new();
    for mirror in &registry.spec.mirrors {
        let prefix = &mirror.prefix;
        if let Err(e) = check_mirror(prefix, &mirror.url) {
            errors.push(format!("{e}; not written"));
            continue;
        }
        if !seen.insert(prefix.clone()) {
            continue;
        }
        let slot = (Runtime::Containerd, prefix.clone());
        if let Some(holder) = claimed.get(&slot) {
            errors.push(format!(
                "mirror {prefix} is also claimed by Registry {}, which was there first; not written",
                holder.key()
            ));
            continue;
        }
        claimed.insert(slot, owner.clone());
        dirs.push(DirPlan {
            runtime: Runtime::Containerd,
            dir: prefix.clone(),
            owner: owner.clone(),
            files: BTreeMap::from([(
                HOSTS_TOML.to_owned(),
                hosts_toml::render_mirror(prefix, &mirror.url, upstream, ca_path, &owner.key()),
            )]),
        });
    }
}

/// A mirror's prefix is a host name without a port (one safe directory
/// name), its URL `http(s)://` followed by no whitespace, quote or
/// backslash.
pub fn check_mirror(prefix: &str, url: &str) -> crate::Result<()> {
    check_host(prefix)?;
    if prefix.contains(':') {
        return Err(crate::Error::InvalidSpec(format!(
            "mirror prefix {prefix:?} has a port; image references cannot name one in their first component"
        )));
    }
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let ok = rest.is_some_and(|r| {
        !r.trim_end_matches('/').is_empty()
            && !r.starts_with('/')
            && !r
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\\')
    });
    if !ok {
        return Err(crate::Error::InvalidSpec(format!(
            "mirror {prefix}: url {url:?} is not http(s)://<host>[/path]"
        )));
    }
    Ok(())
}

/// The bundle with one trailing newline, so the same certificates always
/// make the same file.
fn normalized(pem: &str) -> String {
    let mut text = pem.trim().to_owned();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::crd::{NodeTrustStatus, RegistryStatus};
    use crate::fixtures;

    fn ca() -> String {
        let now = "2026-11-24T12:00:00Z".parse().expect("ts");
        pki::issue_ca("berth team/hub CA", now)
            .expect("ca")
            .cert_pem
    }

    fn published(hosts: &[&str], ca_bundle: String) -> NodeTrustStatus {
        NodeTrustStatus {
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            upstream: "https://10.96.0.42:443".into(),
            ca_bundle,
        }
    }

    fn registry(name: &str, uid: &str, trust: NodeTrustStatus) -> Registry {
        let mut r = fixtures::registry();
        r.metadata.name = Some(name.into());
        r.metadata.uid = Some(uid.into());
        r.status = Some(RegistryStatus {
            node_trust: Some(trust),
            ..RegistryStatus::default()
        });
        r
    }

    fn layout() -> Layout {
        Layout::new(
            "/etc/containerd/certs.d",
            "/etc/docker/certs.d",
            Path::new("/host"),
        )
        .expect("layout")
    }

    #[test]
    fn each_host_gets_hosts_toml_and_the_ca_for_containerd_and_the_ca_for_docker() {
        let ca = ca();
        let hub = registry(
            "hub",
            "u1",
            published(&["hub.team.svc.cluster.local", "hub.team"], ca.clone()),
        );
        let plan = plan(&[hub], None, &layout());
        let dirs: Vec<(Runtime, &str, Vec<&str>)> = plan
            .dirs
            .iter()
            .map(|d| {
                (
                    d.runtime,
                    d.dir.as_str(),
                    d.files.keys().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            dirs,
            [
                (
                    Runtime::Containerd,
                    "hub.team.svc.cluster.local",
                    vec!["ca.crt", "hosts.toml"]
                ),
                (
                    Runtime::Docker,
                    "hub.team.svc.cluster.local",
                    vec!["ca.crt"]
                ),
                (
                    Runtime::Containerd,
                    "hub.team",
                    vec!["ca.crt", "hosts.toml"]
                ),
                (Runtime::Docker, "hub.team", vec!["ca.crt"]),
            ]
        );
        let toml = &plan.dirs[0].files[HOSTS_TOML];
        // The ca line names the host's path, not the agent's /host mount.
        assert!(
            toml.contains("ca = \"/etc/containerd/certs.d/hub.team.svc.cluster.local/ca.crt\""),
            "{toml}"
        );
        assert!(toml.contains("[host.\"https://10.96.0.42:443\"]"), "{toml}");
        assert_eq!(plan.dirs[0].files[CA_CRT], ca.trim().to_owned() + "\n");
        let rp = &plan.registries[0];
        assert!(rp.selected && rp.errors.is_empty(), "{rp:?}");
        assert_eq!(rp.fingerprints.len(), 1);
        assert_eq!(rp.owner.key(), "team/hub");
    }

    #[test]
    fn disabled_or_unselected_registries_get_nothing() {
        let mut off = registry("off", "u1", published(&["off.team"], ca()));
        off.spec.node_trust.enabled = false;
        let mut gpu = registry("gpu", "u2", published(&["gpu.team"], ca()));
        gpu.spec.node_trust.node_selector = BTreeMap::from([("gpu".into(), "true".into())]);
        let labels = BTreeMap::from([("kubernetes.io/os".to_owned(), "linux".to_owned())]);
        let plan = plan(&[off, gpu.clone()], Some(&labels), &layout());
        assert!(plan.dirs.is_empty());
        assert_eq!(
            plan.registries.len(),
            1,
            "a disabled registry is not reported"
        );
        assert!(!plan.registries[0].selected);

        let gpu_labels = BTreeMap::from([("gpu".to_owned(), "true".to_owned())]);
        let selected = super::plan(&[gpu.clone()], Some(&gpu_labels), &layout());
        assert_eq!(selected.dirs.len(), 2);
        let unknown = super::plan(&[gpu], None, &layout());
        assert!(unknown.dirs.is_empty());
        assert!(unknown.registries[0].errors[0].contains("labels are unknown"));
    }

    #[test]
    fn bad_host_names_are_refused_and_the_good_ones_still_written() {
        let hub = registry(
            "hub",
            "u1",
            published(
                &[
                    "../../etc",
                    "a/b",
                    "hub..team",
                    "Hub.Team",
                    "ok.team",
                    "x:99999",
                ],
                ca(),
            ),
        );
        let plan = plan(&[hub], None, &layout());
        let dirs: BTreeSet<&str> = plan.dirs.iter().map(|d| d.dir.as_str()).collect();
        assert_eq!(dirs, BTreeSet::from(["ok.team"]));
        let errors = &plan.registries[0].errors;
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(
            errors[0].contains("\"../../etc\" contains a path separator"),
            "{errors:?}"
        );
        assert!(errors[2].contains("contains '..'"), "{errors:?}");
    }

    #[test]
    fn host_checks() {
        for good in [
            "hub",
            "hub.team.svc.cluster.local",
            "hub:5000",
            "10.0.0.1:443",
            "a-b.c",
        ] {
            assert!(check_host(good).is_ok(), "{good}");
        }
        for bad in [
            "", "..", ".hub", "hub.", "-a.b", "a/b", "a\\b", "A.b", "h:0", "h:", "h:+5", "h:1:2",
            "a b",
        ] {
            assert!(check_host(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_invalid_pem_or_upstream_writes_nothing_for_that_registry_only() {
        let garbled = registry(
            "bad",
            "u1",
            published(
                &["bad.team"],
                "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n".into(),
            ),
        );
        let mut far = published(&["far.team"], ca());
        far.upstream = "http://10.0.0.1:80".into();
        let far = registry("far", "u2", far);
        let good = registry("good", "u3", published(&["good.team"], ca()));
        let plan = plan(&[garbled, far, good], None, &layout());
        let dirs: BTreeSet<&str> = plan.dirs.iter().map(|d| d.dir.as_str()).collect();
        assert_eq!(dirs, BTreeSet::from(["good.team"]));
        let errors: BTreeMap<String, Vec<String>> = plan
            .registries
            .iter()
            .map(|r| (r.owner.name.clone(), r.errors.clone()))
            .collect();
        assert!(
            errors["bad"][0].contains("no readable PEM certificate"),
            "{errors:?}"
        );
        assert!(
            errors["far"][0].contains("is not https://<IP address>:<port>"),
            "{errors:?}"
        );
        assert!(errors["good"].is_empty());
    }

    #[test]
    fn the_older_registry_keeps_a_contested_host() {
        let mut young = registry("a-young", "u1", published(&["shared.example"], ca()));
        young.metadata.creation_timestamp = Some(Time("2026-11-24T12:00:00Z".parse().expect("ts")));
        let mut old = registry("z-old", "u2", published(&["shared.example"], ca()));
        old.metadata.creation_timestamp = Some(Time("2026-01-01T00:00:00Z".parse().expect("ts")));
        let plan = plan(&[young, old], None, &layout());
        assert!(plan.dirs.iter().all(|d| d.owner.name == "z-old"));
        let young = plan
            .registries
            .iter()
            .find(|r| r.owner.name == "a-young")
            .expect("young");
        assert!(
            young.errors[0].contains("also claimed by Registry team/z-old"),
            "{young:?}"
        );
    }

    #[test]
    fn a_registry_without_published_trust_is_waiting() {
        let plan = plan(&[fixtures::registry()], None, &layout());
        assert!(plan.dirs.is_empty());
        assert!(plan.registries[0].errors[0].contains("has not published status.nodeTrust"));
    }

    fn mirrored(name: &str, uid: &str, host: &str, mirrors: Vec<crate::crd::Mirror>) -> Registry {
        let mut r = registry(name, uid, published(&[host], ca()));
        r.spec.mirrors = mirrors;
        r
    }

    #[test]
    fn each_mirror_gets_a_containerd_hosts_toml_naming_the_registry_ca_and_nothing_else() {
        let hub = mirrored(
            "hub",
            "u1",
            "hub.team.svc.cluster.local",
            vec![
                fixtures::mirror("docker.io", "https://registry-1.docker.io"),
                fixtures::mirror("ghcr.io", "https://ghcr.io"),
            ],
        );
        let plan = plan(&[hub], None, &layout());
        let mirrors: Vec<(Runtime, &str, Vec<&str>)> = plan
            .dirs
            .iter()
            .filter(|d| !d.files.contains_key(CA_CRT))
            .map(|d| {
                (
                    d.runtime,
                    d.dir.as_str(),
                    d.files.keys().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            mirrors,
            [
                (Runtime::Containerd, "docker.io", vec!["hosts.toml"]),
                (Runtime::Containerd, "ghcr.io", vec!["hosts.toml"]),
            ],
            "no ca.crt (containerd would trust the registry's CA for the upstream) and nothing for docker"
        );
        let toml = &plan
            .dirs
            .iter()
            .find(|d| d.dir == "docker.io")
            .expect("dir")
            .files[HOSTS_TOML];
        assert!(
            toml.contains("server = \"https://registry-1.docker.io\"\n"),
            "{toml}"
        );
        assert!(toml.contains("[host.\"https://10.96.0.42:443\"]"), "{toml}");
        assert!(
            toml.contains("ca = \"/etc/containerd/certs.d/hub.team.svc.cluster.local/ca.crt\""),
            "{toml}"
        );
        assert!(plan.registries[0].errors.is_empty(), "{plan:?}");
    }

    #[test]
    fn without_containerd_or_node_trust_no_mirror_is_written() {
        let docker_only =
            Layout::new("", "/etc/docker/certs.d", Path::new("/host")).expect("layout");
        let hub = mirrored(
            "hub",
            "u1",
            "hub.team",
            vec![fixtures::mirror(
                "docker.io",
                "https://registry-1.docker.io",
            )],
        );
        let plan_docker = plan(std::slice::from_ref(&hub), None, &docker_only);
        assert!(plan_docker.dirs.iter().all(|d| d.dir == "hub.team"));
        assert!(plan_docker.registries[0].errors.is_empty());
        let mut off = hub;
        off.spec.node_trust.enabled = false;
        assert!(plan(&[off], None, &layout()).dirs.is_empty());
    }

    #[test]
    fn the_older_registry_keeps_a_contested_mirror_and_the_other_reports_it() {
        let mut young = mirrored(
            "a-young",
            "u1",
            "young.team",
            vec![fixtures::mirror(
                "docker.io",
                "https://registry-1.docker.io",
            )],
        );
        young.metadata.creation_timestamp = Some(Time("2026-11-24T12:00:00Z".parse().expect("ts")));
        let mut old = mirrored(
            "z-old",
            "u2",
            "old.team",
            vec![fixtures::mirror("docker.io", "https://mirror.example")],
        );
        old.metadata.creation_timestamp = Some(Time("2026-01-01T00:00:00Z".parse().expect("ts")));
        let plan = plan(&[young, old], None, &layout());
        let holder: Vec<&str> = plan
            .dirs
            .iter()
            .filter(|d| d.dir == "docker.io")
            .map(|d| d.owner.name.as_str())
            .collect();
        assert_eq!(holder, ["z-old"]);
        let young = plan
            .registries
            .iter()
            .find(|r| r.owner.name == "a-young")
            .expect("young");
        assert_eq!(
            young.errors,
            [
                "mirror docker.io is also claimed by Registry team/z-old, which was there first; not written"
            ]
        );
        assert_eq!(young.hosts, ["young.team"], "its own host is still written");
    }

    #[test]
    fn a_bad_mirror_is_reported_and_the_rest_still_written() {
        let hub = mirrored(
            "hub",
            "u1",
            "hub.team",
            vec![
                fixtures::mirror("../etc", "https://x.example"),
                fixtures::mirror("quay.io:443", "https://quay.io"),
                fixtures::mirror("evil.io", "https://evil.io\"\n[host.\"x\"]"),
                fixtures::mirror("ghcr.io", "https://ghcr.io"),
            ],
        );
        let plan = plan(&[hub], None, &layout());
        let mirrors: Vec<&str> = plan
            .dirs
            .iter()
            .filter(|d| !d.files.contains_key(CA_CRT))
            .map(|d| d.dir.as_str())
            .collect();
        assert_eq!(mirrors, ["ghcr.io"]);
        let errors = &plan.registries[0].errors;
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("path separator"), "{errors:?}");
        assert!(errors[1].contains("has a port"), "{errors:?}");
        assert!(errors[2].contains("is not http(s)://"), "{errors:?}");
    }

    #[test]
    fn mirrors_need_a_written_host_directory_for_their_ca() {
        let mut young = mirrored(
            "a-young",
            "u1",
            "shared.example",
            vec![fixtures::mirror(
                "docker.io",
                "https://registry-1.docker.io",
            )],
        );
        young.metadata.creation_timestamp = Some(Time("2026-11-24T12:00:00Z".parse().expect("ts")));
        let mut old = registry("z-old", "u2", published(&["shared.example"], ca()));
        old.metadata.creation_timestamp = Some(Time("2026-01-01T00:00:00Z".parse().expect("ts")));
        let plan = plan(&[young, old], None, &layout());
        assert!(plan.dirs.iter().all(|d| d.dir != "docker.io"));
        let young = plan
            .registries
            .iter()
            .find(|r| r.owner.name == "a-young")
            .expect("young");
        assert!(
            young
                .errors
                .last()
                .is_some_and(|e| e.contains("mirrors have no CA file to name")),
            "{young:?}"
        );
    }

    #[test]
    fn mirror_checks() {
        assert!(check_mirror("docker.io", "https://registry-1.docker.io").is_ok());
        assert!(check_mirror("localhost", "http://127.0.0.1:5000/").is_ok());
        assert!(check_mirror("r.example", "https://r.example/v2-proxy").is_ok());
        for (prefix, url) in [
            ("docker.io", "ftp://x"),
            ("docker.io", "https://"),
            ("docker.io", "https:///path"),
            ("docker.io", "https://a b"),
            ("docker.io", "https://a\\b"),
            ("a.io:5000", "https://a.io"),
            ("a/b", "https://a.io"),
        ] {
            assert!(check_mirror(prefix, url).is_err(), "{prefix} {url}");
        }
    }

    #[test]
    fn upstream_checks() {
        assert!(check_upstream("https://10.96.0.1:443").is_ok());
        assert!(check_upstream("https://[fd00::1]:5000").is_ok());
        for bad in [
            "10.96.0.1:443",
            "https://hub:443",
            "https://10.0.0.1",
            "https://10.0.0.1:0",
            "https://10.0.0.1:443/x",
        ] {
            assert!(check_upstream(bad).is_err(), "{bad}");
        }
    }
}
