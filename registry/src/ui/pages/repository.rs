//! `/ui/r/<name>?sort=tag|pushed|size&dir=asc|desc`: a repository's tags,
//! each with its digest, platforms, compressed size, push time and when
//! its manifest was last pulled (`sort=pulled`).

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use berth_access::Action;
use maud::html;

use super::{allowed_visitor, hidden, image_url};
use crate::oci::Name;
use crate::ui::inventory::TagRow;
use crate::ui::{PageError, Ui, Visitor, layout, param, query};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sort {
    Tag,
    Pushed,
    Pulled,
    Size,
}

impl Sort {
    fn of(s: Option<&str>) -> Sort {
        match s {
            Some("pushed") => Sort::Pushed,
            Some("pulled") => Sort::Pulled,
            Some("size") => Sort::Size,
            _ => Sort::Tag,
        }
    }

    fn key(self) -> &'static str {
        match self {
            Sort::Tag => "tag",
            Sort::Pushed => "pushed",
            Sort::Pulled => "pulled",
            Sort::Size => "size",
        }
    }
}

fn sort(rows: &mut [TagRow], by: Sort, descending: bool) {
    match by {
        Sort::Tag => rows.sort_by(|a, b| a.tag.cmp(&b.tag)),
        Sort::Pushed => rows.sort_by(|a, b| a.pushed.cmp(&b.pushed).then(a.tag.cmp(&b.tag))),
        Sort::Pulled => rows.sort_by(|a, b| a.pulled.cmp(&b.pulled).then(a.tag.cmp(&b.tag))),
        Sort::Size => rows.sort_by(|a, b| a.size.cmp(&b.size).then(a.tag.cmp(&b.tag))),
    }
    if descending {
        rows.reverse();
    }
}

pub async fn get(ui: &Ui, name: &Name, req: Request) -> Result<Response, PageError> {
    let params = query(&req);
    let (visitor, may) = allowed_visitor(ui, Visitor::from_request(ui, &req), name).await?;
    let Some(mut rows) = ui.inventory.tags(name).await? else {
        return Err(hidden(name, &visitor));
    };
    let by = Sort::of(param(&params, "sort"));
    // Newest and largest first unless asked otherwise.
    let descending = match param(&params, "dir") {
        Some("asc") => false,
        Some("desc") => true,
        _ => by != Sort::Tag,
    };
    sort(&mut rows, by, descending);
    let may_delete = may.contains(Action::Delete);
    let done = param(&params, "deleted");
    let header = |s: Sort, label: &str| {
        let active = s == by;
        let next_desc = if active { !descending } else { s != Sort::Tag };
        let href = format!(
            "?sort={}&dir={}",
            s.key(),
            if next_desc { "desc" } else { "asc" }
        );
        let aria = if !active {
            "none"
        } else if descending {
            "descending"
        } else {
            "ascending"
        };
        html! {
            th scope="col" aria-sort=(aria) {
                a href=(href) { (label) @if active { (if descending { " ↓" } else { " ↑" }) } }
            }
        }
    };
    let body = html! {
        p.muted { a href="/ui/" { "Repositories" } " / " (name) }
        h1 { (name) }
        @if let Some(d) = done {
            p.notice role="status" { "Deleted " code { (d) } "." }
        }
        p { (rows.len()) " tag" (if rows.len() == 1 { "" } else { "s" }) ". Pull with " code { "docker pull " (visitor.host) "/" (name) ":<tag>" } }
        div.search {
            label for="filter" { "Filter tags" }
            input #filter type="search" data-filter="#tags" autocomplete="off";
        }
        table.stack #tags {
            thead { tr {
                (header(Sort::Tag, "Tag"))
                th scope="col" { "Digest" }
                th scope="col" { "Platforms" }
                (header(Sort::Size, "Size"))
                (header(Sort::Pushed, "Pushed"))
                (header(Sort::Pulled, "Last pulled"))
                @if may_delete { th scope="col" { span.sr-only { "Actions" } } }
            } }
            tbody {
                @for r in &rows {
                    tr data-name=(r.tag) {
                        td data-label="Tag" { a href=(image_url(name.as_str(), &r.tag)) { (r.tag) } " " span.badge { (r.kind) } }
                        td data-label="Digest" {
                            a.mono href=(image_url(name.as_str(), &r.digest)) title=(r.digest) { (layout::short(&r.digest)) }
                        }
                        td data-label="Platforms" {
                            @if r.platforms.is_empty() { "—" } @else { (r.platforms.join(", ")) }
                        }
                        td.num data-label="Size" { (layout::size(r.size)) }
                        td data-label="Pushed" { (layout::time(r.pushed)) }
                        td data-label="Last pulled" { (layout::time(r.pulled)) }
                        @if may_delete {
                            td {
                                a.button href=(format!("/ui/r/{name}/-/delete?tag={}", r.tag)) aria-label=(format!("Delete tag {}", r.tag)) { "Delete…" }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page(
        name.as_str(),
        visitor.user().as_deref(),
        visitor.csrf(),
        body,
    )
    .into_response())
}
