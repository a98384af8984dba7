//! The only code that changes the node: writes each planned trust
//! directory atomically and removes the ones no Registry wants any more.
//!
//! Rules, so the agent can share `certs.d` with whoever else uses it:
//! - a file is written to a temporary name in the same directory, synced,
//!   then renamed over the target, so containerd never reads half a file;
//! - unchanged files are not rewritten;
//! - a directory is only written when it carries the agent's marker for
//!   the same Registry, or is new, or holds none of the agent's file names;
//! - removal deletes exactly the files the marker lists, then the marker,
//!   then the directory if nothing else is left in it;
//! - symlinks are never followed: a link where a directory or file should
//!   be is an error, and the directory is left alone.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Component, Path, PathBuf};

use super::desired::{CA_CRT, DirPlan, FILE_NAMES, Owner, Plan};
use super::layout::{Base, Layout, Runtime};
use super::marker::{MARKER, Marker};
use crate::pki;

/// How writing one planned directory went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirResult {
    pub runtime: Runtime,
    pub dir: String,
    pub owner: Owner,
    pub error: Option<String>,
}

/// A directory the agent removed (its Registry is gone, no longer wants
/// this host, or no longer selects this node).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removed {
    pub runtime: Runtime,
    pub dir: String,
    pub owner: Owner,
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    pub written: Vec<DirResult>,
    pub removed: Vec<Removed>,
    /// Problems not tied to a planned directory (an unreadable marker, a
    /// removal that failed); each names the path.
    pub warnings: Vec<String>,
}

/// Make every base in `layout` hold exactly what `plan` says (for the
/// directories the agent manages).
pub fn sync(layout: &Layout, plan: &Plan) -> SyncOutcome {
    let mut outcome = SyncOutcome::default();
    for base in &layout.bases {
        let dirs: Vec<&DirPlan> = plan
            .dirs
            .iter()
            .filter(|d| d.runtime == base.runtime)
            .collect();
        sync_base(base, &dirs, &mut outcome);
    }
    outcome
}

fn sync_base(base: &Base, dirs: &[&DirPlan], outcome: &mut SyncOutcome) {
    let wanted: BTreeMap<&str, &DirPlan> = dirs.iter().map(|d| (d.dir.as_str(), *d)).collect();
    let (managed, problems) = scan(base);
    outcome.warnings.extend(problems);
    clear_staging(base, outcome);

    for (dir, marker) in &managed {
        let keep = wanted
            .get(dir.as_str())
            .is_some_and(|p| p.owner.uid == marker.registry.uid);
        if keep {
            continue;
        }
        match remove_dir(base, dir, marker) {
            Ok(()) => outcome.removed.push(Removed {
                runtime: base.runtime,
                dir: dir.clone(),
                owner: marker.registry.clone(),
            }),
            Err(e) => outcome.warnings.push(e.to_string()),
        }
    }

    for plan in dirs {
        let previous = managed
            .get(&plan.dir)
            .filter(|m| m.registry.uid == plan.owner.uid);
        let error = write_dir(base, plan, previous).err().map(|e| e.to_string());
        outcome.written.push(DirResult {
            runtime: base.runtime,
            dir: plan.dir.clone(),
            owner: plan.owner.clone(),
            error,
        });
    }
}

/// The path as the host sees it, for messages people act on.
fn shown(base: &Base, dir: &str) -> String {
    base.host_dir.join(dir).display().to_string()
}

fn io_error(what: &str, path: &str, e: &std::io::Error) -> crate::Error {
    crate::Error::Host(format!("{what} {path}: {e}"))
}

/// Every directory in `base` that carries a readable marker of the agent's.
fn scan(base: &Base) -> (BTreeMap<String, Marker>, Vec<String>) {
    let mut managed = BTreeMap::new();
    let mut problems = Vec::new();
    let entries = match fs::read_dir(&base.local_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return (managed, problems),
        Err(e) => {
            problems.push(
                io_error("cannot list", &base.host_dir.display().to_string(), &e).to_string(),
            );
            return (managed, problems);
        }
    };
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if is_staging_name(&name) {
            continue;
        }
        // file_type() does not follow symlinks.
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let marker_path = entry.path().join(MARKER);
        if !fs::symlink_metadata(&marker_path).is_ok_and(|m| m.is_file()) {
            continue;
        }
        match fs::read_to_string(&marker_path)
            .map_err(|e| crate::Error::Host(e.to_string()))
            .and_then(|text| Marker::parse(&text))
        {
            Ok(marker) => {
                managed.insert(name, marker);
            }
            Err(e) => problems.push(format!(
                "{}/{MARKER}: {e}; the directory is left alone",
                shown(base, &name)
            )),
        }
    }
    (managed, problems)
}

