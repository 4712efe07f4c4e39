//! The virtio-net header (`struct virtio_net_hdr_v1`, virtio 1.x §5.1.6).
//!
//! 12 bytes, little-endian, in front of every frame on a virtio-net queue
//! (with `VERSION_1` or `MRG_RXBUF`; vfnic always uses this layout):
//!
//! | offset | field |
//! |---|---|
//! | 0 | `flags` (`NEEDS_CSUM` = 1, `DATA_VALID` = 2) |
//! | 1 | `gso_type` (`NONE` 0, `TCPV4` 1, `UDP` 3, `TCPV6` 4, `UDP_L4` 5, `\| ECN` 0x80) |
//! | 2 | `hdr_len` |
//! | 4 | `gso_size` |
//! | 6 | `csum_start` |
//! | 8 | `csum_offset` |
//! | 10 | `num_buffers` |
//!
//! [`VirtioNetHdr::parse`] accepts any 12 bytes (the raw fields of a tenant's
//! header); [`VirtioNetHdr::gso`] and [`VirtioNetHdr::check`] are where the
//! values are judged.

use crate::{Error, Result};

/// Length of the header on the wire.
pub const VIRTIO_NET_HDR_LEN: usize = 12;

/// `flags`: the checksum from `csum_start` on is still to be computed; the
/// field at `csum_start + csum_offset` holds the pseudo-header sum.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `flags` (device to driver only): the checksum was validated.
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;

/// `gso_type`: not a GSO frame.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4 (TSO4).
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// `gso_type`: UDP fragmentation offload (UFO, deprecated).
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
/// `gso_type`: TCP over IPv6 (TSO6).
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
/// `gso_type`: UDP segmentation offload (USO, `HOST_USO`).
pub const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
/// `gso_type` flag: the TCP segment has CWR set (`HOST_ECN`).
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// What kind of segmentation a frame asks for (`gso_type` without the ECN bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoType {
    /// Not a GSO frame.
    None,
    /// TCP over IPv4.
    TcpV4,
    /// UFO: one UDP datagram to be IP-fragmented.
    Udp,
    /// TCP over IPv6.
    TcpV6,
    /// USO: UDP payload cut into datagrams of `gso_size`.
    UdpL4,
}

impl GsoType {
    /// The `gso_type` value, without the ECN bit.
    pub const fn raw(self) -> u8 {
        match self {
            GsoType::None => VIRTIO_NET_HDR_GSO_NONE,
            GsoType::TcpV4 => VIRTIO_NET_HDR_GSO_TCPV4,
            GsoType::Udp => VIRTIO_NET_HDR_GSO_UDP,
            GsoType::TcpV6 => VIRTIO_NET_HDR_GSO_TCPV6,
            GsoType::UdpL4 => VIRTIO_NET_HDR_GSO_UDP_L4,
        }
    }

    /// Decodes a `gso_type` value; the ECN bit is ignored here.
    pub fn from_raw(raw: u8) -> Result<Self> {
        match raw & !VIRTIO_NET_HDR_GSO_ECN {
            VIRTIO_NET_HDR_GSO_NONE => Ok(GsoType::None),
            VIRTIO_NET_HDR_GSO_TCPV4 => Ok(GsoType::TcpV4),
            VIRTIO_NET_HDR_GSO_UDP => Ok(GsoType::Udp),
            VIRTIO_NET_HDR_GSO_TCPV6 => Ok(GsoType::TcpV6),
            VIRTIO_NET_HDR_GSO_UDP_L4 => Ok(GsoType::UdpL4),
            _ => Err(Error::UnknownGsoType(raw)),
        }
    }
}

/// A virtio-net header, field by field, in host byte order.
///
/// The fields are the wire fields (a `Repr` in smoltcp's sense); build a
/// consistent one with [`VirtioNetHdr::csum`] / [`VirtioNetHdr::gso_tcp`] and
/// judge a tenant's with [`VirtioNetHdr::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VirtioNetHdr {
    /// `NEEDS_CSUM` / `DATA_VALID`.
    pub flags: u8,
    /// Raw `gso_type`, ECN bit included.
    pub gso_type: u8,
    /// Length of the headers (Ethernet to the end of L4) of a GSO frame. A
    /// hint only: Linux guests put the linear part's length here.
    pub hdr_len: u16,
    /// Payload bytes per segment (the MSS) of a GSO frame.
    pub gso_size: u16,
    /// Where checksumming starts (the L4 header), with `NEEDS_CSUM`.
    pub csum_start: u16,
    /// Where the checksum is stored, from `csum_start` (16 TCP, 6 UDP).
    pub csum_offset: u16,
    /// Number of merged RX buffers (`MRG_RXBUF`), set by the device on RX.
    pub num_buffers: u16,
}

