//! `Range` and `Content-Range`: a satisfiable range always lies inside the
//! blob, and a chunk range is never inverted (no wrapped lengths).
#![no_main]

use berth_registry::oci::range::{ByteRange, parse_content_range, resolve};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, u64)| {
    let (header, size) = input;
    if let ByteRange::Partial(r) = resolve(Some(header), size) {
        assert!(r.start() <= r.end(), "{header:?} {size}");
        assert!(*r.end() < size, "{header:?} {size}");
    }
    if let Some(r) = parse_content_range(header) {
        assert!(r.start() <= r.end());
        // The length the upload code computes must not overflow.
        let _ = r.end().checked_sub(*r.start()).and_then(|l| l.checked_add(1));
    }
});
