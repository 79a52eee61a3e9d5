//! The embedded demo broker (rumqttd).
