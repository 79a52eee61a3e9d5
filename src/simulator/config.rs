use serde::Deserialize;

/// The `[simulator]` section of a configuration file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SimulatorConfig {}
