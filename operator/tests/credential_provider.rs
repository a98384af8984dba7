//! The built `berth-operator` run as the kubelet runs an image credential
//! provider: the provider's `args` on the command line, a
//! `CredentialProviderRequest` on stdin, a `CredentialProviderResponse`
//! expected on stdout, the host's environment plus the config's `env`.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use base64::Engine as _;
use serde_json::{Value, json};

fn plugin(request: &[u8], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth-operator"))
        .arg("credential-provider")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run berth-operator");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(request)
        .expect("write the request");
    child.wait_with_output().expect("plugin output")
}

/// A service-account-token-shaped JWT (the plugin does not verify it).
fn pod_token(namespace: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let payload = json!({
        "aud": ["berth.dev"],
        "exp": now + 3600,
        "iat": now,
        "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": format!("system:serviceaccount:{namespace}:default"),
        "kubernetes.io": {"namespace": namespace, "pod": {"name": "app", "uid": "u"}},
    });
    format!(
        "{}.{}.{}",
        b64.encode(br#"{"alg":"RS256","kid":"k1"}"#),
        b64.encode(payload.to_string()),
        b64.encode(b"not-a-real-signature")
    )
}

fn request(image: &str, token: Option<&str>) -> Vec<u8> {
    let mut body = json!({
        "kind": "CredentialProviderRequest",
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
        "image": image,
    });
    if let Some(token) = token {
        body["serviceAccountToken"] = json!(token);
    }
    body.to_string().into_bytes()
}

#[test]
fn the_binary_answers_the_kubelet_with_the_pods_token_for_the_registry_host() {
    let token = pod_token("team");
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("cp.log");
    let out = plugin(
        &request("hub.team.svc.cluster.local/team/app:v1", Some(&token)),
        &[(
            "BERTH_CREDENTIAL_PROVIDER_LOG",
            log.to_str().expect("utf-8"),
        )],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let response: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(
        response["apiVersion"],
        "credentialprovider.kubelet.k8s.io/v1"
    );
    assert_eq!(response["kind"], "CredentialProviderResponse");
    assert_eq!(response["cacheKeyType"], "Registry");
    assert_eq!(response["cacheDuration"], "300s");
    assert_eq!(
        response["auth"],
        json!({"hub.team.svc.cluster.local": {"username": "berth-sa", "password": token}})
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let logged = std::fs::read_to_string(&log).expect("log written");
    let line: Value = serde_json::from_str(logged.trim()).expect("one JSON line");
    assert_eq!(line["claims"]["sub"], "system:serviceaccount:team:default");
    assert_eq!(line["claims"]["aud"], json!(["berth.dev"]));
    assert!(!logged.contains(&token), "the log holds the token");
}

#[test]
fn the_binary_answers_no_credentials_for_a_pod_without_a_token() {
    let out = plugin(
        &request("hub.team.svc.cluster.local/team/app:v1", None),
        &[],
    );
    assert!(out.status.success());
    let response: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(response["kind"], "CredentialProviderResponse");
    assert!(response.get("auth").is_none(), "{response}");
    assert_eq!(response["cacheDuration"], "0s");
}

#[test]
fn the_binary_fails_on_a_bad_request_without_echoing_it() {
    let token = pod_token("team");
    let bad = format!(
        r#"{{"kind":"CredentialProviderRequest","apiVersion":"credentialprovider.kubelet.k8s.io/v1alpha1","image":"a.b/c","serviceAccountToken":"{token}"}}"#
    );
    let out = plugin(bad.as_bytes(), &[]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("apiVersion"), "{stderr}");
    assert!(!stderr.contains(&token), "{stderr}");

    let garbage = plugin(
        format!("{{\"serviceAccountToken\": {token}").as_bytes(),
        &[],
    );
    assert!(!garbage.status.success());
    let stderr = String::from_utf8_lossy(&garbage.stderr);
    assert!(
        stderr.contains("not a CredentialProviderRequest"),
        "{stderr}"
    );
    assert!(!stderr.contains(&token), "{stderr}");
}
