//! Every text frame a client can send goes through `ClientMessage::parse`:
//! it must never panic, and what it accepts must be a JSON object.
#![no_main]

use herald_protocol::message::ClientMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if ClientMessage::parse(text).is_ok() {
        let value: serde_json::Value = serde_json::from_str(text).expect("accepted frames are JSON");
        assert!(value.is_object(), "accepted a frame that is not an object: {text}");
    }
});
