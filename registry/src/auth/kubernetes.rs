//! Kubernetes mode: who a token belongs to (TokenReview) and what RBAC lets
//! them do with a repository (SubjectAccessReview).
//!
//! Repository `<ns>/<rest>` belongs to namespace `<ns>`; an action on it is
//! allowed when a SubjectAccessReview says the caller may use
//! [`repository::verb`] on `repositories.berth.dev`, name `<rest>`, in
//! `<ns>` (see [`berth_access::repository`]). A namespace's own service
//! accounts may pull its repositories with no RoleBinding when
//! `same_namespace_pull` is on.
//!
//! Audiences: a token may be minted for the apiserver itself (`kubectl
//! create token builder`) or for one of the configured audiences (the
//! kubelet asks for [`berth_access::config::CREDENTIAL_PROVIDER_AUDIENCE`]
//! for the credential provider). A TokenReview with `spec.audiences` set
//! accepts only those audiences, and with none set only the apiserver's, so
//! the review asks for the configured audiences plus the apiserver's own
//! when they are known (read from the registry's own mounted token, or
//! learned from earlier reviews), and falls back to a second review with
//! the apiserver's defaults while they are not known for sure.
//!
//! Answers are cached for seconds in bounded caches (token reviews keyed by
//! the token's SHA-256, never the token), so a 20-layer pull costs a few
//! apiserver calls; identical concurrent lookups share one call. When the
//! apiserver does not answer (every call has a deadline), nothing new is
//! granted: the caller gets [`KubernetesError`] and cached answers run out
//! on their own time.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use berth_access::config::KubernetesAuth;
use berth_access::repository::{self, NamespaceError};
use berth_access::{Action, Actions};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use kube::config::KubeConfigOptions;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

/// Deadline of one apiserver call, so a hung apiserver cannot hang pulls.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Entries per cache; the oldest goes first when full.
const CACHE_CAPACITY: usize = 4096;
const VALID_TOKEN_TTL: Duration = Duration::from_secs(10);
/// Shorter, so a token that was just created (or a transient refusal) is
/// retried soon.
const INVALID_TOKEN_TTL: Duration = Duration::from_secs(2);
const ALLOWED_TTL: Duration = Duration::from_secs(10);
/// Shorter, so a RoleBinding that was just created takes effect soon.
const DENIED_TTL: Duration = Duration::from_secs(5);
/// Where a pod's own service-account token is mounted.
const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// How many learned apiserver audiences to keep (an apiserver has a few).
const MAX_LEARNED_AUDIENCES: usize = 8;

const TOKEN_REVIEW: &str = "TokenReview";
const ACCESS_REVIEW: &str = "SubjectAccessReview";

/// A caller as the apiserver knows them (from a TokenReview).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KubeUser {
    pub name: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error(
        "cannot set up the Kubernetes client: {0}; in Kubernetes auth mode the registry uses its pod's service account, or the kubeconfig named by KUBECONFIG when that is set"
    )]
    Config(String),
    #[error(
        "the Kubernetes apiserver did not answer the {review} ({detail}); nothing new is granted until it does: check that the registry can reach the apiserver"
    )]
    Unreachable {
        review: &'static str,
        detail: String,
    },
    #[error(
        "the Kubernetes apiserver refused the {review} (HTTP {code}: {message}); the registry's service account needs create on tokenreviews.authentication.k8s.io and subjectaccessreviews.authorization.k8s.io (the chart's ClusterRole grants both)"
    )]
    Api {
        review: &'static str,
        code: u16,
        message: String,
    },
    #[error(transparent)]
    Repository(#[from] NamespaceError),
}

/// Identity and permission checks against the apiserver, cached.
pub struct Kubernetes {
    client: kube::Client,
    same_namespace_pull: bool,
    /// Audiences accepted besides the apiserver's own.
    audiences: Vec<String>,
    apiserver_audiences: Mutex<ApiserverAudiences>,
    tokens: TtlCache<[u8; 32], Option<KubeUser>, KubernetesError>,
    decisions: TtlCache<DecisionKey, bool, KubernetesError>,
    calls: AtomicU64,
}

