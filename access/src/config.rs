//! The registry's auth config file, and the access policy it holds.
//!
//! The operator writes this file (a ConfigMap mounted into the registry
//! pod) from a `Registry`'s `spec.auth`; `berth-registry serve
//! --auth-config FILE` reads it. JSON, so both sides share these types
//! and nothing is parsed twice.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::scope::{Action, Actions};

/// How callers prove who they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Anyone who reaches the registry may do anything.
    None,
    /// Users and bcrypt password hashes from an htpasswd file; rights from
    /// [`AuthConfig::policy`].
    Htpasswd,
    /// Kubernetes tokens (TokenReview) and RBAC (SubjectAccessReview).
    #[default]
    Kubernetes,
}

/// The audience the kubelet asks for when it fetches a pod's own
/// service-account token for berth's image credential provider
/// (`tokenAttributes.serviceAccountTokenAudience`). One for the cluster:
/// the kubelet's provider config names a single audience per provider.
pub const CREDENTIAL_PROVIDER_AUDIENCE: &str = "berth.dev";

/// The service name of Registry `name` in `namespace`: the `service` of its
/// challenge and the `iss` and `aud` of every token it issues or accepts
/// (the operator's robot tokens included), so a token for one Registry is
/// refused by every other.
pub fn service_name(namespace: &str, name: &str) -> String {
    format!("{name}.{namespace}.registry.berth.dev")
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthConfig {
    pub mode: Mode,
    /// The registry's service name: the `service` of the challenge, and the
    /// `iss` and `aud` of the tokens it issues and accepts.
    pub service: String,
    /// A directory holding [`crate::keys::SIGNING_KEY_FILE`] and
    /// [`crate::keys::VERIFY_KEYS_FILE`]; re-read when they change.
    pub keys_dir: PathBuf,
    /// Lifetime of access tokens, in seconds.
    #[serde(default = "default_token_ttl")]
    pub token_ttl_seconds: u64,
    /// Lifetime of refresh tokens (`offline_token=true`), in seconds.
    #[serde(default = "default_refresh_ttl")]
    pub refresh_ttl_seconds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub htpasswd: Option<HtpasswdAuth>,
    /// Htpasswd mode: who may do what, by repository pattern.
    #[serde(default)]
    pub policy: Policy,
    /// Either mode: repository patterns anyone may pull, with no login.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anonymous_pull: Vec<String>,
}

fn default_token_ttl() -> u64 {
    300
}

fn default_refresh_ttl() -> u64 {
    86_400
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesAuth {
    /// Audiences a token may carry besides the apiserver's own, e.g. the one
    /// the kubelet asks for when it fetches a pod's token for the
    /// credential provider.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// A namespace's own service accounts may pull its repositories with no
    /// RoleBinding.
    #[serde(default = "default_true")]
    pub same_namespace_pull: bool,
}

fn default_true() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HtpasswdAuth {
    /// The htpasswd file (bcrypt entries only); re-read when it changes.
    pub file: PathBuf,
}

/// Htpasswd mode's rights.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// Named groups of users.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, Vec<String>>,
    /// Rules by repository pattern. For a repository, the rules with the
    /// longest matching pattern decide; the others are not consulted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// What any authenticated user may do where no rule names them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authenticated: Vec<Action>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// A repository glob: `*` matches any run of characters (also `/`),
    /// `?` any one character.
    pub repositories: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    pub actions: Vec<Action>,
}

impl serde::Serialize for Action {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Action {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Action::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("unknown action {s:?}: use pull, push or delete"))
        })
    }
}

impl Policy {
    /// The groups `user` belongs to.
    pub fn groups_of(&self, user: &str) -> Vec<String> {
        self.groups
            .iter()
            .filter(|(_, members)| members.iter().any(|m| m == user))
            .map(|(g, _)| g.clone())
            .collect()
    }

