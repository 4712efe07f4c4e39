//! Floods 64 KB TCP segments (TSO: one virtio-net GSO frame each) from one
//! vhost-user port to another and reports the rate received, for the GSO
//! case of `scripts/gso-bench.sh`.
//!
//! `gso_flood TX_SOCKET RX_SOCKET SECS [SEGMENT_BYTES]` — the TX side
//! negotiates CSUM + HOST_TSO4, the RX side GUEST_CSUM + GUEST_TSO4 +
//! MRG_RXBUF. Prints `RESULT frames=N bytes=N secs=F gbps=F`.

use std::time::{Duration, Instant};

use vfnic_user::net::DEFAULT_FEATURES;
use vfnic_user::{Options, VirtioNet};

const CSUM: u64 = 1 << 0;
const GUEST_CSUM: u64 = 1 << 1;
const GUEST_TSO4: u64 = 1 << 7;
const HOST_TSO4: u64 = 1 << 11;

/// Ethernet + IPv4 + TCP headers and `payload` bytes, the TCP checksum field
/// holding the pseudo-header sum (NEEDS_CSUM semantics).
fn segment(dst: [u8; 6], src: [u8; 6], payload: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(54 + payload);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    let ip_len = (40 + payload) as u16;
    let mut ip = [0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    let mut sum: u32 = ip.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
    tcp[12] = 0x50;
    tcp[13] = 0x10;
    tcp[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
    f.extend_from_slice(&tcp);
    f.resize(54 + payload, 0x5a);
    f
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: gso_flood TX_SOCKET RX_SOCKET SECS [SEGMENT_BYTES]");
        std::process::exit(2);
    }
    let secs: f64 = args[3].parse().expect("SECS");
    let payload: usize = args.get(4).map(|s| s.parse().expect("SEGMENT_BYTES")).unwrap_or(64000);
    let tx_opts =
        Options { features: DEFAULT_FEATURES | CSUM | HOST_TSO4, tx_buf_size: 66 * 1024, ..Options::default() };
    let rx_opts =
        Options { features: DEFAULT_FEATURES | GUEST_CSUM | GUEST_TSO4, rx_buf_size: 4096, ..Options::default() };
    let mut tx = VirtioNet::connect(&args[1], tx_opts).expect("connect TX port");
    let mut rx = VirtioNet::connect(&args[2], rx_opts).expect("connect RX port");
    let dst = rx.mac().unwrap_or([0x02, 0x76, 0x66, 0x6e, 0, 1]);
    let src = tx.mac().unwrap_or([0x02, 0x76, 0x66, 0x6e, 0, 0]);
    let frame = segment(dst, src, payload);
    let mut hdr = [0u8; 12];
    hdr[0] = 1; // NEEDS_CSUM
    hdr[1] = 1; // GSO TCPv4
    hdr[2..4].copy_from_slice(&54u16.to_le_bytes());
    hdr[4..6].copy_from_slice(&1448u16.to_le_bytes());
    hdr[6..8].copy_from_slice(&34u16.to_le_bytes());
    hdr[8..10].copy_from_slice(&16u16.to_le_bytes());
    let (mut frames, mut bytes) = (0u64, 0u64);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        // Keep a few segments in flight, drain what arrived.
        for _ in 0..4 {
            if tx.send_with_hdr(&hdr, &frame).is_err() {
                break;
            }
        }
        while let Ok(Some(f)) = rx.recv() {
            frames += 1;
            bytes += f.len() as u64;
        }
    }
    let took = start.elapsed().as_secs_f64();
    println!(
        "RESULT frames={frames} bytes={bytes} secs={took:.2} gbps={:.2} avg_frame={}",
        bytes as f64 * 8.0 / took / 1e9,
        bytes.checked_div(frames).unwrap_or(0)
    );
}
