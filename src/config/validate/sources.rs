//! `[[sources]]`: the site's sources in file order (Modbus ones checked here, DL/T 645 buses
//! handed to `dlt645::config`), a Modbus source's transport, timing, breaker and read limits, and
//! the spread of the sources' poll schedules.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;

use super::Builder;
use super::devices::{Expanded, SourceContext};
use super::points::CheckedPoint;
use super::shared::{no_host, parse_host_port};
use crate::config::PollSlots;
use crate::config::defaults;
use crate::config::locate::KeyPath;
use crate::config::model::{HostPort, Parity, SerialSettings, SourceConfig, Transport};
use crate::config::raw::{RawConfig, RawSerial, RawSource};
use crate::dlt645::config::BusConfig;

/// Modbus limits (Modbus Application Protocol v1.1b3 §6.1–6.4).
const MODBUS_MAX_REGISTERS: u32 = 125;
const MODBUS_MAX_BITS: u32 = 2000;

/// Read limits of one device.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) max_registers: u16,
    pub(super) max_bits: u16,
    pub(super) max_gap: u16,
}

impl Builder<'_, '_> {
    /// `[[sources]]` and `[register_maps]` / `[meter_maps]`: the Modbus sources and the DL/T 645
    /// buses, in file order, after the site-wide device and meter name checks.
    pub(super) fn sources(
        &mut self,
        raw: &RawConfig,
        root: &KeyPath,
    ) -> (Vec<SourceConfig>, Vec<BusConfig>) {
        let maps = self.register_maps(raw);
        let meter_maps = crate::dlt645::config::meter_maps(&raw.meter_maps, &self.dir, self.report);

        let mut sources = Vec::new();
        let mut modbus_raw: Vec<(usize, &RawSource)> = Vec::new();
        let mut meter_buses = Vec::new();
        let mut expanded: Vec<Expanded> = Vec::new();
        let mut source_names: HashMap<String, usize> = HashMap::new();
        for (i, source) in raw.sources.iter().enumerate() {
            let source_path = root.key("sources").index(i);
            self.source_name(&mut source_names, i, source, &source_path);
            if let Some(edition) = source.protocol.and_then(|p| p.dlt645()) {
                let bus = crate::dlt645::config::bus(
                    source,
                    edition,
                    &source_path,
                    &meter_maps,
                    self.report,
                );
                meter_buses.push(bus);
                continue;
            }
            if !source.meters.is_empty() {
                self.report.at(
                    &source_path.key("meters"),
                    "`meters` are the meters of a DL/T 645 bus: set `protocol = \"dlt645-2007\"` or `\"dlt645-1997\"`, or list Modbus devices under [[sources.devices]]",
                );
            }
            modbus_raw.push((i, source));
            sources.push(self.source(i, source, &source_path, &maps, &mut expanded));
        }
        self.poll_offsets(&modbus_raw, &mut sources, root);
        self.site_wide_device_checks(&raw.sources, &expanded);
        self.meter_names(&raw.sources, &expanded, &meter_buses);
        (sources, meter_buses)
    }

    /// A source's `name`: not empty, not one an earlier source has (`names` maps each name to the
    /// index of the source that took it first).
    fn source_name(
        &mut self,
        names: &mut HashMap<String, usize>,
        i: usize,
        source: &RawSource,
        source_path: &KeyPath,
    ) {
        if source.name.is_empty() {
            self.report
                .at(&source_path.key("name"), "source name must not be empty");
        } else if let Some(first) = names.get(&source.name) {
            self.report.at(
                &source_path.key("name"),
                format!(
                    "duplicate source name `{}`, already used by sources[{first}]",
                    source.name
                ),
            );
        } else {
            names.insert(source.name.clone(), i);
        }
    }

