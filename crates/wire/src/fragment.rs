//! Reassembly of IKE message fragments (RFC 7383 section 2.6). Sans-IO and bounded: hostile peers can
//! not make it hold more than `max_fragments` fragments or `max_bytes` bytes per message.

use crate::payload::EncryptedFragment;

/// Collects the SKF payloads of one message (one Message ID of one IKE SA).
#[derive(Debug, Clone)]
pub struct FragmentReassembler {
    message_id: Option<u32>,
    total: u16,
    fragments: Vec<Option<EncryptedFragment>>,
    bytes: usize,
    max_fragments: u16,
    max_bytes: usize,
}

/// What adding a fragment did.
#[derive(Debug, PartialEq, Eq)]
pub enum FragmentOutcome {
    /// Stored; more are needed.
    Pending,
    /// Already had it, or it belongs to an older message: ignored.
    Ignored,
    /// Over the limits or inconsistent with earlier fragments: the message is dropped.
    Rejected,
    /// All fragments are in, ordered by fragment number.
    Complete(Vec<EncryptedFragment>),
}

impl Default for FragmentReassembler {
    /// At most 64 fragments and 64 KiB per message.
    fn default() -> Self {
        FragmentReassembler::new(64, 64 * 1024)
    }
}

impl FragmentReassembler {
    pub fn new(max_fragments: u16, max_bytes: usize) -> Self {
        FragmentReassembler {
            message_id: None,
            total: 0,
            fragments: Vec::new(),
            bytes: 0,
            max_fragments,
            max_bytes,
        }
    }

    /// Add one (already authenticated) fragment of message `message_id`.
    pub fn add(&mut self, message_id: u32, frag: EncryptedFragment) -> FragmentOutcome {
        if frag.total_fragments == 0 || frag.total_fragments > self.max_fragments || frag.fragment_number == 0
        {
            return FragmentOutcome::Rejected;
        }
        match self.message_id {
            Some(id) if id == message_id => {
                if frag.total_fragments > self.total {
                    // RFC 7383 2.6: a higher total means the sender re-fragmented; start over.
                    self.reset(message_id, frag.total_fragments);
                } else if frag.total_fragments < self.total {
                    return FragmentOutcome::Ignored;
                }
            }
            Some(id) if message_id < id => return FragmentOutcome::Ignored,
            _ => self.reset(message_id, frag.total_fragments),
        }
        let idx = (frag.fragment_number - 1) as usize;
        if idx >= self.fragments.len() {
            return FragmentOutcome::Rejected;
        }
        if self.fragments[idx].is_some() {
            return FragmentOutcome::Ignored;
        }
        self.bytes += frag.body.len();
        if self.bytes > self.max_bytes {
            self.message_id = None;
            self.fragments.clear();
            return FragmentOutcome::Rejected;
        }
        self.fragments[idx] = Some(frag);
        if self.fragments.iter().all(Option::is_some) {
            let done = std::mem::take(&mut self.fragments).into_iter().flatten().collect();
            self.message_id = None;
            self.bytes = 0;
            return FragmentOutcome::Complete(done);
        }
        FragmentOutcome::Pending
    }

    fn reset(&mut self, message_id: u32, total: u16) {
        self.message_id = Some(message_id);
        self.total = total;
        self.fragments = vec![None; total as usize];
        self.bytes = 0;
    }
}
