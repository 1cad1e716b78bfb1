//! Frames waiting for a worker: one slot per camera, the newest frame wins, and a global bound on the frames
//! and bytes waiting (the oldest waiting frame of another camera is evicted), so memory is bounded whatever the
//! input rate and however many camera names arrive.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Where a request-style frame (MQTT v5 response topic) wants its answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub topic: String,
    pub correlation: Option<Bytes>,
}

#[derive(Debug, Clone)]
pub struct Frame {
    pub camera: String,
    pub seq: u64,
    pub payload: Bytes,
    pub topic: String,
    pub received: Instant,
    pub reply: Option<Reply>,
}

/// What a push displaced.
#[derive(Debug, Default)]
pub struct Pushed {
    /// The same camera's earlier frame, replaced by the new one.
    pub replaced: Option<Frame>,
    /// Other cameras' oldest frames, evicted to keep within the global bound.
    pub evicted: Vec<Frame>,
}

#[derive(Default)]
struct State {
    slots: HashMap<String, Frame>,
    /// Cameras with a waiting frame, in arrival order of their oldest pending frame.
    order: VecDeque<String>,
    /// Cameras being processed right now (a camera is never processed by two workers at once).
    busy: Vec<String>,
    closed: bool,
    bytes: usize,
}

pub struct FrameQueue {
    state: Mutex<State>,
    ready: Condvar,
    max_frames: usize,
    max_bytes: usize,
}

impl Default for FrameQueue {
    fn default() -> Self {
        FrameQueue::new(usize::MAX, usize::MAX)
    }
}

impl FrameQueue {
    /// A queue holding at most `max_frames` frames and `max_bytes` payload bytes (at least one frame is always
    /// accepted, whatever its size).
    pub fn new(max_frames: usize, max_bytes: usize) -> Self {
        FrameQueue { state: Mutex::default(), ready: Condvar::new(), max_frames: max_frames.max(1), max_bytes }
    }

    /// Queue a frame; returns what it displaced. Frames are refused (returned) once closed.
    pub fn push(&self, frame: Frame) -> Result<Pushed, Box<Frame>> {
        let mut s = self.state.lock().unwrap();
        if s.closed {
            return Err(Box::new(frame));
        }
        let cam = frame.camera.clone();
        s.bytes += frame.payload.len();
        let replaced = s.slots.insert(cam.clone(), frame);
        match &replaced {
            Some(old) => s.bytes -= old.payload.len(),
            None => s.order.push_back(cam.clone()),
        }
        let mut evicted = Vec::new();
        while s.slots.len() > self.max_frames || (s.bytes > self.max_bytes && s.slots.len() > 1) {
            // the camera waiting longest, never the frame just queued
            let Some(pos) = s.order.iter().position(|c| *c != cam) else { break };
            let victim = s.order.remove(pos).unwrap();
            let f = s.slots.remove(&victim).expect("ordered camera has a slot");
            s.bytes -= f.payload.len();
            evicted.push(f);
        }
        drop(s);
        self.ready.notify_one();
        Ok(Pushed { replaced, evicted })
    }

