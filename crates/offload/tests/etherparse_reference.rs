//! Property tests against an independent implementation: frames are built
//! and checked with `etherparse`.

use std::ops::ControlFlow;

use etherparse::{
    NetHeaders, PacketBuilder, PacketBuilderStep, PacketHeaders, TcpOptionElement, TransportHeader, VlanId,
};
use proptest::prelude::*;
use vfnic_offload::csum::{l4_checksum, verify_l4_checksum};
use vfnic_offload::{complete_csum, segment, Csum, Gro, GroConfig, GroCsum, Layout, Segmenter, VirtioNetHdr};

const SRC4: [u8; 4] = [192, 168, 1, 10];
const DST4: [u8; 4] = [10, 20, 30, 40];
const SRC6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const DST6: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0];

#[derive(Debug, Clone)]
struct Spec {
    v6: bool,
    vlan: bool,
    seq: u32,
    psh: bool,
    fin: bool,
    cwr: bool,
    timestamps: bool,
    payload: Vec<u8>,
}

fn ip_step(v6: bool, vlan: bool) -> PacketBuilderStep<etherparse::IpHeaders> {
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    match (vlan, v6) {
        (false, false) => eth.ipv4(SRC4, DST4, 64),
        (false, true) => eth.ipv6(SRC6, DST6, 64),
        (true, false) => eth.single_vlan(VlanId::try_new(42).unwrap()).ipv4(SRC4, DST4, 64),
        (true, true) => eth.single_vlan(VlanId::try_new(42).unwrap()).ipv6(SRC6, DST6, 64),
    }
}

fn build_tcp(s: &Spec) -> Vec<u8> {
    let mut b = ip_step(s.v6, s.vlan).tcp(40000, 443, s.seq, 5000).ack(0x0102_0304);
    if s.psh {
        b = b.psh();
    }
    if s.fin {
        b = b.fin();
    }
    if s.cwr {
        b = b.cwr();
    }
    if s.timestamps {
        b = b.options(&[TcpOptionElement::Noop, TcpOptionElement::Noop, TcpOptionElement::Timestamp(7, 9)]).unwrap();
    }
    let mut v = Vec::with_capacity(b.size(s.payload.len()));
    b.write(&mut v, &s.payload).unwrap();
    v
}

fn build_udp(v6: bool, vlan: bool, payload: &[u8]) -> Vec<u8> {
    let b = ip_step(v6, vlan).udp(5353, 4789);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).unwrap();
    v
}

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8).collect()
}

fn spec(max_payload: usize) -> impl Strategy<Value = Spec> {
    (any::<bool>(), any::<bool>(), any::<u32>(), any::<[bool; 4]>(), 0..max_payload, any::<u8>()).prop_map(
        |(v6, vlan, seq, [psh, fin, cwr, timestamps], len, seed)| Spec {
            v6,
            vlan,
            seq,
            psh,
            fin,
            cwr,
            timestamps,
            payload: payload(len, seed),
        },
    )
}

/// What etherparse sees in one TCP frame: (ip id or 0, ip length ok, ip
/// header checksum ok, tcp header, tcp checksum by etherparse, payload).
struct Parsed {
    ip_id: u16,
    tcp: etherparse::TcpHeader,
    tcp_check: u16,
    payload: Vec<u8>,
}

fn parse_tcp(frame: &[u8]) -> Parsed {
    let p = PacketHeaders::from_ethernet_slice(frame).expect("etherparse parses the segment");
    let payload = p.payload.slice().to_vec();
    let Some(TransportHeader::Tcp(tcp)) = p.transport else { panic!("not TCP") };
    let (ip_id, tcp_check) = match p.net {
        Some(NetHeaders::Ipv4(ip, _)) => {
            assert_eq!(ip.calc_header_checksum(), ip.header_checksum, "IPv4 header checksum");
            assert_eq!(usize::from(ip.total_len), 20 + tcp.header_len() + payload.len(), "IPv4 total length");
            (ip.identification, tcp.calc_checksum_ipv4(&ip, &payload).unwrap())
        }
        Some(NetHeaders::Ipv6(ip, _)) => {
            assert_eq!(usize::from(ip.payload_length), tcp.header_len() + payload.len(), "IPv6 payload length");
            (0, tcp.calc_checksum_ipv6(&ip, &payload).unwrap())
        }
        _ => panic!("not IP"),
    };
    Parsed { ip_id, tcp, tcp_check, payload }
}

/// Ones' complement equality: 0 and 0xffff are the same number.
fn same_csum(a: u16, b: u16) -> bool {
    a == b || (a | b == 0xffff && (a == 0 || b == 0))
}

fn gso_hdr(frame: &[u8], mss: u16) -> VirtioNetHdr {
    let l = Layout::parse(frame).unwrap();
    VirtioNetHdr::gso_tcp(l.ip == vfnic_offload::IpVersion::V6, mss, l.l4_offset as u16, l.payload_offset as u16)
        .unwrap()
}

