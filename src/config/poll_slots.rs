//! Where in each poll period a source starts when its `poll_offset` is not configured.
//!
//! Sources are grouped, in configuration order, into slots of about [`DEVICES_PER_POLL_SLOT`]
//! devices, and the slots are spread evenly over the period. The sources of one slot poll on the
//! same instant, so their batches reach the fan-out together and are stored in one spool
//! transaction (one `fdatasync` under `synchronous = full`) and published in one burst; the
//! slots keep a large plant from reading, encoding and publishing everything in one instant.
//!
//! Why slots and not one offset per source: with one device per connection, as most plants are
//! wired, an offset per source made every device's batch a transaction of its own, and the
//! per-transaction work (the sync, its wake-ups and thread hand-offs) cost several times the
//! batch's own (docs/PERFORMANCE.md, "sources polled one by one"). A slot is as large as the
//! fan-out's largest append, so that a slot is never split by the append bound either.

/// Devices that poll together in one slot: the size of the fan-out's largest spool append.
pub const DEVICES_PER_POLL_SLOT: usize = 32;

/// The slot of every source, and how many slots there are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollSlots {
    /// Slot of source `i`, in `0..count`.
    pub slot: Vec<usize>,
    /// Number of slots (at least 1).
    pub count: usize,
}

impl PollSlots {
    /// Groups sources with these device counts (configuration order) into the fewest slots of at
    /// most [`DEVICES_PER_POLL_SLOT`] devices each, balanced: 100 one-device sources make four
    /// slots of 25, not three of 32 and one of 4. A source with more devices than a slot holds
    /// has a slot of its own (it reads them one after the other anyway).
    pub fn new(devices_per_source: &[usize]) -> PollSlots {
        let total: usize = devices_per_source.iter().sum();
        let wanted = total.div_ceil(DEVICES_PER_POLL_SLOT).max(1);
        let per_slot = total.div_ceil(wanted).max(1);
        let mut slot = Vec::with_capacity(devices_per_source.len());
        let (mut current, mut filled) = (0, 0);
        for &devices in devices_per_source {
            if filled > 0 && filled + devices > per_slot {
                current += 1;
                filled = 0;
            }
            filled += devices;
            slot.push(current);
        }
        PollSlots {
            slot,
            count: current + 1,
        }
    }

    /// The offset of source `i` within a period of `period`: its slot's share of it, in whole
    /// milliseconds (scheduled times are).
    pub fn offset(&self, i: usize, period: std::time::Duration) -> std::time::Duration {
        let share = period.as_millis() * self.slot[i] as u128 / self.count as u128;
        std::time::Duration::from_millis(share as u64)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_small_plant_is_one_slot() {
        let slots = PollSlots::new(&[1; 20]);
        assert_eq!(slots.count, 1);
        assert!(slots.slot.iter().all(|&s| s == 0));
        assert_eq!(slots.offset(19, Duration::from_secs(1)), Duration::ZERO);
    }

    #[test]
    fn one_device_sources_are_balanced_over_the_fewest_slots() {
        let slots = PollSlots::new(&[1; 1000]);
        assert_eq!(slots.count, 32);
        let mut sizes = vec![0; slots.count];
        for &s in &slots.slot {
            sizes[s] += 1;
        }
        assert!(
            sizes.iter().all(|&n| n <= DEVICES_PER_POLL_SLOT),
            "{sizes:?}"
        );
        assert_eq!(
            slots.offset(999, Duration::from_secs(1)),
            Duration::from_millis(968)
        );
        // Configuration order: slots never go back.
        assert!(slots.slot.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn a_gateway_larger_than_a_slot_has_a_slot_of_its_own() {
        // A 40-device gateway, then two single devices and a 20-device gateway, which together
        // fit in one slot.
        let slots = PollSlots::new(&[40, 1, 1, 20]);
        assert_eq!(slots.slot, [0, 1, 1, 1]);
        assert_eq!(slots.count, 2);
        assert_eq!(
            slots.offset(3, Duration::from_secs(3)),
            Duration::from_millis(1500)
        );
        // Two gateways of 30: 60 devices are two slots.
        assert_eq!(PollSlots::new(&[30, 30]).slot, [0, 1]);
    }

    #[test]
    fn sources_without_devices_take_no_room() {
        assert_eq!(PollSlots::new(&[]).count, 1);
        assert_eq!(PollSlots::new(&[0, 0]).slot, [0, 0]);
    }
}
