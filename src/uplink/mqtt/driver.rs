//! The driver: owns the rumqttc event loop, connects with a fresh client per generation and
//! hands each established connection to the sender (see the module docs of `uplink::mqtt`).

use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Outgoing,
    Packet, PublishOptions, QoS,
};
use tokio::sync::watch;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::model::Timestamp;
use crate::mqtt::tls::{self};
use crate::uplink::backoff::Backoff;

/// The client of one established connection, handed from the driver to the sender.
#[derive(Clone)]
pub(super) struct Conn {
    pub(super) generation: u64,
    pub(super) client: AsyncClient,
}

/// What kind of failure the driver last logged, so that a repeated failure is not logged again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Failure {
    Refused(String),
    Other(String),
}

// === impl Driver ===

pub(super) struct Driver<'a> {
    pub(super) uplink: &'a MqttUplink,
    pub(super) options: MqttOptions,
    pub(super) conn_tx: watch::Sender<Option<Conn>>,
    /// Set by the sender when it stops: the end of the grace period.
    pub(super) deadline: &'a std::sync::OnceLock<Instant>,
}

impl Driver<'_> {
    pub(super) async fn run(self, stop: CancellationToken) {
        let u = self.uplink;
        let mut backoff = Backoff::new(u.cfg.reconnect_min, u.cfg.reconnect_max).with_jitter();
        let mut generation = 0u64;
        let mut last_failure: Option<Failure> = None;
        loop {
            if stop.is_cancelled() {
                return;
            }
            let (client, mut eventloop) = AsyncClient::builder(self.options.clone())
                .capacity(usize::from(u.cfg.max_inflight) + 8)
                .build();
            let connected = tokio::select! {
                _ = stop.cancelled() => return,
                r = wait_connack(&mut eventloop) => r,
            };
            match connected {
                Ok(()) => {
                    generation += 1;
                    backoff.reset();
                    if last_failure.take().is_some() || generation == 1 {
                        tracing::info!(uplink = %u.name, broker = %u.cfg.broker, "connected to the broker");
                    }
                    let online = u.status_payload("online", Some(Timestamp::now()));
                    let opts = PublishOptions::new(QoS::AtLeastOnce).retained();
                    if let Err(e) = client.try_publish(u.status_topic.clone(), online, opts) {
                        tracing::warn!(uplink = %u.name, "cannot queue the online status: {e}");
                    }
                    u.update(|s| {
                        s.state = LinkState::Connected;
                        s.connects += 1;
                    });
                    self.conn_tx.send_replace(Some(Conn {
                        generation,
                        client: client.clone(),
                    }));
                    let err = tokio::select! {
                        _ = stop.cancelled() => {
                            self.conn_tx.send_replace(None);
                            self.disconnect(&client, &mut eventloop).await;
                            return;
                        }
                        e = poll_until_error(&mut eventloop) => e,
                    };
                    self.conn_tx.send_replace(None);
                    let reason = describe(&err);
                    tracing::warn!(uplink = %u.name, broker = %u.cfg.broker, "connection lost: {reason}");
                    last_failure = Some(Failure::Other(reason.clone()));
                    u.update(|s| {
                        s.state = LinkState::Disconnected(reason.clone());
                        s.last_error = Some(reason);
                    });
                }
                Err(err) => self.connect_failed(&err, &mut last_failure),
            }
            // Dropping the pair fails every request and notice of this connection.
            drop(client);
            drop(eventloop);
            let delay = backoff.next_delay();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = sleep(delay) => {}
            }
        }
    }

    pub(super) fn connect_failed(&self, err: &ConnectionError, last_failure: &mut Option<Failure>) {
        let u = self.uplink;
        let (failure, state) = match err {
            ConnectionError::ConnectionRefused(code) => {
                let reason = refusal_reason(*code);
                let state = match code {
                    ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => {
                        LinkState::AuthFailed(reason.to_owned())
                    }
                    _ => LinkState::Disconnected(reason.to_owned()),
                };
                (Failure::Refused(reason.to_owned()), state)
            }
            other => {
                let reason = describe(other);
                (
                    Failure::Other(reason.clone()),
                    LinkState::Disconnected(reason),
                )
            }
        };
        if last_failure.as_ref() != Some(&failure) {
            match &failure {
                Failure::Refused(reason) => tracing::error!(
                    "uplink {:?}: broker {} refused the connection: {reason}",
                    u.name,
                    u.cfg.broker
                ),
                Failure::Other(reason) => tracing::warn!(
                    "uplink {:?}: cannot connect to broker {}: {reason}",
                    u.name,
                    u.cfg.broker
                ),
            }
        } else {
            tracing::debug!(uplink = %u.name, broker = %u.cfg.broker, "connection attempt failed again: {err}");
        }
        let text = match &failure {
            Failure::Refused(r) => format!("refused: {r}"),
            Failure::Other(r) => r.clone(),
        };
        *last_failure = Some(failure);
        u.update(|s| {
            s.state = state;
            s.last_error = Some(text);
        });
    }

    /// Publish the retained offline status, then DISCONNECT, polling until it is written.
    pub(super) async fn disconnect(&self, client: &AsyncClient, eventloop: &mut EventLoop) {
        let u = self.uplink;
        let offline = u.status_payload("offline", None);
        let opts = PublishOptions::new(QoS::AtLeastOnce).retained();
        let queued = client
            .try_publish(u.status_topic.clone(), offline, opts)
            .and_then(|()| client.try_disconnect_with_timeout(DISCONNECT_TIMEOUT));
        if let Err(e) = queued {
            tracing::warn!(uplink = %u.name, "cannot queue the offline status and DISCONNECT: {e}");
            return;
        }
        // Within what is left of the grace period: a broker that does not take the offline
        // status in time publishes the Will, which says the same.
        let budget = self
            .deadline
            .get()
            .map_or(DISCONNECT_TIMEOUT, |d| {
                d.saturating_duration_since(Instant::now())
            })
            .min(DISCONNECT_TIMEOUT + Duration::from_millis(500));
        let done = timeout(budget, async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        match done {
            Ok(Ok(())) => {
                tracing::info!(uplink = %u.name, "published offline status and disconnected")
            }
            Ok(Err(e)) => tracing::warn!(uplink = %u.name, "disconnect: {}", describe(&e)),
            Err(_) => tracing::warn!(uplink = %u.name, "disconnect timed out"),
        }
        u.update(|s| s.state = LinkState::Disconnected("shut down".into()));
    }
}

