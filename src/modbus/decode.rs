//! Decoding registers into typed values (pure).
