//! The Sparkplug uplink's own status ([`SparkplugStatus`]: births, primary host, bdSeq) and the
//! one [`UplinkStatus`] it reports like every uplink, written together: each change of the first
//! is mapped onto the second where it is made, so the displays, `/metrics` and the supervisor see
//! the uplink's state without a task in between. Spool acks reach the [`UplinkStatus`] through
//! the delivery hook ([`Reporter::spool_acked`]), not through the mapping.

use std::sync::Arc;

use tokio::sync::watch;

use super::SparkplugStatus;
use crate::completeness::Completeness;
use crate::uplink::status::{LinkState, Reporter, UplinkStatus};

/// Both statuses of the uplink, changed through [`StatusTx::send_modify`].
#[derive(Debug)]
pub(super) struct StatusTx {
    detail: watch::Sender<SparkplugStatus>,
    report: Reporter,
}

impl StatusTx {
    pub(super) fn new(report: Reporter) -> StatusTx {
        StatusTx {
            detail: watch::Sender::new(SparkplugStatus::default()),
            report,
        }
    }

    /// Where the uplink's status and deliveries are reported.
    pub(super) fn report(&self) -> &Reporter {
        &self.report
    }

    /// Count the values of the records delivered in `completeness`.
    pub(super) fn with_completeness(mut self, completeness: Arc<Completeness>) -> StatusTx {
        self.report = self.report.with_completeness(completeness);
        self
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<SparkplugStatus> {
        self.detail.subscribe()
    }

    /// Change the Sparkplug status, then the [`UplinkStatus`] fields it decides.
    pub(super) fn send_modify(&self, f: impl FnOnce(&mut SparkplugStatus)) {
        self.detail.send_modify(f);
        let detail = self.detail.borrow().clone();
        self.report.update(|s| apply(&detail, s));
    }
}

/// The link state of a Sparkplug uplink: connected once its births are out.
fn link_state(s: &SparkplugStatus) -> LinkState {
    if s.online {
        LinkState::Connected
    } else if s.waiting_for_host {
        LinkState::Disconnected("waiting for the primary host to be online".into())
    } else if let Some(e) = &s.last_error {
        LinkState::Disconnected(e.clone())
    } else {
        LinkState::Connecting
    }
}

/// The [`UplinkStatus`] fields a Sparkplug status decides. A failed state stays until the
/// supervisor starts the next run: a late change of the run that failed must not hide it.
fn apply(s: &SparkplugStatus, u: &mut UplinkStatus) {
    if !matches!(u.state, LinkState::Failed(_)) {
        u.state = link_state(s);
    }
    u.in_flight = usize::try_from(s.unproven).unwrap_or(usize::MAX);
    u.connects = s.connects;
    u.last_error.clone_from(&s.last_error);
    u.commands_dropped_total = s.commands_dropped;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn births_out_is_connected_and_waiting_for_the_host_says_so() {
        let report = Reporter::new("scada");
        let tx = StatusTx::new(report.clone());
        let translate = || report.borrow().clone();
        assert_eq!(translate().state, LinkState::Connecting);
        tx.send_modify(|s| s.waiting_for_host = true);
        assert!(matches!(
            translate().state,
            LinkState::Disconnected(ref why) if why.contains("primary host")
        ));
        tx.send_modify(|s| {
            s.waiting_for_host = false;
            s.online = true;
            s.acked_total = 7;
        });
        report.spool_acked(7, &[]);
        let t = translate();
        assert_eq!((t.state, t.acked_total), (LinkState::Connected, 7));
    }

    #[test]
    fn a_failed_run_stays_failed_until_the_supervisor_starts_the_next() {
        let report = Reporter::new("scada");
        let tx = StatusTx::new(report.clone());
        report.update(|s| {
            s.state = LinkState::Failed("spool closed".into());
            s.restarts = 1;
        });
        tx.send_modify(|s| s.last_error = Some("connection lost".into()));
        let s = report.borrow().clone();
        assert_eq!(s.state, LinkState::Failed("spool closed".into()));
        assert_eq!(s.restarts, 1);
        assert_eq!(s.last_error.as_deref(), Some("connection lost"));
        report.update(|s| s.state = LinkState::Connecting);
        tx.send_modify(|s| s.online = true);
        assert_eq!(report.borrow().state, LinkState::Connected);
    }
}