/// Staging directories a killed agent left in `base`.
fn clear_staging(base: &Base, outcome: &mut SyncOutcome) {
    let Ok(entries) = fs::read_dir(&base.local_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let is_staging = entry.file_name().to_str().is_some_and(is_staging_name);
        if is_staging
            && entry.file_type().is_ok_and(|t| t.is_dir())
            && let Err(e) = remove_staging(&entry.path())
        {
            outcome.warnings.push(e.to_string());
        }
    }
}

/// `dir` as one plain path component, or an error (the planner checks host
/// names already; this is the writer refusing to trust that).
fn component(base: &Base, dir: &str) -> crate::Result<PathBuf> {
    let mut parts = Path::new(dir).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(_)), None) => Ok(base.local_dir.join(dir)),
        _ => Err(crate::Error::Host(format!(
            "{dir:?} is not a single directory name; nothing written"
        ))),
    }
}

fn write_dir(base: &Base, plan: &DirPlan, previous: Option<&Marker>) -> crate::Result<()> {
    let path = component(base, &plan.dir)?;
    let where_ = shown(base, &plan.dir);
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(crate::Error::Host(format!(
                "{where_} exists and is not a directory; left alone"
            )));
        }
        Err(e) if e.kind() == ErrorKind::NotFound => return create_dir(base, plan, &path),
        Err(e) => return Err(io_error("cannot inspect", &where_, &e)),
    }

    let previous_files: BTreeSet<String> = previous.map(|m| m.files.clone()).unwrap_or_default();
    if previous.is_none() {
        // Someone else's directory: only join it if none of the agent's
        // names are taken, and never past a marker it could not read.
        let mut taken: Vec<&str> = plan
            .files
            .keys()
            .map(String::as_str)
            .chain([MARKER])
            .filter(|name| fs::symlink_metadata(path.join(name)).is_ok())
            .collect();
        taken.sort_unstable();
        if !taken.is_empty() {
            return Err(crate::Error::Host(format!(
                "{where_} already holds {} not written by berth; left alone",
                taken.join(", ")
            )));
        }
    }

    let wanted: BTreeSet<String> = plan.files.keys().cloned().collect();
    // The marker first lists everything that may be there after this pass,
    // so an interrupted pass never leaves an unlisted file of the agent's.
    let union: BTreeSet<String> = previous_files.union(&wanted).cloned().collect();
    if previous.is_none() || union != previous_files {
        write_file(
            &path,
            MARKER,
            &Marker::new(plan.owner.clone(), union.clone()).render(),
        )
        .map_err(|e| crate::Error::Host(format!("{where_}: {e}")))?;
    }
    for (name, contents) in &plan.files {
        write_file(&path, name, contents)
            .map_err(|e| crate::Error::Host(format!("{where_}: {e}")))?;
    }
    let stale: Vec<&String> = previous_files.difference(&wanted).collect();
    for name in &stale {
        let _ = fs::remove_file(path.join(temp_name(name)));
        remove_file(&path.join(name)).map_err(|e| crate::Error::Host(format!("{where_}: {e}")))?;
    }
    if union != wanted {
        write_file(
            &path,
            MARKER,
            &Marker::new(plan.owner.clone(), wanted).render(),
        )
        .map_err(|e| crate::Error::Host(format!("{where_}: {e}")))?;
    }
    // The marker's temp file, if a killed agent left one (write_file clears
    // those of the files it looks at).
    let _ = fs::remove_file(path.join(temp_name(MARKER)));
    Ok(())
}

