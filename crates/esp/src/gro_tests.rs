//! Tests of the userspace GRO: frame layout checked field by field, and a property test that
//! splits every frame back the way the kernel does and compares each flow's packets with the input.

use super::*;
use crate::csum::Sum;
use proptest::prelude::*;

const A: [u8; 4] = [10, 0, 0, 1];
const B: [u8; 4] = [10, 0, 0, 2];

/// An IPv4 TCP segment with valid checksums.
fn tcp4(sport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((40 + payload.len()) as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&A);
    p[16..20].copy_from_slice(&B);
    let c = Sum::default().add_bytes(&p[..20]).checksum_bytes();
    p[10..12].copy_from_slice(&c);
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&5201u16.to_be_bytes());
    p[24..28].copy_from_slice(&seq.to_be_bytes());
    p[28..32].copy_from_slice(&7u32.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = flags;
    p[34..36].copy_from_slice(&512u16.to_be_bytes());
    p.extend_from_slice(payload);
    fix_l4(&mut p, 20, 6, false);
    p
}

/// An IPv6 UDP or TCP packet with a valid checksum.
fn ip6(proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
    p[6] = proto;
    p[7] = 64;
    p[23] = 1;
    p[39] = 2;
    p.extend_from_slice(l4);
    fix_l4(&mut p, 40, proto, true);
    p
}

fn udp_l4(payload: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&4000u16.to_be_bytes());
    u[2..4].copy_from_slice(&4001u16.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(payload);
    u
}

fn fix_l4(p: &mut [u8], iph: usize, proto: u8, v6: bool) {
    let at = iph + if proto == 6 { 16 } else { 6 };
    p[at..at + 2].copy_from_slice(&[0, 0]);
    let len = (p.len() - iph) as u16;
    let c = pseudo_header(p, v6, proto, len).add_bytes(&p[iph..]).checksum_bytes();
    p[at..at + 2].copy_from_slice(&c);
}

fn frames(c: &mut Coalescer) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    c.drain(|f, _| out.push(f.to_vec()));
    out
}

struct VnetHdr {
    flags: u8,
    gso_type: u8,
    hdr_len: usize,
    gso_size: usize,
    csum_start: usize,
    csum_offset: usize,
}

fn vnet(f: &[u8]) -> VnetHdr {
    let u = |i: usize| usize::from(u16::from_le_bytes([f[i], f[i + 1]]));
    VnetHdr {
        flags: f[0],
        gso_type: f[1],
        hdr_len: u(2),
        gso_size: u(4),
        csum_start: u(6),
        csum_offset: u(8),
    }
}

/// What the kernel does with a frame: a GSO frame is cut into `gso_size` pieces, each with the
/// headers of the first, its own lengths, sequence number and checksums; PSH only on the last.
fn split(frame: &[u8]) -> Vec<Vec<u8>> {
    let h = vnet(frame);
    let pkt = &frame[HDR..];
    if h.gso_type == 0 {
        assert_eq!(h.flags, 0);
        return vec![pkt.to_vec()];
    }
    assert_eq!(h.flags, VIRTIO_NET_HDR_F_NEEDS_CSUM);
    let v6 = pkt[0] >> 4 == 6;
    let iph = h.csum_start;
    let proto = 6;
    // The partial checksum the kernel will complete is the pseudo-header sum over the full length.
    let at = iph + h.csum_offset;
    let expect = pseudo_header(pkt, v6, proto, (pkt.len() - iph) as u16).folded_bytes();
    assert_eq!(pkt[at..at + 2], expect, "pseudo-header checksum in the frame");
    if !v6 {
        assert!(Sum::default().add_bytes(&pkt[..20]).is_valid(), "IPv4 header checksum of the frame");
        assert_eq!(usize::from(u16::from_be_bytes([pkt[2], pkt[3]])), pkt.len());
    }
    let data = &pkt[h.hdr_len..];
    let chunks: Vec<&[u8]> = data.chunks(h.gso_size).collect();
    let mut seq = u32::from_be_bytes([pkt[iph + 4], pkt[iph + 5], pkt[iph + 6], pkt[iph + 7]]);
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let mut p = pkt[..h.hdr_len].to_vec();
        p.extend_from_slice(c);
        let l4_len = (p.len() - iph) as u16;
        if v6 {
            p[4..6].copy_from_slice(&l4_len.to_be_bytes());
        } else {
            let total = p.len() as u16;
            p[2..4].copy_from_slice(&total.to_be_bytes());
            p[10..12].copy_from_slice(&[0, 0]);
            let s = Sum::default().add_bytes(&p[..20]).checksum_bytes();
            p[10..12].copy_from_slice(&s);
        }
        p[iph + 4..iph + 8].copy_from_slice(&seq.to_be_bytes());
        seq = seq.wrapping_add(c.len() as u32);
        if i + 1 < chunks.len() {
            p[iph + 13] &= !TCP_PSH;
        }
        fix_l4(&mut p, iph, proto, v6);
        out.push(p);
    }
    out
}

