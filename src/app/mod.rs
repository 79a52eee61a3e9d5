//! Wiring: builds components from a [`crate::config::Config`], spawns their tasks, owns shutdown.
