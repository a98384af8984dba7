//! `/ui/?q=&page=`: the repositories the visitor may pull, grouped by
//! namespace (the first path component), with tag count, size and last
//! push. `q` filters on the server (all repositories); the script filters
//! the page's rows as one types.
//!
//! Each namespace's storage (over all its repositories, not only this
//! page's: [`crate::usage::Usage::by_namespace`]) is shown to who may
//! pull every repository in it, so sizes never reveal hidden ones.

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use maud::html;

use super::repository_url;
use crate::ui::{Ui, Visitor, layout, param, query, visible_repositories};

/// Repositories per page.
pub const PAGE: usize = 100;

use crate::ui::inventory::namespace;

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
    // Namespaces whose every repository the visitor sees: their usage shows.
    let mut visible_per_ns: std::collections::BTreeMap<String, usize> = Default::default();
    for r in &repos {
        *visible_per_ns.entry(namespace(r).to_owned()).or_default() += 1;
    }
    let usage = ui.app.usage.by_namespace().await;
    let usage_of = |ns: &str| {
        let u = usage.as_ref()?.get(ns)?;
        (visible_per_ns.get(ns).copied() == Some(u.repositories)).then(|| u.clone())
    };
    let usage_rows: Vec<(String, crate::usage::NamespaceUsage)> = visible_per_ns
        .keys()
        .filter_map(|ns| usage_of(ns).map(|u| (ns.clone(), u)))
        .collect();
    let matched: Vec<String> = repos
        .into_iter()
        .filter(|r| q.is_empty() || r.contains(&q))
        .collect();
    let total = matched.len();
    let pages = total.div_ceil(PAGE).max(1);
    let page = page.min(pages);
    let shown = &matched[(page - 1) * PAGE..(page * PAGE).min(total)];
    let summaries = ui.inventory.summaries(shown).await;
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
                section.group data-group {
                    h2 {
                        @if ns.is_empty() { "(no namespace)" } @else { (ns) }
                        @if let Some(u) = usage_of(ns) {
                            span.muted.usage data-namespace=(ns) {
                                " · " (u.repositories) " repositor" (if u.repositories == 1 { "y" } else { "ies" })
                                " · " (layout::size(u.size))
                            }
                        }
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
        @if !usage_rows.is_empty() {
            details #usage {
                summary { "Storage by namespace" }
                table {
                    thead { tr {
                        th scope="col" { "Namespace" }
                        th.num scope="col" { "Repositories" }
                        th.num scope="col" { "Size" }
                        @if let Some(_) = &ui.app.quota { th.num scope="col" { "Quota" } }
                    } }
                    tbody {
                        @for (ns, u) in &usage_rows {
                            tr {
                                td { @if ns.is_empty() { "(no namespace)" } @else { (ns) } }
                                td.num { (u.repositories) }
                                td.num { (layout::size(u.size)) }
                                @if let Some(q) = &ui.app.quota {
                                    td.num.quota data-namespace=(ns) {
                                        @match q.limit(ns) {
                                            Some(limit) => (layout::size(limit)),
                                            None => "—",
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                p.muted { "Distinct blobs and manifests, compressed, each counted once per namespace; pushes count as they arrive, deleted images until garbage collection reclaims them; re-counted every minute. Shown for namespaces whose every repository you may pull." }
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