/// Poll a fresh event loop until its CONNACK (Ok) or the first error.
async fn wait_connack(eventloop: &mut EventLoop) -> Result<(), ConnectionError> {
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = eventloop.poll().await? {
            return Ok(());
        }
    }
}

/// Poll an established connection until it fails. Incoming publishes are not expected (the
/// uplink subscribes to nothing) and are ignored.
async fn poll_until_error(eventloop: &mut EventLoop) -> ConnectionError {
    loop {
        if let Err(e) = eventloop.poll().await {
            return e;
        }
    }
}

pub(super) fn refusal_reason(code: ConnectReturnCode) -> &'static str {
    match code {
        ConnectReturnCode::Success => "success (unexpected refusal)",
        ConnectReturnCode::RefusedProtocolVersion => "unacceptable protocol version",
        ConnectReturnCode::BadClientId => "client identifier rejected",
        ConnectReturnCode::ServiceUnavailable => "server unavailable",
        ConnectReturnCode::BadUserNamePassword => "bad user name or password",
        ConnectReturnCode::NotAuthorized => "not authorized",
    }
}

pub(super) fn describe(err: &ConnectionError) -> String {
    match err {
        ConnectionError::ConnectionRefused(code) => refusal_reason(*code).to_owned(),
        other => tls::explain(other).unwrap_or_else(|| other.to_string()),
    }
}
