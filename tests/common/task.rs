//! Stopping what a test spawned.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// Cancel `stop` and wait, at most 10 s, for `task` to end without a panic; what it returned.
pub async fn stop_and_join<T>(stop: &CancellationToken, task: JoinHandle<T>) -> T {
    stop.cancel();
    timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
}
