//! What a client says about itself: the `Authorization` header, the
//! forwarded headers that pick the token realm's address, an htpasswd file
//! (the user's), and access-policy globs. None may panic; a realm is always
//! an http(s) origin with nothing a header could be broken by; a glob with
//! no wildcard matches only itself.
#![no_main]

use http::{HeaderMap, HeaderValue, Uri};
use berth_access::config::glob_match;
use berth_registry::auth::challenge;
use berth_registry::auth::credentials::Credentials;
use berth_registry::auth::htpasswd::Users;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    let _ = Credentials::parse(data);
    let _ = Users::parse(std::path::Path::new("htpasswd"), data);

    let (pattern, name) = data.split_once('\n').unwrap_or((data, data));
    let matched = glob_match(pattern, name);
    if !pattern.contains(['*', '?']) {
        assert_eq!(matched, pattern == name, "{pattern:?} vs {name:?}");
    }

    let mut headers = HeaderMap::new();
    for (i, part) in data.split('\n').take(4).enumerate() {
        let header = ["forwarded", "x-forwarded-host", "x-forwarded-proto", "host"][i];
        if let Ok(value) = HeaderValue::from_str(part) {
            headers.insert(header, value);
        }
    }
    let origin = challenge::origin(&headers, &Uri::from_static("/v2/"), true);
    assert!(
        origin.starts_with("http://") || origin.starts_with("https://"),
        "{origin}"
    );
    assert!(
        !origin.contains(['"', ' ', ',', '\r', '\n']),
        "{origin:?}"
    );
});
