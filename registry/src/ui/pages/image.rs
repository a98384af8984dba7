//! `/ui/r/<name>/-/m/<tag or digest>`: an image or index: pull commands,
//! the index's platforms, the config (created, entrypoint, env, labels,
//! history), the layers, the referrers as a tree, and the raw JSON.

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use berth_access::Action;
use maud::{Markup, html};
use serde_json::{Map, Value};

use super::{allowed_visitor, hidden, image_url, repository_url};
use crate::oci::{Name, Reference};
use crate::ui::inventory::Referrer;
use crate::ui::{PageError, Ui, Visitor, layout, not_found};

/// The pull commands of `image` (e.g. `host/team/app:1` or `…@sha256:…`).
pub fn pull_commands(image: &str, name: &str) -> Vec<(&'static str, String)> {
    let last = name.rsplit('/').next().unwrap_or(name);
    vec![
        ("docker", format!("docker pull {image}")),
        ("podman", format!("podman pull {image}")),
        ("crane", format!("crane pull {image} {last}.tar")),
        ("oras", format!("oras pull {image}")),
        ("skopeo", format!("skopeo copy docker://{image} oci:{last}")),
    ]
}

fn annotations(a: Option<&Map<String, Value>>) -> Markup {
    html! {
        @if let Some(a) = a.filter(|a| !a.is_empty()) {
            dl.facts {
                @for (k, v) in a {
                    dt { code { (k) } }
                    dd { (v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())) }
                }
            }
        }
    }
}

