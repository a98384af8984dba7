//! Registry tokens: verifying arbitrary input never panics and never
//! accepts anything (the key below signs nothing the fuzzer could know).
#![no_main]

use std::sync::OnceLock;

use berth_access::keys::{Verifier, generate};
use libfuzzer_sys::fuzz_target;

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let (_, public) = generate().expect("key generation");
        Verifier::from_pem(public.as_bytes()).expect("fresh public key")
    })
}

fuzz_target!(|data: &str| {
    assert!(verifier().verify(data, "hub", "hub").is_err());
    let _ = Verifier::from_pem(data.as_bytes());
});