/// The apiserver's own audiences, as far as they are known.
#[derive(Clone, Debug, Default)]
struct ApiserverAudiences {
    known: Vec<String>,
    /// `known` came from a token minted with the apiserver's default
    /// audiences, so it is all of them.
    complete: bool,
}

/// What one SubjectAccessReview decided, by everything it was asked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct DecisionKey {
    user: String,
    uid: Option<String>,
    groups: Vec<String>,
    namespace: String,
    /// None: any repository in the namespace (the catalog's question).
    name: Option<String>,
    verb: &'static str,
}

impl Kubernetes {
    /// In-cluster config (the pod's service account), or KUBECONFIG when set
    /// (tests, local runs).
    pub async fn connect(cfg: &KubernetesAuth) -> Result<Kubernetes, KubernetesError> {
        let kubeconfig_set = std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty());
        let (config, own_token) = if kubeconfig_set {
            let config = kube::Config::from_kubeconfig(&KubeConfigOptions::default())
                .await
                .map_err(|e| KubernetesError::Config(format!("reading KUBECONFIG: {e}")))?;
            (config, None)
        } else {
            let config = kube::Config::incluster()
                .map_err(|e| KubernetesError::Config(format!("in-cluster config: {e}")))?;
            (
                config,
                tokio::fs::read_to_string(SERVICE_ACCOUNT_TOKEN).await.ok(),
            )
        };
        // The registry's own token was minted with the apiserver's default
        // audiences (all of them), so its `aud` names them.
        let apiserver_audiences = own_token.as_deref().and_then(jwt_audiences);
        Self::with_config(cfg, config, apiserver_audiences)
    }

    /// From a client config; `apiserver_audiences` when they are known for
    /// sure (all of them), else they are learned from reviews.
    pub fn with_config(
        cfg: &KubernetesAuth,
        mut config: kube::Config,
        apiserver_audiences: Option<Vec<String>>,
    ) -> Result<Kubernetes, KubernetesError> {
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        config.read_timeout = Some(CALL_TIMEOUT);
        config.write_timeout = Some(CALL_TIMEOUT);
        let client = kube::Client::try_from(config)
            .map_err(|e| KubernetesError::Config(format!("building the client: {e}")))?;
        let apiserver_audiences = match apiserver_audiences {
            Some(known) if !known.is_empty() => ApiserverAudiences {
                known,
                complete: true,
            },
            _ => ApiserverAudiences::default(),
        };
        Ok(Kubernetes {
            client,
            same_namespace_pull: cfg.same_namespace_pull,
            audiences: cfg.audiences.clone(),
            apiserver_audiences: Mutex::new(apiserver_audiences),
            tokens: TtlCache::new(CACHE_CAPACITY),
            decisions: TtlCache::new(CACHE_CAPACITY),
            calls: AtomicU64::new(0),
        })
    }

    /// How many reviews this has sent to the apiserver (for tests and
    /// metrics: cache hits send none).
    pub fn apiserver_calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// TokenReview; Ok(None) when the token is not valid (expired, deleted
    /// service account, wrong audience).
    pub async fn authenticate(&self, token: &str) -> Result<Option<KubeUser>, KubernetesError> {
        if token.is_empty() {
            return Ok(None);
        }
        self.tokens
            .get_or_fetch(
                token_key(token),
                |user| {
                    if user.is_some() {
                        VALID_TOKEN_TTL
                    } else {
                        INVALID_TOKEN_TTL
                    }
                },
                || self.review_token(token),
            )
            .await
    }

    /// SubjectAccessReviews for each action in `wanted` on `repository`
    /// (`<ns>/<rest>`): the allowed subset. An error for any one of them is
    /// the answer for all: nothing is granted on a partial view.
    pub async fn allowed(
        &self,
        user: &KubeUser,
        repository: &str,
        wanted: Actions,
    ) -> Result<Actions, KubernetesError> {
        let path = repository::split(repository)?;
        let checks = wanted.iter().map(|action| {
            let path = &path;
            async move {
                if action == Action::Pull
                    && same_namespace_pull(self.same_namespace_pull, user, path.namespace)
                {
                    return Ok((action, true));
                }
                let ok = self
                    .access(
                        user,
                        path.namespace,
                        Some(path.rest),
                        repository::verb(action),
                    )
                    .await?;
                Ok::<_, KubernetesError>((action, ok))
            }
        });
        let mut granted = Actions::NONE;
        for result in futures_util::future::join_all(checks).await {
            let (action, ok) = result?;
            if ok {
                granted = granted.with(action);
            }
        }
        Ok(granted)
    }

    /// For the catalog: whether `user` may pull anything in `namespace` (SAR
    /// verb get on repositories with no name).
    pub async fn may_pull_namespace(
        &self,
        user: &KubeUser,
        namespace: &str,
    ) -> Result<bool, KubernetesError> {
        if !repository::is_dns1123_label(namespace) {
            return Ok(false);
        }
        if same_namespace_pull(self.same_namespace_pull, user, namespace) {
            return Ok(true);
        }
        self.access(user, namespace, None, repository::verb(Action::Pull))
            .await
    }

    /// One review with the configured audiences and the apiserver's known
    /// ones; a second with the apiserver's defaults unless those are known
    /// to be all of them.
    async fn review_token(&self, token: &str) -> Result<Option<KubeUser>, KubernetesError> {
        let (first, complete) = {
            let known = self
                .apiserver_audiences
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            (union(&self.audiences, &known.known), known.complete)
        };
        if !first.is_empty() {
            if let Some((user, _)) = self.token_review(token, first).await? {
                return Ok(Some(user));
            }
            if complete {
                return Ok(None);
            }
        }
        let Some((user, audiences)) = self.token_review(token, Vec::new()).await? else {
            return Ok(None);
        };
        // A review with no audiences answers with the apiserver's own that
        // the token carries: learn them, so the next token needs one review.
        let mut known = self
            .apiserver_audiences
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        learn(&mut known, &audiences);
        Ok(Some(user))
    }

    async fn token_review(
        &self,
        token: &str,
        audiences: Vec<String>,
    ) -> Result<Option<(KubeUser, Vec<String>)>, KubernetesError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: (!audiences.is_empty()).then(|| audiences.clone()),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = self
            .call(TOKEN_REVIEW, api.create(&PostParams::default(), &review))
            .await
            .inspect_err(|e| {
                tracing::warn!(error = %e, "identity check failed; nothing new is granted");
            })?;
        let status = answer.status.unwrap_or_default();
        if let Some(error) = status.error.as_deref().filter(|e| !e.is_empty()) {
            // The apiserver's reason (e.g. "service account token has been
            // invalidated"); it never contains the token.
            tracing::debug!(reason = error, "token refused by TokenReview");
        }
        Ok(reviewed_user(&audiences, status))
    }

    async fn access(
        &self,
        user: &KubeUser,
        namespace: &str,
        name: Option<&str>,
        verb: &'static str,
    ) -> Result<bool, KubernetesError> {
        let key = DecisionKey {
            user: user.name.clone(),
            uid: user.uid.clone(),
            groups: user.groups.clone(),
            namespace: namespace.to_owned(),
            name: name.map(str::to_owned),
            verb,
        };
        let review = access_review(&key);
        self.decisions
            .get_or_fetch(
                key,
                |allowed| if *allowed { ALLOWED_TTL } else { DENIED_TTL },
                || async {
                    let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
                    let answer = self
                        .call(ACCESS_REVIEW, api.create(&PostParams::default(), &review))
                        .await
                        .inspect_err(|e| {
                            tracing::warn!(user = %user.name, namespace, verb, error = %e, "permission check failed; nothing new is granted");
                        })?;
                    let status = answer.status.unwrap_or_default();
                    if let Some(error) = status.evaluation_error.as_deref().filter(|e| !e.is_empty()) {
                        tracing::debug!(user = %user.name, namespace, verb, error, "SubjectAccessReview evaluation error");
                    }
                    Ok(status.allowed)
                },
            )
            .await
    }

    /// One apiserver call, counted, with a deadline.
    async fn call<T>(
        &self,
        review: &'static str,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, KubernetesError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(CALL_TIMEOUT, request).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(call_error(review, e)),
            Err(_) => Err(KubernetesError::Unreachable {
                review,
                detail: format!("no answer within {} s", CALL_TIMEOUT.as_secs()),
            }),
        }
    }
}

