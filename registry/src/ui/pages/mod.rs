//! One module per page. Repository pages live under `/ui/r/<name>`, and
//! what is inside a repository under `/ui/r/<name>/-/...` (names have any
//! number of `/` components, and `-` cannot be one):
//! - `/ui/r/<name>`: its tags;
//! - `/ui/r/<name>/-/m/<tag or digest>`: an image or index;
//! - `/ui/r/<name>/-/raw/<digest>`: a manifest's or config's JSON;
//! - `/ui/r/<name>/-/delete?tag=|digest=`: the confirmation (GET) and the
//!   deletion (POST).

pub mod audit;
pub mod delete;
pub mod image;
pub mod raw;
pub mod repositories;
pub mod repository;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};

use super::{PageError, Ui, Visitor, not_found, rights};
use crate::oci::Name;

/// What a `/ui/r/...` path addresses.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    Repository(Name),
    Image(Name, String),
    Raw(Name, String),
    Delete(Name),
}

/// Parses the part of a path after `/ui/r/`.
pub fn parse(path: &str) -> Option<Target> {
    let (repo, rest) = match path.split_once("/-/") {
        Some((r, rest)) => (r, Some(rest)),
        None => (path.trim_end_matches('/'), None),
    };
    let name = repo.parse::<Name>().ok()?;
    Some(match rest {
        None => Target::Repository(name),
        Some("delete") => Target::Delete(name),
        Some(rest) => match rest.split_once('/') {
            Some(("m", r)) if !r.is_empty() && !r.contains('/') => {
                Target::Image(name, r.to_owned())
            }
            Some(("raw", d)) if !d.is_empty() && !d.contains('/') => {
                Target::Raw(name, d.to_owned())
            }
            _ => return None,
        },
    })
}

/// The link to a repository page.
pub fn repository_url(name: &str) -> String {
    format!("/ui/r/{name}")
}

/// The link to an image page.
pub fn image_url(name: &str, reference: &str) -> String {
    format!("/ui/r/{name}/-/m/{reference}")
}

/// The visitor, if they may pull `name`; otherwise "not found" (a
/// repository one may not pull is not shown to exist).
pub async fn allowed_visitor(
    ui: &Ui,
    visitor: Visitor,
    name: &Name,
) -> Result<(Visitor, berth_access::Actions), PageError> {
    let may = rights(&ui.app, &visitor.identity, name.as_str()).await?;
    if !may.contains(berth_access::Action::Pull) {
        return Err(hidden(name, &visitor));
    }
    Ok((visitor, may))
}

/// The answer for a repository the visitor may not see (or that does not
/// exist: the two look alike).
pub fn hidden(name: &Name, visitor: &Visitor) -> PageError {
    let hint = if visitor.user().is_none() {
        " If it is private, log in first."
    } else {
        ""
    };
    not_found(&format!(
        "There is no repository {name} that you may pull.{hint}"
    ))
}

pub async fn dispatch_get(
    State(ui): State<Ui>,
    Path(path): Path<String>,
    req: Request,
) -> Response {
    let result = match parse(&path) {
        None => Err(not_found("There is no page here.")),
        Some(Target::Repository(n)) => repository::get(&ui, &n, req).await,
        Some(Target::Image(n, r)) => image::get(&ui, &n, &r, req).await,
        Some(Target::Raw(n, d)) => raw::get(&ui, &n, &d, req).await,
        Some(Target::Delete(n)) => delete::confirm(&ui, &n, req).await,
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

pub async fn dispatch_post(
    State(ui): State<Ui>,
    Path(path): Path<String>,
    req: Request,
) -> Response {
    let result = match parse(&path) {
        Some(Target::Delete(n)) => delete::post(&ui, &n, req).await,
        _ => Err(PageError {
            status: axum::http::StatusCode::METHOD_NOT_ALLOWED,
            message: "This page takes no form.".to_owned(),
        }),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        s.parse().unwrap_or_else(|_| panic!("{s}"))
    }

    #[test]
    fn paths_name_a_repository_and_what_is_in_it() {
        assert_eq!(parse("team/app"), Some(Target::Repository(n("team/app"))));
        assert_eq!(parse("team/app/"), Some(Target::Repository(n("team/app"))));
        assert_eq!(
            parse("a/b/c/-/m/v1"),
            Some(Target::Image(n("a/b/c"), "v1".into()))
        );
        assert_eq!(
            parse("a/-/raw/sha256:ab"),
            Some(Target::Raw(n("a"), "sha256:ab".into()))
        );
        assert_eq!(parse("a/-/delete"), Some(Target::Delete(n("a"))));
        assert_eq!(parse("a/-/m/x/y"), None);
        assert_eq!(parse("../etc"), None);
        assert_eq!(parse("A"), None);
    }
}
