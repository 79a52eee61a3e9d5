//! The platform's side of an HJ 212 connection in tests: reading the packets an uplink sends.

use smeltwatch::publish::encode::hj212::{self, Packet, ParseOptions, Scan, Table};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The next packet on `conn` (bytes already read wait in `buf`); `None` once the uplink closed
/// or reset the connection. Bytes that are not a packet, or a packet that does not parse, are a
/// defect of the uplink: the test panics on them.
pub async fn next_packet(conn: &mut TcpStream, buf: &mut Vec<u8>, table: &Table) -> Option<Packet> {
    loop {
        match hj212::scan(buf) {
            Scan::Frame(n) => {
                let frame: Vec<u8> = buf.drain(..n).collect();
                let packet = hj212::parse(&frame, table, &ParseOptions::default())
                    .unwrap_or_else(|e| panic!("a packet the platform cannot parse: {e}"));
                return Some(packet);
            }
            Scan::Skip(n) => panic!("garbage from the uplink: {:?}", &buf[..n]),
            Scan::Incomplete => {
                if conn.read_buf(buf).await.ok()? == 0 {
                    return None;
                }
            }
        }
    }
}
