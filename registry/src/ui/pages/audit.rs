//! `/ui/audit?repository=&subject=&since=&until=&limit=`: the audit trail
//! with filters, read as `GET /berth/v1/audit` reads it and shown to the
//! same people: a registry-wide administrator sees everything, anyone else
//! the events of repositories they may delete; with auth off, loopback
//! clients only.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::html;

use crate::audit::http::{events_for, parse};
use crate::auth::Identity;
use crate::ui::{PageError, Ui, Visitor, layout, param, query};

pub async fn get(State(ui): State<Ui>, req: Request) -> Response {
    let params = query(&req);
    let visitor = Visitor::from_request(&ui, &req);
    match render(&ui, &visitor, &params).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn refuse(status: StatusCode, message: &str) -> PageError {
    PageError {
        status,
        message: message.to_owned(),
    }
}

async fn render(
    ui: &Ui,
    visitor: &Visitor,
    params: &[(String, String)],
) -> Result<Response, PageError> {
    let Some(audit) = ui.app.audit.clone() else {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            "The audit trail is off on this registry; start it without `--audit off` to keep one.",
        ));
    };
    let (filter, limit) = parse(params).map_err(|e| refuse(StatusCode::BAD_REQUEST, &e.message))?;
    let mut scoped = false;
    match &ui.app.auth {
        None => {
            if !visitor.client.is_some_and(|c| c.is_loopback()) {
                return Err(refuse(
                    StatusCode::FORBIDDEN,
                    "With auth off the audit trail is shown to loopback clients only; open the UI through `kubectl port-forward` or on the node.",
                ));
            }
        }
        Some(auth) => {
            if matches!(visitor.identity, Identity::Anonymous) {
                return Err(refuse(
                    StatusCode::UNAUTHORIZED,
                    "The audit trail needs a login with delete rights on the repositories asked about. Log in first.",
                ));
            }
            let may = auth
                .may_audit(&visitor.identity, filter.repository.as_deref())
                .await?;
            match (&filter.repository, may) {
                (_, true) => {}
                (Some(r), false) => {
                    return Err(refuse(
                        StatusCode::FORBIDDEN,
                        &format!(
                            "You may not read the audit trail of {r}: it takes delete rights on the repository."
                        ),
                    ));
                }
                (None, false) => scoped = true,
            }
        }
    }
    let reader = match (&ui.app.auth, scoped) {
        (Some(auth), true) => Some((auth, &visitor.identity)),
        _ => None,
    };
    let events = events_for(&audit, reader, &filter, limit)
        .await
        .map_err(|e| refuse(e.status(), &e.message))?;
    let value = |k: &str| param(params, k).unwrap_or("").to_owned();
    let body = html! {
        h1 { "Audit trail" }
        form.filters method="get" action="/ui/audit" {
            div { label for="repository" { "Repository" } input #repository type="text" name="repository" value=(value("repository")); }
            div { label for="subject" { "Subject" } input #subject type="text" name="subject" value=(value("subject")); }
            div { label for="since" { "Since (RFC 3339)" } input #since type="text" name="since" placeholder="2026-11-30T10:00:00Z" value=(value("since")); }
            div { label for="until" { "Until (RFC 3339)" } input #until type="text" name="until" value=(value("until")); }
            div { label for="limit" { "At most" } input #limit type="number" min="1" max="10000" name="limit" value=(limit); }
            div { button type="submit" { "Filter" } }
        }
        @if scoped {
            p.hint { "Showing the repositories you may delete from." }
        }
        p.muted { (events.len()) " event" (if events.len() == 1 { "" } else { "s" }) ", newest first." }
        table.stack {
            thead { tr {
                th scope="col" { "Time" } th scope="col" { "Subject" } th scope="col" { "Client" }
                th scope="col" { "Action" } th scope="col" { "Repository" } th scope="col" { "Reference" } th scope="col" { "Result" }
            } }
            tbody {
                @for e in &events {
                    tr {
                        td data-label="Time" { (e.time) }
                        td data-label="Subject" { (e.subject) }
                        td data-label="Client" { (e.client.as_deref().unwrap_or("")) }
                        td data-label="Action" { (e.action) }
                        td data-label="Repository" { (e.repository.as_deref().unwrap_or("")) }
                        td data-label="Reference" { code { (e.reference.as_deref().unwrap_or("")) } }
                        td data-label="Result" { (e.result) " (" (e.status) ")" }
                    }
                }
            }
        }
    };
    Ok(layout::page(
        "Audit trail",
        visitor.user().as_deref(),
        visitor.csrf(),
        body,
    )
    .into_response())
}
