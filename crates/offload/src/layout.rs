//! Where the headers of a frame are.
//!
//! [`Layout::parse`] walks Ethernet, up to two VLAN tags (802.1Q / 802.1ad),
//! IPv4 (options allowed, fragments refused) or IPv6 (hop-by-hop, routing and
//! destination-options extension headers walked, fragments refused) and a TCP
//! or UDP header, checking every length against the frame. After a successful
//! parse every offset in the [`Layout`] is inside the frame, so the users in
//! this crate index with them freely.

use crate::{Error, Result};

/// Ethernet header length (no tags).
pub const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// TCP flag FIN.
pub const TCP_FIN: u8 = 0x01;
/// TCP flag SYN.
pub const TCP_SYN: u8 = 0x02;
/// TCP flag RST.
pub const TCP_RST: u8 = 0x04;
/// TCP flag PSH.
pub const TCP_PSH: u8 = 0x08;
/// TCP flag ACK.
pub const TCP_ACK: u8 = 0x10;
/// TCP flag URG.
pub const TCP_URG: u8 = 0x20;
/// TCP flag ECE.
pub const TCP_ECE: u8 = 0x40;
/// TCP flag CWR.
pub const TCP_CWR: u8 = 0x80;
/// Most IPv6 extension headers walked before giving up.
const MAX_IPV6_EXT: usize = 4;

/// IP version of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// L4 protocol of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl L4Proto {
    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            L4Proto::Tcp => IPPROTO_TCP,
            L4Proto::Udp => IPPROTO_UDP,
        }
    }

    /// Offset of the checksum field in the L4 header (the virtio `csum_offset`).
    pub const fn csum_offset(self) -> usize {
        match self {
            L4Proto::Tcp => 16,
            L4Proto::Udp => 6,
        }
    }
}

/// Offsets of the headers of an Ethernet frame carrying TCP or UDP over IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Start of the IP header (14, 18 or 22).
    pub l3_offset: usize,
    /// Start of the TCP/UDP header (after IPv4 options / IPv6 extension headers).
    pub l4_offset: usize,
    /// Start of the L4 payload (`l4_offset` + TCP data offset, or + 8 for UDP).
    pub payload_offset: usize,
    /// End of the IP packet per its length field; bytes after it (Ethernet
    /// padding) are not part of the packet.
    pub l3_end: usize,
    /// IP version.
    pub ip: IpVersion,
    /// L4 protocol.
    pub l4: L4Proto,
}

impl Layout {
    /// Parses the headers of `frame` (an Ethernet frame, no virtio header).
    pub fn parse(frame: &[u8]) -> Result<Self> {
        let mut off = 12;
        let mut ethertype = be16(frame, off)?;
        off += 2;
        for _ in 0..2 {
            if ethertype != ETHERTYPE_VLAN && ethertype != ETHERTYPE_QINQ {
                break;
            }
            ethertype = be16(frame, off + 2)?;
            off += 4;
        }
        let l3 = off;
        let (ip, proto, l4, l3_end) = match ethertype {
            ETHERTYPE_IPV4 => parse_ipv4(frame, l3)?,
            ETHERTYPE_IPV6 => parse_ipv6(frame, l3)?,
            other => return Err(Error::UnsupportedEtherType(other)),
        };
        let (l4p, payload) = match proto {
            IPPROTO_TCP => {
                let doff = usize::from(*frame.get(l4 + 12).ok_or(Error::FrameTruncated)? >> 4) * 4;
                if doff < 20 {
                    return Err(Error::BadL4Header);
                }
                (L4Proto::Tcp, l4 + doff)
            }
            IPPROTO_UDP => {
                let len = usize::from(be16(frame, l4 + 4)?);
                if len < 8 || len != l3_end.saturating_sub(l4) {
                    return Err(Error::BadL4Header);
                }
                (L4Proto::Udp, l4 + 8)
            }
            other => return Err(Error::UnsupportedL4(other)),
        };
        if payload > l3_end {
            return Err(Error::BadL4Header);
        }
        Ok(Layout { l3_offset: l3, l4_offset: l4, payload_offset: payload, l3_end, ip, l4: l4p })
    }

    /// Length of the L3 + L4 headers.
    pub fn l3_l4_hdr_len(&self) -> usize {
        self.payload_offset - self.l3_offset
    }

    /// Length of the L4 payload.
    pub fn payload_len(&self) -> usize {
        self.l3_end - self.payload_offset
    }
}

fn be16(frame: &[u8], off: usize) -> Result<u16> {
    match frame.get(off..off + 2) {
        Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
        None => Err(Error::FrameTruncated),
    }
}

