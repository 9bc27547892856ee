//! tandem-wire: IKEv2 and ESP codecs. Typed parse and emit over bytes; no I/O, no crypto.

pub mod ts;

pub use ts::TrafficSelector;
