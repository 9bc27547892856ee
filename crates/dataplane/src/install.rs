//! From the IKE engine's `ChildSaInstall` to the ESP core's `ChildSaSpec`. Time lifetimes stay with
//! the IKE engine (its timers rekey and delete; counting them here too would rekey twice); byte and
//! packet lifetimes, which only the dataplane can count, become the SA's limits.

use tandem_crypto::Esn;
use tandem_esp::lifetime::LifetimeLimits;
use tandem_esp::sa::{ChildSaSpec, KeyMaterial, Mode};
use tandem_ike::config::IpsecMode;
use tandem_ike::ChildSaInstall;

pub fn spec_from_install(i: &ChildSaInstall) -> ChildSaSpec {
    let l = &i.lifetimes;
    ChildSaSpec {
        name: format!("{}/{}", i.vpn, i.child),
        reqid: i.reqid,
        spi_in: i.spi_in,
        spi_out: i.spi_out,
        encr: i.encr,
        integ: i.integ,
        esn: i.esn == Esn::Yes,
        mode: match i.mode {
            IpsecMode::Tunnel => Mode::Tunnel,
            IpsecMode::Transport => Mode::Transport,
        },
        local: i.local,
        remote: i.remote,
        udp_encap: i.udp_encap,
        replay_window: i.replay_window,
        lifetime: LifetimeLimits {
            soft_bytes: l.rekey_bytes,
            hard_bytes: l.life_bytes,
            soft_packets: l.rekey_packets,
            hard_packets: l.life_packets,
            soft_time: None,
            hard_time: None,
        },
        local_ts: i.local_ts.clone(),
        remote_ts: i.remote_ts.clone(),
        keys_in: KeyMaterial { encr: i.keys_in.encr_key.clone(), integ: i.keys_in.integ_key.clone() },
        keys_out: KeyMaterial { encr: i.keys_out.encr_key.clone(), integ: i.keys_out.integ_key.clone() },
        iv_key: (!i.iv_key.is_empty()).then(|| i.iv_key.clone()),
        replaces_spi_in: i.replaces_spi_in,
        defer_outbound: i.defer_outbound,
    }
}
