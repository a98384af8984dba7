//! Who may do what: between the server and [`crate::api`], so every handler
//! receives an already-authorised request and never repeats the check.
//!
//! - [`challenge`]: the right a request needs and the 401 challenge that
//!   says where to get it;
//! - [`credentials`]: what the `Authorization` header claims;
//! - [`token`]: the token endpoint (`GET`/`POST /token`);
//! - [`htpasswd`]: htpasswd users (bcrypt), re-read when the file changes;
//! - [`keys`]: the token keys, re-read when the operator rotates them;
//! - [`rate_limit`]: failed logins from one address are slowed;
//! - [`cache`]: successful password checks, remembered for a minute.
//!
//! What a token holds, the scope grammar, the repository → namespace rule
//! and the config file are [`berth_access`]'s, shared with the operator.
//!
//! The decision for a `/v2/...` request:
//! - no credentials: allowed only what anonymous pull allows; otherwise 401
//!   with the challenge;
//! - a Bearer access token: allowed what it grants. When it grants too
//!   little, the caller's identity (carried in the token) is checked: if
//!   they may do it, 401 with the challenge (fetch a token with that
//!   scope); if not, 403 DENIED naming the repository and the action;
//! - Basic credentials: authenticated as at `/token` (a password, a
//!   Kubernetes token, a robot or a refresh token), then 403 DENIED when
//!   the identity lacks the right;
//! - anything that does not verify: 401 with the challenge, nothing granted.

pub mod cache;
pub mod challenge;
pub mod credentials;
pub mod htpasswd;
pub mod keys;
pub mod kubernetes;
pub mod rate_limit;
pub mod token;
mod watch;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use berth_access::config::{AuthConfig, KubernetesAuth, Mode};
use berth_access::keys::TokenError;
use berth_access::{Action, Actions, Claims, Scope, TokenKind};

use crate::api::Endpoint;
use crate::error::{Code, Error};
use crate::server::Connection;
use cache::LoginCache;
use challenge::Need;
use credentials::Credentials;
use htpasswd::{Htpasswd, HtpasswdError};
use keys::{KeyStore, KeysError};
use kubernetes::{KubeUser, Kubernetes, KubernetesError};
use rate_limit::{Limits, RateLimiter};

/// How often the key and htpasswd files are checked for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(3);
/// How long a successful password check is remembered.
const LOGIN_CACHE_TTL: Duration = Duration::from_secs(60);
const LOGIN_CACHE_CAPACITY: usize = 4096;
/// Bearer tokens already verified: an ES256 check costs more than the rest
/// of a manifest GET, and a client sends the same token with every request
/// until it expires. Emptied when the keys change, so a retired key's
/// tokens stop working at once.
const BEARER_CACHE_TTL: Duration = Duration::from_secs(60);
const BEARER_CACHE_CAPACITY: usize = 4096;
/// At most this many scopes are considered in one token request.
const MAX_SCOPES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Keys(#[from] KeysError),
    #[error(transparent)]
    Htpasswd(#[from] HtpasswdError),
    #[error(
        "the auth config says mode Htpasswd but has no `htpasswd.file`; name the htpasswd file (bcrypt entries, `htpasswd -B`)"
    )]
    NoHtpasswdFile,
    #[error("the auth config has an empty `service`; set it to the registry's service name")]
    NoService,
    #[error(transparent)]
    Kubernetes(#[from] kubernetes::KubernetesError),
}

/// Who a request speaks for, once authenticated.
#[derive(Clone, Debug)]
pub enum Identity {
    Anonymous,
    /// An htpasswd user or a Kubernetes user (from a TokenReview, or
    /// carried in a token the registry issued).
    User {
        name: String,
        uid: Option<String>,
        groups: Vec<String>,
    },
    /// The operator's pull-only robot (its token's `access` is its right).
    Robot(Box<Claims>),
}

impl Identity {
    fn subject(&self) -> &str {
        match self {
            Identity::Anonymous => "",
            Identity::User { name, .. } => name,
            Identity::Robot(c) => &c.sub,
        }
    }

    /// Who the audit trail names: the user, service account or robot, or
    /// "anonymous".
    pub fn audit_name(&self) -> String {
        match self {
            Identity::Anonymous => "anonymous".to_owned(),
            other => other.subject().to_owned(),
        }
    }