fn call_error(review: &'static str, e: kube::Error) -> KubernetesError {
    match e {
        kube::Error::Api(status) => KubernetesError::Api {
            review,
            code: status.code,
            message: status.message,
        },
        other => KubernetesError::Unreachable {
            review,
            detail: other.to_string(),
        },
    }
}

/// The cache key of a token: its SHA-256, so no token is kept in memory
/// past its request.
fn token_key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// `a` then the members of `b` not in `a`.
fn union(a: &[String], b: &[String]) -> Vec<String> {
    let mut all = a.to_vec();
    for x in b {
        if !all.contains(x) {
            all.push(x.clone());
        }
    }
    all
}

fn learn(known: &mut ApiserverAudiences, audiences: &[String]) {
    if known.complete {
        return;
    }
    for a in audiences {
        if known.known.len() < MAX_LEARNED_AUDIENCES && !known.known.contains(a) {
            known.known.push(a.clone());
        }
    }
}

/// The user of a TokenReview's answer, with the audiences it matched; None
/// unless authenticated. When audiences were asked for, an audience-aware
/// apiserver answers with the ones the token matched: an answer naming
/// none of them is refused. An empty answer means the token is valid for
/// the apiserver itself (the documented meaning), which is accepted.
fn reviewed_user(
    requested: &[String],
    status: TokenReviewStatus,
) -> Option<(KubeUser, Vec<String>)> {
    if status.authenticated != Some(true) {
        return None;
    }
    let audiences = status.audiences.unwrap_or_default();
    if !requested.is_empty()
        && !audiences.is_empty()
        && !audiences.iter().any(|a| requested.contains(a))
    {
        return None;
    }
    let info = status.user?;
    let name = info.username.filter(|n| !n.is_empty())?;
    Some((
        KubeUser {
            name,
            uid: info.uid.filter(|u| !u.is_empty()),
            groups: info.groups.unwrap_or_default(),
        },
        audiences,
    ))
}

