//! The Helm chart and the example manifests: the examples are valid
//! Registries (they parse, and pass the CRD's CEL rules), both example
//! directories hold the same files, and — where a `helm` binary is found —
//! the chart lints and renders least-privilege RBAC and a locked-down
//! operator Deployment.

use std::path::{Path, PathBuf};
use std::process::Command;

use berth_operator::crd::Registry;
use berth_operator::crdgen::schema;
use kube::core::cel::Validator;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn examples(dir: &str) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|entry| entry.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            (
                p.file_name().expect("name").to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).expect("read"),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_registry_parses_and_passes_the_crd_rules() {
    let schema = schema().expect("schema");
    let files = examples("operator/examples");
    assert!(
        files.len() >= 3,
        "expected the minimal, ingress and s3 examples"
    );
    for (name, text) in files {
        let registry: Registry =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let value = serde_json::to_value(&registry).expect("json");
        Validator::new()
            .validate(&schema, &value, None)
            .unwrap_or_else(|e| panic!("{name} breaks a rule: {e:?}"));
    }
}

#[test]
fn the_chart_ships_the_same_examples_as_the_operator() {
    assert_eq!(
        examples("charts/berth/examples"),
        examples("operator/examples")
    );
}

/// `helm` from PATH or from the e2e tools cache; `None` when absent.
fn helm() -> Option<PathBuf> {
    let on_path = Command::new("helm")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if on_path {
        return Some(PathBuf::from("helm"));
    }
    let cache = Path::new(&std::env::var("HOME").ok()?).join(".cache/berth/helm");
    std::fs::read_dir(cache)
        .ok()?
        .filter_map(Result::ok)
        .map(|d| d.path().join("bin/helm"))
        .find(|p| p.exists())
}

fn rendered(helm: &Path) -> Vec<Value> {
    let out = Command::new(helm)
        .args([
            "template",
            "berth",
            "charts/berth",
            "--namespace",
            "berth-system",
        ])
        .current_dir(root())
        .output()
        .expect("run helm template");
    assert!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_saphyr::from_slice_multiple::<Value>(&out.stdout).expect("rendered YAML")
}

#[test]
fn the_chart_lints_and_renders_least_privilege_rbac() {
    let Some(helm) = helm() else {
        eprintln!("skipped: no helm binary (e2e/tools/install provides one)");
        return;
    };
    let lint = Command::new(&helm)
        .args(["lint", "--strict", "charts/berth"])
        .current_dir(root())
        .output()
        .expect("run helm lint");
    assert!(
        lint.status.success(),
        "helm lint: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    let docs = rendered(&helm);
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    for role in docs
        .iter()
        .filter(|d| matches!(d["kind"].as_str(), Some("ClusterRole" | "Role")))
    {
        for rule in role["rules"].as_array().expect("rules") {
            for field in ["verbs", "resources", "apiGroups"] {
                let values = rule[field].as_array().expect(field);
                assert!(
                    values.iter().all(|v| v != "*"),
                    "wildcard {field} in {rule}"
                );
            }
        }
    }
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let sc = &container["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        args.contains(&"--registry-image=berth.dev/berth-registry:0.1.0"),
        "{args:?}"
    );
}

#[test]
fn enabling_the_unreleased_node_agent_fails_the_install_with_a_reason() {
    let Some(helm) = helm() else {
        eprintln!("skipped: no helm binary");
        return;
    };
    let out = Command::new(&helm)
        .args([
            "template",
            "berth",
            "charts/berth",
            "--set",
            "nodeAgent.enabled=true",
        ])
        .current_dir(root())
        .output()
        .expect("run helm");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("node agent is not part of this chart version")
    );
}
