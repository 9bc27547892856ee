//! Batches of packets in one reused buffer for the hot path: `seal_batch` seals every ready packet
//! for one SA with a single sequence-number reservation and a single counter update; `open_batch`
//! loads the SAD snapshot once and updates an SA's counters once per run of its packets.
//!
//! The buffer is `capacity` slots of `slot_size` bytes, contiguous, so the daemon can point
//! `recvmmsg`/`sendmmsg` iovecs (or a GSO send) straight at it. Each slot keeps `headroom` bytes in
//! front of the packet for the ESP header (and outer headers the daemon may add) and the rest as
//! tailroom for ESP padding and ICV.

use crate::error::{DropReason, SealError};
use crate::open::open_uncounted;
use crate::sa::{InboundSa, OutboundSa};
use crate::sad::Sad;
use crate::seal::seal_with_seq;
use std::ops::Range;

/// Headroom that fits an outer IPv6 header, a UDP header and the largest ESP header and IV.
pub const DEFAULT_HEADROOM: usize = 96;

/// What happened to one packet of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketStatus {
    /// Filled in, not yet processed.
    Ready,
    /// Sealed: the range is the ESP packet.
    Sealed,
    /// Opened: the range is the plaintext payload, `next_header` and `spi` are set.
    Opened,
    /// Dropped on receive (counted).
    Dropped(DropReason),
    /// Could not be sealed (counted).
    SealFailed(SealError),
}

/// Where a packet lies in its slot and what happened to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketMeta {
    /// Offsets within the slot.
    pub start: usize,
    pub end: usize,
    /// For seal: the next header to write. After open: the decrypted next header.
    pub next_header: u8,
    /// After open: the SPI (also set for `Dropped(NoSa)`, for INVALID_SPI notifies).
    pub spi: u32,
    /// After seal or open: the full sequence number.
    pub seq: u64,
    pub status: PacketStatus,
}

impl PacketMeta {
    pub fn range(&self) -> Range<usize> {
        self.start..self.end
    }
}

/// See the module documentation.
pub struct PacketBatch {
    buf: Vec<u8>,
    slot_size: usize,
    headroom: usize,
    meta: Vec<PacketMeta>,
    len: usize,
}

impl std::fmt::Debug for PacketBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketBatch").field("len", &self.len).field("slot_size", &self.slot_size).finish()
    }
}

const EMPTY: PacketMeta =
    PacketMeta { start: 0, end: 0, next_header: 0, spi: 0, seq: 0, status: PacketStatus::Ready };

impl PacketBatch {
    /// Allocates `capacity` slots of `slot_size` bytes with `headroom` reserved in front.
    pub fn new(capacity: usize, slot_size: usize, headroom: usize) -> PacketBatch {
        PacketBatch {
            buf: vec![0; capacity * slot_size],
            slot_size,
            headroom: headroom.min(slot_size),
            meta: vec![EMPTY; capacity],
            len: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.meta.len()
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn slot_size(&self) -> usize {
        self.slot_size
    }
    pub fn headroom(&self) -> usize {
        self.headroom
    }

    /// Forgets all packets (the memory stays).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Copies `data` into the next slot after the headroom. `false` when the batch is full or the
    /// packet does not fit.
    pub fn push(&mut self, data: &[u8], next_header: u8) -> bool {
        if self.len == self.capacity() || data.len() > self.slot_size - self.headroom {
            return false;
        }
        let i = self.len;
        let h = self.headroom;
        self.slot_mut(i)[h..h + data.len()].copy_from_slice(data);
        self.set_packet(i, h..h + data.len(), next_header);
        self.len += 1;
        true
    }

    /// The whole buffer (all slots back to back), e.g. for building receive iovecs.
    pub fn buffer_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// Slot `i` (any `i < capacity`), including its headroom.
    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        let s = i * self.slot_size;
        &mut self.buf[s..s + self.slot_size]
    }

    /// Declares that slot `i` holds a ready packet at `range` (offsets within the slot). Ranges beyond
    /// the slot are clamped.
    pub fn set_packet(&mut self, i: usize, range: Range<usize>, next_header: u8) {
        let end = range.end.min(self.slot_size);
        self.meta[i] = PacketMeta { start: range.start.min(end), end, next_header, ..EMPTY };
    }

    /// Sets the number of packets in use (after filling slots with `slot_mut` and `set_packet`).
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.capacity());
    }

    pub fn meta(&self, i: usize) -> &PacketMeta {
        &self.meta[i]
    }

    /// The current bytes of packet `i` (the ESP packet after seal, the payload after open).
    pub fn packet(&self, i: usize) -> &[u8] {
        let m = &self.meta[i];
        &self.buf[i * self.slot_size + m.start..i * self.slot_size + m.end]
    }

    pub fn packet_mut(&mut self, i: usize) -> &mut [u8] {
        let m = self.meta[i];
        &mut self.buf[i * self.slot_size + m.start..i * self.slot_size + m.end]
    }

    /// Packets whose processing succeeded, with their metadata.
    pub fn iter_ok(&self) -> impl Iterator<Item = (&PacketMeta, &[u8])> {
        (0..self.len)
            .filter(|&i| matches!(self.meta[i].status, PacketStatus::Sealed | PacketStatus::Opened))
            .map(|i| (&self.meta[i], self.packet(i)))
    }

    fn split_slot(&mut self, i: usize) -> (&mut [u8], &mut PacketMeta) {
        let s = i * self.slot_size;
        (&mut self.buf[s..s + self.slot_size], &mut self.meta[i])
    }
}

