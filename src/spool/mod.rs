//! The durable per-uplink spool.
