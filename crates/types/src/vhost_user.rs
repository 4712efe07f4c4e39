//! The vhost-user wire vocabulary, shared by the backend (`vfnic-bus`) and
//! the front-end library (`vfnic-user`): request codes, header flags,
//! protocol feature bits, sizes. Numbers from the vhost-user specification
//! (QEMU `docs/interop/vhost-user.rst`).

/// Size of the vhost-user message header: request, flags, size (three `u32` LE).
pub const HEADER_SIZE: usize = 12;

/// Largest payload either side accepts (the largest real message,
/// GET_CONFIG with 256 bytes of config space, is 268 bytes); bigger is a
/// framing error.
pub const MAX_PAYLOAD: usize = 4096;

/// Request codes (`VhostUserRequest` in the vhost-user spec), frontend to backend.
pub mod request {
    /// Query the device features offered by the backend.
    pub const GET_FEATURES: u32 = 1;
    /// Set the features the frontend acknowledges.
    pub const SET_FEATURES: u32 = 2;
    /// Claim the session.
    pub const SET_OWNER: u32 = 3;
    /// Release the session (deprecated).
    pub const RESET_OWNER: u32 = 4;
    /// Share the frontend's memory regions (one fd per region).
    pub const SET_MEM_TABLE: u32 = 5;
    /// Dirty log base (live migration).
    pub const SET_LOG_BASE: u32 = 6;
    /// Dirty log eventfd (live migration).
    pub const SET_LOG_FD: u32 = 7;
    /// Set a vring's size.
    pub const SET_VRING_NUM: u32 = 8;
    /// Set a vring's descriptor/avail/used addresses (frontend virtual addresses).
    pub const SET_VRING_ADDR: u32 = 9;
    /// Set a vring's next avail index.
    pub const SET_VRING_BASE: u32 = 10;
    /// Stop a vring and fetch its next avail index.
    pub const GET_VRING_BASE: u32 = 11;
    /// Set a vring's kick (doorbell) eventfd.
    pub const SET_VRING_KICK: u32 = 12;
    /// Set a vring's call (interrupt) eventfd.
    pub const SET_VRING_CALL: u32 = 13;
    /// Set a vring's error eventfd.
    pub const SET_VRING_ERR: u32 = 14;
    /// Query the protocol features offered by the backend.
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    /// Set the protocol features the frontend acknowledges.
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    /// Query the number of queues the backend supports.
    pub const GET_QUEUE_NUM: u32 = 17;
    /// Enable or disable a vring.
    pub const SET_VRING_ENABLE: u32 = 18;
    /// Ask the backend to broadcast a RARP for a MAC.
    pub const SEND_RARP: u32 = 19;
    /// Tell the backend the MTU.
    pub const NET_SET_MTU: u32 = 20;
    /// Share a socket for backend-initiated requests.
    pub const SET_BACKEND_REQ_FD: u32 = 21;
    /// IOTLB update/invalidate message.
    pub const IOTLB_MSG: u32 = 22;
    /// Byte order of a legacy (pre-1.0) vring.
    pub const SET_VRING_ENDIAN: u32 = 23;
    /// Read the device configuration space.
    pub const GET_CONFIG: u32 = 24;
    /// Write the device configuration space.
    pub const SET_CONFIG: u32 = 25;
    /// Reset the device (keeps the session).
    pub const RESET_DEVICE: u32 = 34;
    /// Query the maximum number of memory slots.
    pub const GET_MAX_MEM_SLOTS: u32 = 36;
    /// Add one memory region.
    pub const ADD_MEM_REG: u32 = 37;
    /// Remove one memory region.
    pub const REM_MEM_REG: u32 = 38;
    /// Set the virtio device status byte.
    pub const SET_STATUS: u32 = 39;
    /// Read the virtio device status byte.
    pub const GET_STATUS: u32 = 40;
}

/// Header flag bits.
pub mod flags {
    /// Protocol version 1, in bits 0-1 of every message.
    pub const VERSION: u32 = 0x1;
    /// Mask of the version bits.
    pub const VERSION_MASK: u32 = 0x3;
    /// Set by the backend on replies.
    pub const REPLY: u32 = 0x4;
    /// Set by the frontend to ask for a REPLY_ACK status reply.
    pub const NEED_REPLY: u32 = 0x8;
}

/// Protocol feature masks (`VHOST_USER_PROTOCOL_F_*`, as `1 << bit`).
pub mod protocol_features {
    /// Multiple queues.
    pub const MQ: u64 = 1 << 0;
    /// Backend acks set-requests flagged NEED_REPLY.
    pub const REPLY_ACK: u64 = 1 << 3;
    /// NET_SET_MTU.
    pub const NET_MTU: u64 = 1 << 4;
    /// Backend-initiated request channel.
    pub const BACKEND_REQ: u64 = 1 << 5;
    /// GET_CONFIG / SET_CONFIG.
    pub const CONFIG: u64 = 1 << 9;
    /// RESET_DEVICE.
    pub const RESET_DEVICE: u64 = 1 << 13;
    /// SET_STATUS / GET_STATUS.
    pub const STATUS: u64 = 1 << 16;
}

/// Requests the backend sends the front end on the backend request channel
/// (`SET_BACKEND_REQ_FD`).
pub mod backend_request {
    /// `VHOST_USER_BACKEND_IOTLB_MSG`.
    pub const IOTLB_MSG: u32 = 1;
    /// `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG`: re-read the config space.
    pub const CONFIG_CHANGE_MSG: u32 = 2;
}

/// Bit 8 of a kick/call/err payload: no fd is attached (polling mode).
pub const VRING_NOFD_MASK: u64 = 1 << 8;