    /// Who to name in a refusal.
    fn describe(&self) -> String {
        match self {
            Identity::Anonymous => "an anonymous client".to_owned(),
            Identity::User { name, .. } => name.clone(),
            Identity::Robot(c) => c.sub.clone(),
        }
    }

    /// The identity an access token was issued to.
    fn of_access_token(c: &Claims) -> Identity {
        if c.sub.is_empty() {
            return Identity::Anonymous;
        }
        if let Some(ns) = c.sub.strip_prefix("berth:robot:") {
            return Identity::Robot(Box::new(robot_claims(c, ns)));
        }
        Identity::User {
            name: c.sub.clone(),
            uid: c.uid.clone(),
            groups: c.groups.clone(),
        }
    }
}

/// The Kubernetes user an identity stands for.
fn kube_user(identity: &Identity) -> KubeUser {
    match identity {
        Identity::User { name, uid, groups } => KubeUser {
            name: name.clone(),
            uid: uid.clone(),
            groups: groups.clone(),
        },
        other => KubeUser {
            name: other.subject().to_owned(),
            uid: None,
            groups: Vec::new(),
        },
    }
}

/// What a robot may do (pull its namespace), as claims.
fn robot_claims(c: &Claims, namespace: &str) -> Claims {
    Claims {
        access: vec![berth_access::Grant::repository(
            &format!("{namespace}/*"),
            Actions::of(&[Action::Pull]),
        )],
        ..c.clone()
    }
}

/// The caller of an authorised request, handed to the handler.
#[derive(Clone)]
pub struct Caller {
    auth: Arc<Auth>,
    pub identity: Identity,
    /// For an upload start with `?mount=&from=`: whether the caller may pull
    /// the source. When not, the handler must start a plain upload instead
    /// (as the spec allows), or blobs could be read by digest alone.
    pub may_mount: bool,
}

impl Caller {
    /// Of `repositories`, those the caller may pull (the catalog shows no
    /// others).
    pub async fn visible(&self, repositories: Vec<String>) -> Vec<String> {
        let mut out = Vec::with_capacity(repositories.len());
        if let (Backend::Kubernetes(k), Identity::User { .. }) =
            (&self.auth.backend, &self.identity)
        {
            // One review per namespace, not per repository.
            let user = kube_user(&self.identity);
            let mut namespaces: std::collections::HashMap<String, bool> = Default::default();
            for r in repositories {
                if self.auth.config.anonymous_pull(&r) || self.auth.mirrored(&r) {
                    out.push(r);
                    continue;
                }
                let Ok(path) = berth_access::repository::split(&r) else {
                    continue;
                };
                let ns = path.namespace.to_owned();
                let may = match namespaces.get(&ns) {
                    Some(m) => *m,
                    None => match k.may_pull_namespace(&user, &ns).await {
                        Ok(m) => *namespaces.entry(ns).or_insert(m),
                        Err(e) => {
                            tracing::warn!(error = %e, "catalog: cannot tell who may pull; leaving repositories out");
                            break;
                        }
                    },
                };
                if may {
                    out.push(r);
                }
            }
            return out;
        }
        for r in repositories {
            match self
                .auth
                .allowed(&self.identity, &r, Actions::of(&[Action::Pull]))
                .await
            {
                Ok(a) if !a.is_empty() => out.push(r),
                Ok(_) => {}
                Err(e) => {
                    // Leave it out: nothing new is granted while the
                    // apiserver does not answer.
                    tracing::warn!(error = %e, "catalog: cannot tell who may pull; leaving repositories out");
                    break;
                }
            }
        }
        out
    }
}

/// Why a right could not be decided (the apiserver did not answer).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(String);

enum Backend {
    Htpasswd(Htpasswd),
    Kubernetes(Box<Kubernetes>),
}

/// The registry's auth: config, keys, users, and the login throttle.
pub struct Auth {
    config: AuthConfig,
    mode: &'static str,
    keys: KeyStore,
    backend: Backend,
    limiter: RateLimiter,
    logins: LoginCache<Identity>,
    bearers: LoginCache<Claims>,
    /// The pull-through cache's prefixes (`docker.io`): see
    /// [`Auth::set_mirror_prefixes`].
    mirror_prefixes: std::sync::RwLock<Vec<String>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("mode", &self.mode)
            .field("service", &self.config.service)
            .finish()
    }
}

