//! The Internet checksum (RFC 1071, RFC 1624).
//!
//! [`Csum`] accumulates a ones' complement sum of big-endian 16-bit words
//! over any number of byte pieces (odd-length pieces included, so a frame
//! scattered over descriptors can be summed piece by piece), 8 bytes per add.
//! On top of it:
//!
//! * [`complete_csum`]: what a device does for a `NEEDS_CSUM` frame;
//! * [`l4_checksum`], [`fill_l4_checksum`], [`verify_l4_checksum`]: TCP/UDP
//!   checksums over IPv4/IPv6 from scratch, pseudo-header included;
//! * [`ipv4_header_checksum`] and the incremental [`update_u16`] / [`update_u32`].

use crate::hdr::csum_field;
use crate::layout::{IpVersion, L4Proto, Layout};
use crate::Result;

/// A running ones' complement sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Csum {
    /// Sum of big-endian words (64-bit, or 16/32-bit fields); never overflows.
    acc: u128,
    /// The bytes added so far are odd in number: the next byte is the low
    /// half of a 16-bit word.
    odd: bool,
}

impl Csum {
    /// An empty sum.
    pub const fn new() -> Self {
        Csum { acc: 0, odd: false }
    }

    /// Adds `data`, continuing where the previous piece stopped.
    pub fn add_bytes(&mut self, data: &[u8]) -> &mut Self {
        let mut data = data;
        if self.odd {
            if let Some((&low, rest)) = data.split_first() {
                self.acc += u128::from(low);
                data = rest;
                self.odd = false;
            }
        }
        self.acc += sum_words(data);
        if data.len() % 2 == 1 {
            self.odd = true;
        }
        self
    }

    /// Adds one 16-bit word (on a word boundary).
    pub fn add_u16(&mut self, v: u16) -> &mut Self {
        debug_assert!(!self.odd, "add_u16 off a word boundary");
        self.acc += u128::from(v);
        self
    }

    /// Adds a 32-bit value as two words (on a word boundary).
    pub fn add_u32(&mut self, v: u32) -> &mut Self {
        debug_assert!(!self.odd, "add_u32 off a word boundary");
        self.acc += u128::from(v);
        self
    }

    /// The folded 16-bit sum (not complemented): what goes into the checksum
    /// field of a `NEEDS_CSUM` frame for a pseudo-header.
    pub fn fold(&self) -> u16 {
        let mut s = self.acc;
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        // The loop leaves s <= 0xffff.
        s as u16
    }

    /// The checksum: the complement of the folded sum.
    pub fn finish(&self) -> u16 {
        !self.fold()
    }
}

/// Sum of `data` as big-endian 64-bit words, the tail zero-padded on the
/// right (so an odd last byte is the high half of its 16-bit word). Two
/// independent 128-bit accumulators: each add is an add/adc pair, and
/// overflow would take 2^64 words.
fn sum_words(data: &[u8]) -> u128 {
    let mut a: u128 = 0;
    let mut b: u128 = 0;
    let mut blocks = data.chunks_exact(32);
    for blk in &mut blocks {
        let (w0, w1, w2, w3) = (be64(&blk[0..8]), be64(&blk[8..16]), be64(&blk[16..24]), be64(&blk[24..32]));
        a += u128::from(w0) + u128::from(w1);
        b += u128::from(w2) + u128::from(w3);
    }
    let mut words = blocks.remainder().chunks_exact(8);
    for w in &mut words {
        a += u128::from(be64(w));
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        let mut last = [0u8; 8];
        last[..tail.len()].copy_from_slice(tail);
        b += u128::from(u64::from_be_bytes(last));
    }
    a + b
}

fn be64(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(b);
    u64::from_be_bytes(w)
}

/// The Internet checksum of `data` (e.g. an IPv4 header with its checksum
/// field zeroed).
pub fn checksum(data: &[u8]) -> u16 {
    Csum::new().add_bytes(data).finish()
}

/// RFC 1624 eqn. 3: the checksum `check` after a 16-bit word changed from
/// `old` to `new`.
pub fn update_u16(check: u16, old: u16, new: u16) -> u16 {
    let mut c = Csum::new();
    c.add_u16(!check).add_u16(!old).add_u16(new);
    c.finish()
}

