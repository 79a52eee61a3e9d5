//! What the command line asks of a configuration without running the agent: the report of
//! `smeltwatch check`, the raw register read of `smeltwatch probe`, and the broker override of
//! `run --broker` and `demo`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::config::{Area, BrokerUrl, Config, UplinkKind};
use crate::live::LiveState;
use crate::modbus::plan;
use crate::model::Quality;

/// Replace the first MQTT uplink's broker (`--broker mqtt://host:port`).
pub fn override_broker(cfg: &mut Config, url: &str) -> anyhow::Result<()> {
    let url: BrokerUrl = url
        .parse()
        .map_err(|e: crate::config::BrokerUrlError| anyhow::anyhow!(e.for_flag("--broker")))?;
    let Some(m) = cfg.uplinks.iter_mut().find_map(|u| match &mut u.kind {
        UplinkKind::Mqtt(m) => Some(m),
        _ => None,
    }) else {
        bail!("--broker given but the configuration has no MQTT uplink");
    };
    m.broker = url.addr;
    m.tls = url.tls;
    Ok(())
}

/// The text `smeltwatch check` prints for a valid configuration: a summary and the read plan.
pub fn check_report(cfg: &Config) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let devices: usize = cfg.sources.iter().map(|s| s.devices.len()).sum();
    let points: usize = cfg
        .sources
        .iter()
        .flat_map(|s| &s.devices)
        .map(|d| d.points.len())
        .sum();
    let _ = writeln!(
        out,
        "{}: ok: site {:?}, {} sources, {} devices, {} points, {} uplinks{}",
        cfg.path.display(),
        cfg.site,
        cfg.sources.len(),
        devices,
        points,
        cfg.uplinks.len(),
        if cfg.simulator.is_some() {
            ", simulator"
        } else {
            ""
        }
    );
    if !cfg.meter_buses.is_empty() {
        let meters = cfg.meter_buses.iter().flat_map(|b| &b.meters);
        let _ = writeln!(
            out,
            "DL/T 645: {} meter buses, {} meters, {} points",
            cfg.meter_buses.len(),
            meters.clone().count(),
            meters.map(|m| m.points.len()).sum::<usize>()
        );
    }
    if let Some(calc) = &cfg.calc {
        match crate::calc::Pipeline::new(calc) {
            Ok(_) => {
                let _ = writeln!(
                    out,
                    "calculators: {} potlines, {} stacks",
                    calc.potlines.len(),
                    calc.stacks.len()
                );
            }
            Err(e) => {
                let _ = writeln!(out, "calculators: INVALID: {e}");
            }
        }
    }
    out.push_str(&crate::derived::check_report(&cfg.derived));
    for source in &cfg.sources {
        let plans = plan::plan_source(source);
        let _ = writeln!(out);
        out.push_str(&plan::render_plan(source, &plans));
    }
    for bus in &cfg.meter_buses {
        let plans = crate::dlt645::poller::plan_bus(bus);
        let _ = writeln!(out);
        out.push_str(&crate::dlt645::poller::render_plan(bus, &plans));
    }
    out
}

/// Read `count` registers for `smeltwatch probe`.
pub async fn probe(
    addr: SocketAddr,
    unit: u8,
    area: Area,
    address: u16,
    count: u16,
    timeout: Duration,
) -> anyhow::Result<Vec<u16>> {
    use tokio_modbus::prelude::*;
    if count == 0 || count > 125 {
        bail!("--count {count}: expected 1 to 125 registers");
    }
    let mut ctx = tokio::time::timeout(
        timeout,
        tokio_modbus::client::tcp::connect_slave(addr, Slave(unit)),
    )
    .await
    .with_context(|| format!("connecting to {addr}: no answer within {timeout:?}"))?
    .with_context(|| format!("connecting to {addr}"))?;
    let call = async {
        match area {
            Area::Input => ctx.read_input_registers(address, count).await,
            _ => ctx.read_holding_registers(address, count).await,
        }
    };
    let words = tokio::time::timeout(timeout, call)
        .await
        .with_context(|| format!("unit {unit} at {addr}: no reply within {timeout:?}"))?
        .with_context(|| format!("unit {unit} at {addr}"))?
        .map_err(|code| {
            anyhow::anyhow!(
                "unit {unit} at {addr} answered {} {address}+{count} with exception {code:?}",
                area.as_str()
            )
        })?;
    Ok(words)
}

/// Quality counts summed over every poller.
pub fn quality_totals(live: &LiveState) -> [u64; Quality::ALL.len()] {
    let mut totals = [0u64; Quality::ALL.len()];
    for (_, stats) in live
        .pollers
        .lock()
        .expect("live state lock is never poisoned: holders do not panic")
        .iter()
    {
        for (i, t) in totals.iter_mut().enumerate() {
            *t += stats.readings_by_quality[i].load(std::sync::atomic::Ordering::Relaxed);
        }
    }
    totals
}
