//! The claims of a registry token (Distribution's `docs/content/spec/auth/jwt.md`,
//! plus two fields of berth's own).
//!
//! Three kinds share one shape, told apart by [`TokenKind`]:
//! - **access** tokens, from the registry's token endpoint: short-lived,
//!   `access` lists exactly what was granted (the intersection of what was
//!   asked and what is allowed);
//! - **refresh** tokens (`offline_token=true`, OAuth2 `refresh_token`): they
//!   carry the caller's identity (user, uid, groups), not rights, so every
//!   refresh is authorised afresh;
//! - **robot** tokens, signed by the operator for provisioned pull secrets:
//!   pull-only, for one namespace's repositories (`access` name `<ns>/*`).

use serde::{Deserialize, Serialize};

use crate::scope::{Action, Actions, REGISTRY, REPOSITORY};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    #[default]
    Access,
    Refresh,
    Robot,
}

/// One entry of the `access` claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    #[serde(rename = "type")]
    pub resource_type: String,
    /// A repository name, `catalog`, or (robot tokens only) `<prefix>/*`.
    pub name: String,
    pub actions: Vec<String>,
}

impl Grant {
    pub fn repository(name: &str, actions: Actions) -> Grant {
        Grant {
            resource_type: REPOSITORY.to_owned(),
            name: name.to_owned(),
            actions: actions.to_strings(),
        }
    }

    /// Whether this entry names `repository` (exactly, or by a `prefix/*`).
    fn covers(&self, repository: &str) -> bool {
        if self.resource_type != REPOSITORY {
            return false;
        }
        match self.name.strip_suffix("/*") {
            Some(prefix) => repository
                .strip_prefix(prefix)
                .is_some_and(|r| r.starts_with('/') && r.len() > 1),
            None => self.name == repository,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The registry that issued the token (its service name).
    pub iss: String,
    /// The user the token speaks for (a Kubernetes user name, an htpasswd
    /// user, or `berth:robot:<namespace>`).
    pub sub: String,
    /// The registry service the token is for; a token for another registry
    /// is refused.
    pub aud: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    /// A unique id (random), for audit.
    pub jti: String,
    #[serde(default)]
    pub access: Vec<Grant>,
    #[serde(default)]
    pub kind: TokenKind,
    /// The caller's groups (Kubernetes or htpasswd policy groups): refresh
    /// tokens need them to authorise again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The caller's Kubernetes uid, for SubjectAccessReviews.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

impl Claims {
    /// What this token allows on `repository`.
    pub fn actions_on(&self, repository: &str) -> Actions {
        self.access
            .iter()
            .filter(|g| g.covers(repository))
            .fold(Actions::NONE, |acc, g| {
                acc.union(Actions::parse_list(&g.actions.join(",")))
            })
    }

    pub fn allows(&self, repository: &str, action: Action) -> bool {
        self.actions_on(repository).contains(action)
    }

    /// Whether the token carries `registry:catalog:*`.
    pub fn allows_catalog(&self) -> bool {
        self.access
            .iter()
            .any(|g| g.resource_type == REGISTRY && g.name == crate::scope::CATALOG)
    }

    /// The user name of the robot that pulls for `namespace`.
    pub fn robot_subject(namespace: &str) -> String {
        format!("berth:robot:{namespace}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn claims(access: Vec<Grant>) -> Claims {
        Claims {
            iss: "hub".into(),
            sub: "alice".into(),
            aud: "hub".into(),
            exp: 2,
            nbf: 0,
            iat: 0,
            jti: "j".into(),
            access,
            kind: TokenKind::Access,
            groups: vec![],
            uid: None,
        }
    }

    #[test]
    fn an_exact_grant_covers_only_its_repository() {
        let c = claims(vec![Grant::repository(
            "team/app",
            Actions::of(&[Action::Pull]),
        )]);
        assert!(c.allows("team/app", Action::Pull));
        assert!(!c.allows("team/app", Action::Push));
        assert!(!c.allows("team/app2", Action::Pull));
        assert!(!c.allows("team/app/sub", Action::Pull));
    }

    #[test]
    fn a_prefix_grant_covers_the_namespace_and_nothing_beside_it() {
        let c = claims(vec![Grant::repository(
            "team/*",
            Actions::of(&[Action::Pull]),
        )]);
        assert!(c.allows("team/app", Action::Pull));
        assert!(c.allows("team/a/b", Action::Pull));
        assert!(!c.allows("teamx/app", Action::Pull));
        assert!(!c.allows("team", Action::Pull));
        assert!(!c.allows("other/app", Action::Pull));
    }

    #[test]
    fn the_kind_defaults_to_access_and_round_trips() {
        let mut c = claims(vec![]);
        c.kind = TokenKind::Robot;
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["kind"], "robot");
        let mut v = json.clone();
        v.as_object_mut().unwrap().remove("kind");
        let back: Claims = serde_json::from_value(v).unwrap();
        assert_eq!(back.kind, TokenKind::Access);
    }

    #[test]
    fn the_catalog_grant_is_found() {
        let c = claims(vec![Grant {
            resource_type: "registry".into(),
            name: "catalog".into(),
            actions: vec!["*".into()],
        }]);
        assert!(c.allows_catalog());
        assert!(!claims(vec![]).allows_catalog());
    }
}