#[test]
fn consecutive_tcp_segments_become_one_gso_frame() {
    let mut c = Coalescer::new(8, true);
    let mut seq = 1000;
    let mut inputs = Vec::new();
    for i in 0..10u8 {
        let p = tcp4(40000, seq, TCP_ACK, &[i; 1000]);
        seq += 1000;
        assert!(c.push(&p));
        inputs.push(p);
    }
    assert_eq!(c.packets(), 10);
    let out = frames(&mut c);
    assert_eq!(out.len(), 1);
    let h = vnet(&out[0]);
    assert_eq!(
        (h.flags, h.gso_type, h.hdr_len, h.gso_size, h.csum_start, h.csum_offset),
        (1, GSO_TCPV4, 40, 1000, 20, 16)
    );
    assert_eq!(out[0].len(), HDR + 40 + 10_000);
    assert_eq!(split(&out[0]), inputs, "the kernel's split gives back the segments exactly");
    assert!(c.is_empty());
}

#[test]
fn barriers_gaps_psh_and_short_segments_end_frames_in_order() {
    let mut c = Coalescer::new(16, true);
    let pkts = [
        tcp4(1, 0, TCP_ACK, &[1; 100]),
        tcp4(1, 100, TCP_ACK, &[2; 100]),
        tcp4(1, 200, TCP_ACK, &[]),                // pure ACK: a barrier
        tcp4(1, 200, TCP_ACK, &[3; 100]),          // new frame after the barrier
        tcp4(1, 400, TCP_ACK, &[4; 100]),          // gap: new frame
        tcp4(1, 500, TCP_ACK | TCP_PSH, &[5; 50]), // short and PSH: merges, then ends the frame
        tcp4(1, 550, TCP_ACK, &[6; 50]),           // new frame
        tcp4(1, 600, TCP_ACK | 0x01, &[7; 10]),    // FIN: a barrier
    ];
    for p in &pkts {
        assert!(c.push(p));
    }
    let out = frames(&mut c);
    let segs: Vec<usize> = out.iter().map(|f| split(f).len()).collect();
    assert_eq!(segs, [2, 1, 1, 2, 1, 1]);
    let back: Vec<Vec<u8>> = out.iter().flat_map(|f| split(f)).collect();
    assert_eq!(back, pkts.to_vec());
    assert_eq!(vnet(&out[3]).gso_type, GSO_TCPV4);
    assert_eq!(out[3][HDR + 33] & TCP_PSH, TCP_PSH, "the frame keeps the PSH of its last segment");
}

#[test]
fn interleaved_flows_each_get_their_frame() {
    let mut c = Coalescer::new(8, true);
    for i in 0..4u32 {
        assert!(c.push(&tcp4(1, i * 100, TCP_ACK, &[1; 100])));
        assert!(c.push(&tcp4(2, i * 100, TCP_ACK, &[2; 100])));
    }
    let out = frames(&mut c);
    assert_eq!(out.iter().map(|f| split(f).len()).collect::<Vec<_>>(), [4, 4]);
}

#[test]
fn a_segment_with_a_bad_checksum_is_written_alone_unchanged() {
    let mut c = Coalescer::new(8, true);
    let good1 = tcp4(1, 0, TCP_ACK, &[1; 100]);
    let mut bad = tcp4(1, 100, TCP_ACK, &[2; 100]);
    bad[70] ^= 0x40;
    let good3 = tcp4(1, 200, TCP_ACK, &[3; 100]);
    let good4 = tcp4(1, 300, TCP_ACK, &[4; 100]);
    for p in [&good1, &bad, &good3, &good4] {
        assert!(c.push(p));
    }
    let out = frames(&mut c);
    assert_eq!(out.len(), 3, "good1 | bad | good3+good4");
    assert_eq!(&out[1][HDR..], &bad[..], "passed to the kernel as it came, for it to drop");
    assert_eq!(vnet(&out[1]).gso_type, 0);
    assert_eq!(split(&out[2]), vec![good3, good4]);
}

