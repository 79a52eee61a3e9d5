//! Waiting on a component's status channel (an uplink's, a Sparkplug edge's).

use std::fmt::Debug;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::timeout;

/// Wait until the status on `rx` satisfies `pred` and return it; after `within`, fail the test
/// naming `what` and the last status seen.
pub async fn wait_status<T: Clone + Debug>(
    rx: &mut watch::Receiver<T>,
    what: &str,
    within: Duration,
    pred: impl Fn(&T) -> bool,
) -> T {
    let r = timeout(within, async {
        rx.wait_for(|s| pred(s)).await.map(|s| s.clone())
    })
    .await;
    match r {
        Ok(Ok(s)) => s,
        _ => panic!("timed out waiting for {what}; status: {:?}", *rx.borrow()),
    }
}