/// Result of [`seal_batch`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SealStats {
    pub sealed: usize,
    pub failed: usize,
    /// Payload bytes sealed.
    pub bytes: u64,
}

/// Seals every `Ready` packet of `batch` for `sa`, in place.
pub fn seal_batch(sa: &OutboundSa, batch: &mut PacketBatch) -> SealStats {
    let mut stats = SealStats::default();
    let ready = (0..batch.len).filter(|&i| batch.meta[i].status == PacketStatus::Ready).count();
    if ready == 0 {
        return stats;
    }
    let first = if sa.hard_usage_reached() {
        crate::counters::bump(&sa.counters().expired_drops, ready as u64);
        Err(SealError::Expired)
    } else {
        sa.seq().reserve(ready as u64).map_err(|e| {
            sa.counters().count_seq_refusal(e, ready as u64);
            SealError::from(e)
        })
    };
    let mut seq = match first {
        Ok(s) => s,
        Err(e) => {
            for m in batch.meta[..batch.len].iter_mut().filter(|m| m.status == PacketStatus::Ready) {
                m.status = PacketStatus::SealFailed(e);
            }
            stats.failed = ready;
            return stats;
        }
    };
    for i in 0..batch.len {
        let (slot, m) = batch.split_slot(i);
        if m.status != PacketStatus::Ready {
            continue;
        }
        let len = (m.end - m.start) as u64;
        match seal_with_seq(sa, seq, slot, m.start..m.end, m.next_header) {
            Ok(r) => {
                *m = PacketMeta {
                    start: r.start,
                    end: r.end,
                    spi: sa.spi(),
                    seq,
                    status: PacketStatus::Sealed,
                    ..*m
                };
                stats.sealed += 1;
                stats.bytes += len;
            }
            Err(e) => {
                m.status = PacketStatus::SealFailed(e);
                stats.failed += 1;
            }
        }
        seq += 1;
    }
    sa.count_use(stats.sealed as u64, stats.bytes);
    crate::counters::bump(&sa.counters().seal_errors, stats.failed as u64);
    stats
}

/// Result of [`open_batch`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenStats {
    pub opened: usize,
    /// Payload bytes opened.
    pub bytes: u64,
    pub dropped: usize,
    pub no_sa: usize,
    pub replay: usize,
    pub auth_failed: usize,
}

/// Opens every `Ready` packet of `batch` (each starting at its SPI) in place.
pub fn open_batch(sad: &Sad, batch: &mut PacketBatch) -> OpenStats {
    let snap = sad.snapshot();
    let global = sad.global();
    let mut stats = OpenStats::default();
    let mut run: Option<(&InboundSa, u64, u64)> = None;
    for i in 0..batch.len {
        let (slot, m) = batch.split_slot(i);
        if m.status != PacketStatus::Ready {
            continue;
        }
        let pkt = &mut slot[m.start..m.end];
        let Some(spi) = crate::esp_packet::peek_spi(pkt) else {
            m.status = PacketStatus::Dropped(DropReason::Malformed);
            global.count_drop(DropReason::Malformed);
            stats.dropped += 1;
            continue;
        };
        m.spi = spi;
        let Some(sa) = snap.inbound(spi) else {
            m.status = PacketStatus::Dropped(DropReason::NoSa(spi));
            global.count_drop(DropReason::NoSa(spi));
            stats.dropped += 1;
            stats.no_sa += 1;
            continue;
        };
        match open_uncounted(sa, pkt) {
            Ok(o) => {
                sad.confirm_received(sa);
                let len = o.payload.len() as u64;
                m.next_header = o.next_header;
                m.seq = o.seq;
                m.end = m.start + o.payload.end;
                m.start += o.payload.start;
                m.status = PacketStatus::Opened;
                stats.opened += 1;
                stats.bytes += len;
                match &mut run {
                    Some((r, p, b)) if std::ptr::eq(*r, sa) => {
                        *p += 1;
                        *b += len;
                    }
                    _ => {
                        if let Some((r, p, b)) = run.replace((sa, 1, len)) {
                            r.count_use(p, b);
                        }
                    }
                }
            }
            Err(reason) => {
                sa.counters().count_drop(reason);
                global.count_drop(reason);
                m.status = PacketStatus::Dropped(reason);
                stats.dropped += 1;
                match reason {
                    DropReason::ReplayOld | DropReason::ReplayDuplicate => stats.replay += 1,
                    DropReason::AuthFailed => stats.auth_failed += 1,
                    _ => {}
                }
            }
        }
    }
    if let Some((r, p, b)) = run {
        r.count_use(p, b);
    }
    stats
}