#[test]
fn udp_is_written_as_it_came() {
    let pkts: Vec<Vec<u8>> = (0..4u8).map(|i| ip6(17, &udp_l4(&[i; 300]))).collect();
    let mut c = Coalescer::new(8, true);
    pkts.iter().for_each(|p| assert!(c.push(p)));
    let out = frames(&mut c);
    assert_eq!(out.iter().map(|f| f[HDR..].to_vec()).collect::<Vec<_>>(), pkts);
    assert!(out.iter().all(|f| f[..HDR] == [0; HDR]));
}

#[test]
fn ipv6_tcp_and_plain_tun_without_header() {
    let seg = |seq: u32| {
        let mut t = vec![0u8; 20];
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = TCP_ACK;
        t.extend_from_slice(&[9; 200]);
        ip6(6, &t)
    };
    let pkts = vec![seg(0), seg(200), seg(400)];
    let mut c = Coalescer::new(8, true);
    pkts.iter().for_each(|p| assert!(c.push(p)));
    let out = frames(&mut c);
    assert_eq!((out.len(), vnet(&out[0]).gso_type), (1, GSO_TCPV6));
    assert_eq!(split(&out[0]), pkts);

    let mut c = Coalescer::new(8, false);
    pkts.iter().for_each(|p| assert!(c.push(p)));
    assert_eq!(frames(&mut c), pkts, "no virtio-net header, nothing merged");
}

#[test]
fn full_batches_refuse_and_oversized_frames_split() {
    let mut c = Coalescer::new(2, true);
    assert!(c.push(&[0x45; 20]) && c.push(&[0x45; 20]));
    assert!(c.is_full() && !c.push(&[0x45; 20]));
    frames(&mut c);
    // 70 segments of 1000 bytes cannot fit one 64 KiB frame.
    let mut c = Coalescer::new(4, true);
    for i in 0..70u32 {
        assert!(c.push(&tcp4(1, i * 1000, TCP_ACK, &[1; 1000])));
    }
    let out = frames(&mut c);
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|f| f.len() - HDR <= MAX_IP));
    assert_eq!(out.iter().map(|f| split(f).len()).sum::<usize>(), 70);
}

/// One input packet of the property test: flow, payload size, flags, corrupted or not.
fn arb_packet() -> impl Strategy<Value = (u16, usize, u8, bool, bool)> {
    (
        1u16..4,
        prop_oneof![Just(1200usize), Just(1200), Just(1200), 0usize..1300],
        prop_oneof![Just(TCP_ACK), Just(TCP_ACK), Just(TCP_ACK | TCP_PSH), Just(TCP_ACK | 0x01)],
        proptest::bool::weighted(0.05),
        proptest::bool::weighted(0.05),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Whatever the mix, splitting the frames gives back every packet of each flow in its order,
    /// and a packet with a bad checksum is never merged.
    #[test]
    fn splitting_the_frames_gives_back_every_flow_in_order(
        input in proptest::collection::vec(arb_packet(), 1..200),
        capacity in 1usize..64,
    ) {
        let mut seqs = [0u32; 4];
        let mut c = Coalescer::new(capacity, true);
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut sent: Vec<Vec<u8>> = Vec::new();
        for (flow, len, flags, corrupt, gap) in input {
            let s = &mut seqs[usize::from(flow)];
            if gap {
                *s = s.wrapping_add(7);
            }
            let mut p = tcp4(flow, *s, flags, &vec![flow as u8; len]);
            *s = s.wrapping_add(len as u32);
            if corrupt && len > 0 {
                p[40] ^= 0x10;
            }
            if c.is_full() {
                c.drain(|f, _| out.push(f.to_vec()));
            }
            prop_assert!(c.push(&p));
            sent.push(p);
        }
        c.drain(|f, _| out.push(f.to_vec()));
        let mut back = Vec::new();
        for f in &out {
            let pieces = split(f);
            if pieces.len() > 1 {
                for p in &pieces {
                    prop_assert!(sent.contains(p), "a merged packet was not sent as such (bad checksum merged?)");
                }
            }
            back.extend(pieces);
        }
        for flow in 1..4u8 {
            let of = |v: &Vec<Vec<u8>>| v.iter().filter(|p| p[21] == flow).cloned().collect::<Vec<_>>();
            prop_assert_eq!(of(&back), of(&sent));
        }
        prop_assert_eq!(back.len(), sent.len());
    }
}