/// Whether `user` is one of `namespace`'s own service accounts and that is
/// enough to pull there. Both the user name and the group the apiserver
/// gives every service account of the namespace must say so.
fn same_namespace_pull(enabled: bool, user: &KubeUser, namespace: &str) -> bool {
    enabled
        && repository::service_account_namespace(&user.name) == Some(namespace)
        && user
            .groups
            .iter()
            .any(|g| g.strip_prefix("system:serviceaccounts:") == Some(namespace))
}

fn access_review(key: &DecisionKey) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(key.user.clone()),
            uid: key.uid.clone(),
            groups: Some(key.groups.clone()),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(key.namespace.clone()),
                verb: Some(key.verb.to_owned()),
                group: Some(repository::GROUP.to_owned()),
                resource: Some(repository::RESOURCE.to_owned()),
                name: key.name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The `aud` of a JWT, read without checking the signature: only used on
/// the registry's own mounted token, to learn the apiserver's audiences.
fn jwt_audiences(token: &str) -> Option<Vec<String>> {
    let payload = token.trim().split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let audiences: Vec<String> = match claims.get("aud")? {
        serde_json::Value::String(a) => vec![a.clone()],
        serde_json::Value::Array(list) => list
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect(),
        _ => return None,
    };
    (!audiences.is_empty()).then_some(audiences)
}

/// A bounded cache of answers that expire, where concurrent lookups of one
/// key share one fetch. Errors are shared with the lookups waiting at the
/// time, never kept.
struct TtlCache<K, V, E> {
    capacity: usize,
    inner: Mutex<CacheInner<K, V, E>>,
}

type Cell<V, E> = Arc<OnceCell<Result<V, E>>>;

