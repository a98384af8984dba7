//! One upstream registry over HTTP(S): requests under its `/v2/`, following
//! its auth challenge (a Bearer token from its realm, anonymous when no
//! credentials are configured, as Docker Hub hands out; or Basic). Tokens
//! are kept per repository until they expire. Neither the credentials nor
//! the tokens ever leave this module: not in a response, a log line or an
//! error message.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};

/// Connecting to the upstream gives up after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A manifest, HEAD or token request gives up after this.
pub const SMALL_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A blob body that sends nothing for this long is cut off.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// A token without `expires_in` lives this long (the token spec's default).
const DEFAULT_TOKEN_SECS: u64 = 60;
/// Tokens are renewed this long before they expire.
const TOKEN_MARGIN: Duration = Duration::from_secs(10);
/// At most this many repositories' tokens are kept.
const MAX_TOKENS: usize = 10_000;

/// Why an upstream request failed. Messages name the upstream by its URL
/// and say what it answered; never a credential.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("the upstream {upstream} answered {status}{detail}")]
    Status {
        upstream: String,
        status: u16,
        detail: String,
    },
    #[error("the upstream {upstream} could not be reached: {reason}")]
    Unreachable { upstream: String, reason: String },
    #[error("the upstream {upstream} did not answer in time")]
    Timeout { upstream: String },
    #[error(
        "the upstream {upstream}'s token service refused a token: {reason}; check the mirror's credentials"
    )]
    Token { upstream: String, reason: String },
    #[error("the upstream {upstream} sent {what}")]
    Invalid { upstream: String, what: String },
}

impl UpstreamError {
    /// Whether the upstream is failing (rate limited, erroring, slow or
    /// down), as opposed to answering: a cached copy is served instead.
    pub fn is_outage(&self) -> bool {
        match self {
            UpstreamError::Status { status, .. } => *status == 429 || *status >= 500,
            UpstreamError::Unreachable { .. } | UpstreamError::Timeout { .. } => true,
            UpstreamError::Token { .. } | UpstreamError::Invalid { .. } => false,
        }
    }

    /// The upstream's HTTP status, when it answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            UpstreamError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Where credentials for the upstream are read, each time a token is
/// fetched (so a rotated Secret is picked up).
#[derive(Clone, Debug)]
pub struct CredentialFiles {
    pub username: PathBuf,
    pub password: PathBuf,
}

pub struct Client {
    /// The upstream's base URL, no trailing `/`.
    base: String,
    http: reqwest::Client,
    credentials: Option<CredentialFiles>,
    /// Per upstream repository: the Authorization value that worked last.
    auth: Mutex<HashMap<String, Authorization>>,
}

#[derive(Clone)]
struct Authorization {
    value: HeaderValue,
    /// None: Basic credentials, which do not expire.
    expires: Option<Instant>,
}

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read the CA file {path}: {source}")]
    CaFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the CA file {path} holds no PEM certificate: {reason}")]
    CaPem { path: String, reason: String },
    #[error("cannot build the HTTP client for {url}: {reason}")]
    Build { url: String, reason: String },
}

