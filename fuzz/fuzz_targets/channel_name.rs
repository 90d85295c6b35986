//! Channel names arrive in subscribe frames, client events and REST paths.
//! Parsing never panics, and an accepted name keeps the documented limits:
//! at most 200 bytes of `A-Z a-z 0-9 _ - = @ , . ; #` (and `#` only in
//! `#server-to-user-` names).
#![no_main]

use herald_protocol::channel::ChannelName;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(name) = ChannelName::parse(text) {
        assert_eq!(name.as_str(), text);
        assert!(!text.is_empty() && text.len() <= 200, "accepted length {}", text.len());
        assert!(
            text.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-=@,.;#".contains(&b)),
            "accepted a character outside the alphabet: {text:?}"
        );
        let _ = (name.kind(), name.is_cache(), name.requires_auth(), name.allows_client_events(), name.target_user());
    }
});
