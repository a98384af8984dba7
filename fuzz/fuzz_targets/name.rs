//! Repository names, tags and references: parse never panics, and whatever
//! parses prints back to the same string and parses again.
#![no_main]

use std::str::FromStr;

use berth_registry::oci::name::{Name, Reference, Tag};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    if let Ok(n) = Name::from_str(data) {
        assert_eq!(n.as_str(), data);
        assert!(Name::from_str(n.as_str()).is_ok());
        // The namespace rule takes any valid name without panicking.
        let _ = berth_access::repository::split(n.as_str());
    }
    if let Ok(t) = Tag::from_str(data) {
        assert_eq!(t.as_str(), data);
    }
    let _ = Reference::from_str(data);
});
