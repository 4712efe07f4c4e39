//! Software segmentation (GSO): what the adapter does for a GSO frame whose
//! receiver does not accept it (a VF without GUEST_TSO4/6 or GUEST_USO, an
//! uplink without the offload, a VXLAN tunnel).
//!
//! [`segment`] cuts the payload of a TCP (TSO4/TSO6) or UDP (USO) frame into
//! `gso_size` pieces (smaller if an MTU asks for it) and hands each segment
//! to a closure as a [`Segment`]: the rebuilt headers (in a stack buffer) and
//! a slice of the original payload, so the caller can copy both straight into
//! the receiver's buffers. Each segment is complete: IPv4 total length, ID
//! (incremented per segment) and header checksum; IPv6 payload length; TCP
//! sequence number, flags (FIN and PSH on the last segment only, CWR on the
//! first only) and a full TCP checksum; UDP length and checksum.
//! [`Segmenter`] does the same into one reusable contiguous buffer.
//!
//! No heap allocation per segment: [`segment`] allocates nothing, and
//! [`Segmenter`] allocates its buffer once.

use std::ops::ControlFlow;

use crate::csum::{pseudo_header, Csum};
use crate::hdr::{GsoType, VirtioNetHdr};
use crate::layout::{IpVersion, L4Proto, Layout, TCP_CWR, TCP_FIN, TCP_PSH};
use crate::{Error, Result};

/// The longest headers (Ethernet to the end of L4) [`segment`] handles:
/// 22 (two VLAN tags) + 60 (IPv4 with options) + 60 (TCP with options), or
/// IPv6 with a few extension headers.
pub const MAX_HEADERS_LEN: usize = 256;

/// Largest IP packet.
const MAX_IP_LEN: usize = 65535;

/// Segment sizes for an MTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentLimits {
    /// Most L4 payload bytes per segment: MTU minus the L3 and L4 headers.
    pub max_payload: u16,
    /// Longest segment frame: the L2 header plus the MTU.
    pub max_frame_len: usize,
}

/// Segment sizes for the frame described by `layout` on a link of `mtu`
/// (the L3 MTU, e.g. 1500; pass 1450 for a VXLAN-over-IPv4 tunnel on a
/// 1500-byte underlay). Fails when the MTU leaves no room for payload.
pub fn segment_size_limits(mtu: u16, layout: &Layout) -> Result<SegmentLimits> {
    let hdrs = layout.l3_l4_hdr_len();
    let mtu = usize::from(mtu);
    if mtu <= hdrs {
        return Err(Error::MtuTooSmall);
    }
    // mtu - hdrs < mtu <= u16::MAX.
    Ok(SegmentLimits { max_payload: (mtu - hdrs) as u16, max_frame_len: layout.l3_offset + mtu })
}

/// One segment: rebuilt headers followed by a piece of the original payload.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    headers: &'a [u8],
    payload: &'a [u8],
}

impl<'a> Segment<'a> {
    /// The Ethernet, IP and L4 headers of this segment.
    pub fn headers(&self) -> &'a [u8] {
        self.headers
    }

    /// The L4 payload of this segment (a slice of the original frame).
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// Length of the segment frame.
    pub fn len(&self) -> usize {
        self.headers.len() + self.payload.len()
    }

    /// Whether the segment is empty (never, for a segment from [`segment`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the segment frame to the front of `out`; returns its length.
    pub fn copy_to(&self, out: &mut [u8]) -> Result<usize> {
        let out = out.get_mut(..self.len()).ok_or(Error::BufferTooSmall)?;
        let (h, p) = out.split_at_mut(self.headers.len());
        h.copy_from_slice(self.headers);
        p.copy_from_slice(self.payload);
        Ok(self.len())
    }
}

/// What [`segment`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentReport {
    /// Segments handed to the closure.
    pub segments: usize,
    /// Payload bytes in those segments.
    pub payload_bytes: usize,
    /// The closure asked to stop before the last segment.
    pub stopped: bool,
}

