//! Read planning: points → the fewest Modbus reads (pure: no I/O, no clocks).
//!
//! The planner turns one device's points into [`DevicePlan`]s, one per poll class (distinct
//! `poll_interval`), each a list of [`ReadRequest`]s. Within one device, area and poll class it
//! coalesces neighbouring points into one read when
//!
//! - the read stays within the device's limit: `max_registers_per_read` for holding/input
//!   registers, `max_bits_per_read` for coils/discrete inputs (a limit of 0 is treated as 1);
//! - the run of unused addresses between the points is at most `max_gap_registers` (counted in
//!   registers for register areas and in bits for bit areas: the gap bound exists mostly to keep
//!   reads away from unmapped addresses, which answer with an exception, so it counts addresses);
//! - the device does not demand `single_point_reads`, in which case every point is its own read.
//!
//! # Invariants
//! - Every point of the device appears in exactly one [`ReadRequest`] of exactly one plan, and that
//!   request fully contains it (`offset + width <= count`). A point never straddles two reads.
//! - Requests of a plan are ordered by area, then start address; slots within a request by offset.
//! - With non-overlapping points (config validation rejects overlaps), the reads of one plan never
//!   overlap. Overlapping points do not panic: each is still served by exactly one read.
//! - A single point wider than the limit (rejected by validation) gets a read of its own width
//!   rather than being split.
//! - Addresses are 0-based protocol addresses (datasheet 40001 = holding 0).
//!
//! # Minimality of the greedy pass
//! Sort the points of one (area, class) by address, then walk them once, extending the current
//! read while the next point fits (gap ≤ G and new span ≤ L) and starting a new read otherwise.
//! This yields the fewest reads under these rules:
//!
//! 1. *Reads can be taken to serve runs.* A read is a contiguous address range, so any point whose
//!    address lies between two points the read serves lies inside it; serving it there instead of
//!    elsewhere only shrinks the gaps of this read and cannot grow any read. So some optimal
//!    solution serves contiguous runs of the sorted order.
//! 2. *Feasibility is hereditary.* A run is feasible when its span is ≤ L and each gap between
//!    consecutive members is ≤ G. Dropping points from either end of a feasible run keeps both
//!    properties, so every suffix of a feasible run is feasible.
//! 3. *Greedy stays ahead.* Let greedy's first k reads cover points `0..g_k` and any optimal
//!    solution's first k runs cover `0..o_k`. If `g_k ≥ o_k`, the optimal (k+1)-th run covers
//!    `o_k..o_{k+1}`; its suffix `g_k..o_{k+1}` is feasible by (2), and greedy extends as far as
//!    feasibility allows, so `g_{k+1} ≥ o_{k+1}`. By induction greedy covers all points with no
//!    more reads than the optimum.
//!
//! The cost is the sort, O(n log n), plus one linear pass.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::Duration;

use crate::config::model::{Area, DeviceConfig, SourceConfig, Transport};

/// One Modbus read: a function code (from the area), a start address and a count, and the points
/// it serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReadRequest {
    /// Register or bit area (selects FC 1/2/3/4).
    pub area: Area,
    /// 0-based first address read.
    pub start: u16,
    /// Registers (register areas) or bits (bit areas) read.
    pub count: u16,
    /// The points this read serves, by offset.
    pub points: Vec<PointSlot>,
}

impl ReadRequest {
    /// One past the last address read, widened so that it cannot overflow.
    pub fn end(&self) -> u32 {
        u32::from(self.start) + u32::from(self.count)
    }
}

/// Where one point sits inside a [`ReadRequest`]'s response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PointSlot {
    /// Index into `DeviceConfig::points`.
    pub point: usize,
    /// Registers (or bits) from the request's `start` to the point's first address.
    pub offset: u16,
}

/// The reads of one poll class of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePlan {
    /// Index into `SourceConfig::devices`.
    pub device: usize,
    /// How often these reads run.
    pub poll_interval: Duration,
    /// The reads, ordered by area then start address.
    pub requests: Vec<ReadRequest>,
}

/// Plans one device: one [`DevicePlan`] per distinct `poll_interval` of its points, sorted by
/// interval (fastest first). A device without points yields no plans.
pub fn plan_device(device_index: usize, device: &DeviceConfig) -> Vec<DevicePlan> {
    // Poll class → (area, address, width, point index), gathered in one pass.
    let mut classes: BTreeMap<Duration, Vec<(Area, u16, u32, usize)>> = BTreeMap::new();
    for (index, point) in device.points.iter().enumerate() {
        classes.entry(point.poll_interval).or_default().push((
            point.area,
            point.address,
            u32::from(point.width().max(1)),
            index,
        ));
    }

    classes
        .into_iter()
        .map(|(poll_interval, mut points)| {
            // Ties on address are broken by point index so that the plan is deterministic.
            points.sort_unstable_by_key(|&(area, address, _, index)| (area, address, index));
            let mut requests: Vec<ReadRequest> = Vec::new();
            let mut current: Option<Building> = None;
            for (area, address, width, index) in points {
                if let Some(b) = current.as_mut()
                    && b.try_add(device, area, address, width, index)
                {
                    continue;
                }
                if let Some(done) = current.take() {
                    requests.push(done.finish());
                }
                current = Some(Building::new(area, address, width, index));
            }
            if let Some(done) = current.take() {
                requests.push(done.finish());
            }
            DevicePlan {
                device: device_index,
                poll_interval,
                requests,
            }
        })
        .collect()
}

