//! The MQTT uplink.
