//! tandem-config
