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

/// Wait at most `within` for the status on `rx` to satisfy `pred`: `Ok(true)` once it does,
/// `Ok(false)` when nobody updates the status any more, an error when the time ran out. For the
/// tests that fail with their own words.
pub async fn status_comes<T>(
    rx: &mut watch::Receiver<T>,
    within: Duration,
    pred: impl Fn(&T) -> bool,
) -> Result<bool, tokio::time::error::Elapsed> {
    timeout(within, async {
        loop {
            if pred(&rx.borrow_and_update()) {
                return true;
            }
            if rx.changed().await.is_err() {
                return false; // nobody updates the status any more
            }
        }
    })
    .await
}
