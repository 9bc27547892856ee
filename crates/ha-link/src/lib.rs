//! tandem-ha-link: the sync channel between the two nodes of an HA pair.
//!
//! This first part is the node identity: [`keygen`] makes a self-signed certificate and key,
//! [`NodeKey`] stores them in one PEM file (mode 0600), and [`Pin`] (SHA-256 of the certificate's
//! SubjectPublicKeyInfo) is what the peer's operator configures to trust it.
#![forbid(unsafe_code)]

mod key;

pub use key::{keygen, KeyError, NodeKey, Pin};
