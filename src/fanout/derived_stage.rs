//! The derived points' stage of fan-out: after each burst (and on their clock), the derived
//! points whose inputs changed are evaluated, and their results go where readings and metrics
//! go: the latest readings (HTTP API, `/metrics`, dashboard), the trends, the calculators (a
//! derived counter can be an auxiliary meter of a potline) and the spools.

use super::{calc_state::CalcStage, remember_latest};
use crate::derived::Engine;
use crate::live::LiveState;
use crate::model::{Record, Timestamp};

/// Take the inputs in `records`, evaluate what is due and append the results (and what the
/// calculators made of them) to `records`.
pub(super) fn run(
    engine: &mut Engine,
    calc: Option<&mut CalcStage>,
    live: &LiveState,
    records: &mut Vec<Record>,
) {
    engine.observe(records);
    let out = engine.evaluate(Timestamp::now());
    if out.batches.is_empty() {
        return;
    }
    remember_latest(live, &out.batches);
    let mut from_calc = Vec::new();
    if let Some(c) = calc {
        for b in &out.batches {
            from_calc.extend(c.on_batch(b));
        }
    }
    // The calculators' metrics of these results are inputs of the next evaluation.
    engine.observe(&from_calc);
    records.extend(out.records);
    records.extend(from_calc);
}
