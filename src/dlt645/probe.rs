//! `smeltwatch probe --dlt645`: commissioning a meter through a transparent serial server.
//!
//! Without `--meter`, the meter's address is read first with the address read to
//! `AA AA AA AA AA AA` (2007 only; the meter must be alone on the line). Then every DI asked for
//! is read and printed as raw bytes and decoded with the standard's format for that DI (or the
//! one given as `DI:format`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::format::Format;
use super::frame::{self, Address, DataId, Decoder, Edition, Reply};
use super::poller::read_answer;

/// The standard's format, unit and meaning of common DIs.
pub fn known(di: DataId) -> Option<(&'static str, &'static str, &'static str)> {
    Some(match di {
        DataId::V2007(0x0000_0000) => ("XXXXXX.XX", "kWh", "combined active energy"),
        DataId::V2007(0x0001_0000) => ("XXXXXX.XX", "kWh", "forward active energy"),
        DataId::V2007(v) if v & 0xFFFF_00FF == 0x0001_0000 => {
            ("XXXXXX.XX", "kWh", "forward active energy, tariff")
        }
        DataId::V2007(0x0002_0000) => ("XXXXXX.XX", "kWh", "reverse active energy"),
        DataId::V2007(0x0003_0000) => ("XXXXXX.XX", "kvarh", "combined reactive energy 1"),
        DataId::V2007(0x0201_0100..=0x0201_0300) => ("XXX.X", "V", "phase voltage"),
        DataId::V2007(0x0202_0100..=0x0202_0300) => ("sXXX.XXX", "A", "phase current"),
        DataId::V2007(0x0203_0000..=0x0203_0300) => ("sXX.XXXX", "kW", "active power"),
        DataId::V2007(0x0204_0000..=0x0204_0300) => ("sXX.XXXX", "kvar", "reactive power"),
        DataId::V2007(0x0206_0000..=0x0206_0300) => ("sX.XXX", "", "power factor"),
        DataId::V2007(0x0101_0000) => ("demand", "kW", "forward active maximum demand"),
        DataId::V1997(0x9010..=0x9014) => ("XXXXXX.XX", "kWh", "forward active energy"),
        DataId::V1997(0x9110..=0x9114) => ("XXXXXX.XX", "kvarh", "forward reactive energy"),
        DataId::V1997(0xB611..=0xB613) => ("XXX", "V", "phase voltage"),
        DataId::V1997(0xB621..=0xB623) => ("XX.XX", "A", "phase current"),
        DataId::V1997(0xB630..=0xB633) => ("XX.XXXX", "kW", "active power"),
        DataId::V1997(0xB650..=0xB653) => ("X.XXX", "", "power factor"),
        _ => return None,
    })
}

/// What `probe --dlt645` reads when no DI is given.
pub fn default_dis(edition: Edition) -> Vec<DataId> {
    match edition {
        Edition::Dlt2007 => [
            0x0001_0000,
            0x0201_0100,
            0x0202_0100,
            0x0203_0000,
            0x0206_0000,
        ]
        .map(DataId::V2007)
        .to_vec(),
        Edition::Dlt1997 => [0x9010, 0xB611, 0xB621, 0xB630].map(DataId::V1997).to_vec(),
    }
}

/// Parses `DI` or `DI:format` (`00010000`, `02010100:XXX.X`).
pub fn parse_di(edition: Edition, text: &str) -> anyhow::Result<(DataId, Option<Format>)> {
    let (di, format) = match text.split_once(':') {
        Some((di, f)) => (di, Some(f.parse::<Format>().map_err(anyhow::Error::msg)?)),
        None => (text, None),
    };
    Ok((
        DataId::parse(edition, di).map_err(anyhow::Error::msg)?,
        format,
    ))
}

