//! `berth-operator credential-provider`: the kubelet's image credential
//! provider plugin, so a pod pulls berth images with its own service-account
//! token and no pull Secret.
//!
//! The kubelet (v1.34+, `KubeletServiceAccountTokenForCredentialProviders`)
//! runs the plugin for each image its `CredentialProviderConfig` matches,
//! writes a `CredentialProviderRequest` (JSON) on stdin holding the pod's
//! service-account token minted for audience
//! [`CREDENTIAL_PROVIDER_AUDIENCE`], and reads a
//! `CredentialProviderResponse` on stdout. The plugin answers that token as
//! the Basic password for the image's registry host; the registry reviews
//! it (TokenReview with that audience) and authorises it (the same
//! SubjectAccessReview as any login). The plugin itself decides nothing, so
//! it needs no API access and no state.
//!
//! The kubelet forbids a plugin to hand back the token it was given unless
//! the provider's `tokenAttributes.cacheType` is `Token`, so
//! [`kubelet_config`] sets that; the kubelet then caches the answer per
//! token, and [`cache_seconds`] keeps the cache shorter than the token's
//! life.
//!
//! Nothing here writes the token anywhere but stdout: errors name what was
//! wrong, never the input, and the optional debug log
//! ([`LOG_ENV`]) records the token's sha256 prefix and its `sub`/`aud`/`exp`
//! claims only.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::path::Path;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use berth_access::config::CREDENTIAL_PROVIDER_AUDIENCE;

/// The request and response API version (the only one that carries
/// service-account tokens).
pub const API_VERSION: &str = "credentialprovider.kubelet.k8s.io/v1";
/// The `CredentialProviderConfig` API version.
pub const CONFIG_API_VERSION: &str = "kubelet.config.k8s.io/v1";
/// The executable's name in the kubelet's plugin directory, which is also
/// the provider's `name` in the kubelet's config.
pub const PLUGIN_NAME: &str = "berth-credential-provider";
/// The subcommand of `berth-operator` the plugin runs as (the config's
/// `args`).
pub const SUBCOMMAND: &str = "credential-provider";
/// The Basic user name answered; the registry ignores it in Kubernetes mode.
pub const USERNAME: &str = "berth-sa";
/// When set, the plugin appends one JSON line per request to this file
/// (no token in it).
pub const LOG_ENV: &str = "BERTH_CREDENTIAL_PROVIDER_LOG";
/// The longest the kubelet may keep an answer.
pub const MAX_CACHE_SECONDS: i64 = 300;
/// Cache time when the token's expiry cannot be read.
const UNKNOWN_EXPIRY_CACHE_SECONDS: i64 = 60;
/// A request is a few kilobytes; refuse anything absurd.
const MAX_REQUEST_BYTES: u64 = 1 << 20;

/// What the kubelet sends on stdin.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub image: String,
    /// The pod's token for [`CREDENTIAL_PROVIDER_AUDIENCE`]; empty when the
    /// pod has no service account or the provider has no `tokenAttributes`.
    #[serde(default)]
    pub service_account_token: String,
    #[serde(default)]
    pub service_account_annotations: BTreeMap<String, String>,
}

// Written by hand so a `{:?}` can never print the token.
impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("api_version", &self.api_version)
            .field("kind", &self.kind)
            .field("image", &self.image)
            .field(
                "service_account_token",
                &token_fingerprint(&self.service_account_token),
            )
            .field(
                "service_account_annotations",
                &self.service_account_annotations,
            )
            .finish()
    }
}

/// One registry's credentials in a [`Response`].
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct AuthConfig {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("username", &self.username)
            .field("password", &token_fingerprint(&self.password))
            .finish()
    }
}

/// What the plugin writes on stdout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    pub api_version: &'static str,
    pub kind: &'static str,
    /// `Registry`: one answer serves every repository of the host (the
    /// registry checks each repository itself).
    pub cache_key_type: &'static str,
    /// A Go duration (`"120s"`); `"0s"`: do not cache.
    pub cache_duration: String,
    /// Empty: no credentials, the kubelet pulls as before (anonymously or
    /// with the pod's pull Secrets).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub auth: BTreeMap<String, AuthConfig>,
}

