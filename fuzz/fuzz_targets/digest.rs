//! Digests: parse never panics; a parsed digest prints back unchanged.
#![no_main]

use std::str::FromStr;

use berth_registry::oci::digest::Digest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    if let Ok(d) = Digest::from_str(data) {
        assert_eq!(d.to_string(), data);
        assert!(data.ends_with(d.hex()));
    }
});