/// Reads the meter's address (when `meter` is `None`) and then `dis` at `addr`; returns the
/// report.
pub async fn probe(
    addr: SocketAddr,
    edition: Edition,
    meter: Option<Address>,
    dis: &[(DataId, Option<Format>)],
    timeout: Duration,
) -> anyhow::Result<String> {
    let mut stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .with_context(|| format!("connecting to {addr}: no answer within {timeout:?}"))?
        .with_context(|| format!("connecting to {addr}"))?;
    let mut decoder = Decoder::new();
    let discarded = AtomicU64::new(0);
    let mut out = String::new();
    let meter = match meter {
        Some(m) => m,
        None => {
            if edition != Edition::Dlt2007 {
                bail!("DL/T 645-1997 has no address read: give the meter's address with --meter");
            }
            stream.write_all(&frame::address_request()).await?;
            let read = read_answer(&mut stream, &mut decoder, edition, &discarded, |_, r| {
                matches!(r, Reply::Address(_))
            });
            let reply = tokio::time::timeout(timeout, read)
                .await
                .context("no meter answered the address read (is it alone on the line?)")??
                .map_err(anyhow::Error::msg)?;
            let Reply::Address(found) = reply else {
                unreachable!("only address replies are accepted")
            };
            let _ = writeln!(
                out,
                "meter address {found} (read with the address read to AAAAAAAAAAAA)"
            );
            found
        }
    };
    for (di, format) in dis {
        decoder.clear();
        stream.write_all(&frame::read_request(meter, *di)).await?;
        let read = read_answer(&mut stream, &mut decoder, edition, &discarded, |f, r| {
            f.address == meter
                && (matches!(r, Reply::Data { di: got, .. } if got == di)
                    || matches!(r, Reply::Error(_)))
        });
        let line = match tokio::time::timeout(timeout, read).await {
            Err(_) => format!("no reply within {timeout:?}"),
            Ok(reply) => describe(*di, *format, reply?),
        };
        let _ = writeln!(out, "DI {di}: {line}");
    }
    Ok(out)
}

/// One DI's line of the report.
fn describe(di: DataId, format: Option<Format>, reply: Result<Reply, frame::FrameError>) -> String {
    let value = match reply {
        Err(e) => return e.to_string(),
        Ok(Reply::Error(word)) => return format!("refused: {word}"),
        Ok(Reply::Data { value, .. }) => value,
        Ok(Reply::Address(a)) => return format!("address {a}"),
    };
    let raw: Vec<String> = value.iter().map(|b| format!("{b:02X}")).collect();
    let standard = known(di);
    let (format, unit, meaning) = match (format, standard) {
        (Some(f), Some((_, unit, meaning))) => (Some(f), unit, meaning),
        (Some(f), None) => (Some(f), "", ""),
        (None, Some((text, unit, meaning))) => (text.parse().ok(), unit, meaning),
        (None, None) => (None, "", ""),
    };
    let decoded = match format {
        Some(f) => match f.decode(&value) {
            Ok(v) => format!("{v} {unit} ({f})").trim_end().replace("  (", " ("),
            Err(e) => format!("does not decode as {f}: {e}"),
        },
        None => "unknown DI: give its format as DI:format".to_owned(),
    };
    let meaning = if meaning.is_empty() {
        String::new()
    } else {
        format!("  {meaning}")
    };
    format!("{:<24} → {decoded}{meaning}", raw.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::{Meter, MeterBus, serve_meters_tcp};
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn probe_reads_the_address_and_decodes_the_standard_dis() {
        let address = Address::parse("3430163").expect("valid");
        let bus = MeterBus::new(vec![Meter::new(Edition::Dlt2007, address, 1206.42, 12.5)]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(serve_meters_tcp(listener, bus, shutdown.clone()));
        let dis: Vec<_> = ["00010000", "02030000:sXX.XXXX", "04000409"]
            .iter()
            .map(|t| parse_di(Edition::Dlt2007, t).expect("valid"))
            .collect();
        let report = probe(addr, Edition::Dlt2007, None, &dis, Duration::from_secs(2))
            .await
            .expect("probe");
        shutdown.cancel();
        let lines: Vec<&str> = report.lines().collect();
        assert_eq!(
            lines[0],
            "meter address 000003430163 (read with the address read to AAAAAAAAAAAA)"
        );
        assert!(lines[1].starts_with("DI 00010000: 42 06 12 00"), "{report}");
        assert!(
            lines[1].ends_with("→ 1206.42 kWh (XXXXXX.XX)  forward active energy"),
            "{report}"
        );
        assert!(
            lines[2].contains("→ 12.5 kW (sXX.XXXX)  active power"),
            "{report}"
        );
        assert_eq!(
            lines[3],
            "DI 04000409: refused: error word 02h (no requested data)"
        );
    }
}
