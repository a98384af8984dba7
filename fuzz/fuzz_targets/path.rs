//! The `/v2/...` path parser: never panics; a routed name is a valid name.
#![no_main]

use berth_registry::api::{Endpoint, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    let path = format!("/v2/{data}");
    if let Ok(e) = parse(&path) {
        let name = match &e {
            Endpoint::Tags(n)
            | Endpoint::Manifest(n, _)
            | Endpoint::Blob(n, _)
            | Endpoint::UploadStart(n)
            | Endpoint::Upload(n, _)
            | Endpoint::Referrers(n, _) => Some(n),
            Endpoint::Base | Endpoint::Catalog => None,
        };
        if let Some(n) = name {
            assert!(n.as_str().parse::<berth_registry::oci::name::Name>().is_ok());
        }
        let _ = e.route();
    }
    let _ = parse(data);
});