struct CacheInner<K, V, E> {
    entries: HashMap<K, Slot<V, E>>,
    /// Insertion order (sequence number → key), oldest first.
    order: BTreeMap<u64, K>,
    next: u64,
}

struct Slot<V, E> {
    seq: u64,
    cell: Cell<V, E>,
    /// None while the fetch is under way.
    expires: Option<Instant>,
}

enum Claim<V, E> {
    Hit(V),
    Fetch(Cell<V, E>),
}

impl<K: Clone + Eq + Hash, V: Clone, E: Clone> TtlCache<K, V, E> {
    fn new(capacity: usize) -> Self {
        TtlCache {
            capacity: capacity.max(1),
            inner: Mutex::new(CacheInner {
                entries: HashMap::new(),
                order: BTreeMap::new(),
                next: 0,
            }),
        }
    }

    async fn get_or_fetch<F, Fut>(
        &self,
        key: K,
        ttl: impl Fn(&V) -> Duration,
        fetch: F,
    ) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let cell = match self.claim(&key, Instant::now()) {
            Claim::Hit(value) => return Ok(value),
            Claim::Fetch(cell) => cell,
        };
        // Whoever gets here first runs its fetch; the others wait for it (or
        // run theirs, should the first be cancelled).
        let result = cell.get_or_init(fetch).await.clone();
        let ttl = result.as_ref().map(&ttl).unwrap_or(Duration::ZERO);
        self.finish(&key, &cell, result.is_ok(), ttl, Instant::now());
        result
    }

    /// A fresh answer, or the cell to fetch one into (shared with any
    /// lookup of the same key under way).
    fn claim(&self, key: &K, now: Instant) -> Claim<V, E> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = inner.entries.get(key) {
            match (slot.expires, slot.cell.get()) {
                (Some(expires), Some(Ok(value))) if expires > now => {
                    return Claim::Hit(value.clone());
                }
                (None, _) => return Claim::Fetch(slot.cell.clone()),
                _ => inner.remove(key),
            }
        }
        inner.evict(self.capacity, now);
        let cell: Cell<V, E> = Arc::new(OnceCell::new());
        let seq = inner.next;
        inner.next += 1;
        inner.order.insert(seq, key.clone());
        inner.entries.insert(
            key.clone(),
            Slot {
                seq,
                cell: cell.clone(),
                expires: None,
            },
        );
        Claim::Fetch(cell)
    }

    /// Starts the answer's time to live, or forgets a failed fetch.
    fn finish(&self, key: &K, cell: &Cell<V, E>, ok: bool, ttl: Duration, now: Instant) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(slot) = inner.entries.get_mut(key) else {
            return;
        };
        if !Arc::ptr_eq(&slot.cell, cell) {
            return;
        }
        if ok {
            // The first of the waiters starts the clock; the rest keep it.
            slot.expires.get_or_insert(now + ttl);
        } else {
            inner.remove(key);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.entries.len()
    }
}

impl<K: Clone + Eq + Hash, V, E> CacheInner<K, V, E> {
    fn remove(&mut self, key: &K) {
        if let Some(slot) = self.entries.remove(key) {
            self.order.remove(&slot.seq);
        }
    }

    /// Makes room for one more: expired answers at the old end go first,
    /// then the oldest entries.
    fn evict(&mut self, capacity: usize, now: Instant) {
        while let Some((&seq, key)) = self.order.first_key_value() {
            let expired = self
                .entries
                .get(key)
                .is_none_or(|slot| slot.expires.is_some_and(|t| t <= now));
            if !expired && self.entries.len() < capacity {
                break;
            }
            let key = key.clone();
            self.order.remove(&seq);
            self.entries.remove(&key);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;
    use std::sync::atomic::AtomicUsize;

    fn sa(ns: &str, name: &str) -> KubeUser {
        KubeUser {
            name: repository::service_account_user(ns, name),
            uid: Some("u-1".into()),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ],
        }
    }

    #[test]
    fn a_namespaces_own_service_accounts_may_pull_there() {
        assert!(same_namespace_pull(true, &sa("team", "builder"), "team"));
        assert!(!same_namespace_pull(true, &sa("team", "builder"), "other"));
        assert!(!same_namespace_pull(false, &sa("team", "builder"), "team"));
    }

    #[test]
    fn a_user_merely_named_like_a_service_account_is_not_one() {
        let mut u = sa("team", "builder");
        u.groups = vec!["system:authenticated".into()];
        assert!(!same_namespace_pull(true, &u, "team"));
        let person = KubeUser {
            name: "alice".into(),
            uid: None,
            groups: vec!["system:serviceaccounts:team".into()],
        };
        assert!(!same_namespace_pull(true, &person, "team"));
    }

    fn status(authenticated: bool, audiences: &[&str]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            user: Some(UserInfo {
                username: Some("system:serviceaccount:team:builder".into()),
                uid: Some("u-1".into()),
                groups: Some(vec!["system:serviceaccounts:team".into()]),
                extra: None,
            }),
            error: None,
        }
    }