fn segments_of(frame: &[u8], hdr: &VirtioNetHdr, mtu: Option<u16>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut s = Segmenter::new();
    let r = s
        .segment(frame, hdr, mtu, |seg| {
            out.push(seg.to_vec());
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(r.segments, out.len());
    assert!(!r.stopped);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn tso_segments_are_valid_and_complete(s in spec(65000), mss in 500u16..9000) {
        let frame = build_tcp(&s);
        let orig = parse_tcp(&frame);
        let hdr = gso_hdr(&frame, mss);
        let segs = segments_of(&frame, &hdr, None);
        let n = s.payload.len().div_ceil(usize::from(mss)).max(1);
        prop_assert_eq!(segs.len(), n);
        let mut joined = Vec::new();
        for (i, seg) in segs.iter().enumerate() {
            let last = i + 1 == n;
            let p = parse_tcp(seg);
            prop_assert_eq!(p.tcp.checksum, p.tcp_check, "TCP checksum of segment {}", i);
            prop_assert!(verify_l4_checksum(seg).unwrap());
            prop_assert_eq!(p.tcp.sequence_number, s.seq.wrapping_add((i * usize::from(mss)) as u32));
            prop_assert_eq!(p.tcp.acknowledgment_number, orig.tcp.acknowledgment_number);
            prop_assert_eq!(&p.tcp.options, &orig.tcp.options);
            if !s.v6 {
                prop_assert_eq!(p.ip_id, orig.ip_id.wrapping_add(i as u16));
            }
            if !last {
                prop_assert_eq!(p.payload.len(), usize::from(mss));
            }
            prop_assert_eq!(p.tcp.psh, s.psh && last);
            prop_assert_eq!(p.tcp.fin, s.fin && last);
            prop_assert_eq!(p.tcp.cwr, s.cwr && i == 0);
            prop_assert!(p.tcp.ack);
            joined.extend_from_slice(&p.payload);
        }
        prop_assert_eq!(joined, s.payload);
    }

    #[test]
    fn mtu_bounds_segment_size(s in spec(20000), mtu in 1280u16..9000) {
        let frame = build_tcp(&s);
        let hdr = gso_hdr(&frame, 9000);
        let l = Layout::parse(&frame).unwrap();
        let lim = vfnic_offload::segment_size_limits(mtu, &l).unwrap();
        for seg in segments_of(&frame, &hdr, Some(mtu)) {
            prop_assert!(seg.len() <= lim.max_frame_len);
            prop_assert!(seg.len() - l.l3_offset <= usize::from(mtu));
        }
    }

    #[test]
    fn gro_of_segments_rebuilds_the_frame(s in spec(65000), mss in 500u16..9000, data_valid in any::<bool>()) {
        let frame = build_tcp(&s);
        let hdr = gso_hdr(&frame, mss);
        let segs = segments_of(&frame, &hdr, None);
        let csum = if data_valid { GroCsum::DataValid } else { GroCsum::NeedsCsum };
        let mut gro = Gro::new(GroConfig { csum, ..GroConfig::default() });
        let mut out: Vec<(VirtioNetHdr, Vec<u8>)> = Vec::new();
        for (i, seg) in segs.iter().enumerate() {
            gro.receive(seg, i as u64, |h, f| out.push((*h, f.to_vec())));
        }
        gro.flush_all(|h, f| out.push((*h, f.to_vec())));
        prop_assert_eq!(gro.held_flows(), 0);
        let c = *gro.counters();
        prop_assert_eq!(c.rx_frames, segs.len() as u64);
        prop_assert_eq!(c.passthrough + c.flushed_segments, segs.len() as u64);
        prop_assert_eq!(c.csum_bad, 0);

        let mut joined = Vec::new();
        for (h, f) in &mut out {
            if h.needs_csum() {
                complete_csum(f, usize::from(h.csum_start), usize::from(h.csum_offset)).unwrap();
            }
            let p = parse_tcp(f);
            prop_assert!(same_csum(p.tcp.checksum, p.tcp_check));
            if h.gso_type != 0 {
                prop_assert_eq!(h.gso_size, mss);
                prop_assert_eq!(usize::from(h.hdr_len), Layout::parse(f).unwrap().payload_offset);
            }
            joined.extend_from_slice(&p.payload);
        }
        prop_assert_eq!(&joined, &s.payload);

        // Without FIN or CWR (neither is merged) every segment merges into one
        // frame equal to the original but for the checksum.
        if !s.fin && !s.cwr && !s.payload.is_empty() {
            prop_assert_eq!(out.len(), 1);
            let (h, f) = &out[0];
            prop_assert_eq!(h.gso_type != 0, segs.len() > 1);
            let l = Layout::parse(f).unwrap();
            let at = l.l4_offset + 16;
            prop_assert_eq!(&f[..at], &frame[..at]);
            prop_assert_eq!(&f[at + 2..], &frame[at + 2..]);
        }
    }

    #[test]
    fn complete_csum_matches_from_scratch(v6 in any::<bool>(), vlan in any::<bool>(), udp in any::<bool>(),
                                          len in 0usize..3000, seed in any::<u8>()) {
        let data = payload(len, seed);
        let mut frame = if udp {
            build_udp(v6, vlan, &data)
        } else {
            build_tcp(&Spec { v6, vlan, seq: 1, psh: false, fin: false, cwr: false, timestamps: false, payload: data })
        };
        let l = Layout::parse(&frame).unwrap();
        let pos = l.l4_offset + l.l4.csum_offset();
        let reference = u16::from_be_bytes([frame[pos], frame[pos + 1]]);
        prop_assert_eq!(l4_checksum(&frame).unwrap(), reference);
        prop_assert!(verify_l4_checksum(&frame).unwrap());

        // What a guest hands over with NEEDS_CSUM: the pseudo-header sum,
        // computed here the slow way.
        let ip = &frame[l.l3_offset..];
        let addrs: &[u8] = if v6 { &ip[8..40] } else { &ip[12..20] };
        let l4_len = (l.l3_end - l.l4_offset) as u32;
        let mut s: u32 = addrs.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
        s += u32::from(l.l4.number()) + (l4_len >> 16) + (l4_len & 0xffff);
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        frame[pos..pos + 2].copy_from_slice(&(s as u16).to_be_bytes());
        complete_csum(&mut frame, l.l4_offset, l.l4.csum_offset()).unwrap();
        let done = u16::from_be_bytes([frame[pos], frame[pos + 1]]);
        prop_assert!(same_csum(done, reference), "{:#x} vs {:#x}", done, reference);
        prop_assert!(verify_l4_checksum(&frame).unwrap());
    }

    #[test]
    fn csum_pieces_equal_whole(data in proptest::collection::vec(any::<u8>(), 0..2000), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6)) {
        let mut naive: u32 = 0;
        for w in data.chunks(2) {
            naive += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
            naive = (naive & 0xffff) + (naive >> 16);
        }
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
        points.sort_unstable();
        let mut c = Csum::new();
        let mut at = 0;
        for p in points.into_iter().chain([data.len()]) {
            c.add_bytes(&data[at..p]);
            at = p;
        }
        prop_assert_eq!(c.fold(), naive as u16);
    }

    #[test]
    fn uso_segments_are_valid(v6 in any::<bool>(), vlan in any::<bool>(), len in 0usize..30000, mss in 500u16..9000, seed in any::<u8>()) {
        let data = payload(len, seed);
        let frame = build_udp(v6, vlan, &data);
        let l = Layout::parse(&frame).unwrap();
        let hdr = VirtioNetHdr { gso_type: 5, gso_size: mss, ..VirtioNetHdr::csum(l.l4_offset as u16, 6) };
        let mut joined = Vec::new();
        for seg in segments_of(&frame, &hdr, None) {
            let p = PacketHeaders::from_ethernet_slice(&seg).unwrap();
            let body = p.payload.slice();
            let Some(TransportHeader::Udp(u)) = p.transport else { panic!("not UDP") };
            prop_assert_eq!(usize::from(u.length), 8 + body.len());
            let want = match p.net {
                Some(NetHeaders::Ipv4(ip, _)) => {
                    prop_assert_eq!(ip.calc_header_checksum(), ip.header_checksum);
                    u.calc_checksum_ipv4(&ip, body).unwrap()
                }
                Some(NetHeaders::Ipv6(ip, _)) => u.calc_checksum_ipv6(&ip, body).unwrap(),
                _ => panic!("not IP"),
            };
            prop_assert_eq!(u.checksum, want);
            prop_assert!(body.len() <= usize::from(mss));
            joined.extend_from_slice(body);
        }
        prop_assert_eq!(joined, data);
    }

    /// Hostile input: corrupted frames never panic anything.
    #[test]
    fn corrupted_frames_do_not_panic(s in spec(3000), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                                     cut in any::<prop::sample::Index>(), mss in 1u16..2000) {
        let mut frame = build_tcp(&s);
        let hdr = gso_hdr(&frame, mss);
        for (i, v) in flips {
            let i = i.index(frame.len().min(80));
            frame[i] ^= v;
        }
        frame.truncate(cut.index(frame.len() + 1));
        let _ = Layout::parse(&frame);
        let _ = segment(&frame, &hdr, Some(1500), |_| ControlFlow::Continue(()));
        let _ = l4_checksum(&frame);
        let _ = complete_csum(&mut frame, usize::from(hdr.csum_start), usize::from(hdr.csum_offset));
        let mut gro = Gro::new(GroConfig { verify_csum: false, ..GroConfig::default() });
        let mut n = 0;
        gro.receive(&frame, 0, |_, _| n += 1);
        gro.receive(&frame, 1, |_, _| n += 1);
        gro.flush_all(|_, _| n += 1);
        prop_assert!(n >= 1);
    }
}
