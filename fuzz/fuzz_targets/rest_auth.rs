//! A REST request's query string and signature check, as the gateway runs
//! them: form-decode the query, then verify against a key and secret. Never
//! panics, and nothing fuzzed passes verification unless it carries the
//! signature the secret makes.
#![no_main]

use herald_protocol::rest_auth::SignedRequest;
use libfuzzer_sys::fuzz_target;

const KEY: &str = "app-key";
const SECRET: &str = "app-secret";

fuzz_target!(|data: &[u8]| {
    // method \n path \n query \n body
    let mut parts = data.splitn(4, |&b| b == b'\n');
    let (Some(method), Some(path), Some(query), body) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let (Ok(method), Ok(path), Ok(query)) =
        (std::str::from_utf8(method), std::str::from_utf8(path), std::str::from_utf8(query))
    else {
        return;
    };
    let Ok(params) = serde_urlencoded::from_str::<Vec<(String, String)>>(query) else { return };
    let request = SignedRequest { method, path, query: &params, body: body.unwrap_or_default() };
    let _ = request.auth_key();
    let _ = request.string_to_sign();
    for now in [0, 1_700_000_000, u64::MAX] {
        if request.verify(KEY, SECRET, now).is_ok() {
            let claimed = params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("auth_signature"))
                .map(|(_, v)| v.to_ascii_lowercase());
            let expected = herald_protocol::sign::sign(SECRET, &request.string_to_sign());
            assert_eq!(claimed, Some(expected), "verified without the right signature");
        }
    }
});
