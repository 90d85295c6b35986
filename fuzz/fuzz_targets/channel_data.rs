//! `channel_data` (presence subscribe) and `user_data` (sign-in) are JSON
//! strings a client supplies: parsing never panics, and an accepted value
//! has a non-empty user id.
#![no_main]

use herald_protocol::presence::{parse_channel_data, parse_user_data};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(member) = parse_channel_data(text) {
        assert!(!member.user_id.is_empty(), "accepted an empty user_id: {text}");
    }
    if let Ok(user) = parse_user_data(text) {
        assert!(!user.id.is_empty(), "accepted an empty id: {text}");
    }
});
