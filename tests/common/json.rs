//! Reading the JSON messages the agent publishes.

use serde_json::Value as Json;

/// The number in attribute `key` of an event message (attributes are `[name, value]` pairs);
/// fails the test when the event has no such number.
pub fn attr(event: &Json, key: &str) -> f64 {
    event["attributes"]
        .as_array()
        .expect("attributes")
        .iter()
        .find(|kv| kv[0] == key)
        .and_then(|kv| kv[1].as_f64())
        .unwrap_or_else(|| panic!("no attribute {key} in {event}"))
}