fn referrer_tree(name: &Name, tree: &[Referrer]) -> Markup {
    html! {
        ul.tree {
            @for r in tree {
                @let d = &r.descriptor;
                li {
                    span.badge { (d.artifact_type.as_deref().unwrap_or(&d.media_type)) }
                    " "
                    a.mono href=(image_url(name.as_str(), &d.digest.to_string())) { (layout::short(&d.digest.to_string())) }
                    " " span.muted { (layout::size(d.size)) }
                    (annotations(d.annotations.as_ref()))
                    @if !r.children.is_empty() { (referrer_tree(name, &r.children)) }
                }
            }
        }
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|s| {
                    s.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| s.to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

fn config_section(config: &Value) -> Markup {
    let c = config.get("config");
    let created = config.get("created").and_then(Value::as_str);
    let entrypoint = strings(c.and_then(|c| c.get("Entrypoint")));
    let cmd = strings(c.and_then(|c| c.get("Cmd")));
    let env = strings(c.and_then(|c| c.get("Env")));
    let user = c
        .and_then(|c| c.get("User"))
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty());
    let workdir = c
        .and_then(|c| c.get("WorkingDir"))
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty());
    let labels = c.and_then(|c| c.get("Labels")).and_then(Value::as_object);
    let history = config
        .get("history")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    html! {
        h2 { "Config" }
        dl.facts {
            dt { "Created" } dd { (created.unwrap_or("—")) }
            @if let Some(p) = crate::ui::inventory::platform(Some(config)) { dt { "Platform" } dd { (p) } }
            dt { "Entrypoint" } dd { @if entrypoint.is_empty() { "—" } @else { code { (entrypoint.join(" ")) } } }
            dt { "Command" } dd { @if cmd.is_empty() { "—" } @else { code { (cmd.join(" ")) } } }
            @if let Some(u) = user { dt { "User" } dd { code { (u) } } }
            @if let Some(w) = workdir { dt { "Working directory" } dd { code { (w) } } }
        }
        @if !env.is_empty() {
            h3 { "Environment" }
            ul { @for e in &env { li { code { (e) } } } }
        }
        @if let Some(l) = labels.filter(|l| !l.is_empty()) {
            h3 { "Labels" }
            (annotations(Some(l)))
        }
        @if !history.is_empty() {
            h3 { "History" }
            ol {
                @for h in &history {
                    li {
                        code { (h.get("created_by").and_then(Value::as_str).unwrap_or("")) }
                        @if h.get("empty_layer").and_then(Value::as_bool) == Some(true) { " " span.muted { "(no layer)" } }
                        @if let Some(t) = h.get("created").and_then(Value::as_str) { " " span.muted { (t) } }
                    }
                }
            }
        }
    }
}

pub async fn get(
    ui: &Ui,
    name: &Name,
    reference: &str,
    req: Request,
) -> Result<Response, PageError> {
    let (visitor, may) = allowed_visitor(ui, Visitor::from_request(ui, &req), name).await?;
    let Ok(parsed_ref) = reference.parse::<Reference>() else {
        return Err(not_found(&format!(
            "{reference:?} is neither a tag nor a digest."
        )));
    };
    if !ui.inventory.store().repository_exists(name).await? {
        return Err(hidden(name, &visitor));
    }
    let Some(image) = ui.inventory.image(name, &parsed_ref).await? else {
        return Err(not_found(&format!(
            "{name} has no manifest {reference}; it may have been deleted."
        )));
    };
    let digest = image.digest.to_string();
    let tag = match &parsed_ref {
        Reference::Tag(t) => Some(t.as_str().to_owned()),
        Reference::Digest(_) => None,
    };
    let by_digest = format!("{}/{name}@{digest}", visitor.host);
    let by_tag = tag.as_ref().map(|t| format!("{}/{name}:{t}", visitor.host));
    let size = ui.inventory.size(name, &image).await?;
    let config = ui.inventory.config(name, &image).await?;
    let referrers = ui.inventory.referrer_tree(name, &image.digest).await?;
    let children: Vec<(crate::oci::manifest::Descriptor, Option<String>)> = image
        .parsed
        .manifests
        .iter()
        .cloned()
        .zip(image.child_platforms())
        .collect();
    let may_delete = may.contains(Action::Delete);
    let kind = if image.is_index() { "Index" } else { "Image" };
    let body = html! {
        p.muted {
            a href="/ui/" { "Repositories" } " / "
            a href=(repository_url(name.as_str())) { (name) } " / "
            (reference)
        }
        h1 { (name) @if let Some(t) = &tag { ":" (t) } @else { "@" (layout::short(&digest)) } }
        dl.facts {
            dt { "Kind" } dd { (kind) }
            dt { "Digest" } dd { (layout::copyable(&digest, "digest")) }
            dt { "Media type" } dd { code { (image.media_type) } }
            @if let Some(a) = image.parsed.effective_artifact_type() { dt { "Artifact type" } dd { code { (a) } } }
            dt { "Compressed size" } dd { (layout::size(size)) }
            dt { "Manifest" } dd { a href=(format!("/ui/r/{name}/-/raw/{digest}")) { "Raw JSON" } " (" (layout::size(image.body.len() as u64)) ")" }
            @if let Some(s) = &image.parsed.subject {
                dt { "Subject" } dd { a.mono href=(image_url(name.as_str(), &s.digest.to_string())) { (layout::short(&s.digest.to_string())) } }
            }
        }
        h2 { "Pull" }
        ul.pull {
            @for (tool, cmd) in pull_commands(by_tag.as_deref().unwrap_or(&by_digest), name.as_str()) {
                li { span.badge { (tool) } " " (layout::copyable(&cmd, &format!("{tool} pull command"))) }
            }
            @if by_tag.is_some() {
                li { span.badge { "by digest" } " " (layout::copyable(&format!("docker pull {by_digest}"), "pull by digest command")) }
            }
        }
        @if let Some(node) = &ui.node_endpoint {
            section #pods aria-labelledby="pods-heading" {
                h3 #pods-heading { "Pods on this cluster" }
                p.hint { "Nodes reach this registry as " code { (node) } "; write that in a pod's " code { "image:" } "." }
                ul.pull {
                    @if let Some(t) = &tag {
                        li { span.badge { "pod" } " " (layout::copyable(&format!("image: {node}/{name}:{t}"), "pod image reference by tag")) }
                    }
                    li { span.badge { "pod, pinned" } " " (layout::copyable(&format!("image: {node}/{name}@{digest}"), "pod image reference by digest")) }
                }
            }
        }
        @if may_delete {
            div.actions {
                @if let Some(t) = &tag {
                    a.button href=(format!("/ui/r/{name}/-/delete?tag={t}")) { "Delete tag " (t) "…" }
                }
                a.button.danger href=(format!("/ui/r/{name}/-/delete?digest={digest}")) { "Delete manifest…" }
            }
        }
        (annotations(image.parsed.annotations.as_ref()))
        @if image.is_index() {
            h2 { "Platforms" }
            table.stack {
                thead { tr { th scope="col" { "Platform" } th scope="col" { "Digest" } th scope="col" { "Media type" } th.num scope="col" { "Size" } } }
                tbody {
                    @for (d, p) in &children {
                        tr {
                            td data-label="Platform" { a href=(image_url(name.as_str(), &d.digest.to_string())) { (p.as_deref().unwrap_or("unknown")) } }
                            td data-label="Digest" { code title=(d.digest.to_string()) { (layout::short(&d.digest.to_string())) } }
                            td data-label="Media type" { code { (d.media_type) } }
                            td.num data-label="Size" { (layout::size(d.size)) }
                        }
                    }
                }
            }
        }
        @if let Some(c) = &config { (config_section(c)) }
        @if !image.parsed.layers.is_empty() {
            h2 #layers { "Layers" }
            table.stack {
                thead { tr { th.num scope="col" { "#" } th scope="col" { "Digest" } th scope="col" { "Media type" } th.num scope="col" { "Size" } } }
                tbody {
                    @for (i, l) in image.parsed.layers.iter().enumerate() {
                        tr {
                            td.num data-label="#" { (i + 1) }
                            td data-label="Digest" { (layout::copyable(&l.digest.to_string(), &format!("layer {} digest", i + 1))) }
                            td data-label="Media type" { code { (l.media_type) } }
                            td.num data-label="Size" { (layout::size(l.size)) }
                        }
                    }
                }
            }
            @if let Some(c) = &image.parsed.config {
                p.muted { "Config " a.mono href=(format!("/ui/r/{name}/-/raw/{}", c.digest)) { (layout::short(&c.digest.to_string())) } " (" code { (c.media_type) } ", " (layout::size(c.size)) ")" }
            }
        }
        h2 #referrers { "Referrers" }
        @if referrers.is_empty() {
            p.muted { "No signatures, SBOMs or attestations refer to this manifest." }
        } @else {
            (referrer_tree(name, &referrers))
        }
    };
    let title = format!("{name}@{}", layout::short(&digest));
    Ok(layout::page(&title, visitor.user().as_deref(), visitor.csrf(), body).into_response())
}