impl Response {
    fn new(cache_seconds: i64, auth: BTreeMap<String, AuthConfig>) -> Self {
        Self {
            api_version: API_VERSION,
            kind: "CredentialProviderResponse",
            cache_key_type: "Registry",
            cache_duration: format!("{}s", cache_seconds.max(0)),
            auth,
        }
    }

    /// No credentials: the kubelet goes on without any from this plugin.
    pub fn anonymous() -> Self {
        Self::new(0, BTreeMap::new())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the request on stdin is not a CredentialProviderRequest: {what} at line {line} column {column} (is this binary run by the kubelet with apiVersion {API_VERSION}?)"
    )]
    NotJson {
        what: &'static str,
        line: usize,
        column: usize,
    },
    #[error(
        "the request's apiVersion is {0:?}; this plugin speaks {API_VERSION}: set `apiVersion: {API_VERSION}` for provider {PLUGIN_NAME} in the kubelet's CredentialProviderConfig"
    )]
    ApiVersion(String),
    #[error("the request's kind is {0:?}, not CredentialProviderRequest")]
    Kind(String),
    #[error("the request names no image")]
    NoImage,
    #[error("the request on stdin is larger than {MAX_REQUEST_BYTES} bytes")]
    TooLarge,
    #[error("reading the request from stdin: {0}")]
    Read(std::io::Error),
    #[error("writing the response to stdout: {0}")]
    Write(std::io::Error),
}

/// Parse and check a request. Errors never quote the input.
pub fn parse_request(bytes: &[u8]) -> Result<Request, Error> {
    let request: Request = serde_json::from_slice(bytes).map_err(|e| Error::NotJson {
        what: match e.classify() {
            serde_json::error::Category::Io => "an I/O error",
            serde_json::error::Category::Syntax => "invalid JSON",
            serde_json::error::Category::Data => "a field of the wrong type",
            serde_json::error::Category::Eof => "an unexpected end",
        },
        line: e.line(),
        column: e.column(),
    })?;
    if request.api_version != API_VERSION {
        return Err(Error::ApiVersion(request.api_version));
    }
    if request.kind != "CredentialProviderRequest" {
        return Err(Error::Kind(request.kind));
    }
    if request.image.trim().is_empty() {
        return Err(Error::NoImage);
    }
    Ok(request)
}

/// The registry `host[:port]` an image reference names, as the kubelet
/// matches it, or `None` for a reference without one (`app:v1`,
/// `team/app`: those mean Docker Hub, which must never see the token).
/// Follows the reference grammar: the first component is a host only if it
/// holds a `.` or a `:`, or is `localhost`.
pub fn registry_host(image: &str) -> Option<&str> {
    let (first, rest) = image.split_once('/')?;
    if rest.is_empty() || first.is_empty() {
        return None;
    }
    let is_host = first.contains(['.', ':']) || first == "localhost";
    let charset_ok = first
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    (is_host && charset_ok).then_some(first)
}

/// The claims of a service-account token this plugin looks at, read without
/// verifying the signature: they come from the kubelet, and serve only the
/// cache time and the debug log. The registry verifies the token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct TokenClaims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Aud {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<Aud>::deserialize(d)? {
        None => Vec::new(),
        Some(Aud::One(one)) => vec![one],
        Some(Aud::Many(many)) => many,
    })
}