impl Client {
    pub fn new(
        url: &str,
        credentials: Option<CredentialFiles>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Client, ClientError> {
        let base = url.trim_end_matches('/').to_owned();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("berth-registry/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|source| ClientError::CaFile {
                path: path.display().to_string(),
                source,
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ClientError::CaPem {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(ClientError::CaPem {
                    path: path.display().to_string(),
                    reason: "no certificate found".into(),
                });
            }
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder.build().map_err(|e| ClientError::Build {
            url: base.clone(),
            reason: e.to_string(),
        })?;
        Ok(Client {
            base,
            http,
            credentials,
            auth: Mutex::new(HashMap::new()),
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// Sends `method` to `/v2/<repo>/<tail>`, answering the upstream's auth
    /// challenge once. Any answer but 2xx is an error that says what the
    /// upstream answered.
    pub async fn send(
        &self,
        method: Method,
        repo: &str,
        tail: &str,
        accept: &[&str],
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let url = format!("{}/v2/{repo}/{tail}", self.base);
        let mut answered_challenge = false;
        loop {
            let mut req = self.http.request(method.clone(), &url);
            if !accept.is_empty() {
                req = req.header(ACCEPT, accept.join(", "));
            }
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            if let Some(a) = self.cached_auth(repo) {
                req = req.header(AUTHORIZATION, a);
            }
            let resp = req.send().await.map_err(|e| self.transport(&e))?;
            if resp.status() == StatusCode::UNAUTHORIZED && !answered_challenge {
                answered_challenge = true;
                let challenge = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .map(Challenge::parse);
                let auth = match challenge {
                    Some(Challenge::Bearer {
                        realm,
                        service,
                        scope,
                    }) => {
                        let scope = scope.unwrap_or_else(|| format!("repository:{repo}:pull"));
                        Some(self.token(&realm, service.as_deref(), &scope).await?)
                    }
                    Some(Challenge::Basic) => self.basic()?,
                    _ => None,
                };
                if let Some(auth) = auth {
                    self.remember(repo, auth);
                    continue;
                }
            }
            return self.check(resp).await;
        }
    }

    /// The response if it is a success; otherwise what the upstream said.
    async fn check(&self, resp: reqwest::Response) -> Result<reqwest::Response, UpstreamError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        // The spec's error body, if any: its first code and message.
        let body = tokio::time::timeout(Duration::from_secs(5), resp.bytes())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let detail = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                let e = v.get("errors")?.get(0)?;
                let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
                let msg = e.get("message").and_then(|c| c.as_str()).unwrap_or("");
                Some(format!(" ({code}: {})", truncate(msg, 200)))
            })
            .unwrap_or_default();
        Err(UpstreamError::Status {
            upstream: self.base.clone(),
            status: status.as_u16(),
            detail,
        })
    }

    /// A transport failure, without the URL's query (a token request's
    /// scope) or anything else the client library adds.
    pub fn transport(&self, e: &reqwest::Error) -> UpstreamError {
        if e.is_timeout() {
            return UpstreamError::Timeout {
                upstream: self.base.clone(),
            };
        }
        let mut reason = String::new();
        let mut source: Option<&dyn std::error::Error> = Some(e);
        // The innermost cause says what happened (refused, reset, TLS).
        while let Some(s) = source {
            reason = s.to_string();
            source = s.source();
        }
        UpstreamError::Unreachable {
            upstream: self.base.clone(),
            reason,
        }
    }

    fn cached_auth(&self, repo: &str) -> Option<HeaderValue> {
        let map = self.auth.lock().unwrap_or_else(|p| p.into_inner());
        let a = map.get(repo)?;
        match a.expires {
            Some(t) if t <= Instant::now() => None,
            _ => Some(a.value.clone()),
        }
    }

    fn remember(&self, repo: &str, auth: Authorization) {
        let mut map = self.auth.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TOKENS {
            let now = Instant::now();
            map.retain(|_, a| a.expires.is_none_or(|t| t > now));
            if map.len() >= MAX_TOKENS {
                map.clear();
            }
        }
        map.insert(repo.to_owned(), auth);
    }

    /// The configured user name and password, read now.
    fn read_credentials(&self) -> Result<Option<(String, String)>, UpstreamError> {
        let Some(files) = &self.credentials else {
            return Ok(None);
        };
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
                .map_err(|e| UpstreamError::Token {
                    upstream: self.base.clone(),
                    reason: format!("cannot read the credentials file {}: {e}", p.display()),
                })
        };
        Ok(Some((read(&files.username)?, read(&files.password)?)))
    }

    fn basic_value(user: &str, password: &str) -> Option<HeaderValue> {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut v = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    /// Basic credentials for a Basic challenge; none configured: none.
    fn basic(&self) -> Result<Option<Authorization>, UpstreamError> {
        Ok(self
            .read_credentials()?
            .and_then(|(u, p)| Self::basic_value(&u, &p))
            .map(|value| Authorization {
                value,
                expires: None,
            }))
    }

    /// A token from the challenge's realm, with the configured credentials
    /// if any (anonymous otherwise).
    async fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<Authorization, UpstreamError> {
        let refused = |reason: String| UpstreamError::Token {
            upstream: self.base.clone(),
            reason,
        };
        let query = {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("scope", scope);
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.finish()
        };
        let sep = if realm.contains('?') { '&' } else { '?' };
        let url = format!("{realm}{sep}{query}");
        let mut req = self.http.get(url).timeout(SMALL_REQUEST_TIMEOUT);
        // Credentials go over TLS only, unless the upstream itself is
        // plain HTTP (the operator chose that).
        let may_send = realm.starts_with("https://") || self.base.starts_with("http://");
        if may_send
            && let Some((u, p)) = self.read_credentials()?
            && let Some(v) = Self::basic_value(&u, &p)
        {
            req = req.header(AUTHORIZATION, v);
        }
        let resp = req.send().await.map_err(|e| self.transport(&e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(refused(format!("it answered {status}")));
        }
        let body = resp.bytes().await.map_err(|e| self.transport(&e))?;
        #[derive(serde::Deserialize)]
        struct TokenReply {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let reply: TokenReply = serde_json::from_slice(&body)
            .map_err(|e| refused(format!("its answer is not a token (JSON: {e})")))?;
        let token = reply
            .token
            .or(reply.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| refused("its answer holds no token".into()))?;
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| refused("its token is not a valid header value".into()))?;
        value.set_sensitive(true);
        let lifetime = Duration::from_secs(reply.expires_in.unwrap_or(DEFAULT_TOKEN_SECS).max(1));
        Ok(Authorization {
            value,
            expires: Some(
                Instant::now()
                    + lifetime
                        .saturating_sub(TOKEN_MARGIN)
                        .max(Duration::from_secs(1)),
            ),
        })
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A `WWW-Authenticate` challenge, as far as a client needs it.
#[derive(Debug, PartialEq, Eq)]
pub enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
    Other,
}

impl Challenge {
    /// Parses `Bearer realm="…",service="…",scope="…"` (quoted or bare
    /// values, in any order) or `Basic realm="…"`.
    pub fn parse(header: &str) -> Challenge {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Challenge::Basic;
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Challenge::Other;
        }
        let params = parse_params(rest);
        let get = |k: &str| {
            params
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        match get("realm") {
            Some(realm) => Challenge::Bearer {
                realm,
                service: get("service"),
                scope: get("scope"),
            },
            None => Challenge::Other,
        }
    }
}

/// `k="v", k2=v2`: quoted values may hold commas and `\"`.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                value.push(n);
                            }
                        }
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        out.push((key.trim().to_owned(), value.trim().to_owned()));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_parse_in_any_order_with_commas_in_scope() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull,push""#,
        );
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull,push".into()),
            }
        );
        let c = Challenge::parse(r#"bearer scope="a", realm=https://r/t"#);
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://r/t".into(),
                service: None,
                scope: Some("a".into()),
            }
        );
        assert_eq!(Challenge::parse(r#"Basic realm="x""#), Challenge::Basic);
        assert_eq!(Challenge::parse("Bearer service=x"), Challenge::Other);
        assert_eq!(Challenge::parse("Negotiate"), Challenge::Other);
    }

    #[test]
    fn outages_are_429_5xx_timeouts_and_unreachable() {
        let status = |s| UpstreamError::Status {
            upstream: "u".into(),
            status: s,
            detail: String::new(),
        };
        assert!(status(429).is_outage());
        assert!(status(503).is_outage());
        assert!(!status(404).is_outage());
        assert!(!status(401).is_outage());
        assert!(
            UpstreamError::Timeout {
                upstream: "u".into()
            }
            .is_outage()
        );
    }
}
