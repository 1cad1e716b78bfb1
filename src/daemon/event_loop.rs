//! The MQTT connection and its event loop: one dispatch of the client's events, used while the daemon runs and
//! while it stops (shutdown.rs), where a few events mean less (see `Phase`).
//!
//! Nothing in the loop waits on the MQTT client: requests go out through non-blocking calls or spawned tasks, so
//! a request queue that filled during an outage can never stall it, and a signal is seen at once, also during a
//! reconnect back-off. Outgoing messages are handed to the client here too, between polls (see outbox.rs).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval};

use super::cannot_start;
use super::config::Protocol;
use super::link::Link;
use super::mqtt::{self, Event, Lost, Outgoing, Why};
use super::outbox::Outbox;
use super::router::Router;
use super::startup::notify;
use super::worker::Shared;

/// What the connection is for: the events are the same, what the daemon does with some of them is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Subscribe on every connect; serve once subscribed; back off exponentially after a lost connection.
    Running,
    /// Stopping: frames still arriving are answered (`shutting_down`), nothing is subscribed again, and a lost
    /// connection is retried at once (every step of the shutdown is bounded in time anyway).
    Stopping,
    /// Delivering the last messages: whatever arrives is handled but not answered, so that the outbox drains.
    Flushing,
}

/// The signals that stop the daemon: SIGTERM, SIGINT and SIGHUP. Taken over as the first thing `serve` does, so
/// that from then on none of them kills the process (their default), not even while the model loads.
pub(super) struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    pub(super) fn new() -> Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next stop signal, by name.
    pub(super) async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

/// A connection that lasted this long was not dropped because of what the daemon sent or received on it: the
/// reconnect back-off starts again from its minimum.
const STABLE: Duration = Duration::from_secs(10);

/// Consecutive login refusals after which the daemon gives up (`CannotStart`).
const MAX_LOGIN_REFUSALS: u32 = 3;

/// Reconnect delays: doubling from the minimum to the maximum after every lost connection, and back to the
/// minimum only after a connection that lasted (`STABLE`). A broker that drops the connection right after the
/// CONNACK (a message the client cannot take, another client with the same client id) is thus not hammered at
/// the minimum delay forever.
#[derive(Debug)]
pub(super) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    connected_at: Option<Instant>,
    /// Connections in a row that ended within `STABLE` of their CONNACK.
    pub(super) short_lived: u32,
}

impl Backoff {
    pub(super) fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max: max.max(min), next: min, connected_at: None, short_lived: 0 }
    }

    pub(super) fn connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
    }

    /// The connection was lost, or could not be made: how long to wait before the next attempt.
    pub(super) fn lost(&mut self, now: Instant) -> Duration {
        match self.connected_at.take() {
            Some(t) if now.duration_since(t) >= STABLE => {
                self.next = self.min;
                self.short_lived = 0;
            }
            Some(_) => self.short_lived += 1,
            None => {}
        }
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
}

type Polling = std::pin::Pin<Box<dyn std::future::Future<Output = (mqtt::EventLoop, Result<Event, Lost>)> + Send>>;

/// The next event of the client, from the poll in flight or a new one; cancelling this keeps the poll in flight.
async fn poll(polling: &mut Option<Polling>, events: &mut Option<mqtt::EventLoop>) -> Result<Event, Lost> {
    let p = polling.get_or_insert_with(|| {
        let mut ev = events.take().expect("the event loop is either idle or in a poll");
        Box::pin(async move {
            let r = ev.poll().await;
            (ev, r)
        })
    });
    let (ev, r) = p.await;
    *polling = None;
    *events = Some(ev);
    r
}

