//! vhost-user message vocabulary and encoding (sans-IO).
//!
//! Everything here is plain data: request codes, flag and feature masks, and the
//! little-endian wire encoding of the header and of each payload the frontend sends
//! or decodes. No syscalls; [`crate::conn::Conn`] moves the bytes.

pub use vfnic_types::vhost_user::{
    backend_request, flags, protocol_features, request, HEADER_SIZE, MAX_PAYLOAD, VRING_NOFD_MASK,
};

/// Virtio(-net) device feature masks (`VIRTIO_NET_F_*`, `VIRTIO_F_*`, as `1 << bit`).
pub mod features {
    /// Device handles packets with partial checksum.
    pub const CSUM: u64 = 1 << 0;
    /// Driver handles packets with partial checksum.
    pub const GUEST_CSUM: u64 = 1 << 1;
    /// Device has a MAC address in its config space.
    pub const MAC: u64 = 1 << 5;
    /// Driver can merge receive buffers.
    pub const MRG_RXBUF: u64 = 1 << 15;
    /// Config space has a link status field.
    pub const STATUS: u64 = 1 << 16;
    /// Control virtqueue.
    pub const CTRL_VQ: u64 = 1 << 17;
    /// Multiple queue pairs.
    pub const MQ: u64 = 1 << 22;
    /// used_event / avail_event notification suppression.
    pub const EVENT_IDX: u64 = 1 << 29;
    /// `VHOST_USER_F_PROTOCOL_FEATURES`: protocol features may be negotiated.
    pub const PROTOCOL_FEATURES: u64 = 1 << 30;
    /// Virtio 1.x (12-byte net header, little-endian rings).
    pub const VERSION_1: u64 = 1 << 32;
    /// Packed ring layout.
    pub const RING_PACKED: u64 = 1 << 34;
    /// Buffers are used in the order they were made available.
    pub const IN_ORDER: u64 = 1 << 35;
}

/// Virtio device status bits (SET_STATUS / GET_STATUS).
pub mod status {
    /// The driver noticed the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The driver knows how to drive the device.
    pub const DRIVER: u8 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device hit an error it cannot recover from.
    pub const NEEDS_RESET: u8 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u8 = 128;
}

/// vhost-user message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Request code.
    pub request: u32,
    /// Flags: version, REPLY, NEED_REPLY.
    pub flags: u32,
    /// Payload size in bytes.
    pub size: u32,
}

impl Header {
    /// Encodes the header as 12 little-endian bytes.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(&self.request.to_le_bytes());
        b[4..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..12].copy_from_slice(&self.size.to_le_bytes());
        b
    }

    /// Decodes a header from 12 little-endian bytes.
    pub fn decode(b: &[u8; HEADER_SIZE]) -> Self {
        Header { request: le_u32(&b[0..4]), flags: le_u32(&b[4..8]), size: le_u32(&b[8..12]) }
    }
}

/// Encodes a whole message: header (with `size = payload.len()`) followed by payload.
///
/// # Panics
/// Panics if `payload` is longer than `u32::MAX` bytes (a caller bug).
pub fn encode_message(request: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
    let size = u32::try_from(payload.len()).expect("vhost-user payload fits u32");
    let mut v = Vec::with_capacity(HEADER_SIZE + payload.len());
    v.extend_from_slice(&Header { request, flags, size }.encode());
    v.extend_from_slice(payload);
    v
}

/// Encodes a `u64` payload (features, status, ack).
pub fn encode_u64(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// Decodes a `u64` payload; `None` unless exactly 8 bytes.
pub fn decode_u64(b: &[u8]) -> Option<u64> {
    let a: [u8; 8] = b.try_into().ok()?;
    Some(u64::from_le_bytes(a))
}

/// Encodes a kick/call/err payload: queue index in bits 0-7, bit 8 when no fd rides along.
pub fn encode_vring_fd(index: u8, no_fd: bool) -> Vec<u8> {
    let mut v = u64::from(index);
    if no_fd {
        v |= VRING_NOFD_MASK;
    }
    encode_u64(v)
}

/// Vring state payload: `{index u32, num u32}` (NUM, BASE, ENABLE, GET_VRING_BASE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VringState {
    /// Queue index.
    pub index: u32,
    /// Size, base index or enable flag, depending on the request.
    pub num: u32,
}