    #[test]
    fn an_unauthenticated_review_is_no_user() {
        assert!(reviewed_user(&[], status(false, &[])).is_none());
        let mut s = status(true, &[]);
        s.user = None;
        assert!(reviewed_user(&[], s).is_none());
    }

    #[test]
    fn a_review_answering_with_an_audience_not_asked_for_is_refused() {
        let asked = vec!["berth.dev".to_string()];
        assert!(reviewed_user(&asked, status(true, &["vault"])).is_none());
        let (user, auds) = reviewed_user(&asked, status(true, &["berth.dev"])).unwrap();
        assert_eq!(user.name, "system:serviceaccount:team:builder");
        assert_eq!(user.uid.as_deref(), Some("u-1"));
        assert_eq!(auds, asked);
    }

    #[test]
    fn an_empty_audience_answer_means_the_apiservers_own() {
        let asked = vec!["berth.dev".to_string()];
        assert!(reviewed_user(&asked, status(true, &[])).is_some());
        let (_, auds) =
            reviewed_user(&[], status(true, &["https://kubernetes.default.svc"])).unwrap();
        assert_eq!(auds, vec!["https://kubernetes.default.svc".to_string()]);
    }

    #[test]
    fn learned_audiences_join_the_first_review_and_known_ones_are_final() {
        let mut known = ApiserverAudiences::default();
        learn(&mut known, &["https://kubernetes.default.svc".into()]);
        learn(&mut known, &["https://kubernetes.default.svc".into()]);
        assert_eq!(known.known, vec!["https://kubernetes.default.svc"]);
        assert_eq!(
            union(&["berth.dev".into()], &known.known),
            vec!["berth.dev", "https://kubernetes.default.svc"]
        );
        let mut complete = ApiserverAudiences {
            known: vec!["a".into()],
            complete: true,
        };
        learn(&mut complete, &["b".into()]);
        assert_eq!(complete.known, vec!["a"]);
    }

