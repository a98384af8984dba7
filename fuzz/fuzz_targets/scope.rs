//! Token scopes (`repository:team/app:pull,push`): parse never panics, and
//! a parsed scope prints back to something that parses to the same scope.
#![no_main]

use berth_access::{Actions, Scope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    if let Ok(s) = Scope::parse(data) {
        let again = Scope::parse(&s.to_string());
        if !s.actions.is_empty() {
            assert_eq!(again.as_ref().ok(), Some(&s), "{data:?}");
        }
        let _ = s.repository_actions();
    }
    let _ = Scope::parse_many(data.split('&'));
    let _ = Actions::parse_list(data);
});
