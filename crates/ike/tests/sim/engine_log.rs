//! The engine's `tracing` output of one call, captured as lines for the simulation trace: a failing
//! seed then shows what each endpoint decided ("simultaneous IKE SA rekey: ours wins") between the
//! datagrams it exchanged, in simulated time.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tracing_subscriber::fmt::MakeWriter;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buffer {
    type Writer = Buffer;
    fn make_writer(&'a self) -> Buffer {
        self.clone()
    }
}

/// Capture is off by default (formatting every log line makes a thousand-seed run several
/// times slower); a replayed seed turns it on, and so does `TANDEM_SIM_SEED`.
static ENABLED: AtomicBool = AtomicBool::new(false);

pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed) || std::env::var_os("TANDEM_SIM_SEED").is_some()
}

/// Run `f` with info-level engine logs going to a buffer; return them one line per event.
pub fn capture(f: impl FnOnce()) -> Vec<String> {
    if !enabled() {
        f();
        return Vec::new();
    }
    let buf = Buffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(buf.clone())
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .with_level(false)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = std::mem::take(&mut *buf.0.lock().expect("log buffer"));
    String::from_utf8_lossy(&bytes).lines().map(str::to_owned).collect()
}