/// Segments the GSO `frame` (an Ethernet frame, no virtio header) described
/// by `hdr`, calling `emit` once per segment in order. `mtu`, when given,
/// caps the segment payload as [`segment_size_limits`] computes (`gso_size`
/// caps it too). `emit` returns `ControlFlow::Break(())` to stop early (e.g.
/// no more receive buffers); the report says so.
///
/// `hdr.hdr_len` is not trusted (guests put other things there): the headers
/// are parsed from the frame. With `NEEDS_CSUM`, `csum_start` must be the L4
/// header. The checksum fields of the input are ignored; every segment's
/// checksums are computed in full.
pub fn segment<F>(frame: &[u8], hdr: &VirtioNetHdr, mtu: Option<u16>, mut emit: F) -> Result<SegmentReport>
where
    F: FnMut(Segment<'_>) -> ControlFlow<()>,
{
    let kind = hdr.gso()?;
    let layout = Layout::parse(frame)?;
    match (kind, layout.ip, layout.l4) {
        (GsoType::None, ..) => return Err(Error::NotGso),
        (GsoType::Udp, ..) => return Err(Error::UfoUnsupported),
        (GsoType::TcpV4, IpVersion::V4, L4Proto::Tcp)
        | (GsoType::TcpV6, IpVersion::V6, L4Proto::Tcp)
        | (GsoType::UdpL4, _, L4Proto::Udp) => {}
        _ => return Err(Error::GsoTypeMismatch),
    }
    if hdr.needs_csum() && usize::from(hdr.csum_start) != layout.l4_offset {
        return Err(Error::CsumStartMismatch);
    }
    let mut mss = usize::from(hdr.gso_size);
    if let Some(mtu) = mtu {
        mss = mss.min(usize::from(segment_size_limits(mtu, &layout)?.max_payload));
    }
    if mss == 0 {
        return Err(Error::ZeroGsoSize);
    }
    let hlen = layout.payload_offset;
    if hlen > MAX_HEADERS_LEN {
        return Err(Error::HeadersTooLong);
    }
    let mut h = [0u8; MAX_HEADERS_LEN];
    let h = &mut h[..hlen];
    h.copy_from_slice(&frame[..hlen]);
    let payload = &frame[hlen..layout.l3_end];

    let (l3, l4) = (layout.l3_offset, layout.l4_offset);
    let l4_hdr_len = hlen - l4;
    let ip_id0 = u16::from_be_bytes([h[l3 + 4], h[l3 + 5]]);
    let (tcp_seq0, tcp_flags0) = match layout.l4 {
        L4Proto::Tcp => (u32::from_be_bytes([h[l4 + 4], h[l4 + 5], h[l4 + 6], h[l4 + 7]]), h[l4 + 13]),
        L4Proto::Udp => (0, 0),
    };
    let csum_pos = l4 + layout.l4.csum_offset();

    let mut report = SegmentReport::default();
    let mut off = 0;
    loop {
        let len = mss.min(payload.len() - off);
        let last = off + len == payload.len();
        let piece = &payload[off..off + len];
        let l4_len = l4_hdr_len + len;
        let ip_len = l4 - l3 + l4_len;
        debug_assert!(ip_len <= MAX_IP_LEN, "a segment is never longer than the packet");
        match layout.ip {
            IpVersion::V4 => {
                h[l3 + 2..l3 + 4].copy_from_slice(&(ip_len as u16).to_be_bytes());
                let id = ip_id0.wrapping_add(report.segments as u16);
                h[l3 + 4..l3 + 6].copy_from_slice(&id.to_be_bytes());
                h[l3 + 10..l3 + 12].fill(0);
                let ihl = l4 - l3;
                let c = Csum::new().add_bytes(&h[l3..l3 + ihl]).finish();
                h[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
            }
            IpVersion::V6 => {
                h[l3 + 4..l3 + 6].copy_from_slice(&((ip_len - 40) as u16).to_be_bytes());
            }
        }
        match layout.l4 {
            L4Proto::Tcp => {
                let seq = tcp_seq0.wrapping_add(off as u32);
                h[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
                let mut flags = tcp_flags0;
                if !last {
                    flags &= !(TCP_FIN | TCP_PSH);
                }
                if report.segments > 0 {
                    flags &= !TCP_CWR;
                }
                h[l4 + 13] = flags;
            }
            L4Proto::Udp => {
                h[l4 + 4..l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            }
        }
        h[csum_pos..csum_pos + 2].fill(0);
        let mut c = pseudo_header(h, &layout, l4_len);
        c.add_bytes(&h[l4..]).add_bytes(piece);
        let check = match (c.finish(), layout.l4) {
            (0, L4Proto::Udp) => 0xffff,
            (v, _) => v,
        };
        h[csum_pos..csum_pos + 2].copy_from_slice(&check.to_be_bytes());

        report.segments += 1;
        report.payload_bytes += len;
        off += len;
        let flow = emit(Segment { headers: h, payload: piece });
        if last {
            break;
        }
        if flow.is_break() {
            report.stopped = true;
            break;
        }
    }
    Ok(report)
}

/// [`segment`] into one contiguous, reusable buffer: `emit` gets each whole
/// segment frame as a slice. The buffer is allocated once, in [`Segmenter::new`].
#[derive(Debug)]
pub struct Segmenter {
    buf: Vec<u8>,
}

impl Default for Segmenter {
    fn default() -> Self {
        Self::new()
    }
}

impl Segmenter {
    /// A segmenter with room for the largest segment.
    pub fn new() -> Self {
        Segmenter { buf: Vec::with_capacity(MAX_HEADERS_LEN + MAX_IP_LEN) }
    }

    /// See [`segment`].
    pub fn segment<F>(
        &mut self,
        frame: &[u8],
        hdr: &VirtioNetHdr,
        mtu: Option<u16>,
        mut emit: F,
    ) -> Result<SegmentReport>
    where
        F: FnMut(&[u8]) -> ControlFlow<()>,
    {
        let buf = &mut self.buf;
        segment(frame, hdr, mtu, |seg| {
            buf.clear();
            // Headers <= MAX_HEADERS_LEN and payload <= MAX_IP_LEN: within capacity.
            buf.extend_from_slice(seg.headers());
            buf.extend_from_slice(seg.payload());
            emit(buf)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csum::verify_l4_checksum;
    use crate::layout::tests::tcp4;
    use crate::layout::{TCP_ACK, TCP_FIN};

    fn gso4(mss: u16) -> VirtioNetHdr {
        VirtioNetHdr::gso_tcp(false, mss, 34, 54).unwrap()
    }

    #[test]
    fn tcp4_segments() {
        let mut f = tcp4(false, 3000);
        f[47] = TCP_ACK | TCP_PSH | TCP_FIN | TCP_CWR;
        let mut seen = Vec::new();
        let mut seg = Segmenter::new();
        let cap = seg.buf.capacity();
        let r = seg
            .segment(&f, &gso4(1000), None, |s| {
                seen.push(s.to_vec());
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(r, SegmentReport { segments: 3, payload_bytes: 3000, stopped: false });
        assert_eq!(seg.buf.capacity(), cap, "no reallocation");
        for (i, s) in seen.iter().enumerate() {
            assert_eq!(s.len(), 54 + 1000);
            assert_eq!(u16::from_be_bytes([s[16], s[17]]), 1040);
            assert_eq!(u16::from_be_bytes([s[18], s[19]]), 0x1234 + i as u16);
            assert_eq!(Csum::new().add_bytes(&s[14..34]).fold(), 0xffff, "IPv4 header checksum");
            assert_eq!(u32::from_be_bytes([s[38], s[39], s[40], s[41]]), 100 + 1000 * i as u32);
            let want = match i {
                0 => TCP_ACK | TCP_CWR,
                1 => TCP_ACK,
                _ => TCP_ACK | TCP_PSH | TCP_FIN,
            };
            assert_eq!(s[47], want, "flags of segment {i}");
            assert!(verify_l4_checksum(s).unwrap());
            assert_eq!(&s[54..], &f[54 + 1000 * i..54 + 1000 * (i + 1)]);
        }
    }

    #[test]
    fn mtu_caps_and_stop() {
        let f = tcp4(true, 5000);
        let h = VirtioNetHdr::gso_tcp(false, 9000, 38, 58).unwrap();
        let mut n = 0;
        let r = segment(&f, &h, Some(1450), |s| {
            assert_eq!(s.payload().len(), if n < 3 { 1410 } else { 5000 - 3 * 1410 });
            assert!(s.len() <= 18 + 1450);
            n += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(r.segments, 4);
        let r = segment(&f, &h, Some(1450), |_| ControlFlow::Break(())).unwrap();
        assert_eq!(r, SegmentReport { segments: 1, payload_bytes: 1410, stopped: true });
        assert_eq!(segment(&f, &h, Some(40), |_| ControlFlow::Continue(())), Err(Error::MtuTooSmall));
    }

    #[test]
    fn empty_payload_and_errors() {
        let f = tcp4(false, 0);
        let r = segment(&f, &gso4(100), None, |s| {
            assert_eq!(s.len(), 54);
            assert!(verify_l4_checksum(s.headers()).unwrap());
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(r.segments, 1);
        let go = |_: Segment<'_>| ControlFlow::Continue(());
        assert_eq!(segment(&f, &VirtioNetHdr::default(), None, go), Err(Error::NotGso));
        let v6 = VirtioNetHdr::gso_tcp(true, 100, 34, 54).unwrap();
        assert_eq!(segment(&f, &v6, None, go), Err(Error::GsoTypeMismatch));
        let bad_start = VirtioNetHdr::gso_tcp(false, 100, 30, 54).unwrap();
        assert_eq!(segment(&f, &bad_start, None, go), Err(Error::CsumStartMismatch));
        let zero = VirtioNetHdr { gso_size: 0, ..gso4(1) };
        assert_eq!(segment(&f, &zero, None, go), Err(Error::ZeroGsoSize));
        let ufo = VirtioNetHdr { gso_type: 3, ..gso4(1) };
        assert_eq!(segment(&f, &ufo, None, go), Err(Error::UfoUnsupported));
        let mut out = [0u8; 10];
        segment(&f, &gso4(100), None, |s| {
            assert_eq!(s.copy_to(&mut out), Err(Error::BufferTooSmall));
            assert!(!s.is_empty());
            ControlFlow::Continue(())
        })
        .unwrap();
    }

    #[test]
    fn limits() {
        let f = tcp4(true, 10);
        let l = Layout::parse(&f).unwrap();
        assert_eq!(segment_size_limits(1500, &l), Ok(SegmentLimits { max_payload: 1460, max_frame_len: 1518 }));
        assert_eq!(segment_size_limits(40, &l), Err(Error::MtuTooSmall));
    }
}