/// Plans every device of a source, in device order (each device's plans sorted by interval).
pub fn plan_source(source: &SourceConfig) -> Vec<DevicePlan> {
    source
        .devices
        .iter()
        .enumerate()
        .flat_map(|(index, device)| plan_device(index, device))
        .collect()
}

/// A read being grown by the greedy pass. Addresses are `u32` so that `address + width` of a
/// (mis-configured) point at the top of the address space cannot overflow.
struct Building {
    area: Area,
    start: u32,
    end: u32,
    slots: Vec<(u32, usize)>,
}

impl Building {
    fn new(area: Area, address: u16, width: u32, index: usize) -> Self {
        let start = u32::from(address);
        Building {
            area,
            start,
            end: start + width,
            slots: vec![(start, index)],
        }
    }

    /// Extends the read by one point if the rules allow it.
    fn try_add(
        &mut self,
        device: &DeviceConfig,
        area: Area,
        address: u16,
        width: u32,
        index: usize,
    ) -> bool {
        if device.single_point_reads || area != self.area {
            return false;
        }
        let limit = u32::from(if area.is_bits() {
            device.max_bits_per_read
        } else {
            device.max_registers_per_read
        })
        .max(1);
        let address = u32::from(address);
        let gap = address.saturating_sub(self.end);
        let end = self.end.max(address + width);
        if gap > u32::from(device.max_gap_registers) || end - self.start > limit {
            return false;
        }
        self.end = end;
        self.slots.push((address, index));
        true
    }

    fn finish(self) -> ReadRequest {
        // Points live in a 16-bit address space and the span of a read is at most a limit (u16) or
        // one point's width (u16); only a mis-configured point hanging past 65535 can exceed it,
        // and then the count is clamped (the device will answer with an exception).
        let start = self.start as u16;
        let count = u16::try_from(self.end - self.start).unwrap_or(u16::MAX);
        let points = self
            .slots
            .into_iter()
            .map(|(address, point)| PointSlot {
                point,
                offset: (address - self.start) as u16,
            })
            .collect();
        ReadRequest {
            area: self.area,
            start,
            count,
            points,
        }
    }
}

/// The read plan of one source as a human-readable report (for `smeltwatch check`).
///
/// Consecutive devices whose plans are identical (same classes, reads and point names, as produced
/// by a device template) are printed once, followed by a line naming the others.
pub struct PlanReport<'a> {
    /// The source the plans belong to.
    pub source: &'a SourceConfig,
    /// Plans produced by [`plan_source`] for that source.
    pub plans: &'a [DevicePlan],
}

/// Renders the read plan report of one source (see [`PlanReport`]).
pub fn render_plan(source: &SourceConfig, plans: &[DevicePlan]) -> String {
    PlanReport { source, plans }.to_string()
}

/// The shape of one device's plans, with unit id and device name left out, for grouping.
type Shape<'a> = Vec<(Duration, Vec<(Area, u16, u16, Vec<(&'a str, u16)>)>)>;

impl PlanReport<'_> {
    fn shape_of<'s>(&'s self, device: usize, plans: &[&'s DevicePlan]) -> Shape<'s> {
        let points = self
            .source
            .devices
            .get(device)
            .map(|d| d.points.as_slice())
            .unwrap_or(&[]);
        plans
            .iter()
            .map(|p| {
                let reqs = p
                    .requests
                    .iter()
                    .map(|r| {
                        let slots = r
                            .points
                            .iter()
                            .map(|s| (points.get(s.point).map_or("?", |pt| &*pt.name), s.offset))
                            .collect();
                        (r.area, r.start, r.count, slots)
                    })
                    .collect();
                (p.poll_interval, reqs)
            })
            .collect()
    }
}

