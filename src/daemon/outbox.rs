//! Outgoing messages from the moment the daemon makes them until the broker acknowledges them.
//!
//! Three stages: `waiting` (not yet handed to the MQTT client: the broker is unreachable or the client's request
//! queue is full; bounded in bytes, a newer stats message or retained state replaces an older one on the same
//! topic), `handed` (in the client's request queue, not yet written) and `unacked` (written with a packet id, no
//! PUBACK/PUBREC yet). rumqttc keeps the last two across a reconnect only if the broker kept the session; when the
//! broker comes back without it (restarted, session expired) the client drops them, and so would every result made
//! just before the outage was noticed. This is why the outbox keeps its own copy until the acknowledgement and
//! hands the messages over again after such a reconnect.
//!
//! The client reports each publish it writes (`sent`, with its packet id, in the order it took them from its
//! queue) and each acknowledgement (`acked`). The outbox is driven from the same task that polls the client's
//! event loop, so nothing is handed over between the client emptying its queue on a lost connection and the
//! outbox learning of it.

use std::collections::{HashMap, HashSet, VecDeque};

use tokio::sync::mpsc;

use super::mqtt::{Client, Outgoing, TryError};
use super::stats::Stats;

pub struct Outbox {
    waiting: VecDeque<Outgoing>,
    bytes: usize,
    max_bytes: usize,
    coalesce: HashSet<String>,
    /// Handed to the client (with the order they were made in), not yet written.
    handed: VecDeque<(u64, Outgoing)>,
    /// Written under this packet id, not yet acknowledged (QoS 1 and 2 only).
    unacked: HashMap<u16, (u64, Outgoing)>,
    next_seq: u64,
    qos: u8,
}

impl Outbox {
    /// `max_bytes` bounds what waits; `coalesce` names topics where only the newest message matters.
    pub fn new(max_bytes: usize, qos: u8, coalesce: impl IntoIterator<Item = String>) -> Self {
        Outbox {
            waiting: VecDeque::new(),
            bytes: 0,
            max_bytes,
            coalesce: coalesce.into_iter().collect(),
            handed: VecDeque::new(),
            unacked: HashMap::new(),
            next_seq: 0,
            qos,
        }
    }

    fn replaces(&self, a: &Outgoing, b: &Outgoing) -> bool {
        (a.retain || self.coalesce.contains(&a.topic)) && a.topic == b.topic && a.retain == b.retain
    }

    /// A new message, behind everything waiting.
    pub fn push(&mut self, m: Outgoing, stats: &Stats) {
        if let Some(i) = self.waiting.iter().position(|o| self.replaces(&m, o)) {
            let old = self.waiting.remove(i).unwrap();
            self.bytes -= old.payload.len();
        }
        self.bytes += m.payload.len();
        self.waiting.push_back(m);
        self.bound(stats);
    }

    /// Everything already in the daemon's channel, in order (all of it before any is handed over, so that
    /// coalescing sees it).
    pub fn take(&mut self, rx: &mut mpsc::UnboundedReceiver<Outgoing>, stats: &Stats) {
        while let Ok(m) = rx.try_recv() {
            self.push(m, stats);
        }
    }

    /// Drop the oldest waiting messages while over the byte bound (never the last one).
    fn bound(&mut self, stats: &Stats) {
        while self.bytes > self.max_bytes && self.waiting.len() > 1 {
            let old = self.waiting.pop_front().unwrap();
            self.bytes -= old.payload.len();
            Stats::inc(&stats.outbox_dropped);
        }
    }

    /// Hand waiting messages to the client until its request queue is full. Call only while connected.
    pub fn hand_over(&mut self, client: &Client) {
        let qos = self.qos;
        self.hand_over_to(|m| client.try_publish(m, qos));
    }

    fn hand_over_to(&mut self, mut publish: impl FnMut(&Outgoing) -> Result<(), TryError>) {
        while let Some(m) = self.waiting.front() {
            match publish(m) {
                Ok(()) => {
                    let m = self.waiting.pop_front().unwrap();
                    self.bytes -= m.payload.len();
                    self.handed.push_back((self.next_seq, m));
                    self.next_seq += 1;
                }
                Err(TryError::Full) => break,
                Err(TryError::Invalid(e)) => {
                    tracing::warn!(error = %e, "message not publishable; dropped");
                    let m = self.waiting.pop_front().unwrap();
                    self.bytes -= m.payload.len();
                }
            }
        }
    }

    /// The client wrote a publish with this packet id (0: QoS 0).
    pub fn sent(&mut self, pkid: u16) {
        if pkid != 0 && self.unacked.contains_key(&pkid) {
            return; // a resend of an unacknowledged publish to a kept session
        }
        let Some(m) = self.handed.pop_front() else { return };
        if pkid != 0 && self.qos > 0 {
            self.unacked.insert(pkid, m);
        }
    }

    /// The broker acknowledged the publish with this packet id (PUBACK, or PUBREC for QoS 2).
    pub fn acked(&mut self, pkid: u16) {
        self.unacked.remove(&pkid);
    }