/// A new directory is filled under a staging name and renamed into place
/// whole, so an agent killed half way never leaves a directory without its
/// marker (one it would no longer recognise as its own, and never remove).
fn create_dir(base: &Base, plan: &DirPlan, path: &Path) -> crate::Result<()> {
    let where_ = shown(base, &plan.dir);
    let staging = base.local_dir.join(staging_name(&plan.dir));
    remove_staging(&staging)?;
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&staging)
        .map_err(|e| io_error("cannot create", &where_, &e))?;
    let filled = write_file(
        &staging,
        MARKER,
        &Marker::new(plan.owner.clone(), plan.files.keys().cloned()).render(),
    )
    .and_then(|()| {
        plan.files
            .iter()
            .try_for_each(|(name, contents)| write_file(&staging, name, contents))
    })
    .and_then(|()| fs::rename(&staging, path).map_err(|e| io_error("cannot create", &where_, &e)));
    if let Err(e) = filled {
        let _ = remove_staging(&staging);
        return Err(crate::Error::Host(format!("{where_}: {e}")));
    }
    if let Ok(d) = fs::File::open(&base.local_dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The name a new directory is filled under. Host names never start with
/// a dot, so it cannot be a planned directory.
fn staging_name(dir: &str) -> String {
    format!(".{dir}.berth-tmp")
}

fn is_staging_name(name: &str) -> bool {
    name.len() > ".berth-tmp".len() && name.starts_with('.') && name.ends_with(".berth-tmp")
}

/// Remove a staging directory a killed agent left: only the agent's own
/// file names (and their temp files) in it, then the directory itself.
/// Anything else in it keeps it, untouched.
fn remove_staging(staging: &Path) -> crate::Result<()> {
    match fs::symlink_metadata(staging) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(crate::Error::Host(format!(
                "{} is not a directory; left alone",
                staging.display()
            )));
        }
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(io_error(
                "cannot inspect",
                &staging.display().to_string(),
                &e,
            ));
        }
    }
    for name in FILE_NAMES.iter().copied().chain([MARKER]) {
        remove_file(&staging.join(name))?;
        let _ = fs::remove_file(staging.join(temp_name(name)));
    }
    fs::remove_dir(staging)
        .map_err(|e| io_error("cannot remove", &staging.display().to_string(), &e))
}

/// Write `contents` to `dir/name` through a temporary file and a rename,
/// unless it already holds exactly that.
fn write_file(dir: &Path, name: &str, contents: &str) -> crate::Result<()> {
    let target = dir.join(name);
    let tmp = dir.join(temp_name(name));
    match fs::symlink_metadata(&target) {
        Ok(meta) if meta.is_file() => {
            if fs::read(&target).is_ok_and(|now| now == contents.as_bytes()) {
                // A temp file left by an agent killed mid-write goes even
                // when the file it was for needs no change.
                let _ = fs::remove_file(&tmp);
                return Ok(());
            }
        }
        Ok(_) => {
            return Err(crate::Error::Host(format!(
                "{name} is not a regular file; not replaced"
            )));
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(crate::Error::Host(format!("cannot inspect {name}: {e}"))),
    }
    let _ = fs::remove_file(&tmp);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(contents.as_bytes())?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, &target));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(crate::Error::Host(format!("cannot write {name}: {e}")));
    }
    // Make the rename itself durable.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn temp_name(name: &str) -> String {
    format!(".{name}.berth-tmp")
}

fn remove_file(path: &Path) -> crate::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Err(crate::Error::Host(format!(
            "{} is a directory; not removed",
            path.display()
        ))),
        Ok(_) => fs::remove_file(path)
            .map_err(|e| crate::Error::Host(format!("cannot remove {}: {e}", path.display()))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(crate::Error::Host(format!(
            "cannot inspect {}: {e}",
            path.display()
        ))),
    }
}

/// Remove what `marker` lists in `base/dir`, the marker, and the directory
/// if it is then empty.
fn remove_dir(base: &Base, dir: &str, marker: &Marker) -> crate::Result<()> {
    let path = component(base, dir)?;
    let where_ = shown(base, dir);
    for name in &marker.files {
        remove_file(&path.join(name)).map_err(|e| crate::Error::Host(format!("{where_}: {e}")))?;
    }
    for name in FILE_NAMES.iter().copied().chain([MARKER]) {
        let _ = fs::remove_file(path.join(temp_name(name)));
    }
    remove_file(&path.join(MARKER)).map_err(|e| crate::Error::Host(format!("{where_}: {e}")))?;
    match fs::remove_dir(&path) {
        Ok(()) => {}
        // Something else lives there: it stays, and so does the directory.
        Err(e) if e.kind() == ErrorKind::DirectoryNotEmpty => {}
        Err(e) => return Err(io_error("cannot remove", &where_, &e)),
    }
    Ok(())
}

