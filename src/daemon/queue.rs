//! Frames waiting for a worker: one slot per camera, the newest frame wins. Memory is bounded by the number of
//! cameras × the payload limit, whatever the input rate.

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

#[derive(Default)]
struct State {
    slots: HashMap<String, Frame>,
    /// Cameras with a waiting frame, in arrival order of their oldest pending frame.
    order: VecDeque<String>,
    /// Cameras being processed right now (a camera is never processed by two workers at once).
    busy: Vec<String>,
    closed: bool,
}

#[derive(Default)]
pub struct FrameQueue {
    state: Mutex<State>,
    ready: Condvar,
}

impl FrameQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queue a frame; returns the frame it replaced (dropped), if any. Frames are refused (returned) once closed.
    pub fn push(&self, frame: Frame) -> Result<Option<Frame>, Frame> {
        let mut s = self.state.lock().unwrap();
        if s.closed {
            return Err(frame);
        }
        let cam = frame.camera.clone();
        let old = s.slots.insert(cam.clone(), frame);
        if old.is_none() {
            s.order.push_back(cam);
        }
        drop(s);
        self.ready.notify_one();
        Ok(old)
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

    /// Stop handing out frames; returns the frames still waiting (so they can be answered).
    pub fn close(&self) -> Vec<Frame> {
        let mut s = self.state.lock().unwrap();
        s.closed = true;
        s.order.clear();
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
        let q = FrameQueue::new();
        assert!(q.push(frame("a", 1)).unwrap().is_none());
        assert!(q.push(frame("b", 2)).unwrap().is_none());
        assert_eq!(q.push(frame("a", 3)).unwrap().unwrap().seq, 1);
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
        let q = std::sync::Arc::new(FrameQueue::new());
        let q2 = q.clone();
        let t = std::thread::spawn(move || q2.pop(Duration::from_secs(5)).map(|f| f.seq));
        std::thread::sleep(Duration::from_millis(50));
        q.push(frame("x", 9)).unwrap();
        assert_eq!(t.join().unwrap(), Some(9));
    }
}