    fn jwt(payload: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(payload))
    }

    #[test]
    fn the_apiservers_audiences_are_read_from_a_tokens_aud() {
        assert_eq!(
            jwt_audiences(&jwt(r#"{"aud":["https://kubernetes.default.svc","k3s"]}"#)),
            Some(vec!["https://kubernetes.default.svc".into(), "k3s".into()])
        );
        assert_eq!(
            jwt_audiences(&jwt(r#"{"aud":"api"}"#)),
            Some(vec!["api".into()])
        );
        assert_eq!(jwt_audiences(&jwt(r#"{"sub":"x"}"#)), None);
        assert_eq!(jwt_audiences("not a jwt"), None);
    }

    #[test]
    fn token_keys_are_digests_not_tokens() {
        let key = token_key("secret-token");
        assert_eq!(key, token_key("secret-token"));
        assert_ne!(key, token_key("secret-token2"));
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        // sha256("secret-token")
        assert_eq!(hex, format!("{:x}", Sha256::digest(b"secret-token")));
    }

    #[test]
    fn an_access_review_names_the_repository_and_the_whole_user() {
        let user = sa("team", "builder");
        let key = DecisionKey {
            user: user.name.clone(),
            uid: user.uid.clone(),
            groups: user.groups.clone(),
            namespace: "team".into(),
            name: Some("app/web".into()),
            verb: repository::verb(Action::Push),
        };
        let review = access_review(&key);
        let spec = review.spec;
        assert_eq!(
            spec.user.as_deref(),
            Some("system:serviceaccount:team:builder")
        );
        assert_eq!(spec.uid.as_deref(), Some("u-1"));
        assert_eq!(spec.groups.as_ref(), Some(&user.groups));
        let attrs = spec.resource_attributes.unwrap();
        assert_eq!(attrs.namespace.as_deref(), Some("team"));
        assert_eq!(attrs.group.as_deref(), Some("berth.dev"));
        assert_eq!(attrs.resource.as_deref(), Some("repositories"));
        assert_eq!(attrs.name.as_deref(), Some("app/web"));
        assert_eq!(attrs.verb.as_deref(), Some("create"));
        let catalog = access_review(&DecisionKey { name: None, ..key });
        assert_eq!(catalog.spec.resource_attributes.unwrap().name, None);
    }

    fn fill(cache: &TtlCache<u32, u32, ()>, key: u32, ttl: Duration, now: Instant) {
        let Claim::Fetch(cell) = cache.claim(&key, now) else {
            panic!("{key} was cached");
        };
        cell.set(Ok(key)).unwrap();
        cache.finish(&key, &cell, true, ttl, now);
    }

    #[test]
    fn answers_are_served_until_they_expire() {
        let cache = TtlCache::new(10);
        let t0 = Instant::now();
        fill(&cache, 1, Duration::from_secs(10), t0);
        assert!(matches!(
            cache.claim(&1, t0 + Duration::from_secs(9)),
            Claim::Hit(1)
        ));
        assert!(matches!(
            cache.claim(&1, t0 + Duration::from_secs(10)),
            Claim::Fetch(_)
        ));
    }

    #[test]
    fn a_full_cache_drops_expired_answers_then_the_oldest() {
        let cache = TtlCache::new(3);
        let t0 = Instant::now();
        fill(&cache, 1, Duration::from_secs(10), t0);
        fill(&cache, 2, Duration::from_secs(1), t0);
        fill(&cache, 3, Duration::from_secs(10), t0);
        // Full; 4 pushes out the oldest (1), though 2 expires first.
        fill(&cache, 4, Duration::from_secs(10), t0);
        assert_eq!(cache.len(), 3);
        assert!(matches!(cache.claim(&2, t0), Claim::Hit(2)));
        assert!(matches!(cache.claim(&1, t0), Claim::Fetch(_)));
        // Claiming 1 evicted 2 (the oldest); later, expired ones go first.
        let later = t0 + Duration::from_secs(20);
        fill(&cache, 5, Duration::from_secs(10), later);
        assert!(cache.len() <= 3);
        assert!(matches!(cache.claim(&5, later), Claim::Hit(5)));
    }

    #[tokio::test]
    async fn concurrent_lookups_of_one_key_share_one_fetch() {
        let cache = Arc::new(TtlCache::<u32, u32, ()>::new(10));
        let fetches = Arc::new(AtomicUsize::new(0));
        let lookups = (0..8).map(|_| {
            let (cache, fetches) = (cache.clone(), fetches.clone());
            tokio::spawn(async move {
                cache
                    .get_or_fetch(
                        7,
                        |_| Duration::from_secs(10),
                        || async {
                            fetches.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok(42)
                        },
                    )
                    .await
            })
        });
        for r in futures_util::future::join_all(lookups).await {
            assert_eq!(r.unwrap(), Ok(42));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn failures_are_not_cached() {
        let cache = TtlCache::<u32, u32, &'static str>::new(10);
        let first = cache
            .get_or_fetch(1, |_| Duration::from_secs(10), || async { Err("down") })
            .await;
        assert_eq!(first, Err("down"));
        assert_eq!(cache.len(), 0);
        let second = cache
            .get_or_fetch(1, |_| Duration::from_secs(10), || async { Ok(5) })
            .await;
        assert_eq!(second, Ok(5));
    }
}
