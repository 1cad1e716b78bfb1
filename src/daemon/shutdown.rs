//! Shutdown: stop taking frames, answer the waiting ones, let the current jobs finish within the grace period,
//! then abandon them; say `stopped`, deliver what is left and disconnect. The connection stays serviced
//! throughout (frames still arriving are answered `shutting_down`), and every step is bounded in time.

use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::event_loop::{Conn, Phase};
use super::mqtt::Event;
use super::startup::notify;
use super::tasks::{Presence, Tasks};

pub(super) async fn stop(mut conn: Conn, workers: Vec<JoinHandle<()>>, tasks: Tasks, presence: Presence) {
    tracing::info!("stopping");
    notify(&[sd_notify::NotifyState::Stopping]);
    conn.router.not_serving();
    answer_waiting(&conn);
    let prefix = &conn.shared.config.mqtt.prefix;
    for s in conn.subscriptions.iter().filter(|s| s.ends_with("/frame") || !s.starts_with(prefix)) {
        let (c, s) = (conn.client.clone(), s.clone());
        tokio::spawn(async move { c.unsubscribe(&s).await });
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
    let flush = async {
        loop {
            match conn.events.poll().await {
                Ok(Event::Disconnected) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), flush).await;
    presence.stop().await;
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
