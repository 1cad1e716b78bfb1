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
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval};

use super::link::Link;
use super::mqtt::{self, Event, Outgoing};
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

/// The broker connection with everything the event loop keeps.
pub(super) struct Conn {
    pub(super) shared: Arc<Shared>,
    pub(super) link: Arc<Link>,
    pub(super) client: mqtt::Client,
    pub(super) events: mqtt::EventLoop,
    pub(super) outbox: Outbox,
    rx: mpsc::UnboundedReceiver<Outgoing>,
    pub(super) router: Router,
    phase: Phase,
    /// Filters to subscribe to (with the shared-subscription group applied).
    pub(super) subscriptions: Vec<String>,
    backoff: Duration,
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
        let max_packet = (cfg.daemon.max_payload_bytes as usize).saturating_mul(2).max(32 << 20);
        let own_topic = topics.daemon_available(&shared.daemon_id);
        let (client, events) = mqtt::connect(&cfg.mqtt, &cfg.mqtt.client_id, &own_topic, max_packet)?;
        let link = Arc::new(Link::default());
        link.beat();
        let subscriptions = topics
            .subscriptions()
            .into_iter()
            .map(|(t, shared_sub)| match (&cfg.mqtt.shared_group, shared_sub) {
                (Some(g), true) => format!("$share/{g}/{t}"),
                _ => t,
            })
            .collect();
        Ok(Conn {
            outbox: Outbox::new(cfg.daemon.max_outbox_bytes as usize, cfg.mqtt.qos, [topics.stats()]),
            router: Router::new(shared.clone()),
            shared: shared.clone(),
            link,
            client,
            events,
            rx,
            phase: Phase::Running,
            subscriptions,
            backoff: min_backoff(shared),
            retry_at: None,
            ready: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Run until SIGTERM or SIGINT.
    pub(super) async fn run(&mut self) -> Result<()> {
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let mut beat = tokio::time::interval(Duration::from_millis(500));
        loop {
            self.link.beat();
            self.hand_over();
            tokio::select! {
                biased;
                _ = sigterm.recv() => return Ok(()),
                _ = sigint.recv() => return Ok(()),
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
            ev = self.events.poll(), if self.retry_at.is_none() => self.dispatch(ev),
        }
    }

    /// The one place the client's events are handled.
    fn dispatch(&mut self, ev: Result<Event, String>) {
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
                    tracing::warn!(error = %e, retry_in_ms = self.backoff.as_millis() as u64, "broker connection lost");
                    self.pause(self.backoff);
                    let max = Duration::from_millis(self.shared.config.mqtt.reconnect_max_ms.max(100));
                    self.backoff = (self.backoff * 2).min(max);
                } else {
                    self.pause(Duration::from_millis(50));
                }
            }
        }
    }

    /// Poll the client again only after `d`.
    fn pause(&mut self, d: Duration) {
        self.retry_at = Some(Instant::now() + d);
    }

    /// (Re)connected: hand over again what a lost session dropped; while running, subscribe (in a task: the
    /// client's request queue may be full).
    fn connected(&mut self, session: bool) {
        self.link.set_connected(true);
        let resent = self.outbox.connected(session, &self.shared.stats);
        if self.phase != Phase::Running {
            return;
        }
        self.backoff = min_backoff(&self.shared);
        let mqtt = &self.shared.config.mqtt;
        tracing::info!(host = %mqtt.host, port = mqtt.port, session, resent, "connected to the broker");
        let (c, subs, qos) = (self.client.clone(), self.subscriptions.clone(), mqtt.qos);
        tokio::spawn(async move {
            if let Err(e) = c.subscribe_all(&subs, qos).await {
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
        if self.link.set_subscribed() {
            return;
        }
        tracing::info!(topics = self.subscriptions.len(), "subscribed");
        self.router.serving().into_iter().for_each(|m| self.shared.send(m));
        if !self.ready.load(Ordering::Relaxed) {
            notify(&[sd_notify::NotifyState::Ready]);
            self.ready.store(true, Ordering::Relaxed);
        }
    }
}

fn min_backoff(shared: &Shared) -> Duration {
    Duration::from_millis(shared.config.mqtt.reconnect_min_ms.max(10))
}
