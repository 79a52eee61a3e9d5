//! Configuration: TOML schema, device templates, CSV register maps, validation.

mod model;

pub use model::*;