    /// (Re)connected. Without a kept session the client has dropped what it held: hand it over again, in the
    /// order it was made, ahead of what waits (a newer message on a coalesced topic wins). Returns how many.
    pub fn connected(&mut self, session: bool, stats: &Stats) -> usize {
        if session {
            return 0;
        }
        let mut again: Vec<(u64, Outgoing)> = self.unacked.drain().map(|(_, m)| m).collect();
        again.extend(self.handed.drain(..));
        again.sort_by_key(|(seq, _)| *seq);
        let n = again.len();
        for (_, m) in again.into_iter().rev() {
            if self.waiting.iter().any(|o| self.replaces(o, &m)) {
                continue;
            }
            self.bytes += m.payload.len();
            self.waiting.push_front(m);
        }
        self.bound(stats);
        Stats::add(&stats.outbox_resent, n as u64);
        n
    }

    /// Nothing waits to be handed over (it may still be unacknowledged).
    pub fn handed_all(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Messages not yet acknowledged by the broker, in all three stages.
    pub fn undelivered(&self) -> usize {
        self.waiting.len() + self.handed.len() + self.unacked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, body: &str) -> Outgoing {
        Outgoing::new(topic, body.to_string())
    }

    fn topics(o: &Outbox) -> Vec<String> {
        o.waiting.iter().map(|m| format!("{}={}", m.topic, String::from_utf8_lossy(&m.payload))).collect()
    }

    /// Hand `n` messages over to a client whose queue is then full.
    fn hand(o: &mut Outbox, n: usize) {
        let mut room = n;
        o.hand_over_to(|_| match room {
            0 => Err(TryError::Full),
            _ => {
                room -= 1;
                Ok(())
            }
        });
        assert_eq!(room, 0, "fewer than {n} messages were waiting");
    }

    #[test]
    fn a_lost_session_hands_unacknowledged_and_unwritten_messages_over_again_in_order() {
        let stats = Stats::default();
        let mut o = Outbox::new(1 << 20, 1, ["p/stats".to_string()]);
        for i in 0..6 {
            o.push(msg(&format!("p/c{i}/stylized"), "x"), &stats);
        }
        hand(&mut o, 5);
        o.sent(1);
        o.sent(2);
        o.sent(3);
        o.acked(2);
        // c0 (1) and c2 (3) unacknowledged, c3 and c4 handed but not written, c5 waiting
        assert_eq!(o.undelivered(), 5);
        // a kept session: the client resends them itself
        assert_eq!(o.connected(true, &stats), 0);
        o.sent(3); // the client's resend of pkid 3: not a new message
        assert_eq!(o.handed.len(), 2);
        assert_eq!(o.connected(false, &stats), 4);
        assert_eq!(
            topics(&o),
            ["p/c0/stylized=x", "p/c2/stylized=x", "p/c3/stylized=x", "p/c4/stylized=x", "p/c5/stylized=x"]
        );
        assert_eq!(o.undelivered(), 5);
        assert_eq!(stats.outbox_resent.load(std::sync::atomic::Ordering::Relaxed), 4);
    }

    #[test]
    fn qos_0_messages_are_done_once_written() {
        let stats = Stats::default();
        let mut o = Outbox::new(1 << 20, 0, []);
        o.push(msg("a", "1"), &stats);
        o.push(msg("b", "2"), &stats);
        hand(&mut o, 2);
        o.sent(0);
        assert_eq!(o.undelivered(), 1);
        assert_eq!(o.connected(false, &stats), 1);
        assert_eq!(topics(&o), ["b=2"]);
    }

    #[test]
    fn newer_stats_and_retained_states_win_over_resent_ones() {
        let stats = Stats::default();
        let mut o = Outbox::new(1 << 20, 1, ["p/stats".to_string()]);
        o.push(msg("p/stats", "old"), &stats);
        o.push(msg("p/available", "online").retained(true), &stats);
        o.push(msg("p/cam/stylized", "r"), &stats);
        hand(&mut o, 3);
        o.push(msg("p/stats", "new"), &stats);
        o.push(msg("p/stats", "newer"), &stats);
        o.push(msg("p/available", "stopped").retained(true), &stats);
        assert_eq!(topics(&o), ["p/stats=newer", "p/available=stopped"]);
        assert_eq!(o.connected(false, &stats), 3);
        assert_eq!(topics(&o), ["p/cam/stylized=r", "p/stats=newer", "p/available=stopped"]);
    }

    #[test]
    fn the_byte_bound_drops_the_oldest_and_counts_them() {
        let stats = Stats::default();
        let mut o = Outbox::new(10, 1, []);
        for i in 0..4 {
            o.push(msg(&format!("t{i}"), "abcd"), &stats);
        }
        assert_eq!(topics(&o), ["t2=abcd", "t3=abcd"]);
        assert_eq!(stats.outbox_dropped.load(std::sync::atomic::Ordering::Relaxed), 2);
        hand(&mut o, 2);
        o.push(msg("t4", "abcd"), &stats);
        assert_eq!(o.connected(false, &stats), 2);
        // 12 bytes over a bound of 10: the oldest resent one goes
        assert_eq!(topics(&o), ["t3=abcd", "t4=abcd"]);
    }
}