/// [`update_u16`] for a 32-bit field (e.g. a TCP sequence number).
pub fn update_u32(check: u16, old: u32, new: u32) -> u16 {
    let mut c = Csum::new();
    c.add_u16(!check).add_u32(!old).add_u32(new);
    c.finish()
}

/// The IPv4 header checksum over `hdr` (the whole header, options included),
/// skipping the checksum field itself.
pub fn ipv4_header_checksum(hdr: &[u8]) -> u16 {
    let mut c = Csum::new();
    c.add_bytes(hdr.get(..10).unwrap_or(hdr));
    if let Some(rest) = hdr.get(12..) {
        c.add_bytes(rest);
    }
    c.finish()
}

/// Sum of an IPv4 pseudo-header.
pub fn pseudo_header_v4(src: &[u8; 4], dst: &[u8; 4], proto: u8, l4_len: u16) -> Csum {
    let mut c = Csum::new();
    c.add_bytes(src).add_bytes(dst).add_u16(u16::from(proto)).add_u16(l4_len);
    c
}

/// Sum of an IPv6 pseudo-header.
pub fn pseudo_header_v6(src: &[u8; 16], dst: &[u8; 16], proto: u8, l4_len: u32) -> Csum {
    let mut c = Csum::new();
    c.add_bytes(src).add_bytes(dst).add_u32(l4_len).add_u16(u16::from(proto));
    c
}

/// Sum of the pseudo-header of the packet described by `layout`, for an L4
/// length of `l4_len` bytes.
///
/// # Panics
/// If `layout` does not describe `frame` (take it from [`Layout::parse`]).
pub fn pseudo_header(frame: &[u8], layout: &Layout, l4_len: usize) -> Csum {
    let ip = &frame[layout.l3_offset..];
    match layout.ip {
        IpVersion::V4 => {
            let (src, dst) = (arr4(&ip[12..16]), arr4(&ip[16..20]));
            // An IPv4 packet is at most 65535 bytes, so its L4 length fits.
            pseudo_header_v4(&src, &dst, layout.l4.number(), l4_len as u16)
        }
        IpVersion::V6 => {
            let (src, dst) = (arr16(&ip[8..24]), arr16(&ip[24..40]));
            pseudo_header_v6(&src, &dst, layout.l4.number(), l4_len as u32)
        }
    }
}

pub(crate) fn arr4(b: &[u8]) -> [u8; 4] {
    let mut a = [0; 4];
    a.copy_from_slice(b);
    a
}

pub(crate) fn arr16(b: &[u8]) -> [u8; 16] {
    let mut a = [0; 16];
    a.copy_from_slice(b);
    a
}

/// Finishes the checksum of a `NEEDS_CSUM` frame, as a device does: the
/// field at `csum_start + csum_offset` already holds the pseudo-header sum
/// (virtio semantics), so this is the ones' complement of the sum of
/// `frame[csum_start..]`, stored in that field. A result of 0 is stored as
/// 0xffff (Linux `skb_checksum_help`; required for UDP, equivalent for TCP).
pub fn complete_csum(frame: &mut [u8], csum_start: usize, csum_offset: usize) -> Result<()> {
    let pos = csum_field(frame.len(), csum_start, csum_offset)?;
    let mut c = Csum::new();
    c.add_bytes(&frame[csum_start..]);
    let check = match c.finish() {
        0 => 0xffff,
        v => v,
    };
    frame[pos..pos + 2].copy_from_slice(&check.to_be_bytes());
    Ok(())
}

/// The TCP/UDP checksum of the packet in `frame` computed from scratch
/// (pseudo-header from the IP header, the checksum field counted as zero):
/// the value the checksum field must hold. A UDP result of 0 is given as
/// 0xffff (RFC 768).
pub fn l4_checksum(frame: &[u8]) -> Result<u16> {
    let layout = Layout::parse(frame)?;
    Ok(l4_checksum_at(frame, &layout))
}