/// The broker connection with everything the event loop keeps.
pub(super) struct Conn {
    pub(super) shared: Arc<Shared>,
    pub(super) link: Arc<Link>,
    pub(super) client: mqtt::Client,
    /// The client's event loop; None while a poll of it is in flight (`polling`).
    events: Option<mqtt::EventLoop>,
    /// A poll in flight, kept across the turns of the loop: a poll may be connecting (TCP, TLS, CONNECT, CONNACK),
    /// and dropping it half-way would drop the connection it was making — one that takes longer than a turn of
    /// the loop (a distant broker) would never be made, and a half-made one fires our last will.
    polling: Option<Polling>,
    pub(super) outbox: Outbox,
    rx: mpsc::UnboundedReceiver<Outgoing>,
    pub(super) router: Router,
    phase: Phase,
    /// Filters to subscribe to (with the shared-subscription group applied).
    pub(super) subscriptions: Vec<String>,
    /// Of those, the retained state read back on every connect (styles, availabilities): subscribed first, with
    /// retained messages sent even to a kept session, so that it is all in before the second SUBACK.
    state_subscriptions: Vec<String>,
    /// SUBACKs still expected on this connection before the daemon serves.
    pending_subacks: usize,
    backoff: Backoff,
    /// Login refusals in a row (see `MAX_LOGIN_REFUSALS`).
    refusals: u32,
    /// Why the daemon cannot go on (`run` returns it).
    fatal: Option<anyhow::Error>,
    /// While set, the client is not polled (a reconnect back-off).
    retry_at: Option<Instant>,
    /// Set once READY=1 is sent (on the first subscription); the watchdog pings only after it.
    pub(super) ready: Arc<AtomicBool>,
}

