//! Capture ESP frames on a veth and send them again, to test anti-replay.
//!
//! A small python3 helper with an AF_PACKET socket runs in the *sending* gateway's namespace on its
//! outer veth end: `capture` records the first N outgoing ESP frames (whole Ethernet frames, ESP in
//! UDP on port 4500 with a non-zero SPI, or raw protocol 50) to a file, one hex line each; `inject`
//! writes chosen frames out of the same interface again, so they arrive at the receiving gateway a
//! second time, exactly as they were, with the same SPI, sequence number and ICV.
//!
//! UDP checksums: veth hands outgoing packets to AF_PACKET with the checksum still to be filled in
//! by "hardware" (CHECKSUM_PARTIAL), so the captured UDP checksum is wrong. IPv4 allows a zero UDP
//! checksum (no checksum), so `inject` zeroes it; IPv6 frames get theirs recomputed.

use crate::netns::Netns;
use std::path::{Path, PathBuf};
use std::time::Duration;

const HELPER: &str = r#"
import socket, struct, sys, os
ETH_P_ALL = 3
PACKET_OUTGOING = 4

def esp_offset(frame):
    # Offset of the ESP header in an Ethernet frame, or None if the frame is not ESP.
    if len(frame) < 14: return None
    et = struct.unpack("!H", frame[12:14])[0]
    if et == 0x0800:
        ihl = (frame[14] & 0x0f) * 4
        proto = frame[23]
        l4 = 14 + ihl
    elif et == 0x86dd:
        proto = frame[20]
        l4 = 54
    else:
        return None
    if proto == 50:
        return l4
    if proto == 17 and len(frame) >= l4 + 16:
        dport = struct.unpack("!H", frame[l4+2:l4+4])[0]
        if dport == 4500 and frame[l4+8:l4+12] != b"\0\0\0\0":
            return l4 + 8
    return None

def csum(data):
    if len(data) % 2: data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff

def fix_udp_checksum(frame):
    f = bytearray(frame)
    et = struct.unpack("!H", f[12:14])[0]
    if et == 0x0800 and f[23] == 17:
        l4 = 14 + (f[14] & 0x0f) * 4
        f[l4+6:l4+8] = b"\0\0"
    elif et == 0x86dd and f[20] == 17:
        l4 = 54
        ulen = struct.unpack("!H", f[l4+4:l4+6])[0]
        f[l4+6:l4+8] = b"\0\0"
        pseudo = bytes(f[22:54]) + struct.pack("!IxxxB", ulen, 17)
        c = csum(pseudo + bytes(f[l4:l4+ulen])) or 0xffff
        f[l4+6:l4+8] = struct.pack("!H", c)
    return bytes(f)

mode, iface, path = sys.argv[1], sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
s.bind((iface, 0))
if mode == "capture":
    count = int(sys.argv[4])
    n = 0
    with open(path + ".tmp", "w") as out:
        open(path + ".ready", "w").close()
        while n < count:
            frame, addr = s.recvfrom(65535)
            if addr[2] != PACKET_OUTGOING: continue
            off = esp_offset(frame)
            if off is None: continue
            spi, seq = struct.unpack("!II", frame[off:off+8])
            out.write("%08x %d %s\n" % (spi, seq, frame.hex()))
            out.flush()
            n += 1
    os.rename(path + ".tmp", path)
elif mode == "inject":
    sent = 0
    for line in open(path):
        frame = bytes.fromhex(line.split()[2])
        s.send(fix_udp_checksum(frame))
        sent += 1
    print(sent)
"#;

/// One captured ESP frame.
#[derive(Debug, Clone)]
pub struct EspFrame {
    pub spi: u32,
    pub seq: u32,
    pub hex: String,
}

/// A running capture of outgoing ESP frames on one interface.
pub struct EspRecorder {
    pid: u32,
    file: PathBuf,
}

/// The helper script, written once per test process.
fn helper_path() -> PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("tandem-replay-helper-{}.py", std::process::id()));
        std::fs::write(&p, HELPER).expect("write replay helper");
        p
    })
    .clone()
}

impl EspRecorder {
    /// Start recording the first `count` ESP frames leaving `iface` of `ns`; returns once the
    /// socket is bound (the helper creates a marker file after binding).
    pub fn start(ns: &mut Netns, iface: &str, count: usize) -> EspRecorder {
        let dir = std::env::temp_dir().join(format!("tandem-replay-{}", ns.name));
        std::fs::create_dir_all(&dir).expect("replay dir");
        let file = dir.join(format!("esp-{}.txt", crate::netns::unique_tag()));
        let mut cmd = ns.command("python3");
        cmd.arg(helper_path()).args(["capture", iface]).arg(&file).arg(count.to_string());
        let pid = ns.spawn(cmd);
        let ready = file.with_extension("txt.ready");
        let up = crate::wait_until(Duration::from_secs(10), Duration::from_millis(20), || ready.exists());
        assert!(up, "replay capture helper did not start");
        EspRecorder { pid, file }
    }

    /// Wait until `count` frames were recorded (the helper renames its output when done).
    pub fn finish(self, ns: &mut Netns, timeout: Duration) -> Vec<EspFrame> {
        let done = crate::wait_until(timeout, Duration::from_millis(20), || self.file.exists());
        ns.stop(self.pid, Duration::from_secs(1));
        assert!(done, "not enough ESP frames captured on the wire");
        read_frames(&self.file)
    }
}

pub fn read_frames(file: &Path) -> Vec<EspFrame> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let spi = u32::from_str_radix(it.next()?, 16).ok()?;
            let seq = it.next()?.parse().ok()?;
            Some(EspFrame { spi, seq, hex: it.next()?.to_string() })
        })
        .collect()
}

/// Send `frames` out of `iface` of `ns` again; returns how many were sent.
pub fn inject(ns: &Netns, iface: &str, frames: &[EspFrame]) -> usize {
    let dir = std::env::temp_dir().join(format!("tandem-replay-{}", ns.name));
    std::fs::create_dir_all(&dir).expect("replay dir");
    let file = dir.join(format!("inject-{}.txt", crate::netns::unique_tag()));
    let text: String = frames.iter().map(|f| format!("{:08x} {} {}\n", f.spi, f.seq, f.hex)).collect();
    std::fs::write(&file, text).expect("write frames");
    let helper = helper_path();
    let out = ns.exec("python3", &[helper.to_str().unwrap(), "inject", iface, file.to_str().unwrap()]);
    assert!(out.status.success(), "inject: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}
