//! Garbage collection, the operator's side: it tells the registry which
//! images the cluster's pods run (the `<name>-gc` ConfigMap, built in
//! [`crate::desired::gc`]) and reads back what the newest GC run did
//! (`GET /berth/v1/gc` on the registry's Service, over HTTPS with the CA it
//! issued, logged in with a short-lived robot token it signs) into
//! `status.gc`, with an Event per new run.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use berth_access::claims::{Claims, TokenKind};
use berth_access::config::service_name;
use berth_access::gc::GcRun;
use berth_access::keys::{self, Signer};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use x509_parser::pem::Pem;

use crate::crd::GcRunStatus;
use crate::desired::pull_secret::ROBOT_USER;
use crate::names::Names;

/// With GC on, a Registry is reconciled at least this often: the in-use
/// list follows new pods (far within GC's default grace plus quarantine,
/// so an image a new pod runs is back in place before it could be
/// deleted) and `status.gc` follows new runs.
pub const REFRESH: Duration = Duration::from_secs(300);

/// How long the operator's own token lives.
const TOKEN_LIFETIME: i64 = 300;

/// The robot subject the operator's token carries (no repository rights).
pub const OPERATOR_ROBOT: &str = "berth-operator";

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("the registry's address {0:?} is not a URL")]
    Url(String),
    #[error("the CA bundle has no certificate to trust the registry with")]
    NoCa,
    #[error("cannot sign a token for the registry: {0}")]
    Sign(String),
    #[error("cannot reach the registry: {0}")]
    Kube(#[from] kube::Error),
}

/// The claims of the operator's token for this Registry: who it is, no
/// grants (the GC record asks for a login only).
pub fn operator_claims(names: &Names, now: Timestamp) -> Claims {
    let service = service_name(&names.namespace, &names.name);
    Claims {
        iss: service.clone(),
        sub: Claims::robot_subject(OPERATOR_ROBOT),
        aud: service,
        exp: now.as_second().saturating_add(TOKEN_LIFETIME),
        nbf: now.as_second(),
        iat: now.as_second(),
        jti: keys::random_id(),
        access: Vec::new(),
        kind: TokenKind::Robot,
        groups: Vec::new(),
        uid: None,
    }
}

/// The DER certificates of a PEM bundle.
fn ders(pem: &str) -> Vec<Vec<u8>> {
    Pem::iter_from_buffer(pem.as_bytes())
        .filter_map(Result::ok)
        .filter(|b| b.label == "CERTIFICATE")
        .map(|b| b.contents)
        .collect()
}

/// The registry's record of its newest GC run; `None` before the first.
/// `upstream` is `https://<ClusterIP>:<port>` (the serving certificate
/// names the ClusterIP); `signer`, when auth is on.
pub async fn fetch_last_run(
    upstream: &str,
    ca_bundle: &str,
    names: &Names,
    signer: Option<&Signer>,
    now: Timestamp,
) -> Result<Option<GcRun>, FetchError> {
    fetch(upstream, ca_bundle, names, signer, now, "/berth/v1/gc").await
}

