//! The scope grammar of Distribution's token auth spec
//! (`docs/content/spec/auth/scope.md`):
//!
//! ```text
//! scope         := resourcetype [ "(" resourceclass ")" ] ":" resourcename ":" action [ "," action ]*
//! resourcetype  := "repository" | "registry" | ...
//! resourcename  := may itself contain ":" (a host:port prefix), so the
//!                  type is everything before the first ":" and the
//!                  actions everything after the last one
//! action        := "pull" | "push" | "delete" | "*"
//! ```
//!
//! Unknown resource types and actions parse (a client may ask for them) but
//! are never granted.

use std::fmt;

/// What a request may do to a repository. `*` (all) is expanded on parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    /// `pull`, `push`, `delete`; `*` is handled by [`Actions::parse_list`].
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of [`Action`]s, as a bit set: cheap to copy and intersect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Actions(u8);

impl Actions {
    pub const NONE: Actions = Actions(0);
    pub const ALL: Actions = Actions(0b111);

    fn bit(a: Action) -> u8 {
        match a {
            Action::Pull => 1,
            Action::Push => 2,
            Action::Delete => 4,
        }
    }

    pub fn of(actions: &[Action]) -> Actions {
        Actions(actions.iter().fold(0, |acc, a| acc | Self::bit(*a)))
    }

    pub fn contains(self, a: Action) -> bool {
        self.0 & Self::bit(a) != 0
    }

    pub fn with(self, a: Action) -> Actions {
        Actions(self.0 | Self::bit(a))
    }

    pub fn union(self, other: Actions) -> Actions {
        Actions(self.0 | other.0)
    }

    pub fn intersect(self, other: Actions) -> Actions {
        Actions(self.0 & other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Action> {
        Action::ALL.into_iter().filter(move |a| self.contains(*a))
    }

    /// Parses `pull,push`; `*` means all; unknown words are ignored.
    pub fn parse_list(list: &str) -> Actions {
        list.split(',')
            .map(str::trim)
            .fold(Actions::NONE, |acc, word| match word {
                "*" => Actions::ALL,
                w => Action::parse(w).map_or(acc, |a| acc.with(a)),
            })
    }

    /// The action words, in a stable order (`pull`, `push`, `delete`).
    pub fn to_strings(self) -> Vec<String> {
        self.iter().map(|a| a.as_str().to_owned()).collect()
    }
}

impl fmt::Display for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<&str> = self.iter().map(Action::as_str).collect();
        f.write_str(&words.join(","))
    }
}

/// The resource type of the catalog scope.
pub const REGISTRY: &str = "registry";
/// The resource type of repository scopes.
pub const REPOSITORY: &str = "repository";
/// The resource name of the catalog scope (`registry:catalog:*`).
pub const CATALOG: &str = "catalog";

/// One parsed scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// `repository`, `registry`, or something this registry does not serve.
    pub resource_type: String,
    pub name: String,
    /// The raw action words asked for (kept for `registry:catalog:*`).
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scope {0:?} is not of the form type:name:actions (e.g. repository:team/app:pull,push)")]
pub struct ScopeError(pub String);

impl Scope {
    pub fn parse(s: &str) -> Result<Scope, ScopeError> {
        let err = || ScopeError(s.chars().take(200).collect());
        let (ty, rest) = s.split_once(':').ok_or_else(err)?;
        let (name, actions) = rest.rsplit_once(':').ok_or_else(err)?;
        // A resource class, e.g. `repository(plugin)`, is accepted and ignored.
        let ty = ty.split_once('(').map_or(ty, |(t, _)| t);
        if ty.is_empty() || name.is_empty() {
            return Err(err());
        }
        Ok(Scope {
            resource_type: ty.to_owned(),
            name: name.to_owned(),
            actions: actions
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }

    /// A repository scope for `actions`.
    pub fn repository(name: &str, actions: Actions) -> Scope {
        Scope {
            resource_type: REPOSITORY.to_owned(),
            name: name.to_owned(),
            actions: actions.to_strings(),
        }
    }

    /// `registry:catalog:*`.
    pub fn catalog() -> Scope {
        Scope {
            resource_type: REGISTRY.to_owned(),
            name: CATALOG.to_owned(),
            actions: vec!["*".to_owned()],
        }
    }

    pub fn is_catalog(&self) -> bool {
        self.resource_type == REGISTRY && self.name == CATALOG
    }

    /// The repository actions asked for (empty for other resource types).
    pub fn repository_actions(&self) -> Actions {
        if self.resource_type != REPOSITORY {
            return Actions::NONE;
        }
        Actions::parse_list(&self.actions.join(","))
    }

    /// Parses a space-separated list of scopes (the spec lets `scope`
    /// repeat, and some clients join several with spaces in one value).
    pub fn parse_many<'a>(
        values: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<Scope>, ScopeError> {
        values
            .into_iter()
            .flat_map(str::split_whitespace)
            .map(Scope::parse)
            .collect()
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.resource_type,
            self.name,
            self.actions.join(",")
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_repository_scopes_with_a_host_port_in_the_name() {
        let s = Scope::parse("repository:localhost:5000/team/app:pull,push").unwrap();
        assert_eq!(s.resource_type, "repository");
        assert_eq!(s.name, "localhost:5000/team/app");
        assert_eq!(
            s.repository_actions(),
            Actions::of(&[Action::Pull, Action::Push])
        );
        assert_eq!(
            s.to_string(),
            "repository:localhost:5000/team/app:pull,push"
        );
    }

    #[test]
    fn star_means_every_action_and_unknown_words_mean_nothing() {
        assert_eq!(
            Scope::parse("repository:a/b:*")
                .unwrap()
                .repository_actions(),
            Actions::ALL
        );
        assert_eq!(
            Scope::parse("repository:a/b:fly")
                .unwrap()
                .repository_actions(),
            Actions::NONE
        );
        assert_eq!(
            Scope::parse("repository(plugin):a/b:pull")
                .unwrap()
                .repository_actions(),
            Actions::of(&[Action::Pull])
        );
    }

    #[test]
    fn the_catalog_scope_is_recognised() {
        assert!(Scope::parse("registry:catalog:*").unwrap().is_catalog());
        assert!(!Scope::parse("repository:catalog:*").unwrap().is_catalog());
        // Catalog actions are not repository actions.
        assert_eq!(Scope::catalog().repository_actions(), Actions::NONE);
    }

    #[test]
    fn refuses_scopes_without_three_parts() {
        for bad in [
            "",
            "repository",
            "repository:a",
            ":a:pull",
            "repository::pull",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn several_scopes_in_one_value_are_split_on_spaces() {
        let v = Scope::parse_many([
            "repository:a/b:pull repository:c/d:push",
            "registry:catalog:*",
        ])
        .unwrap();
        assert_eq!(v.len(), 3);
    }

    #[test]
    fn action_sets_intersect() {
        let pp = Actions::of(&[Action::Pull, Action::Push]);
        let pd = Actions::of(&[Action::Pull, Action::Delete]);
        assert_eq!(pp.intersect(pd), Actions::of(&[Action::Pull]));
        assert_eq!(pp.union(pd), Actions::ALL);
        assert_eq!(Actions::ALL.to_string(), "pull,push,delete");
    }
}
