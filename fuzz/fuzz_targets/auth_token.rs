//! The `auth` field of subscribe and sign-in frames (`key:hexsignature`):
//! checking it never panics, whatever the client sends.
#![no_main]

use herald_protocol::sign::{channel_string_to_sign, user_string_to_sign, verify_auth_token};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut parts = text.splitn(3, '\n');
    let (auth, socket_id, rest) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next());
    let to_sign = channel_string_to_sign(socket_id, "private-x", rest);
    let ok = verify_auth_token("app-key", "app-secret", &to_sign, auth);
    let _ = verify_auth_token("app-key", "app-secret", &user_string_to_sign(socket_id, rest.unwrap_or("")), auth);
    if ok {
        let good = herald_protocol::sign::auth_token("app-key", "app-secret", &to_sign);
        assert_eq!(auth.to_ascii_lowercase(), good, "accepted an auth token other than the right one");
    }
});
