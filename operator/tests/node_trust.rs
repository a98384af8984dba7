//! Node trust against a real containerd, outside Kubernetes: the files the
//! node agent's planner and writer produce — and nothing else — make a CRI
//! pull by a made-up host name succeed over TLS from a berth registry whose
//! certificate is signed by a berth CA.
//!
//! The test starts its own containerd (Debian's 1.6, CRI plugin on, its own
//! config, root, state and socket under a temp directory, `config_path` =
//! a temp certs.d, image pulls forced through a closed proxy except to
//! 127.0.0.1, so nothing leaves the machine) and a `berth-registry` on
//! 127.0.0.1, pushes a tiny image with crane, and pulls with crictl:
//!
//! - without the agent's files the pull fails; a hand-made hosts.toml
//!   without the `ca` line (ca.crt beside it) fails on the unknown CA;
//! - with them it succeeds;
//! - a CA rotation (bundle old+new, then a leaf from the new CA, then the
//!   new CA alone) keeps pulls working, and a node that only has the old CA
//!   fails once the new leaf is served (why the operator waits);
//! - removal leaves certs.d exactly as it was (an unrelated registry's
//!   hosts.toml and a stray file included), and the pull fails again.
//!
//! Needs root, `containerd`, `crictl` (the cluster harness builds one into
//! ~/.cache/berth/cri-tools/*/bin), `crane` (~/.cache/berth/bin) and a built
//! `berth-registry` (`cargo build --release -p berth-registry`); without
//! them it says what is missing and passes. `BERTH_SKIP_CONTAINERD=1` skips
//! it. Run it alone with `e2e/node-trust`, which prints the `ok - ...` lines.

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_operator::crd::{NodeTrustStatus, Registry, RegistrySpec, RegistryStatus};
use berth_operator::node_agent::desired;
use berth_operator::node_agent::layout::Layout;
use berth_operator::node_agent::writer;
use berth_operator::pki::{self, KeyedCert};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

const HOST: &str = "hub.berth.internal";
const IMAGE_PATH: &str = "test/img:1";

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

fn home_cache() -> Option<PathBuf> {
    Some(Path::new(&std::env::var("HOME").ok()?).join(".cache/berth"))
}

/// `env` if set, else PATH, else `<~/.cache/berth>/<glob-ish dir>/bin/name`.
fn tool(env: &str, name: &str, cache_dirs: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = find_on_path(name) {
        return Some(p);
    }
    let cache = home_cache()?;
    for dir in cache_dirs {
        let direct = cache.join(dir).join(name);
        if direct.is_file() {
            return Some(direct);
        }
        // <dir>/<version>/bin/<name>
        if let Ok(versions) = std::fs::read_dir(cache.join(dir)) {
            for v in versions.flatten() {
                let p = v.path().join("bin").join(name);
                if p.is_file() {
                    return Some(p);
                }
            }
        }
    }
    None
}