/// The payload of a JWT, or `None` when it is not one.
pub fn token_claims(token: &str) -> Option<TokenClaims> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// `sha256:` and the first 12 hex digits of the token's hash: enough to
/// tell tokens apart in a log, useless to an attacker. Empty for no token.
pub fn token_fingerprint(token: &str) -> String {
    if token.is_empty() {
        return String::new();
    }
    let digest = Sha256::digest(token.as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// How long the kubelet may reuse an answer: half the token's remaining
/// life, at most [`MAX_CACHE_SECONDS`], so a cached password is never an
/// expired token (the kubelet renews a token at 80% of its life, and its
/// cache key changes with the token).
pub fn cache_seconds(exp: Option<i64>, now_unix: i64) -> i64 {
    match exp {
        None => UNKNOWN_EXPIRY_CACHE_SECONDS,
        Some(exp) => ((exp - now_unix) / 2).clamp(0, MAX_CACHE_SECONDS),
    }
}

/// The answer to a request: the pod's token as the password for the
/// image's registry host, or no credentials when there is no token or no
/// registry host.
pub fn respond(request: &Request, now_unix: i64) -> Response {
    let token = request.service_account_token.trim();
    let Some(host) = registry_host(request.image.trim()) else {
        return Response::anonymous();
    };
    if token.is_empty() {
        return Response::anonymous();
    }
    let exp = token_claims(token).and_then(|c| c.exp);
    let auth = BTreeMap::from([(
        host.to_owned(),
        AuthConfig {
            username: USERNAME.to_owned(),
            password: token.to_owned(),
        },
    )]);
    Response::new(cache_seconds(exp, now_unix), auth)
}

/// One line of the debug log: what was asked and answered, with the token
/// reduced to its fingerprint and the claims that identify it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogRecord {
    pub time: i64,
    pub image: String,
    pub registry: Option<String>,
    pub token_sha256: String,
    pub claims: Option<TokenClaims>,
    pub annotations: BTreeMap<String, String>,
    /// `token` or `anonymous`.
    pub answered: &'static str,
    pub cache_duration: String,
}

pub fn log_record(request: &Request, response: &Response, now_unix: i64) -> LogRecord {
    let token = request.service_account_token.trim();
    LogRecord {
        time: now_unix,
        image: request.image.clone(),
        registry: registry_host(request.image.trim()).map(str::to_owned),
        token_sha256: token_fingerprint(token),
        claims: (!token.is_empty()).then(|| token_claims(token).unwrap_or_default()),
        annotations: request.service_account_annotations.clone(),
        answered: if response.auth.is_empty() {
            "anonymous"
        } else {
            "token"
        },
        cache_duration: response.cache_duration.clone(),
    }
}

/// The plugin, as the kubelet runs it: one request from `input`, one
/// response to `output`, and a line in `log` when given (a log that cannot
/// be written is reported on stderr and does not fail the pull).
pub fn run(
    input: impl Read,
    mut output: impl Write,
    log: Option<&Path>,
    now_unix: i64,
) -> Result<(), Error> {
    let mut bytes = Vec::new();
    input
        .take(MAX_REQUEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(Error::Read)?;
    if bytes.len() as u64 > MAX_REQUEST_BYTES {
        return Err(Error::TooLarge);
    }
    let request = parse_request(&bytes)?;
    let response = respond(&request, now_unix);
    let json = serde_json::to_vec(&response).map_err(|e| Error::Write(e.into()))?;
    output.write_all(&json).map_err(Error::Write)?;
    output.flush().map_err(Error::Write)?;
    if let Some(path) = log
        && let Err(e) = append_log(path, &log_record(&request, &response, now_unix))
    {
        // stderr is the plugin's only other channel; the kubelet shows it
        // when a call fails. This one did not.
        let _ = writeln!(
            std::io::stderr(),
            "{PLUGIN_NAME}: cannot append to {} ({LOG_ENV}): {e}",
            path.display()
        );
    }
    Ok(())
}

fn append_log(path: &Path, record: &LogRecord) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut line = serde_json::to_vec(record)?;
    line.push(b'\n');
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    // One write per line, so concurrent plugin runs do not interleave.
    file.write_all(&line)
}

/// What a cluster admin (or the node agent) puts in the kubelet's
/// `--image-credential-provider-config` for berth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeletConfig {
    /// Image patterns whose pulls get the pod's token (kubelet globs: each
    /// `*` stands for one DNS label, ports must match exactly).
    pub match_images: Vec<String>,
    /// Where the plugin writes its debug log ([`LOG_ENV`]); `None`: no log.
    pub log_path: Option<String>,
}

