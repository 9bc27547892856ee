//! tandem-esp