    /// What `user` (in `groups`) may do on `repository`.
    pub fn actions(&self, user: &str, groups: &[String], repository: &str) -> Actions {
        let default = Actions::of(&self.authenticated);
        let longest = self
            .rules
            .iter()
            .filter(|r| glob_match(&r.repositories, repository))
            .map(|r| r.repositories.len())
            .max();
        let Some(longest) = longest else {
            return default;
        };
        let named: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|r| r.repositories.len() == longest && glob_match(&r.repositories, repository))
            .filter(|r| {
                r.users.iter().any(|u| u == user) || r.groups.iter().any(|g| groups.contains(g))
            })
            .collect();
        if named.is_empty() {
            return default;
        }
        named
            .iter()
            .fold(Actions::NONE, |acc, r| acc.union(Actions::of(&r.actions)))
    }
}

impl AuthConfig {
    /// Whether anyone may pull `repository` without logging in.
    pub fn anonymous_pull(&self, repository: &str) -> bool {
        self.anonymous_pull
            .iter()
            .any(|p| glob_match(p, repository))
    }
}

/// `*` matches any run of characters (including `/`), `?` one character;
/// everything else matches itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative wildcard matching with one backtrack point: linear in
    // practice, and never exponential on hostile patterns.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_across_slashes() {
        assert!(glob_match("public/*", "public/nginx"));
        assert!(glob_match("public/*", "public/a/b"));
        assert!(!glob_match("public/*", "publicity/a"));
        assert!(glob_match("*", "anything/at/all"));
        assert!(glob_match("team/app?", "team/app1"));
        assert!(!glob_match("team/app?", "team/app"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
    }

    fn policy() -> Policy {
        Policy {
            groups: BTreeMap::from([("devs".into(), vec!["bob".into()])]),
            rules: vec![
                Rule {
                    repositories: "team/*".into(),
                    users: vec!["alice".into()],
                    groups: vec!["devs".into()],
                    actions: vec![Action::Pull, Action::Push],
                },
                Rule {
                    repositories: "team/secret/*".into(),
                    users: vec!["alice".into()],
                    groups: vec![],
                    actions: vec![Action::Pull],
                },
            ],
            authenticated: vec![Action::Pull],
        }
    }

    #[test]
    fn the_longest_matching_pattern_decides() {
        let p = policy();
        let alice = Actions::of(&[Action::Pull, Action::Push]);
        assert_eq!(p.actions("alice", &[], "team/app"), alice);
        // The more specific rule gives alice pull only there.
        assert_eq!(
            p.actions("alice", &[], "team/secret/x"),
            Actions::of(&[Action::Pull])
        );
        // bob is in devs: push on team/*, but team/secret/* does not name him.
        let bob_groups = p.groups_of("bob");
        assert_eq!(bob_groups, vec!["devs".to_string()]);
        assert_eq!(p.actions("bob", &bob_groups, "team/app"), alice);
        assert_eq!(
            p.actions("bob", &bob_groups, "team/secret/x"),
            Actions::of(&[Action::Pull])
        );
        // Anyone else gets the authenticated default.
        assert_eq!(
            p.actions("carol", &[], "team/app"),
            Actions::of(&[Action::Pull])
        );
        assert_eq!(
            p.actions("carol", &[], "other/app"),
            Actions::of(&[Action::Pull])
        );
    }

    #[test]
    fn the_file_round_trips_as_json_and_refuses_unknown_actions() {
        let c = AuthConfig {
            mode: Mode::Htpasswd,
            service: "hub.team.svc".into(),
            keys_dir: "/etc/berth/token-keys".into(),
            token_ttl_seconds: 300,
            refresh_ttl_seconds: 86_400,
            kubernetes: None,
            htpasswd: Some(HtpasswdAuth {
                file: "/etc/berth/htpasswd/htpasswd".into(),
            }),
            policy: policy(),
            anonymous_pull: vec!["public/*".into()],
        };
        let json = serde_json::to_string(&c).unwrap();
        let back: AuthConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        assert!(back.anonymous_pull("public/nginx"));
        assert!(!back.anonymous_pull("team/app"));
        let bad = json.replace("\"push\"", "\"fly\"");
        let e = serde_json::from_str::<AuthConfig>(&bad).unwrap_err();
        assert!(e.to_string().contains("unknown action"), "{e}");
    }
}
