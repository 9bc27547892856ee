//! Worker threads and the stages they run. A stage (outbound: TUN → wire; inbound: wire → TUN)
//! owns its buffers and names the descriptors it waits on; a worker polls the descriptors of all
//! its stages at once and lets each serve what became readable.
//!
//! Why the layout is a setting: with few cores shared with other work (two gateways and their
//! hosts on one small machine, a VM with 2 vCPUs), one thread per direction spends more on
//! wake-ups and context switches than it gains; one worker running both stages keeps the ACKs of
//! a TCP stream on the thread already awake for its data. With cores to spare, two workers let
//! the directions run in parallel.

use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::shared::Shared;
use crate::sys::PollSet;

/// How often an idle worker looks at timers and the shutdown flag.
const IDLE_POLL_MS: i32 = 200;

/// One direction of the packet path, run by a worker.
pub trait Stage: Send {
    /// Pick up control-plane changes (e.g. a new interface). True when `fds` changed.
    fn refresh(&mut self) -> bool;
    /// The descriptors to wait on, in a fixed order that `serve`'s `ready` indexes.
    fn fds(&self) -> Vec<RawFd>;
    /// Process what is queued on the descriptors `ready(i)` reports, plus any due housekeeping.
    fn serve(&mut self, now: Instant, ready: &dyn Fn(usize) -> bool);
}

/// How the stages are spread over threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerLayout {
    /// One thread runs both directions.
    Combined,
    /// One thread per direction.
    Split,
    /// `Split` when the machine has more than two CPUs, else `Combined`.
    Auto,
}

impl WorkerLayout {
    /// The layout to use on this machine.
    pub fn resolve(self) -> WorkerLayout {
        match self {
            WorkerLayout::Auto => {
                let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
                if cpus > 2 {
                    WorkerLayout::Split
                } else {
                    WorkerLayout::Combined
                }
            }
            l => l,
        }
    }
}

/// Run `stages` until shutdown.
pub fn run(shared: Arc<Shared>, mut stages: Vec<Box<dyn Stage>>) {
    let mut poll = PollSet::new(&[]);
    let mut offsets = Vec::new();
    let mut rebuild = true;
    while !shared.stopping() {
        for s in &mut stages {
            rebuild |= s.refresh();
        }
        if rebuild {
            rebuild = false;
            let mut fds = Vec::new();
            offsets.clear();
            for s in &stages {
                offsets.push(fds.len());
                fds.extend(s.fds());
            }
            poll = PollSet::new(&fds);
        }
        if let Err(e) = poll.wait(IDLE_POLL_MS) {
            tracing::warn!(target: "dataplane", "worker poll: {e}");
            std::thread::sleep(Duration::from_millis(10));
        }
        if shared.stopping() {
            break;
        }
        let now = Instant::now();
        shared.sad.clock().set(now);
        for (s, &off) in stages.iter_mut().zip(&offsets) {
            s.serve(now, &|i| poll.ready(off + i));
        }
    }
}
