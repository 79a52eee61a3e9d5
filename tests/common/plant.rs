//! Simulated Modbus devices for the integration tests: a device with small register banks, f32
//! words in the big-endian order the test maps use, and a server on a fresh loopback port.

use smeltwatch::simulator::{BankSizes, Device, UnitMap, serve_tcp};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A device with 8 coils, 8 discrete inputs, 64 holding and 64 input registers.
pub fn device(name: &str) -> Device {
    Device::new(
        name,
        BankSizes {
            coils: 8,
            discrete_inputs: 8,
            holding: 64,
            input: 64,
        },
        1,
    )
}

/// The two registers of an IEEE 754 f32 in ABCD order (high word first).
pub fn f32_words(v: f32) -> [u16; 2] {
    let b = v.to_be_bytes();
    [
        u16::from_be_bytes([b[0], b[1]]),
        u16::from_be_bytes([b[2], b[3]]),
    ]
}

/// Serve `units` over Modbus TCP on a fresh loopback port until `shutdown`; returns the port.
pub async fn serve(units: UnitMap, shutdown: &CancellationToken) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(serve_tcp(listener, units, shutdown.clone()));
    port
}
