//! `/ui/r/<name>/-/delete?tag=|digest=`: GET shows what would go and asks
//! to confirm; POST (with the CSRF token) deletes. Offered, and done, only
//! for visitors with delete rights on the repository.
//!
//! - A tag: only the tag goes; the manifest stays (by digest, and by any
//!   other tag).
//! - A manifest: it goes with every tag pointing at it and its referrers
//!   (signatures, SBOMs: they describe nothing once it is gone), deepest
//!   first. An index's platform manifests stay, untagged, for GC.

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use berth_access::Action;
use maud::html;

use super::{allowed_visitor, image_url, repository_url};
use crate::audit::Event;
use crate::oci::{Digest, Name, Reference, Tag};
use crate::ui::inventory::flatten;
use crate::ui::{PageError, Ui, Visitor, form, layout, not_found, param, query, session};

/// What a delete form names.
enum Doomed {
    Tag(Tag),
    Manifest(Digest),
}

fn doomed(params: &[(String, String)]) -> Result<Doomed, PageError> {
    if let Some(t) = param(params, "tag") {
        return t
            .parse::<Tag>()
            .map(Doomed::Tag)
            .map_err(|_| not_found(&format!("{t:?} is not a tag.")));
    }
    if let Some(d) = param(params, "digest") {
        return d
            .parse::<Digest>()
            .map(Doomed::Manifest)
            .map_err(|_| not_found(&format!("{d:?} is not a digest.")));
    }
    Err(PageError {
        status: StatusCode::BAD_REQUEST,
        message: "Say what to delete: a tag (?tag=) or a manifest (?digest=).".to_owned(),
    })
}

fn forbidden(name: &Name, visitor: &Visitor) -> PageError {
    PageError {
        status: StatusCode::FORBIDDEN,
        message: format!(
            "{} may not delete from {name}; ask for the right to be granted.",
            visitor
                .user()
                .unwrap_or_else(|| "An anonymous visitor".to_owned())
        ),
    }
}

