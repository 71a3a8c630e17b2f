//! The long-poll answer's JSON, one message at a time. Pure: no I/O, no routes.

use base64::Engine;
use bytes::Bytes;

/// One message as a JSON value: a string for text, `{"binary": "<base64>"}` for binary, and
/// `{"event": NAME, "data": TEXT}` for a named event from an SSE backend.
pub fn encode_message(payload: &[u8], binary: bool, event: Option<&str>) -> Bytes {
    let value = if binary {
        serde_json::json!({ "binary": base64::engine::general_purpose::STANDARD.encode(payload) })
    } else {
        let text = String::from_utf8_lossy(payload);
        match event {
            Some(name) => serde_json::json!({ "event": name, "data": text }),
            None => serde_json::Value::String(text.into_owned()),
        }
    };
    Bytes::from(value.to_string())
}
