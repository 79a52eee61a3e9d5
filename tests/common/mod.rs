#![allow(dead_code)]
pub mod mosquitto;
pub mod peers;
pub mod plant;
