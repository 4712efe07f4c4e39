//! Receive-side scaling: which of a receiver's RX queues a frame goes to.
//!
//! The Toeplitz hash of the flow's addresses and ports (as RSS NICs and the
//! virtio spec's `VIRTIO_NET_F_RSS` define it) picks one of the receiver's
//! active queues, so one flow always lands on one queue (no reordering) and
//! several flows spread over all of them.

/// The default RSS key (the one Microsoft's RSS specification and most NICs
/// use; `virtio-net`'s example key too).
pub const DEFAULT_KEY: [u8; 40] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0, 0xd0, 0xca, 0x2b,
    0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac,
    0x01, 0xfa,
];

/// Toeplitz hash of `input` under `key` (input at most 36 bytes).
pub fn toeplitz(key: &[u8; 40], input: &[u8]) -> u32 {
    let mut hash = 0u32;
    // The 32-bit window of the key aligned with the current input bit.
    let mut window = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
    for (i, byte) in input.iter().enumerate() {
        let next = key.get(i + 4).copied().unwrap_or(0);
        for bit in 0..8 {
            if byte & (0x80 >> bit) != 0 {
                hash ^= window;
            }
            window = (window << 1) | u32::from((next >> (7 - bit)) & 1);
        }
    }
    hash
}

/// The RSS hash of an Ethernet frame's flow: IPv4/IPv6 addresses plus TCP
/// or UDP ports when present (not for fragments), else the addresses, else
/// 0 (non-IP: queue 0's share). `head` is the frame's first bytes (64 are
/// enough).
pub fn flow_hash(key: &[u8; 40], head: &[u8]) -> u32 {
    let mut off = 12;
    let mut ethertype = be16(head, off);
    if ethertype == Some(0x8100) {
        off += 4;
        ethertype = be16(head, off);
    }
    let l3 = off + 2;
    let mut input = [0u8; 36];
    let (n, l4, proto) = match ethertype {
        Some(0x0800) => {
            let Some(&vihl) = head.get(l3) else { return 0 };
            let ihl = usize::from(vihl & 0x0f) * 4;
            let frag = be16(head, l3 + 6).unwrap_or(0) & 0x3fff != 0;
            let Some(addrs) = head.get(l3 + 12..l3 + 20) else { return 0 };
            input[..8].copy_from_slice(addrs);
            (8, (!frag).then_some(l3 + ihl), head.get(l3 + 9).copied().unwrap_or(0))
        }
        Some(0x86dd) => {
            let Some(addrs) = head.get(l3 + 8..l3 + 40) else { return 0 };
            input[..32].copy_from_slice(addrs);
            (32, Some(l3 + 40), head.get(l3 + 6).copied().unwrap_or(0))
        }
        _ => return 0,
    };
    let mut len = n;
    if let (Some(l4), 6 | 17) = (l4, proto) {
        if let Some(ports) = head.get(l4..l4 + 4) {
            input[n..n + 4].copy_from_slice(ports);
            len += 4;
        }
    }
    toeplitz(key, &input[..len])
}

fn be16(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The verification suite of Microsoft's RSS specification (IPv4 with
    /// TCP ports, and addresses only).
    #[test]
    fn matches_the_rss_specification_vectors() {
        let cases = [
            // (src ip, dst ip, src port, dst port, hash with ports, hash without)
            ([66, 9, 149, 187], [161, 142, 100, 80], 2794u16, 1766u16, 0x51ccc178u32, 0x323e8fc2u32),
            ([199, 92, 111, 2], [65, 69, 140, 83], 14230, 4739, 0xc626b0ea, 0xd718262a),
            ([24, 19, 198, 95], [12, 22, 207, 184], 12898, 38024, 0x5c2b394a, 0xd2d0a5de),
            ([38, 27, 205, 30], [209, 142, 163, 6], 48228, 2217, 0xafc7327f, 0x82989176),
            ([153, 39, 163, 191], [202, 188, 127, 2], 44251, 1303, 0x10e828a2, 0x5d1809c5),
        ];
        for (src, dst, sp, dp, with_ports, without) in cases {
            let mut input = Vec::new();
            input.extend_from_slice(&src);
            input.extend_from_slice(&dst);
            assert_eq!(toeplitz(&DEFAULT_KEY, &input), without);
            input.extend_from_slice(&sp.to_be_bytes());
            input.extend_from_slice(&dp.to_be_bytes());
            assert_eq!(toeplitz(&DEFAULT_KEY, &input), with_ports);
        }
    }

    #[test]
    fn frame_hash_uses_the_flow() {
        let mut f = vec![0u8; 64];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[23] = 6;
        f[26..30].copy_from_slice(&[66, 9, 149, 187]);
        f[30..34].copy_from_slice(&[161, 142, 100, 80]);
        f[34..36].copy_from_slice(&2794u16.to_be_bytes());
        f[36..38].copy_from_slice(&1766u16.to_be_bytes());
        assert_eq!(flow_hash(&DEFAULT_KEY, &f), 0x51ccc178);
        // A fragment hashes on addresses only.
        f[20] = 0x20;
        assert_eq!(flow_hash(&DEFAULT_KEY, &f), 0x323e8fc2);
        // Non-IP: 0.
        f[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(flow_hash(&DEFAULT_KEY, &f), 0);
    }
}