impl Conn {
    /// The client (its last will marks this daemon offline) and the state of the loop; nothing is sent yet.
    pub(super) fn new(shared: &Arc<Shared>, rx: mpsc::UnboundedReceiver<Outgoing>) -> Result<Conn> {
        let cfg = &shared.config;
        let topics = &shared.topics;
        // MQTT v5 tells the broker the largest packet we take, and the broker drops larger ones. MQTT 3.1.1 cannot:
        // a packet over the client's own limit breaks the connection, and a kept session delivers the same message
        // again on every reconnect, forever. So under 3.1.1 anything MQTT can carry is read, and an oversized
        // frame is refused by the daemon's own `max_payload_bytes` check, answered and acknowledged once.
        let max_packet = match cfg.mqtt.protocol {
            Protocol::V5 => (cfg.daemon.max_payload_bytes as usize).saturating_mul(2).max(32 << 20),
            Protocol::V311 => Protocol::MAX_PACKET,
        };
        let own_topic = topics.daemon_available(&shared.daemon_id);
        let (client, events) =
            mqtt::connect(&cfg.mqtt, &cfg.mqtt.client_id, &own_topic, max_packet).map_err(cannot_start)?;
        let link = Arc::new(Link::default());
        link.beat();
        let subscriptions: Vec<String> = topics
            .subscriptions()
            .into_iter()
            .map(|(t, shared_sub)| match (&cfg.mqtt.shared_group, shared_sub) {
                (Some(g), true) => format!("$share/{g}/{t}"),
                _ => t,
            })
            .collect();
        let state_subscriptions = topics.state_subscriptions();
        Ok(Conn {
            outbox: Outbox::new(cfg.daemon.max_outbox_bytes as usize, cfg.mqtt.qos, [topics.stats()]),
            router: Router::new(shared.clone()),
            shared: shared.clone(),
            link,
            client,
            events: Some(events),
            polling: None,
            rx,
            phase: Phase::Running,
            subscriptions,
            state_subscriptions,
            pending_subacks: 0,
            backoff: Backoff::new(
                Duration::from_millis(cfg.mqtt.reconnect_min_ms.max(10)),
                Duration::from_millis(cfg.mqtt.reconnect_max_ms.max(100)),
            ),
            refusals: 0,
            fatal: None,
            retry_at: None,
            ready: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Run until SIGTERM, SIGINT or SIGHUP; an error when the daemon cannot go on (the broker refuses the login).
    pub(super) async fn run(&mut self, signals: &mut Signals) -> Result<()> {
        let mut beat = tokio::time::interval(Duration::from_millis(500));
        loop {
            self.link.beat();
            self.hand_over();
            if let Some(e) = self.fatal.take() {
                return Err(e);
            }
            tokio::select! {
                biased;
                s = signals.recv() => {
                    tracing::info!(signal = s, "stop requested");
                    return Ok(());
                }
                _ = self.next(&mut beat) => {}
            }
        }
    }

    /// Go on in `phase` (see shutdown.rs): the connection stays serviced until `done` says so or for `limit`.
    pub(super) async fn service(&mut self, phase: Phase, limit: Duration, mut done: impl FnMut(&Self) -> bool) {
        self.phase = phase;
        // a back-off of the running loop would keep the broker away for the whole of a bounded step
        self.retry_at = None;
        let end = Instant::now() + limit;
        let mut check = tokio::time::interval(Duration::from_millis(20));
        loop {
            self.hand_over();
            if done(self) || Instant::now() >= end {
                return;
            }
            self.next(&mut check).await;
        }
    }

    /// After asking for a disconnect: let the poll in flight finish, then read until the broker closes the
    /// connection (`mqtt::EventLoop::until_closed`).
    pub(super) async fn until_closed(&mut self) {
        if self.polling.is_some() && poll(&mut self.polling, &mut self.events).await.is_err() {
            return;
        }
        if let Some(ev) = self.events.as_mut() {
            ev.until_closed().await;
        }
    }

    /// Take what the daemon made into the outbox, and hand the outbox to the client if it is connected.
    fn hand_over(&mut self) {
        self.outbox.take(&mut self.rx, &self.shared.stats);
        if self.link.connected() {
            self.outbox.hand_over(&self.client);
        }
    }

    /// Wait for one thing (a tick, a message to send, the end of a back-off, an event) and deal with it.
    async fn next(&mut self, tick: &mut Interval) {
        tokio::select! {
            biased;
            _ = tick.tick() => {}
            Some(m) = self.rx.recv() => {
                self.outbox.push(m, &self.shared.stats);
                self.outbox.take(&mut self.rx, &self.shared.stats);
            }
            _ = tokio::time::sleep_until(self.retry_at.unwrap_or_else(Instant::now)), if self.retry_at.is_some() => {
                self.retry_at = None;
            }
            ev = poll(&mut self.polling, &mut self.events), if self.retry_at.is_none() => self.dispatch(ev),
        }
    }

    /// The one place the client's events are handled.
    fn dispatch(&mut self, ev: Result<Event, Lost>) {
        match ev {
            Ok(Event::Connected { session }) => self.connected(session),
            Ok(Event::Subscribed { granted }) if self.phase == Phase::Running => self.subscribed(granted),
            Ok(Event::Subscribed { .. }) => {}
            Ok(Event::Message(m)) => {
                let out = self.router.handle(m);
                if self.phase != Phase::Flushing {
                    out.into_iter().for_each(|m| self.shared.send(m));
                }
            }
            Ok(Event::Sent { pkid }) => self.outbox.sent(pkid),
            Ok(Event::Acked { pkid }) => self.outbox.acked(pkid),
            Ok(Event::Disconnected) => {
                self.link.set_connected(false);
                self.router.not_serving();
                if self.phase != Phase::Running {
                    self.pause(Duration::from_millis(20));
                }
            }
            Ok(Event::Other) => {}
            Err(e) => {
                self.link.set_connected(false);
                self.router.not_serving();
                if self.phase == Phase::Running {
                    self.lost(e);
                } else {
                    self.pause(Duration::from_millis(50));
                }
            }
        }
    }

    /// The connection was lost (or not made) while running: say why, as precisely as the broker let us know,
    /// and retry after the back-off — or give up when the broker keeps refusing the login.
    fn lost(&mut self, e: Lost) {
        let delay = self.backoff.lost(Instant::now());
        let id = &self.shared.config.mqtt.client_id;
        let retry_in_ms = delay.as_millis() as u64;
        match e.why {
            Why::LoginRefused => {
                self.refusals += 1;
                if self.refusals >= MAX_LOGIN_REFUSALS {
                    self.fatal = Some(cannot_start(anyhow::anyhow!(
                        "the broker refused the login {} times in a row ({e}): check mqtt.username and the \
                         password (FUCHUN_MQTT_PASSWORD or mqtt.password), and the broker's ACL for client id {id:?}",
                        self.refusals
                    )));
                    return;
                }
                tracing::error!(error = %e, retry_in_ms, "the broker refused the login");
            }
            Why::TakenOver => tracing::error!(
                client_id = %id,
                retry_in_ms,
                "the broker handed this daemon's session to another client with the same client id {id:?}: give \
                 every daemon (and every other client of the broker) its own mqtt.client_id"
            ),
            Why::Other if self.backoff.short_lived >= 3 => tracing::error!(
                error = %e,
                client_id = %id,
                retry_in_ms,
                short_lived = self.backoff.short_lived,
                "the broker keeps closing the connection soon after accepting it: is another client connected with \
                 the same client id {id:?}? (or does the broker refuse what the daemon sends)"
            ),
            Why::Other => tracing::warn!(error = %e, retry_in_ms, "broker connection lost"),
        }
        self.pause(delay);
    }

    /// Poll the client again only after `d`.
    fn pause(&mut self, d: Duration) {
        self.retry_at = Some(Instant::now() + d);
    }

    /// (Re)connected: hand over again what a lost session dropped; while running, subscribe (in a task: the
    /// client's request queue may be full): first the retained state, then the rest, in two requests answered in
    /// order, so that the state is read back when the second SUBACK arrives.
    fn connected(&mut self, session: bool) {
        self.link.set_connected(true);
        let resent = self.outbox.connected(session, &self.shared.stats);
        if self.phase != Phase::Running {
            return;
        }
        self.backoff.connected(Instant::now());
        self.refusals = 0;
        let mqtt = &self.shared.config.mqtt;
        tracing::info!(host = %mqtt.host, port = mqtt.port, session, resent, "connected to the broker");
        let state = self.state_subscriptions.clone();
        let rest: Vec<String> = self.subscriptions.iter().filter(|s| !state.contains(s)).cloned().collect();
        self.pending_subacks = 2;
        let (c, qos) = (self.client.clone(), mqtt.qos);
        tokio::spawn(async move {
            let r = match c.subscribe_all(&state, qos, true).await {
                Ok(()) => c.subscribe_all(&rest, qos, false).await,
                e => e,
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, "subscribe failed");
            }
        });
    }

    /// The broker answered the subscription: the first grant on a connection starts serving (and the first of
    /// all tells systemd the daemon is ready).
    fn subscribed(&mut self, granted: bool) {
        if !granted {
            tracing::error!("the broker refused a subscription: check its ACL for this client");
            return;
        }
        self.pending_subacks = self.pending_subacks.saturating_sub(1);
        if self.pending_subacks > 0 || self.link.set_subscribed() {
            return;
        }
        // the styles chosen in an earlier run are read back: frames (a kept session delivers those that came
        // while the daemon was away before anything else) may be stylised now
        self.shared.release_frames();
        tracing::info!(topics = self.subscriptions.len(), "subscribed");
        self.router.serving().into_iter().for_each(|m| self.shared.send(m));
        if !self.ready.load(Ordering::Relaxed) {
            notify(&[sd_notify::NotifyState::Ready]);
            self.ready.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_across_short_lived_connections_and_resets_after_a_stable_one() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(250), ms(30_000));
        let mut t = Instant::now();
        // refused outright: doubling
        assert_eq!([b.lost(t), b.lost(t), b.lost(t)], [ms(250), ms(500), ms(1000)]);
        // accepted, then dropped at once, again and again (an oversized message, a duplicate client id): still
        // doubling up to the maximum, never back to the minimum
        let mut delays = Vec::new();
        for _ in 0..8 {
            b.connected(t);
            t += ms(100);
            delays.push(b.lost(t));
        }
        assert_eq!(delays, [2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000].map(ms));
        assert_eq!(b.short_lived, 8);
        // a connection that lasted: back to the minimum
        b.connected(t);
        t += STABLE;
        assert_eq!(b.lost(t), ms(250));
        assert_eq!(b.short_lived, 0);
    }
}
