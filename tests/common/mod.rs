#![allow(dead_code)]
pub mod calc;
pub mod hj212;
pub mod mosquitto;
pub mod peers;
pub mod plant;
pub mod probe;