/// The default `matchImages`: every Registry's default node endpoint
/// (`<name>.<namespace>.svc.<cluster domain>`, port 443).
pub fn default_match_images(cluster_domain: &str) -> Vec<String> {
    vec![format!("*.*.svc.{cluster_domain}")]
}

/// The `CredentialProviderConfig` (kubelet.config.k8s.io/v1) holding
/// berth's provider, as JSON (which the kubelet reads as YAML too).
pub fn kubelet_config(config: &KubeletConfig) -> serde_json::Value {
    let mut provider = serde_json::json!({
        "name": PLUGIN_NAME,
        "apiVersion": API_VERSION,
        "matchImages": config.match_images,
        // Every answer carries its own cacheDuration.
        "defaultCacheDuration": "0s",
        "args": [SUBCOMMAND],
        "tokenAttributes": {
            "serviceAccountTokenAudience": CREDENTIAL_PROVIDER_AUDIENCE,
            // The token is the password, which the kubelet allows only with
            // per-token caching.
            "cacheType": "Token",
            // A pod with no service account (a static pod) pulls as before,
            // without calling the plugin.
            "requireServiceAccount": true,
        },
    });
    if let Some(path) = &config.log_path {
        provider["env"] = serde_json::json!([{ "name": LOG_ENV, "value": path }]);
    }
    serde_json::json!({
        "apiVersion": CONFIG_API_VERSION,
        "kind": "CredentialProviderConfig",
        "providers": [provider],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    /// A JWT-shaped token with the given payload (the signature is not
    /// checked here).
    fn jwt(payload: serde_json::Value) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.c2lnbmF0dXJl",
            b64.encode(br#"{"alg":"RS256","kid":"k"}"#),
            b64.encode(payload.to_string())
        )
    }

    fn pod_token() -> String {
        jwt(serde_json::json!({
            "aud": ["berth.dev"],
            "sub": "system:serviceaccount:team:default",
            "exp": NOW + 3600,
            "iat": NOW,
        }))
    }

    fn request(image: &str, token: &str) -> Request {
        Request {
            api_version: API_VERSION.into(),
            kind: "CredentialProviderRequest".into(),
            image: image.into(),
            service_account_token: token.into(),
            service_account_annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn the_pods_token_is_the_password_for_the_images_registry_host() {
        let token = pod_token();
        let response = respond(
            &request("hub.team.svc.cluster.local/team/app:v1", &token),
            NOW,
        );
        assert_eq!(response.api_version, API_VERSION);
        assert_eq!(response.kind, "CredentialProviderResponse");
        assert_eq!(response.cache_key_type, "Registry");
        assert_eq!(response.auth.len(), 1);
        let auth = &response.auth["hub.team.svc.cluster.local"];
        assert_eq!(auth.username, USERNAME);
        assert_eq!(auth.password, token);
    }

    #[test]
    fn the_auth_key_keeps_the_port_the_image_names() {
        let response = respond(
            &request("hub.berth.internal:5000/team/app@sha256:abc", &pod_token()),
            NOW,
        );
        assert_eq!(
            response.auth.keys().collect::<Vec<_>>(),
            ["hub.berth.internal:5000"]
        );
    }

    #[test]
    fn no_token_answers_no_credentials_rather_than_failing() {
        let response = respond(&request("hub.team.svc.cluster.local/team/app", ""), NOW);
        assert!(response.auth.is_empty());
        assert_eq!(response.cache_duration, "0s");
        let json = serde_json::to_value(&response).expect("ok");
        assert!(json.get("auth").is_none(), "{json}");
    }

    #[test]
    fn an_image_without_a_registry_host_never_gets_the_token() {
        for image in ["app:v1", "team/app:v1", "team/app", "library/busybox"] {
            let response = respond(&request(image, &pod_token()), NOW);
            assert!(response.auth.is_empty(), "{image}");
        }
    }

    #[test]
    fn registry_hosts_follow_the_reference_grammar() {
        assert_eq!(registry_host("localhost/a"), Some("localhost"));
        assert_eq!(
            registry_host("127.0.0.1:5443/a/b:1"),
            Some("127.0.0.1:5443")
        );
        assert_eq!(registry_host("hub:5000/a"), Some("hub:5000"));
        assert_eq!(registry_host("hub/a"), None);
        assert_eq!(registry_host("hub.x/"), None);
        assert_eq!(registry_host("hub x.y/a"), None);
    }

    #[test]
    fn the_cache_is_shorter_than_the_tokens_life() {
        assert_eq!(cache_seconds(Some(NOW + 3600), NOW), MAX_CACHE_SECONDS);
        assert_eq!(cache_seconds(Some(NOW + 200), NOW), 100);
        assert_eq!(cache_seconds(Some(NOW - 5), NOW), 0);
        assert_eq!(cache_seconds(None, NOW), UNKNOWN_EXPIRY_CACHE_SECONDS);
        let response = respond(&request("a.b/c", &pod_token()), NOW);
        assert_eq!(response.cache_duration, "300s");
        let opaque = respond(&request("a.b/c", "not-a-jwt"), NOW);
        assert_eq!(opaque.cache_duration, "60s");
        assert_eq!(opaque.auth["a.b"].password, "not-a-jwt");
    }

    #[test]
    fn the_response_is_the_json_the_kubelet_decodes() {
        let response = respond(&request("a.b/c", "t.o.k"), NOW);
        let json = serde_json::to_value(&response).expect("ok");
        assert_eq!(
            json,
            serde_json::json!({
                "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
                "kind": "CredentialProviderResponse",
                "cacheKeyType": "Registry",
                "cacheDuration": "60s",
                "auth": {"a.b": {"username": "berth-sa", "password": "t.o.k"}},
            })
        );
    }

    #[test]
    fn a_request_from_the_kubelet_parses() {
        let token = pod_token();
        let body = serde_json::json!({
            "kind": "CredentialProviderRequest",
            "apiVersion": API_VERSION,
            "image": "hub.team.svc.cluster.local/team/app:v1",
            "serviceAccountToken": token,
            "serviceAccountAnnotations": {"a": "b"},
        });
        let parsed = parse_request(body.to_string().as_bytes()).expect("ok");
        assert_eq!(parsed.image, "hub.team.svc.cluster.local/team/app:v1");
        assert_eq!(parsed.service_account_token, token);
        assert_eq!(parsed.service_account_annotations["a"], "b");
        // Without a token (no tokenAttributes, or a pod without a service account).
        let bare = format!(
            r#"{{"kind":"CredentialProviderRequest","apiVersion":"{API_VERSION}","image":"a.b/c"}}"#
        );
        assert_eq!(
            parse_request(bare.as_bytes())
                .expect("ok")
                .service_account_token,
            ""
        );
    }

    #[test]
    fn bad_requests_are_refused_without_quoting_them() {
        let secret = "eyJzZWNyZXQ";
        let cases = [
            format!(
                r#"{{"apiVersion":"{API_VERSION}","kind":"CredentialProviderRequest","image":"a.b/c","serviceAccountToken":{secret}}}"#
            ),
            format!(
                r#"{{"apiVersion":"{API_VERSION}","kind":"CredentialProviderRequest","image":"a.b/c","serviceAccountToken":["{secret}"]}}"#
            ),
            format!(
                r#"{{"apiVersion":"credentialprovider.kubelet.k8s.io/v1beta1","kind":"CredentialProviderRequest","image":"a.b/c","serviceAccountToken":"{secret}"}}"#
            ),
            format!(
                r#"{{"apiVersion":"{API_VERSION}","kind":"Other","image":"a.b/c","serviceAccountToken":"{secret}"}}"#
            ),
            format!(
                r#"{{"apiVersion":"{API_VERSION}","kind":"CredentialProviderRequest","serviceAccountToken":"{secret}"}}"#
            ),
        ];
        for case in cases {
            let error = parse_request(case.as_bytes())
                .expect_err("refused")
                .to_string();
            assert!(!error.contains(secret), "{error}");
        }
        assert!(matches!(
            parse_request(b"{\"apiVersion\":\"x\"}"),
            Err(Error::ApiVersion(_))
        ));
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let token = pod_token();
        let req = request("a.b/c", &token);
        let shown = format!("{req:?} {:?}", respond(&req, NOW));
        assert!(!shown.contains(&token), "{shown}");
        assert!(shown.contains(&token_fingerprint(&token)));
    }

    #[test]
    fn the_log_line_names_the_token_by_hash_and_claims_only() {
        let token = pod_token();
        let req = request("hub.team.svc.cluster.local/team/app:v1", &token);
        let record = log_record(&req, &respond(&req, NOW), NOW);
        let line = serde_json::to_string(&record).expect("ok");
        assert!(!line.contains(&token));
        assert!(!line.contains(token.split('.').nth(1).expect("ok")));
        assert_eq!(record.answered, "token");
        assert_eq!(
            record.registry.as_deref(),
            Some("hub.team.svc.cluster.local")
        );
        let claims = record.claims.expect("ok");
        assert_eq!(claims.aud, ["berth.dev"]);
        assert_eq!(
            claims.sub.as_deref(),
            Some("system:serviceaccount:team:default")
        );
        assert!(record.token_sha256.starts_with("sha256:"));
        assert_eq!(record.token_sha256.len(), "sha256:".len() + 12);
    }

    #[test]
    fn a_single_string_audience_is_read_too() {
        let claims = token_claims(&jwt(serde_json::json!({"aud": "berth.dev"}))).expect("ok");
        assert_eq!(claims.aud, ["berth.dev"]);
        assert_eq!(token_claims("a.b"), None);
        assert_eq!(token_claims("a.!!.c"), None);
    }

    #[test]
    fn run_answers_on_output_and_logs_without_the_token() {
        let dir = tempfile::tempdir().expect("ok");
        let log = dir.path().join("plugin.log");
        let token = pod_token();
        let input = serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": "CredentialProviderRequest",
            "image": "hub.team.svc.cluster.local/team/app:v1",
            "serviceAccountToken": token,
        })
        .to_string();
        let mut out = Vec::new();
        run(input.as_bytes(), &mut out, Some(&log), NOW).expect("ok");
        let answer: serde_json::Value = serde_json::from_slice(&out).expect("ok");
        assert_eq!(
            answer["auth"]["hub.team.svc.cluster.local"]["password"],
            token.as_str()
        );
        let logged = std::fs::read_to_string(&log).expect("ok");
        assert_eq!(logged.lines().count(), 1);
        assert!(!logged.contains(&token));
        assert!(logged.contains("system:serviceaccount:team:default"));
    }

    #[test]
    fn the_kubelet_config_opts_into_pod_tokens_for_berths_audience() {
        let config = kubelet_config(&KubeletConfig {
            match_images: default_match_images("cluster.local"),
            log_path: Some("/var/log/berth-cp.log".into()),
        });
        assert_eq!(config["apiVersion"], CONFIG_API_VERSION);
        assert_eq!(config["kind"], "CredentialProviderConfig");
        let provider = &config["providers"][0];
        assert_eq!(provider["name"], PLUGIN_NAME);
        assert_eq!(provider["apiVersion"], API_VERSION);
        assert_eq!(
            provider["matchImages"],
            serde_json::json!(["*.*.svc.cluster.local"])
        );
        assert_eq!(provider["args"], serde_json::json!([SUBCOMMAND]));
        assert_eq!(provider["defaultCacheDuration"], "0s");
        let token = &provider["tokenAttributes"];
        assert_eq!(token["serviceAccountTokenAudience"], "berth.dev");
        assert_eq!(token["cacheType"], "Token");
        assert_eq!(token["requireServiceAccount"], true);
        assert_eq!(provider["env"][0]["name"], LOG_ENV);
        let no_log = kubelet_config(&KubeletConfig {
            match_images: vec!["a.b".into()],
            log_path: None,
        });
        assert!(no_log["providers"][0].get("env").is_none());
    }
}