/// [`l4_checksum`] for an already parsed `layout`.
///
/// # Panics
/// If `layout` does not describe `frame` (take it from [`Layout::parse`]).
pub fn l4_checksum_at(frame: &[u8], layout: &Layout) -> u16 {
    let l4 = &frame[layout.l4_offset..layout.l3_end];
    let field = layout.l4.csum_offset();
    let mut c = pseudo_header(frame, layout, l4.len());
    c.add_bytes(&l4[..field]).add_bytes(&l4[field + 2..]);
    match (c.finish(), layout.l4) {
        (0, L4Proto::Udp) => 0xffff,
        (v, _) => v,
    }
}

/// Writes the from-scratch L4 checksum into the frame.
pub fn fill_l4_checksum(frame: &mut [u8]) -> Result<()> {
    let layout = Layout::parse(frame)?;
    let check = l4_checksum_at(frame, &layout);
    let pos = layout.l4_offset + layout.l4.csum_offset();
    frame[pos..pos + 2].copy_from_slice(&check.to_be_bytes());
    Ok(())
}

/// Whether the L4 checksum in the frame is right. A UDP-over-IPv4 checksum of
/// 0 ("none") counts as right.
pub fn verify_l4_checksum(frame: &[u8]) -> Result<bool> {
    let layout = Layout::parse(frame)?;
    Ok(verify_l4_checksum_at(frame, &layout))
}

/// [`verify_l4_checksum`] for an already parsed `layout`.
///
/// # Panics
/// If `layout` does not describe `frame` (take it from [`Layout::parse`]).
pub fn verify_l4_checksum_at(frame: &[u8], layout: &Layout) -> bool {
    let l4 = &frame[layout.l4_offset..layout.l3_end];
    let field = layout.l4.csum_offset();
    let stored = u16::from_be_bytes([l4[field], l4[field + 1]]);
    if layout.l4 == L4Proto::Udp && layout.ip == IpVersion::V4 && stored == 0 {
        return true;
    }
    let mut c = pseudo_header(frame, layout, l4.len());
    c.add_bytes(l4);
    c.fold() == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    /// RFC 1071 done the slow way.
    fn naive(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for pair in data.chunks(2) {
            let w = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            s += u32::from(w);
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(Csum::new().add_bytes(&d).fold(), 0xddf2);
        assert_eq!(checksum(&d), !0xddf2);
    }

    #[test]
    fn ipv4_header_example() {
        // A classic example header with checksum 0xb861.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
            0x00, 0xc7,
        ];
        assert_eq!(ipv4_header_checksum(&h), 0xb861);
        assert_eq!(Csum::new().add_bytes(&h).fold(), 0xffff);
    }

    #[test]
    fn pieces_match_whole_and_naive() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        for len in [0, 1, 2, 7, 8, 9, 31, 32, 33, 63, 64, 65, 999, 1000] {
            let d = &data[..len];
            let whole = checksum(d);
            assert_eq!(whole, naive(d), "len {len}");
            for cut in [0, 1, 3, len / 2, len.saturating_sub(1)] {
                let cut = cut.min(len);
                let mut c = Csum::new();
                c.add_bytes(&d[..cut]).add_bytes(&[]).add_bytes(&d[cut..]);
                assert_eq!(c.finish(), whole, "len {len} cut {cut}");
            }
        }
        assert_eq!(checksum(&[0xff; 4096]), 0);
    }

    #[test]
    fn incremental_update() {
        let mut d = [0x12u8, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0];
        let c0 = checksum(&d);
        d[2..4].copy_from_slice(&0xabcdu16.to_be_bytes());
        assert_eq!(update_u16(c0, 0x5678, 0xabcd), checksum(&d));
        let c1 = checksum(&d);
        d[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
        assert_eq!(update_u32(c1, 0x9abc_def0, 0x0102_0304), checksum(&d));
    }

    #[test]
    fn complete_csum_bounds() {
        let mut f = [0u8; 10];
        assert_eq!(complete_csum(&mut f, 4, 5), Err(Error::CsumOutOfFrame));
        assert_eq!(complete_csum(&mut f, 11, 0), Err(Error::CsumOutOfFrame));
        assert_eq!(complete_csum(&mut f, usize::MAX, 2), Err(Error::CsumOutOfFrame));
        complete_csum(&mut f, 4, 4).unwrap();
        // All zero sums to 0, stored as 0xffff.
        assert_eq!(&f[8..], &[0xff, 0xff]);
    }
}
