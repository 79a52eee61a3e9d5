//! The synthetic plant: simulated Modbus TCP endpoints serving the run's devices, and the model
//! task that changes every register once per poll interval.

use std::net::SocketAddr;

use smeltwatch::simulator::{BankSizes, Device, UnitMap, serve_tcp};
use tokio_util::sync::CancellationToken;

use super::{Params, device_name, source_name};

pub(super) struct Plant {
    /// (bound address, source name, device names) per endpoint, device k on unit k + 1.
    pub(super) endpoints: Vec<(SocketAddr, String, Vec<String>)>,
    pub(super) stop: CancellationToken,
}

pub(super) async fn start_plant(p: &Params) -> anyhow::Result<Plant> {
    anyhow::ensure!(
        (1..=247).contains(&p.per_endpoint),
        "--per-endpoint must be 1..=247 (Modbus unit ids)"
    );
    anyhow::ensure!(
        (1..=125).contains(&p.registers),
        "--registers must be 1..=125 (one read per device)"
    );
    let stop = CancellationToken::new();
    let sizes = BankSizes {
        holding: usize::from(p.registers),
        ..BankSizes::default()
    };
    let mut endpoints = Vec::new();
    let mut all = Vec::new();
    let mut next = 0;
    while next < p.devices {
        let e = endpoints.len();
        let n = p.per_endpoint.min(p.devices - next);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut units = UnitMap::new();
        let mut names = Vec::new();
        for k in 0..n {
            let name = device_name(next + k);
            let dev = Device::new(&name, sizes, (next + k) as u64);
            if next + k < p.devices.saturating_sub(p.unserved_devices) {
                units.insert(u8::try_from(k + 1)?, dev.clone());
            }
            all.push(dev);
            names.push(name);
        }
        tokio::spawn(serve_tcp(listener, units, stop.clone()));
        endpoints.push((addr, source_name(e), names));
        next += n;
    }
    // The model: every register changes once per interval.
    let interval = p.interval;
    let model_stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        let mut n: u16 = 0;
        loop {
            tokio::select! {
                _ = model_stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            n = n.wrapping_add(1);
            for (d, dev) in all.iter().enumerate() {
                dev.with_banks(|b| {
                    for (i, r) in b.holding.iter_mut().enumerate() {
                        *r = n.wrapping_add(i as u16).wrapping_add(d as u16);
                    }
                });
            }
        }
    });
    Ok(Plant { endpoints, stop })
}
