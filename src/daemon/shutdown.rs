//! Shutdown: stop taking frames, answer the waiting ones, let the current jobs finish within the grace period,
//! then abandon them; say `stopped`, deliver what is left and disconnect. The connection stays serviced
//! throughout (frames still arriving are answered `shutting_down`), and every step is bounded in time.

use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::event_loop::{Conn, Phase};
use super::messages::availability;
use super::mqtt;
use super::startup::notify;
use super::tasks::{Presence, Tasks};
use super::worker::Shared;

pub(super) async fn stop(mut conn: Conn, workers: Vec<JoinHandle<()>>, tasks: Tasks, presence: Presence) {
    tracing::info!("stopping");
    notify(&[sd_notify::NotifyState::Stopping]);
    conn.router.not_serving();
    answer_waiting(&conn);
    // with a kept session the frame subscriptions stay, so that the broker keeps the QoS 1 frames that arrive
    // while the daemon is stopped for the next run; without one, nothing would keep them anyway
    let mqtt = &conn.shared.config.mqtt;
    if mqtt.session_expiry() == 0 {
        for s in conn.subscriptions.iter().filter(|s| s.ends_with("/frame") || !s.starts_with(&mqtt.prefix)) {
            let (c, s) = (conn.client.clone(), s.clone());
            tokio::spawn(async move { c.unsubscribe(&s).await });
        }
    }
    finish_jobs(&mut conn, workers).await;
    tasks.stop();
    conn.router.stopped().into_iter().for_each(|m| conn.shared.send(m));
    // flush: until everything is handed to the client (or the broker is away), then disconnect after it (bounded)
    conn.service(Phase::Flushing, Duration::from_secs(2), |c| c.outbox.handed_all() || !c.link.connected()).await;
    if !conn.outbox.handed_all() {
        tracing::warn!(messages = conn.outbox.undelivered(), "stopping with messages the broker never received");
    }
    let _ = conn.client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.until_closed()).await;
    presence.stop().await;
    tracing::info!("stopped");
}

/// A stop before the model has loaded (nothing connected, nothing taken yet): close the queue so that the workers
/// end once loaded, and say `stopped` on this daemon's availability through a short clean-session connection —
/// the daemon's own kept session would be handed the frames waiting in it, which no one could process now.
pub(super) async fn stop_before_ready(shared: &Shared) {
    notify(&[sd_notify::NotifyState::Stopping]);
    shared.queue.close();
    let cfg = &shared.config.mqtt;
    let topic = shared.topics.daemon_available(&shared.daemon_id);
    let id = format!("{}-presence", cfg.client_id);
    let Ok((client, mut events)) = mqtt::connect_with(cfg, &id, &topic, 1 << 16, 0) else { return };
    let _ = client.try_publish(&availability(topic, "stopped"), 1);
    let _ = client.try_disconnect();
    if tokio::time::timeout(Duration::from_secs(3), events.until_closed()).await.is_err() {
        tracing::warn!("could not say `stopped` to the broker within 3 s");
    }
    tracing::info!("stopped");
}

/// Close the queue and answer the frames still waiting in it.
fn answer_waiting(conn: &Conn) {
    let shared = &conn.shared;
    let waiting = shared.queue.close();
    let answered = waiting.len();
    for f in waiting {
        let msg = "the daemon is stopping; the frame was not processed";
        for m in shared.error_message(&f.camera, "shutting_down", msg, Some(f.seq), f.reply.as_ref()) {
            shared.send(m);
        }
    }
    if answered > 0 {
        tracing::info!(frames = answered, "answered the waiting frames with shutting_down");
    }
}

/// Let the workers finish their jobs within the grace period (then they are abandoned at their next evaluation),
/// and for three seconds more; a worker still busy after that is left behind.
async fn finish_jobs(conn: &mut Conn, workers: Vec<JoinHandle<()>>) {
    let grace_ms = conn.shared.config.daemon.shutdown_grace_ms;
    let grace = Instant::now() + Duration::from_millis(grace_ms);
    let abandon_after = Duration::from_millis(grace_ms) + Duration::from_secs(3);
    let shared = conn.shared.clone();
    conn.service(Phase::Stopping, abandon_after, |_| {
        if Instant::now() >= grace {
            shared.abandon.store(true, Ordering::Relaxed);
        }
        workers.iter().all(|h| h.is_finished())
    })
    .await;
    let stuck = workers.iter().filter(|h| !h.is_finished()).count();
    if stuck > 0 {
        tracing::warn!(workers = stuck, "workers still busy after the grace period; not waiting for them");
    } else {
        for h in workers {
            let _ = h.join();
        }
    }
}