    /// One Modbus source and its devices (their expansions go to `expanded` too).
    fn source(
        &mut self,
        index: usize,
        raw: &RawSource,
        path: &KeyPath,
        maps: &IndexMap<String, Vec<CheckedPoint>>,
        expanded: &mut Vec<Expanded>,
    ) -> SourceConfig {
        let transport = self.transport(raw, path);
        let is_tcp = matches!(transport, Some(Transport::Tcp { .. }));
        let default_gap = match &transport {
            Some(Transport::Tcp { .. }) | None => Duration::ZERO,
            Some(Transport::RtuOverTcp { .. }) => defaults::RTU_OVER_TCP_GAP,
            Some(Transport::Rtu(serial)) => rtu_gap(serial),
        };
        let timeout = self.positive(path, "timeout", raw.timeout, defaults::TIMEOUT);
        let (reconnect_min, reconnect_max) = self.reconnect_range(
            path,
            (raw.reconnect_min, raw.reconnect_max),
            (defaults::RECONNECT_MIN, defaults::RECONNECT_MAX),
        );
        let breaker_failures = raw.breaker_failures.unwrap_or(defaults::BREAKER_FAILURES);
        if breaker_failures == 0 {
            self.report.at(
                &path.key("breaker_failures"),
                "breaker_failures must be at least 1",
            );
        }
        let breaker_probe_interval = self.positive(
            path,
            "breaker_probe_interval",
            raw.breaker_probe_interval,
            defaults::BREAKER_PROBE_INTERVAL,
        );
        let default_poll = self.positive(
            path,
            "default_poll",
            raw.default_poll,
            defaults::DEFAULT_POLL,
        );
        let context = SourceContext {
            index,
            maps,
            limits: self.source_limits(raw, path),
            is_tcp,
            default_poll,
        };

        let mut devices = Vec::new();
        for (j, device) in raw.devices.iter().enumerate() {
            let device_path = path.key("devices").index(j);
            devices.extend(self.device(&context, j, device, &device_path, expanded));
        }

        SourceConfig {
            name: Arc::from(raw.name.as_str()),
            transport: transport.unwrap_or(Transport::Tcp { addr: no_host() }),
            timeout,
            inter_request_gap: raw.inter_request_gap.unwrap_or(default_gap),
            reconnect_min,
            reconnect_max,
            breaker_failures,
            breaker_probe_interval,
            // Resolved by `poll_offsets` once every source is known.
            poll_offset: Duration::ZERO,
            devices,
        }
    }

    /// The read limits a source's devices inherit: the source's own, or the defaults.
    fn source_limits(&mut self, raw: &RawSource, path: &KeyPath) -> Limits {
        Limits {
            max_registers: self
                .max_registers(path, raw.max_registers_per_read)
                .unwrap_or(defaults::MAX_REGISTERS_PER_READ),
            max_bits: self
                .max_bits(path, raw.max_bits_per_read)
                .unwrap_or(defaults::MAX_BITS_PER_READ),
            max_gap: raw.max_gap_registers.unwrap_or(defaults::MAX_GAP_REGISTERS),
        }
    }

    /// Each source's `poll_offset`: the configured one, checked against the source's shortest
    /// poll interval, or its slot's share of that interval ([`PollSlots`]).
    fn poll_offsets(
        &mut self,
        raw: &[(usize, &RawSource)],
        sources: &mut [SourceConfig],
        root: &KeyPath,
    ) {
        let devices: Vec<usize> = sources.iter().map(|s| s.devices.len()).collect();
        let slots = PollSlots::new(&devices);
        for (i, (&(at, raw), source)) in raw.iter().zip(sources.iter_mut()).enumerate() {
            let Some(shortest) = source
                .devices
                .iter()
                .flat_map(|d| &d.points)
                .map(|p| p.poll_interval)
                .min()
            else {
                // No points: nothing is scheduled, any given offset is moot.
                continue;
            };
            source.poll_offset = match raw.poll_offset {
                Some(offset) if offset >= shortest => {
                    self.report.at(
                        &root.key("sources").index(at).key("poll_offset"),
                        format!(
                            "poll_offset ({}) must be shorter than the source's shortest poll interval ({})",
                            humantime::format_duration(offset),
                            humantime::format_duration(shortest)
                        ),
                    );
                    offset
                }
                Some(offset) => offset,
                None => slots.offset(i, shortest),
            };
        }
    }