/// Returns (version, protocol, L4 offset, end of packet).
fn parse_ipv4(frame: &[u8], l3: usize) -> Result<(IpVersion, u8, usize, usize)> {
    let h = frame.get(l3..l3 + 20).ok_or(Error::FrameTruncated)?;
    if h[0] >> 4 != 4 {
        return Err(Error::BadIpHeader);
    }
    let ihl = usize::from(h[0] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if ihl < 20 || total < ihl {
        return Err(Error::BadIpHeader);
    }
    if l3 + total > frame.len() {
        return Err(Error::FrameTruncated);
    }
    // MF set or a fragment offset: a fragment.
    if u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0 {
        return Err(Error::UnsupportedIp);
    }
    Ok((IpVersion::V4, h[9], l3 + ihl, l3 + total))
}

fn parse_ipv6(frame: &[u8], l3: usize) -> Result<(IpVersion, u8, usize, usize)> {
    let h = frame.get(l3..l3 + 40).ok_or(Error::FrameTruncated)?;
    if h[0] >> 4 != 6 {
        return Err(Error::BadIpHeader);
    }
    let payload = usize::from(u16::from_be_bytes([h[4], h[5]]));
    let end = l3 + 40 + payload;
    if end > frame.len() {
        return Err(Error::FrameTruncated);
    }
    let mut next = h[6];
    let mut off = l3 + 40;
    for _ in 0..MAX_IPV6_EXT {
        match next {
            // Hop-by-hop, routing, destination options.
            0 | 43 | 60 => {
                let e = frame.get(off..off + 2).filter(|_| off + 2 <= end).ok_or(Error::FrameTruncated)?;
                next = e[0];
                off += (usize::from(e[1]) + 1) * 8;
                if off > end {
                    return Err(Error::FrameTruncated);
                }
            }
            _ => break,
        }
    }
    match next {
        0 | 43 | 60 | 44 | 51 => Err(Error::UnsupportedIp),
        _ => Ok((IpVersion::V6, next, off, end)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A TCP/IPv4 frame (optionally VLAN-tagged) with `payload` bytes of
    /// payload; checksums are not filled in.
    pub(crate) fn tcp4(vlan: bool, payload: usize) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        if vlan {
            f.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        }
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (40 + payload) as u16;
        f.extend_from_slice(&[0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        let l3 = f.len() - 20;
        f[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0x30, 0x39, 0x00, 0x50, 0, 0, 0, 100, 0, 0, 0, 7, 0x50, 0x18, 0x10, 0x00, 0, 0, 0, 0]);
        f.extend((0..payload).map(|i| i as u8));
        f
    }

    #[test]
    fn parses_ipv4_tcp_with_vlan_and_padding() {
        let mut f = tcp4(true, 0);
        f.extend_from_slice(&[0; 6]);
        let l = Layout::parse(&f).unwrap();
        assert_eq!((l.l3_offset, l.l4_offset, l.payload_offset, l.l3_end), (18, 38, 58, 58));
        assert_eq!((l.ip, l.l4, l.payload_len(), l.l3_l4_hdr_len()), (IpVersion::V4, L4Proto::Tcp, 0, 40));
    }

    #[test]
    fn rejects_bad_frames() {
        let f = tcp4(false, 10);
        for cut in 0..f.len() {
            assert!(Layout::parse(&f[..cut]).is_err(), "cut {cut}");
        }
        let mut g = f.clone();
        g[23] = 1; // ICMP
        assert_eq!(Layout::parse(&g), Err(Error::UnsupportedL4(1)));
        let mut g = f.clone();
        g[20] = 0x20; // MF
        assert_eq!(Layout::parse(&g), Err(Error::UnsupportedIp));
        let mut g = f.clone();
        g[14] = 0x44; // IHL 4
        assert_eq!(Layout::parse(&g), Err(Error::BadIpHeader));
        let mut g = f.clone();
        g[46] = 0x40; // data offset 4
        assert_eq!(Layout::parse(&g), Err(Error::BadL4Header));
        let mut g = f.clone();
        g[46] = 0xf0; // data offset 60 > packet
        assert_eq!(Layout::parse(&g), Err(Error::BadL4Header));
        let mut g = f;
        g[12] = 0x08;
        g[13] = 0x06;
        assert_eq!(Layout::parse(&g), Err(Error::UnsupportedEtherType(0x0806)));
    }

    #[test]
    fn ipv6_extension_headers() {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x86, 0xdd]);
        let mut ip = [0u8; 40];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&(8u16 + 8).to_be_bytes());
        ip[6] = 0; // hop-by-hop
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[17, 0, 0, 0, 0, 0, 0, 0]); // -> UDP, 8 bytes
        f.extend_from_slice(&[0, 1, 0, 2, 0, 8, 0, 0]);
        let l = Layout::parse(&f).unwrap();
        assert_eq!((l.l4_offset, l.payload_offset, l.l4), (62, 70, L4Proto::Udp));
        f[54] = 44; // fragment header
        assert_eq!(Layout::parse(&f), Err(Error::UnsupportedIp));
        f[54] = 17;
        f[55] = 200; // extension length past the packet
        assert_eq!(Layout::parse(&f), Err(Error::FrameTruncated));
    }
}
