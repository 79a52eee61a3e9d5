//! The process signals the agent answers: SIGINT and SIGTERM stop it, SIGHUP reloads its
//! configuration.

use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// SIGHUP as a channel of reload requests (never fires when reloading is off or off Unix).
pub(super) fn reload_signal(enabled: bool) -> anyhow::Result<mpsc::Receiver<()>> {
    let (tx, rx) = mpsc::channel(1);
    #[cfg(unix)]
    if enabled {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                // A reload already pending covers this one too.
                let _ = tx.try_send(());
            }
        });
        return Ok(rx);
    }
    // No reloads: the sender is dropped and the receiver reports a closed channel, which the
    // `Some(())` pattern in `run` treats as "no request".
    drop((tx, enabled));
    Ok(rx)
}

/// A cancellation token that fires on SIGINT or SIGTERM, or after `duration` if given.
pub fn shutdown_on_signal(duration: Option<Duration>) -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        let timer = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = ctrl_c => tracing::info!("interrupted"),
            _ = term => tracing::info!("terminated"),
            _ = timer => {},
        }
        t.cancel();
    });
    token
}
