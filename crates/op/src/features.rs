//! Feature bits a VF offers, and virtio-net header sizes.

use virtio_bindings::virtio_config::{
    VIRTIO_F_IN_ORDER, VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// Bit of a feature number.
pub const fn bit(n: u32) -> u64 {
    1 << n
}

/// `VHOST_USER_F_PROTOCOL_FEATURES` (bit 30 of the virtio features).
pub const PROTOCOL_FEATURES: u64 = bit(30);

/// virtio-net features every VF offers.
pub const OFFERED: u64 = bit(VIRTIO_F_VERSION_1)
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_STATUS)
    | bit(VIRTIO_NET_F_MTU)
    | bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_NET_F_CTRL_VQ)
    | bit(VIRTIO_RING_F_EVENT_IDX)
    | bit(VIRTIO_RING_F_INDIRECT_DESC)
    | bit(VIRTIO_F_NOTIFY_ON_EMPTY)
    | bit(VIRTIO_F_RING_PACKED)
    | bit(VIRTIO_F_IN_ORDER)
    | OFFLOADS
    | PROTOCOL_FEATURES;

/// Checksum and segmentation offloads, both directions.
pub const OFFLOADS: u64 = bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_HOST_ECN)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_GUEST_ECN);

/// `virtio_net_hdr.flags`: the device must complete the checksum.
pub const HDR_F_NEEDS_CSUM: u8 = 1;
/// `gso_type` values.
pub const GSO_NONE: u8 = 0;
/// TCP over IPv4.
pub const GSO_TCPV4: u8 = 1;
/// TCP over IPv6.
pub const GSO_TCPV6: u8 = 4;
/// ECN bit of `gso_type`.
pub const GSO_ECN: u8 = 0x80;

/// The feature bits that allow a header's offloads in one direction.
struct OffloadBits {
    csum: u32,
    ecn: u32,
    tso4: u32,
    tso6: u32,
}

/// What a driver may send (the device takes these offloads over).
const SEND: OffloadBits = OffloadBits {
    csum: VIRTIO_NET_F_CSUM,
    ecn: VIRTIO_NET_F_HOST_ECN,
    tso4: VIRTIO_NET_F_HOST_TSO4,
    tso6: VIRTIO_NET_F_HOST_TSO6,
};

/// What a driver may receive (it takes these offloads over).
const RECEIVE: OffloadBits = OffloadBits {
    csum: VIRTIO_NET_F_GUEST_CSUM,
    ecn: VIRTIO_NET_F_GUEST_ECN,
    tso4: VIRTIO_NET_F_GUEST_TSO4,
    tso6: VIRTIO_NET_F_GUEST_TSO6,
};

/// Whether `features` allow a header with these fields, by `bits`.
#[inline]
fn offloads_allowed(features: u64, flags: u8, gso_type: u8, bits: &OffloadBits) -> bool {
    if flags | gso_type == 0 {
        // No offload asked for (nearly every frame): nothing to check.
        return true;
    }
    let csum_ok = flags & HDR_F_NEEDS_CSUM == 0 || has(features, bits.csum);
    let ecn_ok = gso_type & GSO_ECN == 0 || has(features, bits.ecn);
    let gso_ok = match gso_type & !GSO_ECN {
        GSO_NONE => true,
        GSO_TCPV4 => has(features, bits.tso4),
        GSO_TCPV6 => has(features, bits.tso6),
        _ => false,
    };
    csum_ok && ecn_ok && gso_ok
}

/// Whether a driver with `features` may *send* a header with these fields.
#[inline]
pub fn may_send(features: u64, flags: u8, gso_type: u8) -> bool {
    offloads_allowed(features, flags, gso_type, &SEND)
}

/// Whether a driver with `features` may *receive* a header with these fields.
#[inline]
pub fn may_receive(features: u64, flags: u8, gso_type: u8) -> bool {
    offloads_allowed(features, flags, gso_type, &RECEIVE)
}

/// True if `features` has feature number `n`.
pub const fn has(features: u64, n: u32) -> bool {
    features & bit(n) != 0
}

/// Size of the virtio-net header the driver puts before each frame.
pub fn net_hdr_len(features: u64) -> usize {
    if has(features, VIRTIO_F_VERSION_1) || has(features, VIRTIO_NET_F_MRG_RXBUF) {
        12
    } else {
        10
    }
}

/// Whether the driver negotiated an offload it may ask for when it sends
/// (checksum or segmentation the device takes over). Only then does the
/// device read the virtio-net header of a transmitted frame: without one
/// the spec has the driver zero its flags and GSO type, so there is
/// nothing in it to read, and a header left unread stays in the driver's
/// cache for its next write (DPDK's vhost reads it on the same condition).
/// What a driver that negotiated none writes there anyway is ignored.
pub fn sends_offloads(features: u64) -> bool {
    features
        & (bit(VIRTIO_NET_F_CSUM)
            | bit(VIRTIO_NET_F_HOST_TSO4)
            | bit(VIRTIO_NET_F_HOST_TSO6)
            | bit(VIRTIO_NET_F_HOST_ECN))
        != 0
}

/// Bytes of a transmitted frame's head the device does not read: its
/// virtio-net header when the driver negotiated no send offload
/// ([`sends_offloads`]), else none.
pub fn tx_hdr_unread(features: u64) -> u8 {
    if sends_offloads(features) {
        0
    } else {
        net_hdr_len(features) as u8
    }
}

/// `IN_ORDER` negotiated: buffers are used in the order they were made
/// available, so a batch may be returned with one used entry.
pub fn in_order(features: u64) -> bool {
    has(features, VIRTIO_F_IN_ORDER)
}

/// `EVENT_IDX` negotiated.
pub fn event_idx(features: u64) -> bool {
    has(features, VIRTIO_RING_F_EVENT_IDX)
}

/// `INDIRECT_DESC` negotiated.
pub fn indirect(features: u64) -> bool {
    has(features, VIRTIO_RING_F_INDIRECT_DESC)
}

/// `RING_PACKED` negotiated.
pub fn packed(features: u64) -> bool {
    has(features, VIRTIO_F_RING_PACKED)
}

/// `MRG_RXBUF` negotiated.
pub fn mergeable(features: u64) -> bool {
    has(features, VIRTIO_NET_F_MRG_RXBUF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tx_header_is_read_only_with_a_send_offload() {
        let base = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MRG_RXBUF);
        // Receive offloads alone do not make the sender's header matter.
        let rx_only = base | bit(VIRTIO_NET_F_GUEST_CSUM) | bit(VIRTIO_NET_F_GUEST_TSO4);
        assert!(!sends_offloads(rx_only));
        assert_eq!(tx_hdr_unread(rx_only), 12);
        // A legacy driver's header is 10 bytes.
        assert_eq!(tx_hdr_unread(0), 10);
        for n in [VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_ECN] {
            assert!(sends_offloads(base | bit(n)), "feature {n}");
            assert_eq!(tx_hdr_unread(base | bit(n)), 0, "feature {n}");
        }
    }
}
