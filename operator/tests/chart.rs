//! The Helm chart and the example manifests: the examples are valid
//! Registries (they parse, and pass the CRD's CEL rules), both example
//! directories hold the same files, and — where a `helm` binary is found —
//! the chart lints and renders least-privilege RBAC, a locked-down operator
//! Deployment and a node agent DaemonSet that mounts only the runtimes'
//! trust directories.

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
    rendered_with(helm, &[])
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
        "DaemonSet",
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
    let deployment = find(&docs, "Deployment", "berth");
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

fn rendered_with(helm: &Path, sets: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "template",
        "berth",
        "charts/berth",
        "--namespace",
        "berth-system",
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    let out = Command::new(helm)
        .args(&args)
        .current_dir(root())
        .output()
        .expect("run helm template");
    assert!(
        out.status.success(),
        "helm template {sets:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_saphyr::from_slice_multiple::<Value>(&out.stdout).expect("rendered YAML")
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name} not rendered"))
}

/// `(apiGroups, resources, verbs, resourceNames)` of each rule, as strings.
fn rules(role: &Value) -> Vec<String> {
    let join = |v: &Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    role["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| {
            format!(
                "{}|{}|{}|{}",
                join(&r["apiGroups"]),
                join(&r["resources"]),
                join(&r["verbs"]),
                join(&r["resourceNames"])
            )
        })
        .collect()
}

#[test]
fn the_node_agent_is_one_locked_down_daemonset_mounting_only_the_trust_directories() {
    let Some(helm) = helm() else {
        eprintln!("skipped: no helm binary");
        return;
    };
    let docs = rendered(&helm);
    let ds = find(&docs, "DaemonSet", "berth-node-agent");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "berth-node-agent");
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        assert!(pod[host].is_null() || pod[host] == false, "{host}");
    }
    // Every node, control-plane included.
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );
    let container = &pod["containers"][0];
    let sc = &container["securityContext"];
    assert_eq!(sc["runAsUser"], 0, "root-owned host directories");
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["capabilities"], serde_json::json!({"drop": ["ALL"]}));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(container["image"], "berth.dev/berth-operator:0.1.0");
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        args,
        [
            "node-agent",
            "--containerd-certs-dir=/etc/containerd/certs.d",
            "--docker-certs-dir=/etc/docker/certs.d",
            "--host-root=/host",
            "--resync-seconds=60"
        ]
    );
    let node_name = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "NODE_NAME")
        .expect("NODE_NAME");
    assert_eq!(
        node_name["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(
        pod["volumes"],
        serde_json::json!([
            {"name": "containerd-certs", "hostPath": {"path": "/etc/containerd/certs.d", "type": "DirectoryOrCreate"}},
            {"name": "docker-certs", "hostPath": {"path": "/etc/docker/certs.d", "type": "DirectoryOrCreate"}}
        ])
    );
    assert_eq!(
        container["volumeMounts"],
        serde_json::json!([
            {"name": "containerd-certs", "mountPath": "/host/etc/containerd/certs.d"},
            {"name": "docker-certs", "mountPath": "/host/etc/docker/certs.d"}
        ])
    );

    // Its RBAC: read Registries and its Node; write Leases in its namespace.
    assert_eq!(
        rules(find(&docs, "ClusterRole", "berth-node-agent")),
        ["berth.dev|registries|get,list,watch|", "|nodes|get|"]
    );
    let role = find(&docs, "Role", "berth-node-agent");
    assert_eq!(role["metadata"]["namespace"], "berth-system");
    assert_eq!(rules(role), ["coordination.k8s.io|leases|create,patch|"]);
    // The operator reads the reports and the DaemonSet, in its namespace.
    assert_eq!(
        rules(find(&docs, "Role", "berth-node-reports")),
        [
            "coordination.k8s.io|leases|list,watch|",
            "apps|daemonsets|get|berth-node-agent"
        ]
    );
    let operator = find(&docs, "Deployment", "berth");
    let operator_args = &operator["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        operator_args
            .as_array()
            .expect("args")
            .iter()
            .any(|a| a == "--node-agent-daemonset=berth-node-agent"),
        "{operator_args}"
    );
    for binding in ["ClusterRoleBinding", "RoleBinding"] {
        let b = find(&docs, binding, "berth-node-agent");
        assert_eq!(b["subjects"][0]["name"], "berth-node-agent");
        assert_eq!(b["subjects"][0]["namespace"], "berth-system");
    }
}

#[test]
fn the_node_agent_follows_the_runtime_paths_of_other_distributions() {
    let Some(helm) = helm() else {
        eprintln!("skipped: no helm binary");
        return;
    };
    let k3s = "/var/lib/rancher/k3s/agent/etc/containerd/certs.d";
    let docs = rendered_with(
        &helm,
        &[
            &format!("nodeAgent.containerdCertsDir={k3s}"),
            "nodeAgent.dockerCertsDir=",
        ],
    );
    let pod = &find(&docs, "DaemonSet", "berth-node-agent")["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"],
        serde_json::json!([{"name": "containerd-certs", "hostPath": {"path": k3s, "type": "DirectoryOrCreate"}}])
    );
    assert_eq!(
        pod["containers"][0]["volumeMounts"],
        serde_json::json!([{"name": "containerd-certs", "mountPath": format!("/host{k3s}")}])
    );
    let args = &pod["containers"][0]["args"];
    assert!(
        args.as_array()
            .expect("args")
            .iter()
            .any(|a| a == "--docker-certs-dir="),
        "{args}"
    );

    let off = rendered_with(&helm, &["nodeAgent.enabled=false"]);
    assert!(
        off.iter().all(|d| d["kind"] != "DaemonSet"),
        "no DaemonSet when disabled"
    );

    let refused = Command::new(&helm)
        .args([
            "template",
            "berth",
            "charts/berth",
            "--set",
            "nodeAgent.containerdCertsDir=relative/path",
        ])
        .current_dir(root())
        .output()
        .expect("run helm");
    assert!(!refused.status.success(), "a relative host path is refused");
}