impl VirtioNetHdr {
    /// Reads the first 12 bytes of `bytes`. No field is judged here.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let b: &[u8; VIRTIO_NET_HDR_LEN] =
            bytes.get(..VIRTIO_NET_HDR_LEN).and_then(|b| b.try_into().ok()).ok_or(Error::HeaderTruncated)?;
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Ok(VirtioNetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
            num_buffers: le(10),
        })
    }

    /// Writes the 12 bytes to the front of `out`.
    pub fn emit(&self, out: &mut [u8]) -> Result<()> {
        let out = out.get_mut(..VIRTIO_NET_HDR_LEN).ok_or(Error::BufferTooSmall)?;
        out[0] = self.flags;
        out[1] = self.gso_type;
        out[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        out[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        Ok(())
    }

    /// The header as bytes.
    pub fn to_bytes(&self) -> [u8; VIRTIO_NET_HDR_LEN] {
        let mut b = [0; VIRTIO_NET_HDR_LEN];
        // The array is exactly VIRTIO_NET_HDR_LEN long, so emit cannot fail.
        let _ = self.emit(&mut b);
        b
    }

    /// True if any offload is requested (a checksum to complete or GSO).
    pub const fn any(&self) -> bool {
        self.flags != 0 || self.gso_type != 0
    }

    /// The same, for a frame whose headers moved by `delta` bytes (a VLAN
    /// tag stripped or inserted before the L3 header): the offsets into the
    /// frame follow; zero offsets (none given) stay zero.
    pub fn shifted(self, delta: i16) -> Self {
        let mv = |v: u16| if v == 0 { 0 } else { v.saturating_add_signed(delta) };
        VirtioNetHdr { hdr_len: mv(self.hdr_len), csum_start: mv(self.csum_start), ..self }
    }

    /// A non-GSO header asking for the checksum at `csum_start + csum_offset`.
    pub const fn csum(csum_start: u16, csum_offset: u16) -> Self {
        VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_NONE,
            hdr_len: 0,
            gso_size: 0,
            csum_start,
            csum_offset,
            num_buffers: 0,
        }
    }

    /// A TCP GSO header (`NEEDS_CSUM`, `csum_offset` 16) for a frame whose TCP
    /// header starts at `l4_offset` and whose headers end at `hdr_len`.
    pub fn gso_tcp(v6: bool, gso_size: u16, l4_offset: u16, hdr_len: u16) -> Result<Self> {
        if gso_size == 0 {
            return Err(Error::ZeroGsoSize);
        }
        if hdr_len < l4_offset.saturating_add(20) {
            return Err(Error::BadL4Header);
        }
        Ok(VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: if v6 { VIRTIO_NET_HDR_GSO_TCPV6 } else { VIRTIO_NET_HDR_GSO_TCPV4 },
            hdr_len,
            gso_size,
            csum_start: l4_offset,
            csum_offset: 16,
            num_buffers: 0,
        })
    }

    /// Whether `NEEDS_CSUM` is set.
    pub const fn needs_csum(&self) -> bool {
        self.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0
    }

    /// Whether `DATA_VALID` is set.
    pub const fn data_valid(&self) -> bool {
        self.flags & VIRTIO_NET_HDR_F_DATA_VALID != 0
    }

    /// Whether the ECN bit of `gso_type` is set.
    pub const fn ecn(&self) -> bool {
        self.gso_type & VIRTIO_NET_HDR_GSO_ECN != 0
    }

    /// The decoded `gso_type`.
    pub fn gso(&self) -> Result<GsoType> {
        GsoType::from_raw(self.gso_type)
    }

    /// Judges a header against the frame it came with (`frame_len` bytes,
    /// without the header): a known `gso_type`, a nonzero `gso_size` for GSO,
    /// and a checksum position inside the frame for `NEEDS_CSUM`. Returns the
    /// GSO type. (`hdr_len` is a hint and is not judged.)
    pub fn check(&self, frame_len: usize) -> Result<GsoType> {
        let gso = self.gso()?;
        if gso != GsoType::None && self.gso_size == 0 {
            return Err(Error::ZeroGsoSize);
        }
        if self.needs_csum() {
            csum_field(frame_len, usize::from(self.csum_start), usize::from(self.csum_offset))?;
        }
        Ok(gso)
    }
}