impl VringState {
    /// Encodes to 8 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8);
        v.extend_from_slice(&self.index.to_le_bytes());
        v.extend_from_slice(&self.num.to_le_bytes());
        v
    }

    /// Decodes from exactly 8 bytes.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != 8 {
            return None;
        }
        Some(VringState { index: le_u32(&b[0..4]), num: le_u32(&b[4..8]) })
    }
}

/// Vring address payload. Addresses are in the FRONTEND's virtual address space
/// (the `userspace_addr` numbering of the memory table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VringAddr {
    /// Queue index.
    pub index: u32,
    /// Flags (bit 0: log used ring writes).
    pub flags: u32,
    /// Descriptor table address.
    pub desc_user_addr: u64,
    /// Used ring address.
    pub used_user_addr: u64,
    /// Avail ring address.
    pub avail_user_addr: u64,
    /// Dirty-log guest address of the used ring.
    pub log_guest_addr: u64,
}

impl VringAddr {
    /// Encoded size in bytes.
    pub const SIZE: usize = 40;

    /// Encodes to 40 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::SIZE);
        v.extend_from_slice(&self.index.to_le_bytes());
        v.extend_from_slice(&self.flags.to_le_bytes());
        v.extend_from_slice(&self.desc_user_addr.to_le_bytes());
        v.extend_from_slice(&self.used_user_addr.to_le_bytes());
        v.extend_from_slice(&self.avail_user_addr.to_le_bytes());
        v.extend_from_slice(&self.log_guest_addr.to_le_bytes());
        v
    }

    /// Decodes from exactly 40 bytes.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != Self::SIZE {
            return None;
        }
        Some(VringAddr {
            index: le_u32(&b[0..4]),
            flags: le_u32(&b[4..8]),
            desc_user_addr: le_u64(&b[8..16]),
            used_user_addr: le_u64(&b[16..24]),
            avail_user_addr: le_u64(&b[24..32]),
            log_guest_addr: le_u64(&b[32..40]),
        })
    }
}

/// One memory-table region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MemRegion {
    /// Guest physical address of the region (what descriptors carry).
    pub guest_phys_addr: u64,
    /// Region size in bytes.
    pub memory_size: u64,
    /// Frontend virtual address of the region (what SET_VRING_ADDR carries).
    pub userspace_addr: u64,
    /// Offset of the region in its fd.
    pub mmap_offset: u64,
}

impl MemRegion {
    /// Encoded size in bytes.
    pub const SIZE: usize = 32;

    /// Encodes to 32 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::SIZE);
        v.extend_from_slice(&self.guest_phys_addr.to_le_bytes());
        v.extend_from_slice(&self.memory_size.to_le_bytes());
        v.extend_from_slice(&self.userspace_addr.to_le_bytes());
        v.extend_from_slice(&self.mmap_offset.to_le_bytes());
        v
    }

    /// Decodes from exactly 32 bytes.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != Self::SIZE {
            return None;
        }
        Some(MemRegion {
            guest_phys_addr: le_u64(&b[0..8]),
            memory_size: le_u64(&b[8..16]),
            userspace_addr: le_u64(&b[16..24]),
            mmap_offset: le_u64(&b[24..32]),
        })
    }
}

/// Encodes a SET_MEM_TABLE payload: `{nregions u32, padding u32, regions...}`.
///
/// # Panics
/// Panics if there are more than `u32::MAX` regions (a caller bug).
pub fn encode_mem_table(regions: &[MemRegion]) -> Vec<u8> {
    let n = u32::try_from(regions.len()).expect("region count fits u32");
    let mut v = Vec::with_capacity(8 + regions.len() * MemRegion::SIZE);
    v.extend_from_slice(&n.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    for r in regions {
        v.extend_from_slice(&r.encode());
    }
    v
}

/// Decodes a SET_MEM_TABLE payload (used by the in-crate fake backend and by tests).
pub fn decode_mem_table(b: &[u8]) -> Option<Vec<MemRegion>> {
    if b.len() < 8 {
        return None;
    }
    let n = le_u32(&b[0..4]) as usize;
    let body = &b[8..];
    if body.len() != n.checked_mul(MemRegion::SIZE)? {
        return None;
    }
    body.chunks_exact(MemRegion::SIZE).map(MemRegion::decode).collect()
}

/// Encodes a single-region payload for ADD_MEM_REG / REM_MEM_REG: `{padding u64, region}`.
pub fn encode_single_region(region: &MemRegion) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + MemRegion::SIZE);
    v.extend_from_slice(&0u64.to_le_bytes());
    v.extend_from_slice(&region.encode());
    v
}