#[test]
fn the_chart_ships_registry_roles_aggregated_into_view_edit_and_admin() {
    let Some(helm) = helm() else {
        eprintln!("skipped: no helm binary (e2e/tools/install provides one)");
        return;
    };
    let docs = rendered(&helm);
    for (name, aggregate_to, verbs) in [
        ("berth-registry-pull", "view", "get,list"),
        ("berth-registry-push", "edit", "get,list,create,update"),
        (
            "berth-registry-admin",
            "admin",
            "get,list,create,update,delete",
        ),
    ] {
        let role = find(&docs, "ClusterRole", name);
        assert_eq!(
            role["metadata"]["labels"]
                [format!("rbac.authorization.k8s.io/aggregate-to-{aggregate_to}")],
            "true",
            "{name}"
        );
        assert_eq!(
            rules(role),
            [format!("berth.dev|repositories|{verbs}|")],
            "{name}"
        );
    }
    // The operator may bind system:auth-delegator and no other role.
    let operator = rules(find(&docs, "ClusterRole", "berth"));
    assert!(
        operator.contains(
            &"rbac.authorization.k8s.io|clusterroles|bind|system:auth-delegator".to_owned()
        ),
        "{operator:?}"
    );
    assert!(
        !operator
            .iter()
            .any(|r| r.contains("tokenreviews") || r.contains("subjectaccessreviews")),
        "the operator never reviews tokens itself: {operator:?}"
    );
    let off = rendered_with(&helm, &["registryRoles.create=false"]);
    assert!(
        !off.iter()
            .any(|d| d["metadata"]["name"] == "berth-registry-pull"),
        "registryRoles.create=false ships no registry roles"
    );
}

#[test]
fn the_credential_provider_is_off_by_default_and_mounts_only_its_directories_when_on() {
    let Some(helm) = helm() else {
        eprintln!("skipped: no helm binary");
        return;
    };
    let off = rendered(&helm);
    assert!(
        off.iter()
            .all(|d| d["metadata"]["name"] != "berth-credential-provider"),
        "no credential provider RBAC by default"
    );

    let bin_dir = "/usr/libexec/kubernetes/kubelet-plugins/credential-provider/exec";
    let on = rendered_with(
        &helm,
        &[
            "credentialProvider.enabled=true",
            "credentialProvider.configPath=/etc/kubernetes/credential-providers/berth.json",
            "credentialProvider.matchImages={hub.example.com,*.*.svc.cluster.local:5000}",
        ],
    );
    let pod = &find(&on, "DaemonSet", "berth-node-agent")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for wanted in [
        format!("--credential-provider-bin-dir={bin_dir}"),
        "--credential-provider-config=/etc/kubernetes/credential-providers/berth.json".into(),
        "--credential-provider-match-images=hub.example.com,*.*.svc.cluster.local:5000".into(),
        "--cluster-domain=cluster.local".into(),
    ] {
        assert!(args.contains(&wanted.as_str()), "{wanted} not in {args:?}");
    }
    // The same hardening, and only the plugin dir and the config's dir added.
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["capabilities"],
        serde_json::json!({"drop": ["ALL"]})
    );
    let volumes = pod["volumes"].as_array().expect("volumes");
    assert_eq!(volumes.len(), 4, "{volumes:?}");
    assert!(volumes.contains(&serde_json::json!(
        {"name": "credential-provider-bin", "hostPath": {"path": bin_dir, "type": "DirectoryOrCreate"}}
    )));
    assert!(volumes.contains(&serde_json::json!(
        {"name": "credential-provider-config", "hostPath": {"path": "/etc/kubernetes/credential-providers", "type": "DirectoryOrCreate"}}
    )));
    let mounts = container["volumeMounts"].as_array().expect("mounts");
    assert!(mounts.contains(&serde_json::json!(
        {"name": "credential-provider-bin", "mountPath": format!("/host{bin_dir}")}
    )));

    // The kubelets may ask for pod tokens of audience berth.dev, nothing more.
    assert_eq!(
        rules(find(&on, "ClusterRole", "berth-credential-provider")),
        ["|berth.dev|request-serviceaccounts-token-audience|"]
    );
    let binding = find(&on, "ClusterRoleBinding", "berth-credential-provider");
    assert_eq!(
        binding["subjects"],
        serde_json::json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}])
    );

    // Without configPath the agent installs the binary only.
    let bin_only = rendered_with(&helm, &["credentialProvider.enabled=true"]);
    let pod = &find(&bin_only, "DaemonSet", "berth-node-agent")["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"].as_array().expect("volumes").len(), 3);
    assert!(
        pod["containers"][0]["args"]
            .as_array()
            .expect("args")
            .iter()
            .all(|a| !a
                .as_str()
                .unwrap_or("")
                .starts_with("--credential-provider-config")),
    );
}
