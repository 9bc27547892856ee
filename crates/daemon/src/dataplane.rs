//! The seam between the IKE engine and the ESP dataplane. CHILD SA installs and removals from the
//! engine go through this trait; the userspace ESP dataplane plugs in here.

use tandem_ike::ChildSaInstall;
use tracing::info;

pub trait Dataplane: Send {
    fn install(&mut self, sa: &ChildSaInstall);
    fn remove(&mut self, spi_in: u32, spi_out: u32);
}

/// Until the ESP dataplane is wired in: record what would be installed (shown in logs only).
#[derive(Default)]
pub struct RecordOnly {
    pub installed: usize,
}

impl Dataplane for RecordOnly {
    fn install(&mut self, sa: &ChildSaInstall) {
        self.installed += 1;
        info!(target: "esp", vpn = %sa.vpn, spi_in = format_args!("{:#010x}", sa.spi_in),
              spi_out = format_args!("{:#010x}", sa.spi_out), encr = sa.encr.name(), "CHILD SA keys ready (no dataplane yet)");
    }

    fn remove(&mut self, spi_in: u32, spi_out: u32) {
        info!(target: "esp", spi_in = format_args!("{spi_in:#010x}"), spi_out = format_args!("{spi_out:#010x}"), "CHILD SA removed");
    }
}
