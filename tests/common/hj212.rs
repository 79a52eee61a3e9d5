//! The platform's side of an HJ 212 connection in tests: reading the packets an uplink sends, and
//! a fake platform that acknowledges them.

use smeltwatch::codec::hj212::{self, Packet, ParseOptions, Scan, Station, Table};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The station of the tests' stack, `QHAL0000000000000000GTC1`: system code 31, password
/// `123456`, UTC+8, asking the platform to acknowledge (`ack`) or not.
pub fn station(ack: bool) -> Station {
    Station {
        st: 31,
        pw: "123456".into(),
        mn: "QHAL0000000000000000GTC1".into(),
        ack,
        utc_offset_min: 480,
    }
}

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

/// A platform on `listener`, on any number of connections: it answers every packet that asks
/// for an answer with a data response, except those of MN `ignored` (one it has not registered),
/// and then reports the packet on `seen`.
pub fn platform(
    listener: TcpListener,
    ignored: Option<&'static str>,
    seen: Option<mpsc::UnboundedSender<Packet>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let table = Table::hj212_2017();
        while let Ok((mut conn, _)) = listener.accept().await {
            let (table, seen) = (table.clone(), seen.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(p) = next_packet(&mut conn, &mut buf, &table).await {
                    let mut sent = Ok(());
                    if Some(p.mn.as_str()) != ignored && p.wants_ack() {
                        let ack = hj212::data_response(&table, &p).unwrap();
                        sent = conn.write_all(ack.as_bytes()).await;
                    }
                    if let Some(seen) = &seen {
                        let _ = seen.send(p);
                    }
                    if sent.is_err() {
                        return;
                    }
                }
            });
        }
    })
}

/// [`platform`] acknowledging everything on a fresh loopback port: its address and task.
pub async fn acking_platform() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, platform(listener, None, None))
}