fn registry_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BERTH_REGISTRY_BIN") {
        return Some(PathBuf::from(p));
    }
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("berth-registry"))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A child process stopped (by its own PID) when dropped.
struct Proc {
    child: Child,
    name: &'static str,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first, so containerd closes its database cleanly.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("# {} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test's directory, removed at the end.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("BERTH_KEEP_SCRATCH").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

struct Tally {
    passed: u32,
    failed: u32,
}

impl Tally {
    fn check(&mut self, what: &str, result: Result<String, String>) {
        match result {
            Ok(detail) if detail.is_empty() => {
                self.passed += 1;
                eprintln!("ok - {what}");
            }
            Ok(detail) => {
                self.passed += 1;
                eprintln!("ok - {what} ({detail})");
            }
            Err(why) => {
                self.failed += 1;
                eprintln!("not ok - {what}: {why}");
            }
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_for(what: &str, timeout: Duration, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !probe() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether the registry on `port` completes a TLS handshake for 127.0.0.1
/// trusting only `ca_pem`: which certificate it serves right now.
fn served_leaf_is_from(port: u16, ca_pem: &str) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(ca_pem.as_bytes()).flatten() {
        let _ = roots.add(der);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let Ok(builder) =
        rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()
    else {
        return false;
    };
    let config = builder.with_root_certificates(roots).with_no_client_auth();
    let name = ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    let Ok(mut conn) = rustls::ClientConnection::new(Arc::new(config), name) else {
        return false;
    };
    let Ok(mut sock) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
    while conn.is_handshaking() {
        if conn.complete_io(&mut sock).is_err() {
            return false;
        }
    }
    true
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Every path under `root`, with contents (directories end in `/`).
fn listing(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            if path.is_dir() {
                out.insert(format!("{rel}/"), String::new());
                walk(root, &path, out);
            } else {
                out.insert(rel, std::fs::read_to_string(&path).unwrap_or_default());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The Registry as the agent sees it: spec defaults, and the status the
/// operator would publish for a registry reached at 127.0.0.1:`port`.
fn registry(port: u16, ca_bundle: &str) -> Registry {
    let mut r = Registry::new("hub", RegistrySpec::default());
    r.metadata.namespace = Some("team".into());
    r.metadata.uid = Some("6f1c2a54-0d6e-4b43-9a8e-0b7f0c7a1e11".into());
    r.metadata.generation = Some(1);
    r.status = Some(RegistryStatus {
        node_trust: Some(NodeTrustStatus {
            hosts: vec![HOST.to_owned()],
            upstream: format!("https://127.0.0.1:{port}"),
            ca_bundle: ca_bundle.to_owned(),
        }),
        ..RegistryStatus::default()
    });
    r
}

/// One pass of the agent's writer over `registries`; the errors it reports.
fn agent_pass(layout: &Layout, registries: &[Registry]) -> Result<String, String> {
    let plan = desired::plan(registries, None, layout);
    let outcome = writer::sync(layout, &plan);
    let mut errors: Vec<String> = plan
        .registries
        .iter()
        .flat_map(|r| r.errors.clone())
        .collect();
    errors.extend(outcome.written.iter().filter_map(|w| w.error.clone()));
    errors.extend(outcome.warnings.clone());
    if errors.is_empty() {
        Ok(format!(
            "{} written, {} removed",
            outcome.written.len(),
            outcome.removed.len()
        ))
    } else {
        Err(errors.join("; "))
    }
}

struct Crictl {
    bin: PathBuf,
    config: PathBuf,
}

impl Crictl {
    fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.bin)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(text.trim().to_owned())
        }
    }

    /// Pull `image` (removing it first, so the pull really fetches).
    fn pull(&self, image: &str) -> Result<String, String> {
        let _ = self.run(&["rmi", image]);
        let pulled = self.run(&["pull", image])?;
        let _ = self.run(&["rmi", image]);
        Ok(pulled.trim().to_owned())
    }
}

fn expect_failure(result: Result<String, String>, needle: &str) -> Result<String, String> {
    match result {
        Ok(out) => Err(format!("the pull succeeded: {out}")),
        Err(e) if e.contains(needle) => Ok(needle.to_owned()),
        Err(e) => Err(format!("failed, but not with {needle:?}: {e}")),
    }
}

fn issue(tag: &str) -> KeyedCert {
    pki::issue_ca(&format!("berth test {tag} CA"), jiff::Timestamp::now()).expect("ca")
}

fn leaf(ca: &KeyedCert) -> KeyedCert {
    let names = vec!["127.0.0.1".to_owned(), HOST.to_owned()];
    pki::issue_serving(
        ca,
        &names,
        jiff::Timestamp::now(),
        Duration::from_secs(3600),
    )
    .expect("leaf")
}

#[test]
fn the_agents_files_alone_make_containerd_pull_by_name_over_tls() {
    if std::env::var_os("BERTH_SKIP_CONTAINERD").is_some() {
        eprintln!("skipped: BERTH_SKIP_CONTAINERD is set");
        return;
    }
    let containerd = tool("BERTH_CONTAINERD", "containerd", &[]);
    let crictl = tool("BERTH_CRICTL", "crictl", &["cri-tools", "crictl"]);
    let crane = tool("BERTH_CRANE", "crane", &["bin"]);
    let registry_bin = registry_binary();
    let missing: Vec<&str> = [
        (!is_root()).then_some("root (containerd needs it)"),
        containerd.is_none().then_some("containerd"),
        crictl.is_none().then_some("crictl (e2e/cluster builds it)"),
        crane.is_none().then_some("crane (e2e/tools/install)"),
        registry_bin
            .is_none()
            .then_some("berth-registry (cargo build --release -p berth-registry)"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let (Some(containerd), Some(crictl), Some(crane), Some(registry_bin)) =
        (containerd, crictl, crane, registry_bin)
    else {
        eprintln!("skipped: missing {}", missing.join(", "));
        return;
    };
    if !missing.is_empty() {
        eprintln!("skipped: missing {}", missing.join(", "));
        return;
    }

    let scratch = Scratch(std::env::temp_dir().join(format!("berth-nt-{}", std::process::id())));
    let dir = &scratch.0;
    let _ = std::fs::remove_dir_all(dir);
    let certs = dir.join("certs.d");
    for sub in [
        "certs.d", "root", "state", "data", "opt", "cni-bin", "cni-conf",
    ] {
        std::fs::create_dir_all(dir.join(sub)).expect("mkdir");
    }
    // What was there before berth: another registry's config and a file.
    std::fs::create_dir_all(certs.join("unrelated.example")).expect("mkdir");
    std::fs::write(
        certs.join("unrelated.example/hosts.toml"),
        "server = \"https://unrelated.example\"\n",
    )
    .expect("write");
    std::fs::write(certs.join("README"), "kept by hand\n").expect("write");
    let before = listing(&certs);
    let mut tally = Tally {
        passed: 0,
        failed: 0,
    };

    // The registry, serving a leaf from CA 1 for 127.0.0.1.
    let ca1 = issue("one");
    let leaf1 = leaf(&ca1);
    let (tls_crt, tls_key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&tls_crt, &leaf1.cert_pem).expect("write");
    std::fs::write(&tls_key, &leaf1.key_pem).expect("write");
    std::fs::write(dir.join("ca1.crt"), &ca1.cert_pem).expect("write");
    let port = free_port();
    let registry_log = std::fs::File::create(dir.join("registry.log")).expect("log");
    let _registry = Proc {
        child: Command::new(&registry_bin)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(dir.join("data"))
            .arg("--tls-cert")
            .arg(&tls_crt)
            .arg("--tls-key")
            .arg(&tls_key)
            .stdout(Stdio::null())
            .stderr(registry_log)
            .spawn()
            .expect("start berth-registry"),
        name: "berth-registry",
    };
    wait_for("the registry", Duration::from_secs(20), || {
        served_leaf_is_from(port, &ca1.cert_pem)
    });

    // A one-file layer, pushed with crane trusting CA 1.
    std::fs::create_dir_all(dir.join("layer")).expect("mkdir");
    std::fs::write(dir.join("layer/hello.txt"), "hello from berth\n").expect("write");
    let tarred = Command::new("tar")
        .arg("-C")
        .arg(dir.join("layer"))
        .arg("-cf")
        .arg(dir.join("layer.tar"))
        .arg("hello.txt")
        .status()
        .expect("tar");
    assert!(tarred.success());
    let direct = format!("127.0.0.1:{port}/{IMAGE_PATH}");
    let pushed = Command::new(&crane)
        .args(["append", "--platform", "linux/amd64", "-f"])
        .arg(dir.join("layer.tar"))
        .args(["-t", &direct])
        .env("SSL_CERT_FILE", dir.join("ca1.crt"))
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .output()
        .expect("crane");
    tally.check(
        "crane pushes a tiny image to the berth registry over TLS",
        if pushed.status.success() {
            Ok(String::from_utf8_lossy(&pushed.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&pushed.stderr).into_owned())
        },
    );

    // containerd of our own.
    let sock = dir.join("containerd.sock");
    let config = format!(
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = "{dir}/debug.sock"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  sandbox_image = "berth.local/e2e/pause:none"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{dir}/cni-bin"
    conf_dir = "{dir}/cni-conf"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
"#,
        root = dir.join("root").display(),
        state = dir.join("state").display(),
        sock = sock.display(),
        dir = dir.display(),
        certs = certs.display(),
    );
    std::fs::write(dir.join("containerd.toml"), config).expect("config");
    let containerd_log = std::fs::File::create(dir.join("containerd.log")).expect("log");
    let mut command = Command::new(&containerd);
    command
        .arg("--config")
        .arg(dir.join("containerd.toml"))
        // Every pull goes through a closed proxy except to 127.0.0.1, so a
        // host name that is not mapped fails here instead of asking DNS.
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("no_proxy")
        .stdout(Stdio::null())
        .stderr(containerd_log);
    let _containerd = Proc {
        child: command.spawn().expect("start containerd"),
        name: "containerd",
    };
    let crictl_config = dir.join("crictl.yaml");
    std::fs::write(
        &crictl_config,
        format!(
            "runtime-endpoint: unix://{0}\nimage-endpoint: unix://{0}\ntimeout: 30\n",
            sock.display()
        ),
    )
    .expect("crictl.yaml");
    let cri = Crictl {
        bin: crictl,
        config: crictl_config,
    };
    wait_for("containerd's CRI", Duration::from_secs(30), || {
        cri.run(&["info"]).is_ok()
    });
    let by_name = format!("{HOST}/{IMAGE_PATH}");

    tally.check(
        "without the agent's files a CRI pull by name fails",
        expect_failure(cri.pull(&by_name), "failed to resolve reference"),
    );
    // The fact the `ca` line rests on: a ca.crt beside hosts.toml is not
    // used for a [host] entry.
    let hand_made = certs.join(HOST);
    std::fs::create_dir_all(&hand_made).expect("mkdir");
    std::fs::write(hand_made.join("ca.crt"), &ca1.cert_pem).expect("write");
    std::fs::write(
        hand_made.join("hosts.toml"),
        format!(
            "server = \"https://{HOST}\"\n[host.\"https://127.0.0.1:{port}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )
    .expect("write");
    tally.check(
        "a hosts.toml without the ca line (ca.crt beside it) fails on the unknown CA",
        expect_failure(
            cri.pull(&by_name),
            "certificate signed by unknown authority",
        ),
    );
    std::fs::remove_dir_all(&hand_made).expect("rm");

    let layout = Layout::new(&certs.display().to_string(), "", Path::new("/")).expect("layout");
    tally.check(
        "the agent's writer writes hosts.toml + ca.crt for the host",
        agent_pass(&layout, &[registry(port, &ca1.cert_pem)]),
    );
    let hosts_toml =
        std::fs::read_to_string(certs.join(HOST).join("hosts.toml")).unwrap_or_default();
    eprintln!(
        "# {}/hosts.toml:\n{}",
        certs.join(HOST).display(),
        hosts_toml
            .lines()
            .map(|l| format!("#   {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    tally.check(
        &format!("with them, crictl pull {by_name} succeeds"),
        cri.pull(&by_name),
    );

    // Rotation, the operator's order: publish old+new, then the new leaf.
    let ca2 = issue("two");
    let both = pki::trust_bundle(&ca2.cert_pem, Some(&ca1.cert_pem), jiff::Timestamp::now());
    tally.check(
        "rotation step 1: the bundle old+new is written",
        agent_pass(&layout, &[registry(port, &both)]),
    );
    tally.check(
        "rotation step 1: pulls still work (old leaf, old+new CA)",
        cri.pull(&by_name),
    );
    let leaf2 = leaf(&ca2);
    write_atomically(&tls_key, &leaf2.key_pem);
    write_atomically(&tls_crt, &leaf2.cert_pem);
    wait_for(
        "the registry to serve the new leaf",
        Duration::from_secs(20),
        || served_leaf_is_from(port, &ca2.cert_pem),
    );
    tally.check(
        "rotation step 2: the registry serves a leaf from the new CA, pulls still work",
        cri.pull(&by_name),
    );
    tally.check(
        "a node left with only the old CA would fail now (why the operator waits for every node)",
        agent_pass(&layout, &[registry(port, &ca1.cert_pem)]).and_then(|_| {
            expect_failure(
                cri.pull(&by_name),
                "certificate signed by unknown authority",
            )
        }),
    );
    tally.check(
        "rotation step 3: the new CA alone is written",
        agent_pass(&layout, &[registry(port, &ca2.cert_pem)]),
    );
    tally.check("rotation step 3: pulls work", cri.pull(&by_name));

    tally.check(
        "the Registry is gone: the agent removes its files",
        agent_pass(&layout, &[]),
    );
    let after = listing(&certs);
    tally.check(
        "certs.d is exactly as before (unrelated hosts.toml and README kept)",
        if after == before {
            Ok(format!("{} entries", after.len()))
        } else {
            Err(format!("before {before:?}, after {after:?}"))
        },
    );
    tally.check(
        "after removal the pull by name fails again",
        expect_failure(cri.pull(&by_name), "failed to resolve reference"),
    );

    eprintln!(
        "node-trust: {} passed, {} failed",
        tally.passed, tally.failed
    );
    if tally.failed > 0 {
        eprintln!(
            "# logs kept: set BERTH_KEEP_SCRATCH=1 to keep {}",
            dir.display()
        );
    }
    assert_eq!(
        tally.failed, 0,
        "node trust checks failed (see the not ok lines)"
    );
}