pub async fn confirm(ui: &Ui, name: &Name, req: Request) -> Result<Response, PageError> {
    let params = query(&req);
    let (mut visitor, may) = allowed_visitor(ui, Visitor::from_request(ui, &req), name).await?;
    if !may.contains(Action::Delete) {
        return Err(forbidden(name, &visitor));
    }
    let what = doomed(&params)?;
    let digest = match &what {
        Doomed::Tag(t) => ui.inventory.store().tag_target(name, t).await?,
        Doomed::Manifest(d) => Some(d.clone()),
    };
    let Some(digest) = digest else {
        return Err(not_found(&format!(
            "{name} has no such tag; it may have been deleted already."
        )));
    };
    let Some(image) = ui
        .inventory
        .image(name, &Reference::Digest(digest.clone()))
        .await?
    else {
        return Err(not_found(&format!("{name} has no manifest {digest}.")));
    };
    let rows = ui.inventory.tags(name).await?.unwrap_or_default();
    let same: Vec<String> = rows
        .into_iter()
        .filter(|r| r.digest == digest.to_string())
        .map(|r| r.tag)
        .collect();
    let mut referrers = Vec::new();
    flatten(
        &ui.inventory.referrer_tree(name, &digest).await?,
        &mut referrers,
    );
    let cookie = session::ensure(ui, &mut visitor);
    let d = digest.to_string();
    let body = html! {
        p.muted { a href="/ui/" { "Repositories" } " / " a href=(repository_url(name.as_str())) { (name) } " / delete" }
        @match &what {
            Doomed::Tag(t) => {
                h1 { "Delete tag " (t) " from " (name) "?" }
                p { "Only the tag goes. The manifest " a.mono href=(image_url(name.as_str(), &d)) { (layout::short(&d)) } " stays, pullable by digest"
                    @let others: Vec<&String> = same.iter().filter(|s| *s != t.as_str()).collect();
                    @if others.is_empty() { " (no other tag points at it)." } @else { " and by its other tags: " (others.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")) "." }
                }
            }
            Doomed::Manifest(_) => {
                h1 { "Delete manifest " (layout::short(&d)) " from " (name) "?" }
                p { "This deletes the manifest " code { (d) } " and everything below. It cannot be undone." }
                h2 { "Tags that go with it" }
                @if same.is_empty() { p.muted { "None: no tag points at it." } } @else { ul { @for s in &same { li { code { (s) } } } } }
                h2 { "Referrers that go with it" }
                @if referrers.is_empty() { p.muted { "None." } } @else {
                    ul { @for r in &referrers { li { span.badge { (r.artifact_type.as_deref().unwrap_or(&r.media_type)) } " " code { (r.digest) } } } }
                }
                @if image.is_index() {
                    p.hint { "The index's " (image.parsed.manifests.len()) " platform manifests stay, untagged, until garbage collection removes them." }
                }
            }
        }
        form method="post" action=(format!("/ui/r/{name}/-/delete")) {
            input type="hidden" name="csrf" value=(visitor.csrf());
            @match &what {
                Doomed::Tag(t) => { input type="hidden" name="tag" value=(t.as_str()); }
                Doomed::Manifest(_) => { input type="hidden" name="digest" value=(d); }
            }
            div.actions {
                button.danger type="submit" { "Delete" }
                a.button href=(repository_url(name.as_str())) { "Cancel" }
            }
        }
    };
    let mut resp = layout::page(
        "Confirm deletion",
        visitor.user().as_deref(),
        visitor.csrf(),
        body,
    )
    .into_response();
    if let Some(c) = cookie {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    Ok(resp)
}

pub async fn post(ui: &Ui, name: &Name, req: Request) -> Result<Response, PageError> {
    let (visitor, may) = allowed_visitor(ui, Visitor::from_request(ui, &req), name).await?;
    let form = form(req).await?;
    session::check_csrf(&visitor, &form)?;
    let subject = visitor.identity.audit_name();
    let record = |action: &str, reference: Option<String>, digest: Option<String>, status: u16| {
        if let Some(audit) = &ui.app.audit {
            let mut e = Event::now(action, &subject, visitor.client, status);
            e.repository = Some(name.to_string());
            e.reference = reference;
            e.digest = digest;
            audit.record(e);
        }
    };
    let what = doomed(&form)?;
    if !may.contains(Action::Delete) {
        let reference = match &what {
            Doomed::Tag(t) => t.to_string(),
            Doomed::Manifest(d) => d.to_string(),
        };
        record("delete", Some(reference), None, 403);
        return Err(forbidden(name, &visitor));
    }
    let store = ui.inventory.store();
    let gone = match &what {
        Doomed::Tag(t) => {
            let existed = store.tag_delete(name, t).await?;
            if existed {
                record("delete", Some(t.to_string()), None, 202);
            }
            existed.then(|| t.to_string())
        }
        Doomed::Manifest(d) => {
            let mut referrers = Vec::new();
            flatten(&ui.inventory.referrer_tree(name, d).await?, &mut referrers);
            for r in referrers.iter().rev() {
                if store.manifest_delete(name, &r.digest).await? {
                    record(
                        "delete",
                        Some(r.digest.to_string()),
                        Some(r.digest.to_string()),
                        202,
                    );
                }
            }
            let existed = store.manifest_delete(name, d).await?;
            if existed {
                record("delete", Some(d.to_string()), Some(d.to_string()), 202);
            }
            existed.then(|| d.to_string())
        }
    };
    ui.inventory.forget(name.as_str());
    let Some(gone) = gone else {
        return Err(not_found("It is not there any more: deleted already?"));
    };
    tracing::info!(repository = %name, reference = %gone, subject = %subject, "ui: deleted");
    let q = form_urlencoded::Serializer::new(String::new())
        .append_pair("deleted", &gone)
        .finish();
    Ok(Redirect::to(&format!("{}?{q}", repository_url(name.as_str()))).into_response())
}
