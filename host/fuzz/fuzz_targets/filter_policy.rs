//! The SNS filter-policy parser and evaluator (host/src/filter.rs), both scopes: a policy,
//! then `---`, then a message in the framing of `iniesta_fuzz::frame` (its attributes for the
//! MessageAttributes scope, its body for the MessageBody scope). A policy that parses parses
//! again from its own JSON text and decides every message the same way.
#![no_main]

use iniesta::filter::FilterPolicy;
use iniesta_fuzz::{frame, two_parts};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (policy, message) = two_parts(data);
    let Ok(policy) = std::str::from_utf8(policy) else {
        return;
    };
    let Ok(policy) = FilterPolicy::parse_str(policy) else {
        return;
    };
    let again = FilterPolicy::parse_str(&policy.to_json().to_string())
        .expect("a parsed policy's own JSON parses");
    let message = frame(message);
    assert_eq!(
        policy.matches_attributes(&message.attributes),
        again.matches_attributes(&message.attributes)
    );
    if let Ok(body) = serde_json::from_slice::<serde_json::Value>(message.body) {
        assert_eq!(policy.matches_body(&body), again.matches_body(&body));
    }
});
