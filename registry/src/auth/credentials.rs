//! What a request's `Authorization` header claims, parsed without judging
//! it. Nothing here may print a password or token: `Debug` is written by
//! hand to leave them out.

use axum::http::{HeaderMap, header};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The longest `Authorization` value we look at. Kubernetes and OIDC tokens
/// are a few KiB; anything longer is refused before any decoding.
const MAX_AUTHORIZATION: usize = 16 * 1024;

pub enum Credentials {
    /// No `Authorization` header.
    Anonymous,
    /// `Basic` user and password (for berth, the password may be a
    /// Kubernetes token, a robot token or a refresh token).
    Basic { user: String, password: String },
    /// `Bearer` token.
    Bearer(String),
    /// Something we cannot use: another scheme, bad base64, no `:`,
    /// several headers, too long.
    Invalid,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { user, .. } => write!(f, "Basic({user:?}, <password>)"),
            Credentials::Bearer(_) => f.write_str("Bearer(<token>)"),
            Credentials::Invalid => f.write_str("Invalid"),
        }
    }
}

impl Credentials {
    pub fn from_headers(headers: &HeaderMap) -> Credentials {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let Some(value) = values.next() else {
            return Credentials::Anonymous;
        };
        if values.next().is_some() || value.len() > MAX_AUTHORIZATION {
            return Credentials::Invalid;
        }
        let Ok(value) = value.to_str() else {
            return Credentials::Invalid;
        };
        Credentials::parse(value)
    }

    pub fn parse(value: &str) -> Credentials {
        let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim();
        if rest.is_empty() {
            return Credentials::Invalid;
        }
        if scheme.eq_ignore_ascii_case("bearer") {
            return Credentials::Bearer(rest.to_owned());
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return Credentials::Invalid;
        }
        let Ok(decoded) = STANDARD.decode(rest) else {
            return Credentials::Invalid;
        };
        let Ok(decoded) = String::from_utf8(decoded) else {
            return Credentials::Invalid;
        };
        match decoded.split_once(':') {
            Some((user, password)) if !password.is_empty() => Credentials::Basic {
                user: user.to_owned(),
                password: password.to_owned(),
            },
            _ => Credentials::Invalid,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn basic(s: &str) -> String {
        format!("Basic {}", STANDARD.encode(s))
    }

    #[test]
    fn parses_basic_and_bearer() {
        match Credentials::parse(&basic("alice:s3:cret")) {
            Credentials::Basic { user, password } => {
                assert_eq!(user, "alice");
                assert_eq!(password, "s3:cret");
            }
            c => panic!("{c:?}"),
        }
        assert!(matches!(
            Credentials::parse("bearer abc.def.ghi"),
            Credentials::Bearer(t) if t == "abc.def.ghi"
        ));
    }

    #[test]
    fn garbage_is_invalid_not_anonymous() {
        for bad in [
            "Basic",
            "Basic !!!",
            &basic("no-colon"),
            &basic("alice:"),
            "Digest x=y",
            "Bearer",
            "garbage",
        ] {
            assert!(
                matches!(Credentials::parse(bad), Credentials::Invalid),
                "{bad}"
            );
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let c = Credentials::parse(&basic("alice:hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
        let t = Credentials::parse("Bearer sekrit-token");
        assert!(!format!("{t:?}").contains("sekrit"));
    }
}
