//! What berth's registry and operator must agree on, defined once.
//!
//! - [`scope`]: the token scope grammar of Distribution's token auth spec
//!   (`repository:team/app:pull,push`, `registry:catalog:*`).
//! - [`repository`]: which Kubernetes namespace a repository belongs to,
//!   and the SubjectAccessReview attributes that stand for each action.
//! - [`claims`]: the claims of a registry token (access, refresh and the
//!   operator's pull-only robot tokens).
//! - [`keys`]: ES256 signing and verification with a set of keys, so a key
//!   can rotate while tokens signed by the old one are still accepted.
//! - [`mirror`]: the registry's mirror (pull-through cache) config file.
//! - [`config`]: the registry's auth config file, which the operator writes
//!   from a `Registry`'s spec, and the access policy it holds.
//! - [`gc`]: the retention rules and in-use images the operator hands the
//!   registry's garbage collector, and the record of a run it hands back.
//! - [`notify`]: the registry's notification (webhook) config file, also
//!   written by the operator.
//! - [`quota`]: storage quotas per namespace (a config file the operator
//!   writes) and the usage report the registry hands back.
//!
//! Nothing here does I/O beyond parsing bytes it is given.

pub mod claims;
pub mod config;
pub mod gc;
pub mod keys;
pub mod mirror;
pub mod notify;
pub mod quota;
pub mod repository;
pub mod scope;

pub use claims::{Claims, Grant, TokenKind};
pub use config::{AuthConfig, Mode};
pub use keys::{KeyError, Signer, Verifier};
pub use mirror::MirrorConfig;
pub use repository::{NamespaceError, RepositoryPath};
pub use scope::{Action, Actions, Scope};
