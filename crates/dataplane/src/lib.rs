//! tandem-dataplane