/// Device config payload: `{offset u32, size u32, flags u32, payload[size]}`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ConfigPayload {
    /// Offset into the device config space.
    pub offset: u32,
    /// Number of config bytes.
    pub size: u32,
    /// Flags (0 = writable, 1 = live migration).
    pub flags: u32,
    /// Config bytes (`size` of them; zeros in a GET_CONFIG request).
    pub payload: Vec<u8>,
}

impl ConfigPayload {
    /// Encodes header and payload. `size` is written as given, so a test can lie about it.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(12 + self.payload.len());
        v.extend_from_slice(&self.offset.to_le_bytes());
        v.extend_from_slice(&self.size.to_le_bytes());
        v.extend_from_slice(&self.flags.to_le_bytes());
        v.extend_from_slice(&self.payload);
        v
    }

    /// Decodes; `None` if shorter than 12 bytes or if `size` disagrees with the length.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < 12 {
            return None;
        }
        let size = le_u32(&b[4..8]);
        if b.len() - 12 != size as usize {
            return None;
        }
        Some(ConfigPayload { offset: le_u32(&b[0..4]), size, flags: le_u32(&b[8..12]), payload: b[12..].to_vec() })
    }
}

pub(crate) fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

pub(crate) fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_and_layout() {
        let h = Header { request: request::SET_VRING_ADDR, flags: flags::VERSION | flags::NEED_REPLY, size: 40 };
        let b = h.encode();
        assert_eq!(b, [9, 0, 0, 0, 9, 0, 0, 0, 40, 0, 0, 0]);
        assert_eq!(Header::decode(&b), h);
    }

    #[test]
    fn message_has_header_then_payload() {
        let m = encode_message(request::SET_FEATURES, flags::VERSION, &encode_u64(0x1_0000_8000));
        assert_eq!(m.len(), 20);
        assert_eq!(&m[0..4], &2u32.to_le_bytes());
        assert_eq!(&m[8..12], &8u32.to_le_bytes());
        assert_eq!(decode_u64(&m[12..]), Some(0x1_0000_8000));
        assert_eq!(decode_u64(&m[12..19]), None);
    }

    #[test]
    fn vring_payloads() {
        let s = VringState { index: 1, num: 256 };
        assert_eq!(s.encode(), [1, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(VringState::decode(&s.encode()), Some(s));
        let a = VringAddr {
            index: 1,
            flags: 0,
            desc_user_addr: 0x7f00_0000_1000,
            used_user_addr: 0x7f00_0000_3000,
            avail_user_addr: 0x7f00_0000_2000,
            log_guest_addr: 0,
        };
        let e = a.encode();
        assert_eq!(e.len(), VringAddr::SIZE);
        // Field order on the wire: desc, used, avail, log.
        assert_eq!(le_u64(&e[16..24]), 0x7f00_0000_3000);
        assert_eq!(VringAddr::decode(&e), Some(a));
        assert_eq!(encode_vring_fd(1, false), 1u64.to_le_bytes());
        assert_eq!(encode_vring_fd(0, true), 0x100u64.to_le_bytes());
    }

    #[test]
    fn mem_table_layout() {
        let r = MemRegion {
            guest_phys_addr: 0x4000_0000,
            memory_size: 0x10_0000,
            userspace_addr: 0x7f12_3400_0000,
            mmap_offset: 0,
        };
        let p = encode_mem_table(&[r, r]);
        assert_eq!(p.len(), 8 + 2 * 32);
        assert_eq!(le_u32(&p[0..4]), 2);
        assert_eq!(le_u32(&p[4..8]), 0);
        assert_eq!(le_u64(&p[8..16]), 0x4000_0000);
        assert_eq!(decode_mem_table(&p), Some(vec![r, r]));
        assert_eq!(decode_mem_table(&p[..p.len() - 1]), None);
        assert_eq!(encode_single_region(&r).len(), 40);
    }

    #[test]
    fn config_payload() {
        let c = ConfigPayload { offset: 0, size: 6, flags: 0, payload: vec![2, 0, 0, 0, 0, 1] };
        let e = c.encode();
        assert_eq!(e.len(), 18);
        assert_eq!(ConfigPayload::decode(&e), Some(c));
        assert_eq!(ConfigPayload::decode(&e[..17]), None);
    }
}