    /// Exactly one of `tcp`, `rtu_over_tcp` and `[sources.serial]`.
    fn transport(&mut self, raw: &RawSource, path: &KeyPath) -> Option<Transport> {
        let given: Vec<&str> = [
            raw.tcp.as_ref().map(|_| "tcp"),
            raw.rtu_over_tcp.as_ref().map(|_| "rtu_over_tcp"),
            raw.serial.as_ref().map(|_| "serial"),
        ]
        .into_iter()
        .flatten()
        .collect();
        match given.as_slice() {
            [] => {
                self.report.at(
                    path,
                    "no transport: expected exactly one of `tcp = \"host:port\"`, `rtu_over_tcp = \"host:port\"` or `[sources.serial]`",
                );
                None
            }
            [_] => {
                if let Some(addr) = &raw.tcp {
                    self.host_port(path, "tcp", addr)
                        .map(|addr| Transport::Tcp { addr })
                } else if let Some(addr) = &raw.rtu_over_tcp {
                    self.host_port(path, "rtu_over_tcp", addr)
                        .map(|addr| Transport::RtuOverTcp { addr })
                } else {
                    raw.serial
                        .as_ref()
                        .and_then(|serial| self.serial(serial, path))
                }
            }
            [_, second, ..] => {
                self.report.at(
                    &path.key(second),
                    format!(
                        "more than one transport ({}): expected exactly one of `tcp`, `rtu_over_tcp` or `[sources.serial]`",
                        given
                            .iter()
                            .map(|g| format!("`{g}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                None
            }
        }
    }

    /// `[sources.serial]`: the port and its line settings.
    fn serial(&mut self, serial: &RawSerial, path: &KeyPath) -> Option<Transport> {
        let serial_path = path.key("serial");
        let before = self.report.len();
        if serial.path.is_empty() {
            self.report.at(
                &serial_path.key("path"),
                "serial port path must not be empty",
            );
        }
        let baud = serial.baud.unwrap_or(defaults::BAUD);
        if baud == 0 {
            self.report.at(
                &serial_path.key("baud"),
                "baud rate must be greater than zero",
            );
        }
        let data_bits = serial.data_bits.unwrap_or(defaults::DATA_BITS);
        if !matches!(data_bits, 7 | 8) {
            self.report.at(
                &serial_path.key("data_bits"),
                format!("data_bits = {data_bits}, expected 7 or 8"),
            );
        }
        let stop_bits = serial.stop_bits.unwrap_or(defaults::STOP_BITS);
        if !matches!(stop_bits, 1 | 2) {
            self.report.at(
                &serial_path.key("stop_bits"),
                format!("stop_bits = {stop_bits}, expected 1 or 2"),
            );
        }
        (self.report.len() == before).then(|| {
            Transport::Rtu(SerialSettings {
                path: serial.path.clone(),
                baud,
                data_bits,
                parity: serial.parity.unwrap_or(Parity::Even),
                stop_bits,
            })
        })
    }

    fn host_port(&mut self, path: &KeyPath, key: &str, text: &str) -> Option<HostPort> {
        match parse_host_port(text) {
            Ok(hp) => Some(hp),
            Err(err) => {
                self.report.at(&path.key(key), err.to_string());
                None
            }
        }
    }

    /// `max_registers_per_read` of a source or a device: within the Modbus limit.
    pub(super) fn max_registers(&mut self, path: &KeyPath, value: Option<u32>) -> Option<u16> {
        let value = value?;
        if value == 0 || value > MODBUS_MAX_REGISTERS {
            self.report.at(
                &path.key("max_registers_per_read"),
                format!(
                    "max_registers_per_read = {value} is out of range, expected 1..={MODBUS_MAX_REGISTERS} (the Modbus limit for one read)"
                ),
            );
            return None;
        }
        u16::try_from(value).ok()
    }

    /// `max_bits_per_read` of a source or a device: within the Modbus limit.
    pub(super) fn max_bits(&mut self, path: &KeyPath, value: Option<u32>) -> Option<u16> {
        let value = value?;
        if value == 0 || value > MODBUS_MAX_BITS {
            self.report.at(
                &path.key("max_bits_per_read"),
                format!(
                    "max_bits_per_read = {value} is out of range, expected 1..={MODBUS_MAX_BITS} (the Modbus limit for one read)"
                ),
            );
            return None;
        }
        u16::try_from(value).ok()
    }
}

/// 3.5 character times at the line's settings, at least 2 ms (Modbus over serial line v1.02
/// §2.5.1.1 fixes 1.75 ms above 19200 baud; 2 ms leaves margin for USB adapters).
fn rtu_gap(serial: &SerialSettings) -> Duration {
    let parity_bits = u32::from(serial.parity != Parity::None);
    let char_bits = 1 + u32::from(serial.data_bits) + parity_bits + u32::from(serial.stop_bits);
    let gap = if serial.baud == 0 {
        defaults::RTU_GAP_MIN
    } else {
        Duration::from_secs_f64(3.5 * f64::from(char_bits) / f64::from(serial.baud))
    };
    gap.max(defaults::RTU_GAP_MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtu_gap_is_three_and_a_half_characters_with_a_floor() {
        let mut serial = SerialSettings {
            path: "/dev/ttyS1".into(),
            baud: 9600,
            data_bits: 8,
            parity: Parity::Even,
            stop_bits: 1,
        };
        // 11 bits per character: 3.5 × 11 / 9600 s = 4.0104 ms.
        assert_eq!(rtu_gap(&serial).as_micros(), 4010);
        serial.baud = 115_200;
        assert_eq!(rtu_gap(&serial), Duration::from_millis(2));
    }
}
