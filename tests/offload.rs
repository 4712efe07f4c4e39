//! Offloads between VFs (issue 5): a TSO segment passes through unsegmented
//! to a receiver that accepts GSO; a receiver without GSO or checksum
//! offload gets valid MTU-sized frames made by the engine; offloads a sender
//! did not negotiate are refused (and the header of a sender that negotiated
//! none is not read).

mod common;

use std::time::Duration;

use common::{vf_mac, Daemon};
use vfnic_offload::csum::{ipv4_header_checksum, pseudo_header_v4, verify_l4_checksum};
use vfnic_user::net::DEFAULT_FEATURES;
use vfnic_user::{Options, VirtioNet};

const CSUM: u64 = 1 << 0;
const GUEST_CSUM: u64 = 1 << 1;
const GUEST_TSO4: u64 = 1 << 7;
const HOST_TSO4: u64 = 1 << 11;
const NEEDS_CSUM: u8 = 1;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;

fn attach(d: &Daemon, vf: u16, extra: u64) -> VirtioNet {
    let o = Options { features: DEFAULT_FEATURES | extra, tx_buf_size: 66 * 1024, ..Options::default() };
    VirtioNet::connect(d.sock(vf), o).unwrap_or_else(|e| panic!("connect vf{vf}: {e}\n{}", d.log_text()))
}

/// An Ethernet/IPv4/TCP frame with `payload` bytes whose TCP checksum field
/// holds the pseudo-header sum (what a driver hands over with NEEDS_CSUM).
fn tcp_frame(dst: u16, src: u16, payload: usize) -> Vec<u8> {
    let (sip, dip) = ([10, 0, 0, src as u8 + 1], [10, 0, 0, dst as u8 + 1]);
    let mut f = Vec::new();
    f.extend_from_slice(&vf_mac(dst));
    f.extend_from_slice(&vf_mac(src));
    f.extend_from_slice(&[0x08, 0x00]);
    let ip_len = 20 + 20 + payload;
    let mut ip = vec![0x45, 0, 0, 0, 0, 7, 0x40, 0, 64, 6, 0, 0];
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip.extend_from_slice(&sip);
    ip.extend_from_slice(&dip);
    let c = ipv4_header_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut tcp = vec![0x30, 0x39, 0x14, 0x51, 0, 0, 0x10, 0, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0];
    let partial = pseudo_header_v4(&sip, &dip, 6, (20 + payload) as u16).fold();
    tcp[16..18].copy_from_slice(&partial.to_be_bytes());
    f.extend_from_slice(&tcp);
    f.extend((0..payload).map(|i| (i * 7 % 251) as u8));
    f
}

fn hdr(flags: u8, gso_type: u8, gso_size: u16) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0] = flags;
    h[1] = gso_type;
    h[2..4].copy_from_slice(&54u16.to_le_bytes()); // hdr_len
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start: the TCP header
    h[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset: TCP checksum
    h
}

#[test]
fn tso_segment_passes_through_unsegmented() {
    let d = Daemon::start("num_vfs = 2\n");
    let mut a = attach(&d, 0, CSUM | HOST_TSO4);
    let mut b = attach(&d, 1, GUEST_CSUM | GUEST_TSO4);
    let f = tcp_frame(1, 0, 64000);
    a.send_with_hdr(&hdr(NEEDS_CSUM, GSO_TCPV4, 1448), &f).unwrap();
    let got = b.recv_timeout(Duration::from_secs(5)).unwrap().expect("the 64 KB segment");
    assert_eq!(got, f, "one frame, byte for byte: no segmentation, no checksum work");
    let h = b.last_rx_hdr();
    assert_eq!(
        (h[0], h[1], u16::from_le_bytes([h[4], h[5]])),
        (NEEDS_CSUM, GSO_TCPV4, 1448),
        "offload header handed over"
    );
    assert_eq!(d.counter(1, &["gso_passed"]), 1);
    assert_eq!(d.counter(1, &["rx_packets"]), 1);
}