/// Position of the 2-byte checksum field, checked against `frame_len`.
pub(crate) fn csum_field(frame_len: usize, csum_start: usize, csum_offset: usize) -> Result<usize> {
    let pos = csum_start.checked_add(csum_offset).ok_or(Error::CsumOutOfFrame)?;
    if pos.checked_add(2).is_none_or(|end| end > frame_len) {
        return Err(Error::CsumOutOfFrame);
    }
    Ok(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_emit_round_trip() {
        let bytes = [1, 0x81, 54, 0, 0xb4, 0x05, 34, 0, 16, 0, 1, 0];
        let h = VirtioNetHdr::parse(&bytes).unwrap();
        assert_eq!(
            h,
            VirtioNetHdr {
                flags: 1,
                gso_type: 0x81,
                hdr_len: 54,
                gso_size: 1460,
                csum_start: 34,
                csum_offset: 16,
                num_buffers: 1
            }
        );
        assert!(h.needs_csum() && !h.data_valid() && h.ecn());
        assert_eq!(h.gso(), Ok(GsoType::TcpV4));
        assert_eq!(h.to_bytes(), bytes);
    }

    #[test]
    fn shifted_moves_given_offsets_only() {
        let h = VirtioNetHdr { hdr_len: 54, csum_start: 34, csum_offset: 16, gso_size: 1448, ..Default::default() };
        let s = h.shifted(4);
        assert_eq!((s.hdr_len, s.csum_start, s.csum_offset, s.gso_size), (58, 38, 16, 1448));
        assert_eq!(s.shifted(-4), h);
        assert_eq!(VirtioNetHdr::default().shifted(-4), VirtioNetHdr::default(), "zero means not given");
        assert!(!VirtioNetHdr::default().any());
        assert!(VirtioNetHdr::csum(34, 16).any());
    }

    #[test]
    fn short_input_and_output() {
        assert_eq!(VirtioNetHdr::parse(&[0; 11]), Err(Error::HeaderTruncated));
        assert_eq!(VirtioNetHdr::default().emit(&mut [0; 11]), Err(Error::BufferTooSmall));
    }

    #[test]
    fn check_judges_fields() {
        assert_eq!(VirtioNetHdr { gso_type: 2, ..Default::default() }.check(100), Err(Error::UnknownGsoType(2)));
        assert_eq!(VirtioNetHdr { gso_type: 1, ..Default::default() }.check(100), Err(Error::ZeroGsoSize));
        assert_eq!(VirtioNetHdr::csum(34, 16).check(52), Ok(GsoType::None));
        assert_eq!(VirtioNetHdr::csum(34, 16).check(51), Err(Error::CsumOutOfFrame));
        assert_eq!(VirtioNetHdr::csum(u16::MAX, u16::MAX).check(usize::MAX), Ok(GsoType::None));
        assert_eq!(csum_field(usize::MAX, usize::MAX, 1), Err(Error::CsumOutOfFrame));
        assert_eq!(csum_field(usize::MAX, usize::MAX - 1, 0), Err(Error::CsumOutOfFrame));
        let h = VirtioNetHdr::gso_tcp(true, 1440, 54, 74).unwrap();
        assert_eq!(h.gso(), Ok(GsoType::TcpV6));
        assert_eq!(h.check(74), Ok(GsoType::TcpV6));
        assert_eq!(VirtioNetHdr::gso_tcp(false, 0, 34, 54), Err(Error::ZeroGsoSize));
        assert_eq!(VirtioNetHdr::gso_tcp(false, 1, 34, 40), Err(Error::BadL4Header));
        for t in [GsoType::None, GsoType::TcpV4, GsoType::Udp, GsoType::TcpV6, GsoType::UdpL4] {
            assert_eq!(GsoType::from_raw(t.raw() | VIRTIO_NET_HDR_GSO_ECN), Ok(t));
        }
    }
}
