//! Overlap sweeps over point spans.
//!
//! Two points overlap when they share a register (or a bit, for coil/discrete areas) of the same
//! area on the same unit id of the same source. A `bool` point with `bit` on a register area only
//! overlaps another `bool` point with the same register and bit, because decoding a status word
//! both as a whole and bit by bit is normal practice.

use super::points::{CheckedPoint, describe_registers};
use crate::config::model::Area;

/// An interval of one point, for overlap sweeps. `owner` tells points of different devices
/// apart; `order` is the definition order (later ones are reported).
pub(super) struct Span<'p> {
    pub(super) area: Area,
    pub(super) start: u32,
    pub(super) end: u32,
    pub(super) bit: Option<u8>,
    pub(super) owner: usize,
    pub(super) order: usize,
    pub(super) point: &'p CheckedPoint,
}

/// Overlapping pairs `(earlier, later)` by definition order. Each point is reported at most once.
pub(super) fn overlaps<'s, 'p>(spans: &'s mut [Span<'p>]) -> Vec<(&'s Span<'p>, &'s Span<'p>)> {
    spans.sort_by_key(|s| (s.area, s.bit.is_some(), s.start, s.bit, s.order));
    let mut pairs = Vec::new();
    let mut reach: Option<usize> = None;
    for i in 0..spans.len() {
        let current = &spans[i];
        if let Some(r) = reach {
            let previous = &spans[r];
            let same_group =
                previous.area == current.area && previous.bit.is_some() == current.bit.is_some();
            let overlapping = match (previous.bit, current.bit) {
                (None, None) => same_group && current.start < previous.end,
                (Some(a), Some(b)) => same_group && previous.start == current.start && a == b,
                _ => false,
            };
            if overlapping {
                let pair = if previous.order < current.order {
                    (previous, current)
                } else {
                    (current, previous)
                };
                pairs.push(pair);
            }
            if !same_group || current.end > previous.end || current.bit.is_some() {
                reach = Some(i);
            }
        } else {
            reach = Some(i);
        }
    }
    pairs
}

/// The span of `point` shifted by `shift` addresses, owned by device `owner`, defined `order`th.
pub(super) fn span<'p>(
    point: &'p CheckedPoint,
    shift: u32,
    owner: usize,
    order: usize,
) -> Span<'p> {
    let start = u32::from(point.address) + shift;
    Span {
        area: point.area,
        start,
        end: start + point.width(),
        bit: point.bit(),
        owner,
        order,
        point,
    }
}

/// The problem of `later` overlapping `earlier`, naming both points and their registers.
pub(super) fn overlap_message(earlier: &Span<'_>, later: &Span<'_>) -> String {
    format!(
        "point `{}` ({}) overlaps point `{}` ({})",
        later.point.name,
        describe_registers(later.area, later.start, later.end - later.start, later.bit),
        earlier.point.name,
        describe_registers(
            earlier.area,
            earlier.start,
            earlier.end - earlier.start,
            earlier.bit
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::locate::{KeyPath, Origin};
    use crate::config::model::{ByteOrder, DataType};

    fn point(name: &str, area: Area, address: u16, data_type: DataType) -> CheckedPoint {
        CheckedPoint {
            name: Arc::from(name),
            area,
            address,
            data_type,
            byte_order: ByteOrder::Abcd,
            scale: 1.0,
            offset: 0.0,
            unit: Arc::from(""),
            poll: None,
            range: None,
            writable: false,
            origin: Origin::Toml(KeyPath::default()),
        }
    }

    fn overlapping_names(points: &[CheckedPoint]) -> Vec<(String, String)> {
        let mut spans: Vec<Span<'_>> = points
            .iter()
            .enumerate()
            .map(|(order, p)| span(p, 0, 0, order))
            .collect();
        overlaps(&mut spans)
            .into_iter()
            .map(|(a, b)| (a.point.name.to_string(), b.point.name.to_string()))
            .collect()
    }

    #[test]
    fn adjacent_points_and_different_areas_do_not_overlap() {
        let points = [
            point("a", Area::Holding, 0, DataType::F32),
            point("b", Area::Holding, 2, DataType::U64),
            point("c", Area::Input, 0, DataType::F64),
            point("d", Area::Coil, 0, DataType::Bool { bit: None }),
            point("e", Area::Coil, 1, DataType::Bool { bit: None }),
        ];
        assert!(overlapping_names(&points).is_empty());
    }

    #[test]
    fn overlaps_are_reported_against_the_earlier_definition() {
        let points = [
            point("wide", Area::Holding, 10, DataType::F64),
            point("inside", Area::Holding, 12, DataType::U16),
            point("before", Area::Holding, 9, DataType::U32),
            point("coil", Area::Coil, 5, DataType::Bool { bit: None }),
            point("coil_again", Area::Coil, 5, DataType::Bool { bit: None }),
        ];
        let mut got = overlapping_names(&points);
        got.sort();
        assert_eq!(
            got,
            [
                ("coil".to_owned(), "coil_again".to_owned()),
                ("wide".to_owned(), "before".to_owned()),
                ("wide".to_owned(), "inside".to_owned()),
            ]
        );
    }

    #[test]
    fn bits_overlap_only_the_same_bit() {
        let points = [
            point("word", Area::Input, 3, DataType::U16),
            point("b0", Area::Input, 3, DataType::Bool { bit: Some(0) }),
            point("b1", Area::Input, 3, DataType::Bool { bit: Some(1) }),
            point("b1_again", Area::Input, 3, DataType::Bool { bit: Some(1) }),
            point("next_b1", Area::Input, 4, DataType::Bool { bit: Some(1) }),
        ];
        assert_eq!(
            overlapping_names(&points),
            [("b1".to_owned(), "b1_again".to_owned())]
        );
    }
}
