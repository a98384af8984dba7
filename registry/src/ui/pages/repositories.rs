//! `/ui/?q=&page=`: the repositories the visitor may pull, grouped by
//! namespace (the first path component), with tag count, size and last
//! push. `q` filters on the server (all repositories); the script filters
//! the page's rows as one types.

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use maud::html;

use super::repository_url;
use crate::ui::{Ui, Visitor, layout, param, query, visible_repositories};

/// Repositories per page.
pub const PAGE: usize = 100;

/// The namespace a repository is grouped under.
fn namespace(repository: &str) -> &str {
    match repository.split_once('/') {
        Some((ns, _)) => ns,
        None => "",
    }
}

pub async fn get(State(ui): State<Ui>, req: Request) -> Response {
    let params = query(&req);
    let visitor = Visitor::from_request(&ui, &req);
    let q = param(&params, "q").unwrap_or("").trim().to_lowercase();
    let page: usize = param(&params, "page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1)
        .max(1);
    let repos = match visible_repositories(&ui.app, &visitor.identity).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let matched: Vec<String> = repos
        .into_iter()
        .filter(|r| q.is_empty() || r.contains(&q))
        .collect();
    let total = matched.len();
    let pages = total.div_ceil(PAGE).max(1);
    let page = page.min(pages);
    let shown = &matched[(page - 1) * PAGE..(page * PAGE).min(total)];
    let summaries = ui.inventory.summaries(shown).await;
    // Namespaces wholly on this page can show their total.
    let mut per_ns: std::collections::BTreeMap<&str, usize> = Default::default();
    for r in &matched {
        *per_ns.entry(namespace(r)).or_default() += 1;
    }
    let mut groups: Vec<(&str, Vec<&String>)> = Vec::new();
    for r in shown {
        let ns = namespace(r);
        match groups.last_mut() {
            Some((g, list)) if *g == ns => list.push(r),
            _ => groups.push((ns, vec![r])),
        }
    }
    // Counts only, as /berth/v1/gc serves them: for anyone logged in.
    let gc = if ui.app.auth.is_none() || visitor.user().is_some() {
        ui.app.store.last_gc_run().await.ok().flatten()
    } else {
        None
    };
    let link = |p: usize| {
        let mut s = form_urlencoded::Serializer::new(String::new());
        if !q.is_empty() {
            s.append_pair("q", &q);
        }
        s.append_pair("page", &p.to_string());
        format!("/ui/?{}", s.finish())
    };
    let body = html! {
        h1 { "Repositories" }
        form.search method="get" action="/ui/" role="search" {
            label for="q" { "Search repositories" }
            input #q type="search" name="q" value=(q) data-filter="#repositories" autocomplete="off" placeholder="name contains…";
            button type="submit" { "Search all" }
        }
        p.muted {
            (total) " repositor" (if total == 1 { "y" } else { "ies" })
            @if !q.is_empty() { " matching " code { (q) } }
            @if visitor.user().is_none() && ui.app.auth.is_some() {
                " you may pull anonymously. " a href="/ui/login?next=/ui/" { "Log in" } " to see more."
            }
        }
        div #repositories {
            @if shown.is_empty() {
                p { "Nothing to show. Push an image, e.g. " code { "docker push " (visitor.host) "/team/app:1" } "." }
            }
            @for (ns, list) in &groups {
                @let whole = per_ns.get(ns).copied() == Some(list.len());
                @let ns_size: u64 = list.iter().filter_map(|r| summaries.get(*r)).map(|s| s.size).sum();
                section.group data-group {
                    h2 {
                        @if ns.is_empty() { "(no namespace)" } @else { (ns) }
                        @if whole { span.muted { " · " (list.len()) " · " (layout::size(ns_size)) } }
                    }
                    table.stack {
                        thead { tr {
                            th scope="col" { "Repository" }
                            th.num scope="col" { "Tags" }
                            th.num scope="col" { "Size" }
                            th scope="col" { "Last push" }
                        } }
                        tbody {
                            @for r in list {
                                @let s = summaries.get(*r).cloned().unwrap_or_default();
                                tr data-name=(r) {
                                    td data-label="Repository" { a href=(repository_url(r)) { (r) } }
                                    td.num data-label="Tags" { (s.tags) }
                                    td.num data-label="Size" { (layout::size(s.size)) }
                                    td data-label="Last push" { (layout::time(s.pushed)) }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(run) = &gc {
            p.muted #gc {
                "Last garbage collection: " time datetime=(run.finished) { (run.finished) }
                " (" (run.duration_millis) " ms): "
                (run.blobs_deleted) " blobs and " (run.manifests_deleted) " manifests deleted, "
                (layout::size(run.bytes_reclaimed)) " reclaimed; "
                (run.blobs_quarantined) " blobs and " (run.manifests_quarantined) " manifests quarantined; "
                (run.tags_removed) " tags removed by retention, " (run.tags_kept_in_use) " kept for running pods."
                @if let Some(e) = &run.error { " It stopped early: " (e) }
            }
        }
        @if pages > 1 {
            nav.pages aria-label="Pages" {
                @if page > 1 { a href=(link(page - 1)) { "← Previous" } }
                span { "Page " (page) " of " (pages) }
                @if page < pages { a href=(link(page + 1)) { "Next →" } }
            }
        }
    };
    layout::page(
        "Repositories",
        visitor.user().as_deref(),
        visitor.csrf(),
        body,
    )
    .into_response()
}
