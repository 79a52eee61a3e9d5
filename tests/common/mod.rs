//! Helpers shared by the integration tests (each test file is its own crate and uses a part of
//! them, hence `dead_code` allowed). What the benches need too lives in the `smeltwatch-testkit`
//! crate (`testkit/`), re-exported here.
#![allow(dead_code)]
pub mod acquisition;
pub mod agent;
pub mod calc;
pub mod hj212;
pub mod json;
pub mod mbpoll;
pub mod month_end;
pub mod notify;
pub mod peers;
pub mod plant;
pub mod probe;
pub mod records;
pub mod status;
pub mod task;

// Each test file uses a part of these.
#[allow(unused_imports)]
pub use smeltwatch_testkit::{free_port, mosquitto, mqtt_config};