impl Auth {
    /// The auth a config asks for; `None` for mode `None` (open registry).
    /// Reads the keys and users now, so a bad file stops the start with a
    /// message naming it.
    pub async fn start(config: AuthConfig) -> Result<Option<Arc<Auth>>, StartError> {
        Self::start_with(config, Limits::default()).await
    }

    /// As [`Auth::start`], with other login-throttle limits (tests).
    pub async fn start_with(
        config: AuthConfig,
        limits: Limits,
    ) -> Result<Option<Arc<Auth>>, StartError> {
        if config.service.trim().is_empty() {
            return Err(StartError::NoService);
        }
        let (backend, mode) = match config.mode {
            Mode::None => return Ok(None),
            Mode::Htpasswd => {
                let file = config.htpasswd.as_ref().ok_or(StartError::NoHtpasswdFile)?;
                let h = Htpasswd::load(&file.file)?;
                if h.users().is_empty() {
                    tracing::warn!(file = %file.file.display(), "the htpasswd file has no users: nobody can log in");
                }
                (Backend::Htpasswd(h), "htpasswd")
            }
            Mode::Kubernetes => {
                let cfg = config.kubernetes.clone().unwrap_or(KubernetesAuth {
                    audiences: Vec::new(),
                    same_namespace_pull: true,
                });
                (
                    Backend::Kubernetes(Box::new(Kubernetes::connect(&cfg).await?)),
                    "kubernetes",
                )
            }
        };
        let keys = KeyStore::load(&config.keys_dir)?;
        let auth = Arc::new(Auth {
            config,
            mode,
            keys,
            backend,
            limiter: RateLimiter::new(limits),
            logins: LoginCache::new(LOGIN_CACHE_TTL, LOGIN_CACHE_CAPACITY),
            bearers: LoginCache::new(BEARER_CACHE_TTL, BEARER_CACHE_CAPACITY),
            mirror_prefixes: std::sync::RwLock::default(),
        });
        // The watcher holds a weak reference: it ends with the last router.
        let weak = Arc::downgrade(&auth);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(auth) = weak.upgrade() else { break };
                // Two small files, stat'ed: cheap enough to do in place.
                auth.reload();
            }
        });
        Ok(Some(auth))
    }

    /// Re-reads the keys and users if their files changed (also done every
    /// few seconds by a background task).
    pub fn reload(&self) {
        if self.keys.reload() {
            self.bearers.clear();
        }
        if let Backend::Htpasswd(h) = &self.backend
            && h.reload()
        {
            self.logins.clear();
        }
    }

    pub fn service(&self) -> &str {
        &self.config.service
    }

    /// Tells auth which first name components are mirror prefixes. Their
    /// repositories (`docker.io/library/nginx`) belong to no namespace, so
    /// in Kubernetes mode no RBAC names them: any authenticated caller may
    /// pull them (public images, fetched for the whole cluster), nobody may
    /// push or delete (anonymous pulls only if `anonymousPull` says so).
    /// With htpasswd the policy decides, as for any repository.
    pub fn set_mirror_prefixes(&self, prefixes: Vec<String>) {
        *self
            .mirror_prefixes
            .write()
            .unwrap_or_else(|p| p.into_inner()) = prefixes;
    }

    /// Whether `repository` is under a mirror prefix.
    fn mirrored(&self, repository: &str) -> bool {
        let Some((first, _)) = repository.split_once('/') else {
            return false;
        };
        self.mirror_prefixes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|p| p == first)
    }

    pub fn mode(&self) -> &'static str {
        self.mode
    }

    /// Decides a `/v2/...` request: the caller, or the refusal to send.
    pub async fn authorize(
        self: &Arc<Self>,
        method: &Method,
        endpoint: &Endpoint,
        uri: &Uri,
        headers: &HeaderMap,
        conn: Option<&Connection>,
        mount_from: Option<&str>,
    ) -> Result<Caller, Error> {
        let need = Need::of(method, endpoint);
        let mut scopes: Vec<Scope> = need.scope().into_iter().collect();
        if let (Endpoint::UploadStart(_), Some(from)) = (endpoint, mount_from)
            && from.parse::<crate::oci::Name>().is_ok()
        {
            scopes.push(Scope::repository(from, Actions::of(&[Action::Pull])));
        }
        let ctx = Challenge {
            origin: challenge::origin(headers, uri, conn.is_some_and(|c| c.tls)),
            service: &self.config.service,
            scopes,
        };
        if let Need::Repository(name, _) = &need {
            self.check_name(name)?;
        }
        let result = self.decide(&need, &ctx, headers, conn).await;
        if let Err(e) = &result {
            self.count(outcome(e));
        }
        let identity = result?;
        let may_mount = match (endpoint, mount_from) {
            (Endpoint::UploadStart(_), Some(from)) => match &identity {
                Decided::Token(c) if c.allows(from, Action::Pull) => true,
                Decided::Token(_) if self.config.anonymous_pull(from) => true,
                Decided::Token(c) => {
                    // As Distribution does: if the holder may pull the
                    // source, ask for a token that says so (the challenge
                    // names both scopes); if not, a plain upload.
                    let holder = Identity::of_access_token(c);
                    let may = !matches!(holder, Identity::Anonymous)
                        && self
                            .allowed(&holder, from, Actions::of(&[Action::Pull]))
                            .await
                            .is_ok_and(|a| !a.is_empty());
                    if may {
                        self.count("unauthorized");
                        return Err(ctx.unauthorized(
                            Some("insufficient_scope"),
                            &format!("the token does not grant pull on the mount source {from}"),
                        ));
                    }
                    false
                }
                Decided::Identity(i) => self
                    .allowed(i, from, Actions::of(&[Action::Pull]))
                    .await
                    .is_ok_and(|a| !a.is_empty()),
            },
            _ => false,
        };
        self.count("granted");
        Ok(Caller {
            auth: self.clone(),
            identity: match identity {
                Decided::Token(c) => Identity::of_access_token(&c),
                Decided::Identity(i) => i,
            },
            may_mount,
        })
    }

    /// The caller for an identity authenticated earlier (the web UI's
    /// session), to ask what it may see.
    pub fn caller(self: &Arc<Self>, identity: Identity) -> Caller {
        Caller {
            auth: self.clone(),
            identity,
            may_mount: false,
        }
    }

    /// The caller of a request outside `/v2/` (`docker search`, the audit
    /// API), which needs an identity but no one repository's right: no
    /// credentials is the anonymous caller; Basic credentials log in as at
    /// `/token` (throttled alike); a Bearer access token speaks for its
    /// subject (the Docker daemon fetches one with `registry:catalog:search`
    /// when it holds a refresh token); empty Basic credentials are
    /// anonymous. Anything else: 401, Basic challenge.
    pub async fn identify(
        self: &Arc<Self>,
        headers: &HeaderMap,
        conn: Option<&Connection>,
    ) -> Result<Caller, Error> {
        let basic_challenge = |e: Error| {
            e.with_header(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"berth\""),
            )
        };
        // The Docker daemon, logged out, still sends Basic credentials to an
        // HTTPS registry: empty ones. Nobody logs in with those, so they
        // mean anonymous.
        let credentials = if empty_basic(headers) {
            Credentials::Anonymous
        } else {
            Credentials::from_headers(headers)
        };
        let identity = match credentials {
            Credentials::Anonymous => Identity::Anonymous,
            Credentials::Invalid => {
                self.count("unauthorized");
                return Err(basic_challenge(Error::new(
                    Code::Unauthorized,
                    "the Authorization header is not Basic or Bearer credentials",
                )));
            }
            Credentials::Bearer(token) => match self.verify_access(&token) {
                Ok(claims) => Identity::of_access_token(&claims),
                Err(e) => {
                    self.count("unauthorized");
                    return Err(basic_challenge(Error::new(
                        Code::Unauthorized,
                        format!("the bearer token does not verify ({e}); log in again"),
                    ))
                    .refusing("anonymous", true));
                }
            },
            Credentials::Basic { user, password } => {
                let client = conn.map(|c| c.peer.ip());
                match self.login(&user, &password, client).await {
                    Ok(identity) => identity,
                    Err(r) => {
                        self.count(match &r {
                            Refusal::BadCredentials(_) => "unauthorized",
                            Refusal::RateLimited(_) => "rate_limited",
                            Refusal::Unavailable(_) => "unavailable",
                        });
                        return Err(basic_challenge(refused_login(r, None, &user)));
                    }
                }
            }
        };
        Ok(Caller {
            auth: self.clone(),
            identity,
            may_mount: false,
        })
    }

    /// Whether `identity` may read the audit trail of `repository`, or with
    /// `None`, of the whole registry (events with no repository too: failed
    /// logins, catalog refusals). Reading who did what to a repository is
    /// an administrator's right, so it takes the strongest repository right,
    /// delete. The whole registry's trail: an htpasswd user whose policy
    /// grants delete on the pattern "*" (every repository). In Kubernetes
    /// mode there is no registry-wide RBAC verb to ask about, so nobody: ask
    /// per repository (or read the `audit` log lines).
    pub async fn may_audit(
        &self,
        identity: &Identity,
        repository: Option<&str>,
    ) -> Result<bool, Unavailable> {
        let delete = Actions::of(&[Action::Delete]);
        match repository {
            Some(r) => Ok(self.allowed(identity, r, delete).await? == delete),
            None => Ok(match (&self.backend, identity) {
                (Backend::Htpasswd(_), Identity::User { name, groups, .. }) => self
                    .config
                    .policy
                    .actions(name, groups, "*")
                    .contains(Action::Delete),
                _ => false,
            }),
        }
    }

    /// In Kubernetes mode a repository's first component is its namespace;
    /// a name without one is refused before any credentials are looked at.
    /// NAME_INVALID (400), not DENIED: no credentials can make such a name
    /// usable, so the client must not retry with a token; the message says
    /// how to name it.
    fn check_name(&self, name: &str) -> Result<(), Error> {
        if self.config.mode == Mode::Kubernetes && !self.mirrored(name) {
            berth_access::repository::split(name)
                .map_err(|e| Error::new(Code::NameInvalid, e.to_string()))?;
        }
        Ok(())
    }

    async fn decide(
        &self,
        need: &Need,
        ctx: &Challenge<'_>,
        headers: &HeaderMap,
        conn: Option<&Connection>,
    ) -> Result<Decided, Error> {
        match Credentials::from_headers(headers) {
            Credentials::Anonymous => {
                if let Need::Repository(name, wanted) = need {
                    let anon = self.anonymous(name).intersect(*wanted);
                    if anon == *wanted {
                        return Ok(Decided::Identity(Identity::Anonymous));
                    }
                }
                Err(ctx.unauthorized(None, "authentication required"))
            }
            Credentials::Invalid => Err(ctx.unauthorized(
                Some("invalid_request"),
                "the Authorization header is not Basic or Bearer credentials",
            )),
            Credentials::Bearer(token) => {
                let claims = self.verify_access(&token).map_err(|e| {
                    tracing::debug!(reason = %e, "bearer token refused");
                    ctx.unauthorized(Some("invalid_token"), &e.to_string())
                })?;
                let (has, wanted) = match need {
                    Need::Base => return Ok(Decided::Token(claims)),
                    Need::Catalog if claims.allows_catalog() => {
                        return Ok(Decided::Token(claims));
                    }
                    Need::Catalog => {
                        return Err(ctx.unauthorized(
                            Some("insufficient_scope"),
                            "the token does not grant registry:catalog:*",
                        ));
                    }
                    Need::Repository(name, wanted) => {
                        (claims.actions_on(name).union(self.anonymous(name)), *wanted)
                    }
                };
                if has.intersect(wanted) == wanted {
                    return Ok(Decided::Token(claims));
                }
                // The token grants too little: a new token would help only
                // if its holder may do it.
                let Need::Repository(name, _) = need else {
                    return Err(ctx.unauthorized(None, "authentication required"));
                };
                let identity = Identity::of_access_token(&claims);
                if matches!(identity, Identity::Anonymous) {
                    // An anonymous token: logging in may help.
                    return Err(ctx.unauthorized(None, "authentication required"));
                }
                let allowed = self
                    .allowed(&identity, name, wanted)
                    .await
                    .map_err(|e| unavailable(&e))?;
                if allowed == wanted {
                    Err(ctx.unauthorized(
                        Some("insufficient_scope"),
                        &format!("the token does not grant {}", ctx.scope_text()),
                    ))
                } else {
                    Err(denied(&identity, name, wanted, allowed))
                }
            }
            Credentials::Basic { user, password } => {
                let client = conn.map(|c| c.peer.ip());
                let identity = self
                    .login(&user, &password, client)
                    .await
                    .map_err(|r| refused_login(r, Some(ctx), &user))?;
                let Need::Repository(name, wanted) = need else {
                    // /v2/ and the catalog: any authenticated caller.
                    return Ok(Decided::Identity(identity));
                };
                let allowed = self
                    .allowed(&identity, name, *wanted)
                    .await
                    .map_err(|e| unavailable(&e))?;
                if allowed == *wanted {
                    Ok(Decided::Identity(identity))
                } else {
                    Err(denied(&identity, name, *wanted, allowed))
                }
            }
        }
    }

    /// Verifies an access token (the only kind a Bearer header may carry).
    fn verify_access(&self, token: &str) -> Result<Claims, TokenError> {
        let key = LoginCache::<Claims>::key("bearer", token);
        if let Some(claims) = self.bearers.get(&key) {
            // The signature held when it was cached; the clock still counts.
            if claims.exp > jiff::Timestamp::now().as_second() {
                return Ok(claims);
            }
        }
        let svc = &self.config.service;
        let claims = self.keys.current().verifier.verify(token, svc, svc)?;
        if claims.kind != TokenKind::Access {
            return Err(TokenError::MissingClaim);
        }
        self.bearers.insert(key, claims.clone());
        Ok(claims)
    }

    /// What anyone may do on `repository` without logging in.
    fn anonymous(&self, repository: &str) -> Actions {
        if self.config.anonymous_pull(repository) {
            Actions::of(&[Action::Pull])
        } else {
            Actions::NONE
        }
    }

    /// Of `wanted` on `repository`, what `identity` may do.
    pub async fn allowed(
        &self,
        identity: &Identity,
        repository: &str,
        wanted: Actions,
    ) -> Result<Actions, Unavailable> {
        let anon = self.anonymous(repository);
        let own = match identity {
            Identity::Anonymous => Actions::NONE,
            // No namespace's RBAC names a mirror's repository: being
            // logged in is enough to pull (see `set_mirror_prefixes`).
            _ if self.config.mode == Mode::Kubernetes && self.mirrored(repository) => {
                Actions::of(&[Action::Pull])
            }
            Identity::Robot(c) => c.actions_on(repository),
            Identity::User { name, groups, .. } => match &self.backend {
                Backend::Htpasswd(_) => self.config.policy.actions(name, groups, repository),
                // Anonymous pull covers it: no review needed.
                Backend::Kubernetes(_) if wanted.intersect(anon) == wanted => Actions::NONE,
                Backend::Kubernetes(k) => {
                    match k.allowed(&kube_user(identity), repository, wanted).await {
                        Ok(a) => a,
                        // Not a namespace's repository: nobody's right.
                        Err(KubernetesError::Repository(_)) => Actions::NONE,
                        Err(e) => return Err(Unavailable(e.to_string())),
                    }
                }
            },
        };
        Ok(own.union(anon).intersect(wanted))
    }

    /// Authenticates a user name and password (or Kubernetes, robot or
    /// refresh token), throttled per client address.
    pub async fn login(
        &self,
        user: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> Result<Identity, Refusal> {
        if let Err(retry) = self.limiter.check(client) {
            return Err(Refusal::RateLimited(retry));
        }
        match self.authenticate(user, password).await {
            Ok(identity) => {
                self.limiter.succeeded(client);
                Ok(identity)
            }
            Err(Refusal::BadCredentials(why)) => {
                self.limiter.failed(client);
                // The user name is not a secret; the password never logs.
                tracing::info!(user, reason = why, ?client, "login refused");
                Err(Refusal::BadCredentials(why))
            }
            Err(e) => Err(e),
        }
    }

    async fn authenticate(&self, user: &str, password: &str) -> Result<Identity, Refusal> {
        // One of our own tokens as a password: a robot (operator-made pull
        // secrets) or a refresh token. Tokens we did not sign (Kubernetes
        // tokens, passwords) fall through to the backend.
        let svc = &self.config.service;
        match self.keys.current().verifier.verify(password, svc, svc) {
            Ok(c) => return self.identity_of_login_token(c),
            Err(TokenError::Malformed | TokenError::WrongAlgorithm | TokenError::UnknownKey) => {}
            Err(_) => {
                return Err(Refusal::BadCredentials(
                    "a berth token that does not verify",
                ));
            }
        }
        match &self.backend {
            Backend::Kubernetes(k) => match k.authenticate(password).await {
                // The user name is ignored: the token says who it is.
                Ok(Some(u)) => Ok(Identity::User {
                    name: u.name,
                    uid: u.uid,
                    groups: u.groups,
                }),
                Ok(None) => Err(Refusal::BadCredentials(
                    "not a valid Kubernetes token (expired, deleted service account or wrong audience)",
                )),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check a Kubernetes token; granting nothing");
                    Err(Refusal::Unavailable(Unavailable(e.to_string())))
                }
            },
            Backend::Htpasswd(h) => {
                let key = LoginCache::<Identity>::key(user, password);
                if let Some(i) = self.logins.get(&key) {
                    return Ok(i);
                }
                let users = h.users();
                let (u, p) = (user.to_owned(), password.to_owned());
                let ok = tokio::task::spawn_blocking(move || users.verify(&u, &p))
                    .await
                    .unwrap_or(false);
                if !ok {
                    return Err(Refusal::BadCredentials("wrong user name or password"));
                }
                let identity = Identity::User {
                    name: user.to_owned(),
                    uid: None,
                    groups: self.config.policy.groups_of(user),
                };
                self.logins.insert(key, identity.clone());
                Ok(identity)
            }
        }
    }

    fn identity_of_login_token(&self, c: Claims) -> Result<Identity, Refusal> {
        match c.kind {
            TokenKind::Robot => Ok(Identity::Robot(Box::new(c))),
            TokenKind::Refresh => {
                // A refresh token carries identity, not rights; an htpasswd
                // user removed since it was issued is refused.
                if let Backend::Htpasswd(h) = &self.backend
                    && !h.users().contains(&c.sub)
                {
                    return Err(Refusal::BadCredentials("the user no longer exists"));
                }
                Ok(Identity::User {
                    name: c.sub,
                    uid: c.uid,
                    groups: c.groups,
                })
            }
            TokenKind::Access => Err(Refusal::BadCredentials(
                "an access token is not a login credential",
            )),
        }
    }

    /// The grants of a token for `identity` asking for `scopes`: of each,
    /// the intersection of asked and allowed.
    pub async fn grants(
        &self,
        identity: &Identity,
        scopes: &[Scope],
    ) -> Result<Vec<berth_access::Grant>, Unavailable> {
        let mut out: Vec<berth_access::Grant> = Vec::new();
        for s in scopes.iter().take(MAX_SCOPES) {
            if s.is_catalog() {
                if !matches!(identity, Identity::Anonymous)
                    && !out
                        .iter()
                        .any(|g| g.resource_type == berth_access::scope::REGISTRY)
                {
                    out.push(berth_access::Grant {
                        resource_type: berth_access::scope::REGISTRY.to_owned(),
                        name: berth_access::scope::CATALOG.to_owned(),
                        actions: vec!["*".to_owned()],
                    });
                }
                continue;
            }
            let asked = s.repository_actions();
            if asked.is_empty() || self.check_name(&s.name).is_err() {
                continue;
            }
            if s.name.parse::<crate::oci::Name>().is_err() {
                continue;
            }
            let granted = self.allowed(identity, &s.name, asked).await?;
            if granted.is_empty() {
                continue;
            }
            match out
                .iter_mut()
                .find(|g| g.resource_type == berth_access::scope::REPOSITORY && g.name == s.name)
            {
                Some(g) => {
                    let merged = Actions::parse_list(&g.actions.join(",")).union(granted);
                    g.actions = merged.to_strings();
                }
                None => out.push(berth_access::Grant::repository(&s.name, granted)),
            }
        }
        Ok(out)
    }

    fn count(&self, outcome: &'static str) {
        crate::metrics::auth(self.mode, outcome);
    }
}