    /// The next frame of a camera that is not being processed, waiting up to `timeout`. None on timeout or when
    /// closed. The camera stays busy until `done` is called.
    pub fn pop(&self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        let mut s = self.state.lock().unwrap();
        loop {
            if s.closed {
                return None;
            }
            if let Some(pos) = s.order.iter().position(|c| !s.busy.contains(c)) {
                let cam = s.order.remove(pos).unwrap();
                let f = s.slots.remove(&cam).expect("ordered camera has a slot");
                s.bytes -= f.payload.len();
                s.busy.push(cam);
                return Some(f);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            s = self.ready.wait_timeout(s, deadline - now).unwrap().0;
        }
    }

    pub fn done(&self, camera: &str) {
        let mut s = self.state.lock().unwrap();
        s.busy.retain(|c| c != camera);
        drop(s);
        self.ready.notify_all();
    }

    pub fn depth(&self) -> usize {
        self.state.lock().unwrap().slots.len()
    }

    /// Payload bytes waiting.
    pub fn bytes(&self) -> usize {
        self.state.lock().unwrap().bytes
    }

    /// Stop handing out frames; returns the frames still waiting (so they can be answered).
    pub fn close(&self) -> Vec<Frame> {
        let mut s = self.state.lock().unwrap();
        s.closed = true;
        s.order.clear();
        s.bytes = 0;
        let left = s.slots.drain().map(|(_, f)| f).collect();
        drop(s);
        self.ready.notify_all();
        left
    }

    pub fn is_closed(&self) -> bool {
        self.state.lock().unwrap().closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(cam: &str, seq: u64) -> Frame {
        Frame {
            camera: cam.into(),
            seq,
            payload: Bytes::from(vec![0u8; 10]),
            topic: String::new(),
            received: Instant::now(),
            reply: None,
        }
    }

    #[test]
    fn newest_frame_wins_per_camera_and_cameras_take_turns() {
        let q = FrameQueue::default();
        assert!(q.push(frame("a", 1)).unwrap().replaced.is_none());
        assert!(q.push(frame("b", 2)).unwrap().replaced.is_none());
        assert_eq!(q.push(frame("a", 3)).unwrap().replaced.unwrap().seq, 1);
        assert_eq!(q.depth(), 2);
        let f = q.pop(Duration::ZERO).unwrap();
        assert_eq!((f.camera.as_str(), f.seq), ("a", 3));
        // a is busy: a new frame of a waits, b comes first
        q.push(frame("a", 4)).unwrap();
        assert_eq!(q.pop(Duration::ZERO).unwrap().camera, "b");
        assert!(q.pop(Duration::from_millis(10)).is_none());
        q.done("a");
        assert_eq!(q.pop(Duration::ZERO).unwrap().seq, 4);
        q.push(frame("c", 5)).unwrap();
        assert_eq!(q.close().len(), 1);
        assert!(q.pop(Duration::ZERO).is_none());
        assert!(q.push(frame("c", 6)).is_err());
    }

    #[test]
    fn pop_wakes_on_push() {
        let q = std::sync::Arc::new(FrameQueue::default());
        let q2 = q.clone();
        let t = std::thread::spawn(move || q2.pop(Duration::from_secs(5)).map(|f| f.seq));
        std::thread::sleep(Duration::from_millis(50));
        q.push(frame("x", 9)).unwrap();
        assert_eq!(t.join().unwrap(), Some(9));
    }

    #[test]
    fn global_bound_evicts_the_oldest_other_camera() {
        // 3 frames of 10 bytes at most, 25 bytes at most
        let q = FrameQueue::new(3, 25);
        for (i, cam) in ["a", "b"].iter().enumerate() {
            assert!(q.push(frame(cam, i as u64)).unwrap().evicted.is_empty());
        }
        // a third camera: 30 bytes > 25, the oldest (a) goes
        let p = q.push(frame("c", 2)).unwrap();
        assert_eq!(p.evicted.iter().map(|f| f.camera.as_str()).collect::<Vec<_>>(), ["a"]);
        assert_eq!((q.depth(), q.bytes()), (2, 20));
        // a newer frame of b replaces b's and evicts nobody
        let p = q.push(frame("b", 3)).unwrap();
        assert!(p.evicted.is_empty() && p.replaced.unwrap().seq == 1);
        // many new cameras: never more than the bound, the newest always kept
        for i in 0..100 {
            let p = q.push(frame(&format!("n{i}"), 10 + i)).unwrap();
            assert!(p.evicted.iter().all(|f| f.camera != format!("n{i}")));
            assert!(q.depth() <= 3 && q.bytes() <= 25);
        }
        let f = q.pop(Duration::ZERO).unwrap();
        assert_eq!(f.camera, "n98", "the oldest waiting frame is served first");
        assert_eq!(q.bytes(), 10);
        // one frame larger than the byte bound is still accepted
        let q = FrameQueue::new(3, 5);
        assert!(q.push(frame("big", 1)).unwrap().evicted.is_empty());
        assert_eq!(q.depth(), 1);
    }
}