/// GETs `path` (JSON) from the registry as [`fetch_last_run`] does; `None`
/// for a 404.
pub async fn fetch<T: serde::de::DeserializeOwned>(
    upstream: &str,
    ca_bundle: &str,
    names: &Names,
    signer: Option<&Signer>,
    now: Timestamp,
    path: &str,
) -> Result<Option<T>, FetchError> {
    let url: axum::http::Uri = upstream
        .parse()
        .map_err(|_| FetchError::Url(upstream.to_owned()))?;
    let roots = ders(ca_bundle);
    if roots.is_empty() {
        return Err(FetchError::NoCa);
    }
    let mut config = kube::Config::new(url);
    config.root_cert = Some(roots);
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(10));
    config.default_retry = false;
    if let Some(signer) = signer {
        let token = signer
            .sign(&operator_claims(names, now))
            .map_err(|e| FetchError::Sign(e.to_string()))?;
        let basic = STANDARD.encode(format!("{ROBOT_USER}:{token}"));
        let mut value = axum::http::HeaderValue::from_str(&format!("Basic {basic}"))
            .map_err(|e| FetchError::Sign(e.to_string()))?;
        value.set_sensitive(true);
        config
            .headers
            .push((axum::http::header::AUTHORIZATION, value));
    }
    let client = kube::Client::try_from(config)?;
    let request = axum::http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| FetchError::Url(e.to_string()))?;
    match client.request::<T>(request).await {
        Ok(answer) => Ok(Some(answer)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `status.gc.lastRun` from the registry's record; `None` if its time is
/// unreadable.
pub fn run_status(run: &GcRun) -> Option<GcRunStatus> {
    let time: Timestamp = run.finished.parse().ok()?;
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    Some(GcRunStatus {
        time: Time(time),
        duration_seconds: run.duration_millis as f64 / 1000.0,
        error: run.error.clone(),
        tags_removed: n(run.tags_removed),
        tags_kept_in_use: n(run.tags_kept_in_use),
        manifests_quarantined: n(run.manifests_quarantined),
        blobs_quarantined: n(run.blobs_quarantined),
        bytes_quarantined: n(run.bytes_quarantined),
        manifests_deleted: n(run.manifests_deleted),
        blobs_deleted: n(run.blobs_deleted),
        bytes_reclaimed: n(run.bytes_reclaimed),
    })
}

/// The Event for a run not seen before: (warning?, reason, note); `None`
/// when `run` is the run `previous` already describes.
pub fn event(
    previous: Option<&GcRunStatus>,
    run: &GcRunStatus,
) -> Option<(bool, &'static str, String)> {
    if previous.is_some_and(|p| p.time == run.time) {
        return None;
    }
    let summary = format!(
        "{} tags removed by retention ({} kept because pods run them); {} manifests and {} blobs ({} bytes) quarantined; {} manifests and {} blobs deleted, {} bytes reclaimed; {:.1} s",
        run.tags_removed,
        run.tags_kept_in_use,
        run.manifests_quarantined,
        run.blobs_quarantined,
        run.bytes_quarantined,
        run.manifests_deleted,
        run.blobs_deleted,
        run.bytes_reclaimed,
        run.duration_seconds,
    );
    Some(match &run.error {
        None => (false, "GarbageCollected", summary),
        Some(e) => (
            true,
            "GarbageCollectionFailed",
            format!("{e}; the next run finishes what this one left. So far: {summary}"),
        ),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn record(finished: &str) -> GcRun {
        GcRun {
            finished: finished.into(),
            duration_millis: 1500,
            tags_removed: 3,
            tags_kept_in_use: 1,
            manifests_quarantined: 2,
            blobs_quarantined: 5,
            bytes_quarantined: 1000,
            manifests_deleted: 1,
            blobs_deleted: 4,
            bytes_reclaimed: 800,
            ..GcRun::default()
        }
    }

    #[test]
    fn a_new_run_is_an_event_and_the_same_run_is_not() {
        let first = run_status(&record("2026-11-30T10:00:00Z")).unwrap();
        assert_eq!(first.duration_seconds, 1.5);
        assert_eq!(first.bytes_reclaimed, 800);
        let (warning, reason, note) = event(None, &first).unwrap();
        assert!(!warning);
        assert_eq!(reason, "GarbageCollected");
        assert!(
            note.starts_with("3 tags removed by retention (1 kept"),
            "{note}"
        );
        assert!(event(Some(&first), &first).is_none());
        let second = run_status(&record("2026-11-30T11:00:00Z")).unwrap();
        assert!(event(Some(&first), &second).is_some());
    }

    #[test]
    fn a_failed_run_is_a_warning_that_says_what_failed() {
        let mut r = record("2026-11-30T10:00:00Z");
        r.error = Some("storage list of blobs failed".into());
        let (warning, reason, note) = event(None, &run_status(&r).unwrap()).unwrap();
        assert!(warning);
        assert_eq!(reason, "GarbageCollectionFailed");
        assert!(note.starts_with("storage list of blobs failed"), "{note}");
    }

    #[test]
    fn an_unreadable_time_gives_no_status() {
        assert!(run_status(&record("yesterday")).is_none());
    }

    #[test]
    fn the_operator_token_names_the_operator_and_grants_nothing() {
        let (private, public) = keys::generate().unwrap();
        let signer = Signer::from_pem(private.as_bytes()).unwrap();
        // Verification checks expiry against the real clock: sign for now.
        let token = signer
            .sign(&operator_claims(&fixtures::names(), Timestamp::now()))
            .unwrap();
        let verifier = berth_access::Verifier::from_pem(public.as_bytes()).unwrap();
        let service = service_name(fixtures::NAMESPACE, fixtures::NAME);
        let claims = verifier.verify(&token, &service, &service).unwrap();
        assert_eq!(claims.sub, "berth:robot:berth-operator");
        assert!(claims.access.is_empty());
        assert_eq!(claims.kind, TokenKind::Robot);
    }

    #[test]
    fn the_ca_bundle_gives_its_certificates() {
        let ca = crate::pki::issue_ca("test", Timestamp::now()).unwrap();
        let pem = ca.cert_pem.clone();
        assert_eq!(ders(&format!("{pem}{pem}")).len(), 2);
        assert!(ders("junk").is_empty());
    }
}
