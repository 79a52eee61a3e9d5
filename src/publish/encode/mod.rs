//! Payload encoders.
