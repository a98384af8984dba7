//! The repository → namespace rule, and what each action means to
//! Kubernetes RBAC.
//!
//! Repository `<ns>/<rest>` belongs to namespace `<ns>`. In Kubernetes auth
//! mode a request on it is allowed when a SubjectAccessReview says the
//! caller may use [`verb`] on resource [`RESOURCE`] in group [`GROUP`], name
//! `<rest>`, in namespace `<ns>`; so `kubectl auth can-i create
//! repositories.berth.dev/app -n team` answers whether `team/app` may be
//! pushed.

use crate::scope::Action;

/// The API group of the `repositories` resource checked by RBAC.
pub const GROUP: &str = "berth.dev";
/// The resource checked by RBAC (no such object exists: it names a right).
pub const RESOURCE: &str = "repositories";

/// The RBAC verb that stands for `action`. Pushing checks `create`; the
/// chart's push role grants `create` and `update` together.
pub fn verb(action: Action) -> &'static str {
    match action {
        Action::Pull => "get",
        Action::Push => "create",
        Action::Delete => "delete",
    }
}

/// A repository name split at its namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepositoryPath<'a> {
    pub namespace: &'a str,
    /// The rest of the name after `<namespace>/`.
    pub rest: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamespaceError {
    #[error(
        "repository {0:?} has no namespace: repositories are named <namespace>/<name>, where <namespace> is the Kubernetes namespace whose RBAC decides who may use it (e.g. team/{0})"
    )]
    NoNamespace(String),
    #[error(
        "repository {name:?} starts with {first:?}, which cannot be a Kubernetes namespace (lower-case letters, digits and '-', at most 63, starting and ending with a letter or digit); name it <namespace>/<name>"
    )]
    NotANamespace { name: String, first: String },
}

/// Splits `name` at its first `/`; the first component must be a valid
/// Kubernetes namespace name (a DNS-1123 label).
pub fn split(name: &str) -> Result<RepositoryPath<'_>, NamespaceError> {
    let Some((ns, rest)) = name.split_once('/') else {
        return Err(NamespaceError::NoNamespace(name.to_owned()));
    };
    if rest.is_empty() {
        return Err(NamespaceError::NoNamespace(name.to_owned()));
    }
    if !is_dns1123_label(ns) {
        return Err(NamespaceError::NotANamespace {
            name: name.to_owned(),
            first: ns.to_owned(),
        });
    }
    Ok(RepositoryPath {
        namespace: ns,
        rest,
    })
}

/// The namespace a stored repository counts under (storage usage and
/// quotas): its namespace by [`split`]; for a name [`split`] refuses (a
/// pull-through cache's `docker.io/...`, or a name pushed with auth off),
/// its first path component, or "" for a name of one component.
pub fn namespace_of(name: &str) -> &str {
    match split(name) {
        Ok(p) => p.namespace,
        Err(_) => name.split_once('/').map_or("", |(first, _)| first),
    }
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 63
        && b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
        && b.iter().all(|c| alnum(c) || *c == b'-')
}

/// The Kubernetes user name of a service account.
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// The namespace of a service account's user name
/// (`system:serviceaccount:<ns>:<name>`), if it is one.
pub fn service_account_namespace(user: &str) -> Option<&str> {
    let rest = user.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    (!ns.is_empty() && !name.is_empty()).then_some(ns)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_stored_name_counts_under_one_namespace() {
        assert_eq!(namespace_of("team/app/web"), "team");
        assert_eq!(namespace_of("docker.io/library/nginx"), "docker.io");
        assert_eq!(namespace_of("app"), "");
    }

    #[test]
    fn the_first_component_is_the_namespace() {
        let p = split("team/app/frontend").unwrap();
        assert_eq!(p.namespace, "team");
        assert_eq!(p.rest, "app/frontend");
    }

    #[test]
    fn a_name_without_a_namespace_is_refused_with_an_example() {
        let e = split("app").unwrap_err();
        assert!(e.to_string().contains("team/app"), "{e}");
        assert!(matches!(split("app/"), Err(NamespaceError::NoNamespace(_))));
    }

    #[test]
    fn components_that_cannot_be_namespaces_are_refused() {
        for bad in ["my_team/app", "my.team/app", "-team/app", "team-/app"] {
            assert!(
                matches!(split(bad), Err(NamespaceError::NotANamespace { .. })),
                "{bad}"
            );
        }
        let long = format!("{}/app", "a".repeat(64));
        assert!(split(&long).is_err());
        assert!(split(&format!("{}/app", "a".repeat(63))).is_ok());
    }

    #[test]
    fn actions_map_to_rbac_verbs() {
        assert_eq!(verb(Action::Pull), "get");
        assert_eq!(verb(Action::Push), "create");
        assert_eq!(verb(Action::Delete), "delete");
    }

    #[test]
    fn service_account_users_name_their_namespace() {
        let u = service_account_user("team", "builder");
        assert_eq!(u, "system:serviceaccount:team:builder");
        assert_eq!(service_account_namespace(&u), Some("team"));
        assert_eq!(service_account_namespace("alice"), None);
        assert_eq!(
            service_account_namespace("system:serviceaccount:team"),
            None
        );
    }
}