/// What was decided for a request: a token's claims, or an identity.
enum Decided {
    Token(Claims),
    Identity(Identity),
}

/// Why a login failed.
#[derive(Debug)]
pub enum Refusal {
    /// A short reason for the log (never the credentials).
    BadCredentials(&'static str),
    RateLimited(Duration),
    Unavailable(Unavailable),
}

impl Refusal {
    /// The response: 401 (with the challenge on `/v2`, else a Basic one),
    /// 429 with `Retry-After`, or 503.
    fn into_error(self, ctx: Option<&Challenge<'_>>) -> Error {
        match self {
            Refusal::BadCredentials(_) => match ctx {
                Some(ctx) => {
                    ctx.unauthorized(Some("invalid_token"), "invalid user name or password")
                }
                None => Error::new(Code::Unauthorized, "invalid user name or password"),
            },
            Refusal::RateLimited(retry) => too_many(retry),
            Refusal::Unavailable(e) => unavailable(&e),
        }
    }
}

/// Whether the request's credentials are `Basic` with an empty user name
/// and password (`Basic Og==`).
fn empty_basic(headers: &HeaderMap) -> bool {
    use base64::Engine as _;
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .is_some_and(|(scheme, rest)| {
            scheme.eq_ignore_ascii_case("basic")
                && base64::engine::general_purpose::STANDARD
                    .decode(rest.trim())
                    .is_ok_and(|d| d == b":")
        })
}

/// A failed login as the error to send, noting for the audit trail the
/// user name tried (a name, never the password).
fn refused_login(r: Refusal, ctx: Option<&Challenge<'_>>, user: &str) -> Error {
    let subject = if user.is_empty() { "anonymous" } else { user };
    r.into_error(ctx).refusing(subject, true)
}

/// The challenge of one request.
struct Challenge<'a> {
    origin: String,
    service: &'a str,
    /// What the request needs; a mount adds pull on its source.
    scopes: Vec<Scope>,
}