/// The fingerprints of the CA bundle installed in `base/dir`, if readable.
pub fn installed_fingerprints(base: &Base, dir: &str) -> Option<Vec<String>> {
    let path = component(base, dir).ok()?.join(CA_CRT);
    if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
        return None;
    }
    let text = fs::read_to_string(path).ok()?;
    pki::parse_bundle(&text, "ca.crt")
        .ok()
        .map(|certs| certs.into_iter().map(|c| c.fingerprint).collect())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::crd::{NodeTrustStatus, Registry, RegistryStatus};
    use crate::fixtures;
    use crate::node_agent::desired::{self, HOSTS_TOML};

    struct Tmp(PathBuf);

    impl Tmp {
        fn new(tag: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "berth-writer-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).expect("tmp");
            Self(path)
        }
    }

    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn layout(tmp: &Tmp) -> Layout {
        // The "host" is tmp/host; the agent sees it through tmp/root.
        fs::create_dir_all(tmp.0.join("root/etc/containerd/certs.d")).expect("mk");
        Layout::new(
            "/etc/containerd/certs.d",
            "/etc/docker/certs.d",
            &tmp.0.join("root"),
        )
        .expect("layout")
    }

    fn ca(tag: &str) -> String {
        let now = "2026-11-24T12:00:00Z".parse().expect("ts");
        pki::issue_ca(tag, now).expect("ca").cert_pem
    }

    fn registry(name: &str, uid: &str, hosts: &[&str], bundle: &str) -> Registry {
        let mut r = fixtures::registry();
        r.metadata.name = Some(name.into());
        r.metadata.uid = Some(uid.into());
        r.status = Some(RegistryStatus {
            node_trust: Some(NodeTrustStatus {
                hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
                upstream: "https://10.96.0.42:443".into(),
                ca_bundle: bundle.into(),
            }),
            ..RegistryStatus::default()
        });
        r
    }

    /// Every path under `root` with its contents (directories end in `/`).
    fn listing(root: &Path) -> BTreeMap<String, String> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
            let Ok(entries) = fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let rel = path
                    .strip_prefix(root)
                    .expect("under root")
                    .display()
                    .to_string();
                if path.is_dir() {
                    out.insert(format!("{rel}/"), String::new());
                    walk(root, &path, out);
                } else {
                    out.insert(rel, fs::read_to_string(&path).unwrap_or_default());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(root, root, &mut out);
        out
    }

    fn run(layout: &Layout, registries: &[Registry]) -> SyncOutcome {
        sync(layout, &desired::plan(registries, None, layout))
    }

    #[test]
    fn writes_the_planned_files_with_a_marker_and_removes_exactly_them() {
        let tmp = Tmp::new("roundtrip");
        let layout = layout(&tmp);
        let certs = tmp.0.join("root/etc/containerd/certs.d");
        // Someone else's registry config and a stray file: never touched.
        fs::create_dir_all(certs.join("docker.io")).expect("mk");
        fs::write(certs.join("docker.io/hosts.toml"), "server = \"x\"\n").expect("w");
        fs::write(certs.join("README"), "hands off\n").expect("w");
        let before = listing(&tmp.0);

        let bundle = ca("one");
        let hub = registry(
            "hub",
            "u1",
            &["hub.team.svc.cluster.local", "hub.team"],
            &bundle,
        );
        let outcome = run(&layout, std::slice::from_ref(&hub));
        assert!(
            outcome.written.iter().all(|r| r.error.is_none()),
            "{outcome:?}"
        );
        assert_eq!(outcome.written.len(), 4);
        let hub_dir = certs.join("hub.team.svc.cluster.local");
        let toml = fs::read_to_string(hub_dir.join(HOSTS_TOML)).expect("hosts.toml");
        assert!(
            toml.contains("ca = \"/etc/containerd/certs.d/hub.team.svc.cluster.local/ca.crt\"")
        );
        assert_eq!(
            fs::read_to_string(hub_dir.join(CA_CRT)).expect("ca"),
            bundle.trim().to_owned() + "\n"
        );
        let marker = Marker::parse(&fs::read_to_string(hub_dir.join(MARKER)).expect("marker"))
            .expect("parse");
        assert_eq!(marker.registry.key(), "team/hub");
        assert_eq!(
            marker.files,
            BTreeSet::from(["ca.crt".to_owned(), "hosts.toml".to_owned()])
        );
        assert!(
            tmp.0
                .join("root/etc/docker/certs.d/hub.team/ca.crt")
                .is_file()
        );
        assert!(
            !tmp.0
                .join("root/etc/docker/certs.d/hub.team/hosts.toml")
                .exists()
        );
        let layout_base = layout.base(Runtime::Containerd).expect("base");
        assert_eq!(
            installed_fingerprints(layout_base, "hub.team"),
            Some(vec![
                pki::parse_cert(&bundle, "ca").expect("ca").fingerprint
            ])
        );

        // A second pass changes nothing (same modification times).
        let mtime = fs::metadata(hub_dir.join(CA_CRT))
            .and_then(|m| m.modified())
            .expect("mtime");
        let again = run(&layout, std::slice::from_ref(&hub));
        assert!(
            again.removed.is_empty() && again.warnings.is_empty(),
            "{again:?}"
        );
        assert_eq!(
            fs::metadata(hub_dir.join(CA_CRT))
                .and_then(|m| m.modified())
                .expect("mtime"),
            mtime
        );

        // The Registry goes: the node is as it was, the docker base aside
        // (created for the registry, and left as an empty directory).
        let gone = run(&layout, &[]);
        assert_eq!(gone.removed.len(), 4, "{gone:?}");
        let mut after = listing(&tmp.0);
        assert_eq!(
            after.remove("root/etc/docker/certs.d/"),
            Some(String::new())
        );
        assert_eq!(after.remove("root/etc/docker/"), Some(String::new()));
        assert_eq!(after, before);
    }

    #[test]
    fn a_mirror_hosts_toml_is_written_beside_foreign_ones_and_removed_with_the_mirror() {
        let tmp = Tmp::new("mirror");
        let layout = layout(&tmp);
        let certs = tmp.0.join("root/etc/containerd/certs.d");
        // Someone else's mirror of quay.io: never overwritten.
        fs::create_dir_all(certs.join("quay.io")).expect("mk");
        fs::write(certs.join("quay.io/hosts.toml"), "server = \"x\"\n").expect("w");
        let mirror = |prefix: &str| fixtures::mirror(prefix, &format!("https://{prefix}"));
        let mut hub = registry("hub", "u1", &["hub.team"], &ca("one"));
        hub.spec.mirrors = vec![mirror("docker.io"), mirror("quay.io")];
        let outcome = run(&layout, &[hub.clone()]);
        let toml = fs::read_to_string(certs.join("docker.io/hosts.toml")).expect("written");
        assert!(toml.contains("server = \"https://docker.io\""), "{toml}");
        assert!(
            toml.contains("ca = \"/etc/containerd/certs.d/hub.team/ca.crt\""),
            "{toml}"
        );
        assert!(!certs.join("docker.io/ca.crt").exists());
        let clash = outcome
            .written
            .iter()
            .find(|r| r.dir == "quay.io")
            .and_then(|r| r.error.clone())
            .expect("refused");
        assert!(
            clash.contains(
                "/etc/containerd/certs.d/quay.io already holds hosts.toml not written by berth"
            ),
            "{clash}"
        );
        assert_eq!(
            fs::read_to_string(certs.join("quay.io/hosts.toml")).expect("kept"),
            "server = \"x\"\n"
        );
        // The report carries the clash and still counts the CA as installed.
        let report = super::super::report::NodeReport::build(
            "n1",
            &desired::plan(&[hub.clone()], None, &layout),
            &outcome,
            &layout,
        );
        let hub_report = &report.registries["team/hub"];
        assert_eq!(hub_report.fingerprints.len(), 1, "{hub_report:?}");
        assert!(
            hub_report
                .error
                .as_deref()
                .is_some_and(|e| e.contains("quay.io already holds hosts.toml")),
            "{hub_report:?}"
        );

        hub.spec.mirrors = vec![mirror("quay.io")];
        let outcome = run(&layout, &[hub]);
        assert!(!certs.join("docker.io").exists(), "removed with the mirror");
        assert!(
            outcome.removed.iter().any(|r| r.dir == "docker.io"),
            "{outcome:?}"
        );
        assert!(certs.join("hub.team/ca.crt").exists());
        assert!(certs.join("quay.io/hosts.toml").exists());
    }

    #[test]
    fn a_temp_file_left_by_a_killed_agent_is_cleared_even_when_nothing_changed() {
        let tmp = Tmp::new("leftover");
        let layout = layout(&tmp);
        let dir = tmp.0.join("root/etc/containerd/certs.d/hub.team");
        let hub = [registry("hub", "u1", &["hub.team"], &ca("one"))];
        run(&layout, &hub);
        let installed = listing(&tmp.0);
        // An agent killed between writing a temp file and renaming it.
        for name in [CA_CRT, desired::HOSTS_TOML, MARKER] {
            fs::write(dir.join(temp_name(name)), "half a fi").expect("w");
        }
        let outcome = run(&layout, &hub);
        assert!(outcome.warnings.is_empty(), "{:?}", outcome.warnings);
        assert_eq!(listing(&tmp.0), installed);
    }

    #[test]
    fn a_new_directory_left_half_made_by_a_killed_agent_is_cleared() {
        let tmp = Tmp::new("staging");
        let layout = layout(&tmp);
        let certs = tmp.0.join("root/etc/containerd/certs.d");
        let bundle = ca("one");
        let before = listing(&tmp.0.join("root/etc/containerd"));
        // An agent killed while filling a new directory for an old host
        // name: its staging directory holds a marker and half a ca.crt.
        let staging = certs.join(staging_name("old.team"));
        fs::create_dir_all(&staging).expect("mk");
        fs::write(staging.join(MARKER), "{").expect("w");
        fs::write(staging.join(temp_name(CA_CRT)), "half").expect("w");
        // The host name changed while it was down.
        let hub = [registry("hub", "u1", &["new.team"], &bundle)];
        let outcome = run(&layout, &hub);
        assert!(outcome.warnings.is_empty(), "{:?}", outcome.warnings);
        assert!(!staging.exists(), "staging directory cleared");
        assert!(!certs.join("old.team").exists());
        assert!(certs.join("new.team/hosts.toml").is_file());
        assert!(certs.join("new.team").join(MARKER).is_file());
        run(&layout, &[]);
        assert_eq!(listing(&tmp.0.join("root/etc/containerd")), before);
    }

    #[test]
    fn a_staging_directory_holding_someone_elses_file_is_left_with_a_warning() {
        let tmp = Tmp::new("staging-foreign");
        let layout = layout(&tmp);
        let staging = tmp
            .0
            .join("root/etc/containerd/certs.d")
            .join(staging_name("x.team"));
        fs::create_dir_all(&staging).expect("mk");
        fs::write(staging.join("notes"), "mine").expect("w");
        let outcome = run(&layout, &[]);
        assert_eq!(outcome.warnings.len(), 1, "{outcome:?}");
        assert_eq!(
            fs::read_to_string(staging.join("notes")).expect("kept"),
            "mine"
        );
    }

    #[test]
    fn a_changed_host_list_removes_the_old_directory_only() {
        let tmp = Tmp::new("hosts");
        let layout = layout(&tmp);
        let certs = tmp.0.join("root/etc/containerd/certs.d");
        let bundle = ca("one");
        run(
            &layout,
            &[registry("hub", "u1", &["a.team", "b.team"], &bundle)],
        );
        assert!(certs.join("a.team/hosts.toml").exists());
        let outcome = run(&layout, &[registry("hub", "u1", &["b.team"], &bundle)]);
        assert_eq!(
            outcome.removed.iter().filter(|r| r.dir == "a.team").count(),
            2
        );
        assert!(!certs.join("a.team").exists());
        assert!(certs.join("b.team/hosts.toml").exists());
    }

    #[test]
    fn files_added_by_someone_else_survive_removal_with_their_directory() {
        let tmp = Tmp::new("extra");
        let layout = layout(&tmp);
        let dir = tmp.0.join("root/etc/containerd/certs.d/hub.team");
        run(&layout, &[registry("hub", "u1", &["hub.team"], &ca("one"))]);
        fs::write(dir.join("client.cert"), "mine").expect("w");
        run(&layout, &[]);
        let left: Vec<String> = fs::read_dir(&dir)
            .expect("dir stays")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["client.cert"]);
    }

    #[test]
    fn an_unmarked_directory_holding_the_agents_file_names_is_left_alone() {
        let tmp = Tmp::new("foreign");
        let layout = layout(&tmp);
        let dir = tmp.0.join("root/etc/containerd/certs.d/hub.team");
        fs::create_dir_all(&dir).expect("mk");
        fs::write(dir.join("hosts.toml"), "hand made\n").expect("w");
        let before = listing(&tmp.0.join("root/etc/containerd"));
        let outcome = run(&layout, &[registry("hub", "u1", &["hub.team"], &ca("one"))]);
        let containerd = outcome
            .written
            .iter()
            .find(|r| r.runtime == Runtime::Containerd)
            .expect("result");
        let error = containerd.error.as_deref().expect("refused");
        assert!(
            error.contains(
                "/etc/containerd/certs.d/hub.team already holds hosts.toml not written by berth"
            ),
            "{error}"
        );
        assert_eq!(listing(&tmp.0.join("root/etc/containerd")), before);
        // An empty directory someone made is joined, and left behind empty.
        let empty = tmp.0.join("root/etc/containerd/certs.d/other.team");
        fs::create_dir_all(&empty).expect("mk");
        fs::write(empty.join("notes"), "x").expect("w");
        run(
            &layout,
            &[registry("other", "u2", &["other.team"], &ca("two"))],
        );
        assert!(empty.join("hosts.toml").exists());
        run(&layout, &[]);
        assert_eq!(listing(&empty).keys().collect::<Vec<_>>(), ["notes"]);
    }

    #[test]
    fn a_directory_passes_to_a_new_registry_of_the_same_host() {
        let tmp = Tmp::new("transfer");
        let layout = layout(&tmp);
        let dir = tmp.0.join("root/etc/containerd/certs.d/hub.team");
        run(
            &layout,
            &[registry("hub", "old-uid", &["hub.team"], &ca("one"))],
        );
        let second = ca("two");
        let outcome = run(
            &layout,
            &[registry("hub", "new-uid", &["hub.team"], &second)],
        );
        assert!(
            outcome.written.iter().all(|r| r.error.is_none()),
            "{outcome:?}"
        );
        let marker = Marker::parse(&fs::read_to_string(dir.join(MARKER)).expect("m")).expect("p");
        assert_eq!(marker.registry.uid, "new-uid");
        assert_eq!(
            fs::read_to_string(dir.join(CA_CRT)).expect("ca"),
            second.trim().to_owned() + "\n"
        );
    }

    #[test]
    fn an_unwritable_base_is_a_clear_error_and_nothing_else_is_touched() {
        let tmp = Tmp::new("unwritable");
        let root = tmp.0.join("root");
        fs::create_dir_all(root.join("etc/containerd")).expect("mk");
        // certs.d is a file: nothing can be created under it, even as root.
        fs::write(root.join("etc/containerd/certs.d"), "not a dir").expect("w");
        let layout = Layout::new("/etc/containerd/certs.d", "", &root).expect("layout");
        let before = listing(&tmp.0);
        let outcome = run(&layout, &[registry("hub", "u1", &["hub.team"], &ca("one"))]);
        let error = outcome.written[0].error.as_deref().expect("error");
        assert!(
            error.contains("/etc/containerd/certs.d/hub.team: Not a directory"),
            "{error}"
        );
        assert_eq!(outcome.warnings.len(), 1, "{outcome:?}");
        assert_eq!(listing(&tmp.0), before);
    }

    #[test]
    fn a_symlink_in_place_of_a_directory_or_file_is_not_followed() {
        let tmp = Tmp::new("symlink");
        let layout = layout(&tmp);
        let certs = tmp.0.join("root/etc/containerd/certs.d");
        let elsewhere = tmp.0.join("elsewhere");
        fs::create_dir_all(&elsewhere).expect("mk");
        std::os::unix::fs::symlink(&elsewhere, certs.join("hub.team")).expect("ln");
        let outcome = run(&layout, &[registry("hub", "u1", &["hub.team"], &ca("one"))]);
        let error = outcome.written[0].error.as_deref().expect("error");
        assert!(error.contains("is not a directory"), "{error}");
        assert_eq!(fs::read_dir(&elsewhere).expect("dir").count(), 0);
    }

    #[test]
    fn a_tampered_marker_is_reported_and_its_directory_left_alone() {
        let tmp = Tmp::new("tampered");
        let layout = layout(&tmp);
        let dir = tmp.0.join("root/etc/containerd/certs.d/hub.team");
        run(&layout, &[registry("hub", "u1", &["hub.team"], &ca("one"))]);
        let text = fs::read_to_string(dir.join(MARKER))
            .expect("m")
            .replace("ca.crt", "../../../etc/passwd");
        fs::write(dir.join(MARKER), text).expect("w");
        let before = listing(&dir);
        let outcome = run(&layout, &[]);
        assert!(
            outcome.warnings.iter().any(|w| w.contains("never writes")),
            "{outcome:?}"
        );
        assert_eq!(listing(&dir), before);
    }
}
