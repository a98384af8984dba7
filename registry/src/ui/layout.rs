//! The page shell (header, navigation, main landmark) and formatting.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

/// A rendered page.
pub struct Page(pub Markup);

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            )],
            self.0.into_string(),
        )
            .into_response()
    }
}

/// A whole page: `user` is who is logged in (None: anonymous), `csrf` the
/// token for the logout form.
pub fn page(title: &str, user: Option<&str>, csrf: &str, body: Markup) -> Page {
    Page(html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · berth" }
                link rel="stylesheet" href=(super::assets::CSS_PATH);
                script src=(super::assets::JS_PATH) defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/ui/" { "berth" }
                    nav aria-label="Main" {
                        a href="/ui/" { "Repositories" }
                        a href="/ui/audit" { "Audit trail" }
                    }
                    div.who {
                        @if let Some(u) = user {
                            span { "Logged in as " strong { (u) } }
                            form.inline method="post" action="/ui/logout" {
                                input type="hidden" name="csrf" value=(csrf);
                                button type="submit" { "Log out" }
                            }
                        } @else {
                            a href="/ui/login" { "Log in" }
                        }
                    }
                }
                main #main { (body) }
                div #live .sr-only aria-live="polite" {}
            }
        }
    })
}

pub use berth_access::quota::size;

/// A time as `2026-11-30 13:05 UTC`.
pub fn time(t: Option<jiff::Timestamp>) -> String {
    match t {
        Some(t) => t.strftime("%Y-%m-%d %H:%M UTC").to_string(),
        None => "—".to_owned(),
    }
}

/// The short form of a digest (algorithm and 12 hex digits).
pub fn short(digest: &str) -> String {
    match digest.split_once(':') {
        Some((alg, hex)) if hex.len() > 12 => format!("{alg}:{}", &hex[..12]),
        _ => digest.to_owned(),
    }
}

/// A value with a button that copies it.
pub fn copyable(value: &str, label: &str) -> Markup {
    html! {
        span.copy {
            code { (value) }
            button type="button" data-copy=(value) aria-label=(format!("Copy {label}")) { "Copy" }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 * 1024 * 1024), "3.0 MiB");
    }

    #[test]
    fn digests_shorten_to_twelve_hex_digits() {
        assert_eq!(
            short(&format!("sha256:{}", "ab".repeat(32))),
            "sha256:abababababab"
        );
        assert_eq!(short("x"), "x");
    }
}