impl Challenge<'_> {
    fn scope_text(&self) -> String {
        self.scopes
            .first()
            .map(|s| s.to_string())
            .unwrap_or_default()
    }

    fn unauthorized(&self, error: Option<&str>, message: &str) -> Error {
        let value = challenge::bearer(&self.origin, self.service, &self.scopes, error);
        let mut e = Error::new(Code::Unauthorized, message.to_owned());
        if let Ok(v) = HeaderValue::from_str(&value) {
            e = e.with_header(header::WWW_AUTHENTICATE, v);
        }
        e
    }
}

fn denied(identity: &Identity, repository: &str, wanted: Actions, allowed: Actions) -> Error {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|a| !allowed.contains(*a))
        .map(Action::as_str)
        .collect();
    let verb = match missing.as_slice() {
        ["pull"] => "pull from".to_owned(),
        ["delete"] => "delete from".to_owned(),
        ["push"] => "push to".to_owned(),
        m => format!("{} on", m.join(" and ")),
    };
    Error::new(
        Code::Denied,
        format!(
            "{} may not {verb} {repository}; ask for the right to be granted",
            identity.describe()
        ),
    )
    .refusing(identity.audit_name(), false)
}

fn too_many(retry: Duration) -> Error {
    let secs = retry.as_secs().max(1);
    Error::new(
        Code::TooManyRequests,
        format!("too many failed logins from this address; retry in {secs} s"),
    )
    .with_header(header::RETRY_AFTER, HeaderValue::from(secs))
}

fn unavailable(e: &Unavailable) -> Error {
    tracing::warn!(error = %e, "cannot decide a request's rights; granting nothing");
    Error::new(
        Code::Unknown,
        "the registry cannot check permissions right now (the Kubernetes apiserver does not answer); retry shortly",
    )
    .with_status(StatusCode::SERVICE_UNAVAILABLE)
    .with_header(header::RETRY_AFTER, HeaderValue::from_static("5"))
}

/// The metrics label of a refusal.
fn outcome(e: &Error) -> &'static str {
    match e.code {
        Code::Unauthorized => "unauthorized",
        Code::Denied => "denied",
        Code::TooManyRequests => "rate_limited",
        Code::NameInvalid => "denied",
        _ => "unavailable",
    }
}
