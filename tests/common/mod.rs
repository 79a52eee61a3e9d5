#![allow(dead_code)]
pub mod mosquitto;
