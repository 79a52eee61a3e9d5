//! `smeltwatch probe --dlt645`: reads a DL/T 645 meter's address and data identifiers through a
//! transparent serial server and renders them decoded.

use std::net::SocketAddr;
use std::time::Duration;

/// `probe --dlt645`: the meter's address (unless given) and the DIs asked for, decoded.
pub(super) async fn probe_dlt645(
    tcp: SocketAddr,
    edition: u16,
    meter: Option<String>,
    dis: &[String],
    timeout: Duration,
) -> anyhow::Result<String> {
    use crate::dlt645::config::Edition;
    use crate::dlt645::{Address, probe};
    let edition = match edition {
        2007 => Edition::Dlt2007,
        1997 => Edition::Dlt1997,
        other => anyhow::bail!("--edition {other}: expected 2007 or 1997"),
    };
    let meter = meter
        .map(|m| Address::parse(&m).map_err(anyhow::Error::msg))
        .transpose()?;
    let dis = if dis.is_empty() {
        probe::default_dis(edition)
            .into_iter()
            .map(|di| (di, None))
            .collect()
    } else {
        dis.iter()
            .map(|d| probe::parse_di(edition, d))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    probe::probe(tcp, edition, meter, &dis, timeout).await
}
