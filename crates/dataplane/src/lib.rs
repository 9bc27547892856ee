//! tandem's userspace ESP dataplane: the I/O edge and the packet pipeline around the ESP core
//! (`tandem-esp`).
//!
//! ```text
//!  outbound worker:  TUN ──read batch──▶ parse ─▶ SPD ─▶ seal ─▶ UDP 4500 (GSO) / raw ESP (sendmmsg)
//!  inbound worker:   UDP 4500 (GRO) / raw ESP ──▶ demux (IKE │ keepalive │ ESP) ─▶ open ─▶ TUN (GRO)
//! ```
//! The two directions run on one worker thread or on two (`WorkerLayout`); batches everywhere,
//! buffers reused, SAD/SPD read without locks. The
//! control plane (the daemon) holds a [`DataplaneHandle`] to install SAs and policies and reads
//! [`DataplaneEvent`]s (IKE datagrams from port 4500, Acquires, unknown SPIs, lifetimes).

pub mod acquire;
pub mod config;
pub mod counters;
pub mod demux;
mod egress;
pub mod events;
mod handle;
mod inbound;
pub mod install;
pub mod keepalive;
mod outbound;
mod policy;
mod raw;
mod shared;
mod sys;
mod timer;
mod tun;
mod udp;
pub mod worker;

pub use config::{DataplaneConfig, TunConfig, DEFAULT_TUN_MTU};
pub use counters::CountersSnapshot;
pub use events::{DataplaneEvent, EventReceiver};
pub use handle::{DataplaneError, DataplaneHandle, InterfaceInfo};
/// The ESP core types the handle's API uses.
pub use tandem_esp;
pub use worker::WorkerLayout;