impl fmt::Display for PlanReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = self.source;
        // Plans grouped by device, keeping the order in which devices first appear.
        let mut by_device: Vec<(usize, Vec<&DevicePlan>)> = Vec::new();
        for plan in self.plans {
            match by_device.last_mut() {
                Some((d, list)) if *d == plan.device => list.push(plan),
                _ => by_device.push((plan.device, vec![plan])),
            }
        }

        writeln!(
            f,
            "source {} ({}): {} device{}, timeout {}, poll offset {}",
            source.name,
            transport_text(&source.transport),
            source.devices.len(),
            plural(source.devices.len()),
            humantime::format_duration(source.timeout),
            humantime::format_duration(source.poll_offset),
        )?;
        writeln!(
            f,
            "  addresses are 0-based and inclusive (datasheet 40001 = holding 0, 30001 = input 0)"
        )?;

        let mut i = 0;
        while i < by_device.len() {
            let (device, plans) = &by_device[i];
            let shape = self.shape_of(*device, plans);
            let mut j = i + 1;
            while j < by_device.len() && self.shape_of(by_device[j].0, &by_device[j].1) == shape {
                j += 1;
            }
            self.write_device(f, *device, plans)?;
            if j - i > 1 {
                let others: Vec<usize> = by_device[i + 1..j].iter().map(|(d, _)| *d).collect();
                let units: Vec<u8> = others
                    .iter()
                    .filter_map(|&d| source.devices.get(d).map(|dev| dev.unit_id))
                    .collect();
                let name = |d: usize| source.devices.get(d).map_or("?", |dev| &dev.name);
                let names = if others.len() == 1 {
                    name(others[0]).to_string()
                } else {
                    format!("{} … {}", name(others[0]), name(others[others.len() - 1]))
                };
                writeln!(
                    f,
                    "  … and {} more device{} with the same plan ({names}; unit ids {})",
                    others.len(),
                    plural(others.len()),
                    id_ranges(&units),
                )?;
            }
            i = j;
        }

        let totals = Totals::of(self.plans);
        writeln!(
            f,
            "  total: {} read{} planned, {:.1} requests/s, {:.0} registers/s, {:.0} bits/s",
            totals.requests,
            plural(totals.requests),
            totals.requests_per_s,
            totals.registers_per_s,
            totals.bits_per_s,
        )?;
        if totals.requests_per_s > 0.0 {
            // One request is in flight at a time per connection, so this is the mean round trip
            // (plus inter-request gap) the connection must sustain to keep every poll class on time.
            writeln!(
                f,
                "  keeping up needs a mean request time (round trip + gap) under {:.1} ms",
                1000.0 / totals.requests_per_s
            )?;
        }
        Ok(())
    }
}

impl PlanReport<'_> {
    fn write_device(
        &self,
        f: &mut fmt::Formatter<'_>,
        device: usize,
        plans: &[&DevicePlan],
    ) -> fmt::Result {
        let Some(dev) = self.source.devices.get(device) else {
            return writeln!(f, "  device #{device}: not in this source");
        };
        writeln!(
            f,
            "  device {} (unit {}): {} point{}",
            dev.name,
            dev.unit_id,
            dev.points.len(),
            plural(dev.points.len())
        )?;
        for plan in plans {
            writeln!(
                f,
                "    every {}: {} read{}",
                humantime::format_duration(plan.poll_interval),
                plan.requests.len(),
                plural(plan.requests.len())
            )?;
            for req in &plan.requests {
                let unit = if req.area.is_bits() { "bit" } else { "reg" };
                let last = req.end().saturating_sub(1);
                let span = if req.count == 1 {
                    format!("{:>5} {:<5}", req.start, "")
                } else {
                    format!("{:>5}-{last:<5}", req.start)
                };
                let mut line = format!(
                    "      {:<14} {span} ({:>3} {unit}{})",
                    req.area.as_str(),
                    req.count,
                    if req.count == 1 { " " } else { "s" },
                );
                for slot in &req.points {
                    let name = dev.points.get(slot.point).map_or("?", |p| &p.name);
                    let _ = write!(line, " {name}@{}", slot.offset);
                }
                writeln!(f, "{line}")?;
            }
        }
        Ok(())
    }
}

/// Load a set of plans puts on its connection.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Totals {
    requests: usize,
    requests_per_s: f64,
    registers_per_s: f64,
    bits_per_s: f64,
}

impl Totals {
    fn of(plans: &[DevicePlan]) -> Self {
        let mut t = Totals::default();
        for plan in plans {
            t.requests += plan.requests.len();
            let secs = plan.poll_interval.as_secs_f64();
            if secs <= 0.0 {
                continue;
            }
            for req in &plan.requests {
                t.requests_per_s += 1.0 / secs;
                if req.area.is_bits() {
                    t.bits_per_s += f64::from(req.count) / secs;
                } else {
                    t.registers_per_s += f64::from(req.count) / secs;
                }
            }
        }
        t
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn transport_text(t: &Transport) -> String {
    match t {
        Transport::Tcp { addr } => format!("tcp {addr}"),
        Transport::RtuOverTcp { addr } => format!("rtu-over-tcp {addr}"),
        Transport::Rtu(s) => format!("rtu {} {} baud", s.path, s.baud),
    }
}

/// `[1,2,3,5,7,8]` → `1-3, 5, 7-8` (ids in the given order; runs of consecutive ids collapse).
fn id_ranges(ids: &[u8]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < ids.len() {
        let mut j = i;
        while j + 1 < ids.len() && u16::from(ids[j + 1]) == u16::from(ids[j]) + 1 {
            j += 1;
        }
        if !out.is_empty() {
            out.push_str(", ");
        }
        if j == i {
            let _ = write!(out, "{}", ids[i]);
        } else {
            let _ = write!(out, "{}-{}", ids[i], ids[j]);
        }
        i = j + 1;
    }
    out
}

#[cfg(test)]
mod tests;