#[test]
fn receiver_without_gso_gets_valid_mtu_frames() {
    let d = Daemon::start("num_vfs = 2\n");
    let mut a = attach(&d, 0, CSUM | HOST_TSO4);
    let mut c = attach(&d, 1, 0);
    let payload = 30000;
    let f = tcp_frame(1, 0, payload);
    a.send_with_hdr(&hdr(NEEDS_CSUM, GSO_TCPV4, 1448), &f).unwrap();
    let mut data = Vec::new();
    let mut segs = 0;
    while data.len() < payload {
        let s = c.recv_timeout(Duration::from_secs(5)).unwrap().unwrap_or_else(|| panic!("segment {segs} missing"));
        assert!(s.len() <= 1514, "segment of {} bytes exceeds the MTU", s.len());
        assert!(verify_l4_checksum(&s).unwrap(), "segment {segs} has a valid TCP checksum");
        assert_eq!(c.last_rx_hdr()[..2], [0, 0], "no offload flags for a receiver that has none");
        data.extend_from_slice(&s[54..]);
        segs += 1;
    }
    assert_eq!(data, f[54..], "the segments carry the original payload, in order");
    assert_eq!(segs, payload.div_ceil(1448));
    assert_eq!(d.counter(1, &["gso_segmented"]), 1);
}

#[test]
fn partial_checksum_completed_for_a_receiver_without_guest_csum() {
    let d = Daemon::start("num_vfs = 2\n");
    let mut a = attach(&d, 0, CSUM);
    let mut c = attach(&d, 1, 0);
    let f = tcp_frame(1, 0, 1000);
    assert!(!verify_l4_checksum(&f).unwrap(), "the sender's checksum is partial");
    a.send_with_hdr(&hdr(NEEDS_CSUM, 0, 0), &f).unwrap();
    let got = c.recv_timeout(Duration::from_secs(5)).unwrap().expect("frame");
    assert!(verify_l4_checksum(&got).unwrap(), "the engine completed the checksum");
    assert_eq!(got[54..], f[54..]);
    assert_eq!(d.counter(1, &["csum_completed"]), 1);
}

#[test]
fn offload_not_negotiated_is_refused() {
    // A sender with checksum offload only: its headers are read, and the
    // segmentation it did not negotiate is refused.
    let d = Daemon::start("num_vfs = 2\n");
    let mut a = attach(&d, 0, CSUM);
    let mut b = attach(&d, 1, GUEST_CSUM | GUEST_TSO4);
    a.send_with_hdr(&hdr(NEEDS_CSUM, GSO_TCPV4, 1448), &tcp_frame(1, 0, 1000)).unwrap();
    a.send_with_hdr(&hdr(0, GSO_TCPV6, 1448), &tcp_frame(1, 0, 1000)).unwrap();
    d.wait_for("both refused", 5, || d.counter(0, &["drops", "tx_dropped_bad_offload"]) == 2);
    assert!(b.recv_timeout(Duration::from_millis(300)).unwrap().is_none());
}

#[test]
fn header_of_a_sender_without_send_offloads_is_not_read() {
    // A driver that negotiated no send offload zeroes its header's flags
    // and GSO type (the spec), so the engine does not read the header, as
    // DPDK's vhost does not: what such a driver puts there anyway is
    // ignored, and its frame goes as it is.
    let d = Daemon::start("num_vfs = 2\n");
    let mut a = attach(&d, 0, 0);
    let mut b = attach(&d, 1, GUEST_CSUM | GUEST_TSO4);
    let f = tcp_frame(1, 0, 100);
    a.send_with_hdr(&hdr(NEEDS_CSUM, GSO_TCPV4, 1448), &f).unwrap();
    let got = b.recv_timeout(Duration::from_secs(5)).unwrap().expect("frame");
    assert_eq!(got, f, "delivered as sent: the checksum is left as the sender wrote it");
    assert_eq!(b.last_rx_hdr()[..2], [0, 0], "no offload passed on");
    assert_eq!(d.counter(0, &["drops", "tx_dropped_bad_offload"]), 0);
    assert_eq!(d.counter(1, &["csum_completed"]), 0);
}
