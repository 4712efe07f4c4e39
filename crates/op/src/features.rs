//! Feature bits a VF offers, and virtio-net header sizes.

use virtio_bindings::virtio_config::{
    VIRTIO_F_IN_ORDER, VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
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
    | PROTOCOL_FEATURES;

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
