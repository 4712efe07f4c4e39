//! Stage ⑤ of the adapter: offloads.
//!
//! Pure packet logic on byte slices: no I/O, no threads, no clock (the caller
//! passes `now_ns`), no allocation on the per-packet path. The DMA engines
//! call it between the switch decision and delivery:
//!
//! * a TX frame carries a [`VirtioNetHdr`]; a GSO frame goes to a receiver
//!   that accepts it (GUEST_TSO4/6 for a VF, the TAP/AF_PACKET offloads for an
//!   uplink) unchanged, and through [`segment`] / [`Segmenter`] otherwise;
//! * a `NEEDS_CSUM` frame going to a receiver without GUEST_CSUM gets its
//!   checksum finished by [`complete_csum`] (what a device does);
//! * TCP segments arriving from an uplink toward a VF that accepts GUEST_TSO
//!   are aggregated by [`Gro`] before delivery.
//!
//! Module map:
//!
//! | module | contents |
//! |---|---|
//! | [`hdr`] | the 12-byte `virtio_net_hdr` (v1 / `MRG_RXBUF` layout): parse, emit, checked constructors |
//! | [`csum`] | Internet checksum: [`Csum`] accumulator (8 bytes at a time), incremental update, [`complete_csum`], from-scratch L4 checksums |
//! | [`layout`] | where the headers are: Ethernet + up to two VLAN tags + IPv4/IPv6 (+ extension headers) + TCP/UDP |
//! | [`gso`] | software segmentation (TSO for TCP v4/v6, USO for UDP) and [`segment_size_limits`] |
//! | [`gro`] | the GRO aggregator: bounded flow table, Linux GRO merge rules, caller-driven flush timer |
//!
//! Input is hostile: every parser is checked and reports an [`Error`]; no
//! input makes this crate panic.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod csum;
pub mod gro;
pub mod gso;
pub mod hdr;
pub mod layout;

pub use csum::{complete_csum, Csum};
pub use gro::{Gro, GroConfig, GroCounters, GroCsum};
pub use gso::{segment, segment_size_limits, Segment, SegmentLimits, SegmentReport, Segmenter};
pub use hdr::{GsoType, VirtioNetHdr};
pub use layout::{IpVersion, L4Proto, Layout};

/// What went wrong with a frame or a header. Every variant is a property of
/// the input (the caller counts it and drops or passes the frame), never a bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Fewer than 12 bytes for the virtio-net header.
    #[error("Virtio-net header truncated")]
    HeaderTruncated,
    /// The output slice cannot hold what must be written.
    #[error("Output buffer too small")]
    BufferTooSmall,
    /// `csum_start + csum_offset + 2` lies beyond the frame.
    #[error("Checksum position outside the frame")]
    CsumOutOfFrame,
    /// A `gso_type` this crate does not know.
    #[error("Unknown GSO type {0:#04x}")]
    UnknownGsoType(u8),
    /// UFO (`gso_type` UDP = 3, IP fragmentation) is deprecated and not offered.
    #[error("UFO is not supported")]
    UfoUnsupported,
    /// A GSO header with `gso_size` 0.
    #[error("GSO size is zero")]
    ZeroGsoSize,
    /// Segmentation asked for a frame whose header says `GSO_NONE`.
    #[error("Frame is not a GSO frame")]
    NotGso,
    /// The frame ends inside a header, or a length field points past its end.
    #[error("Frame truncated")]
    FrameTruncated,
    /// Neither IPv4 nor IPv6 (after at most two VLAN tags).
    #[error("Unsupported EtherType {0:#06x}")]
    UnsupportedEtherType(u16),
    /// An IPv4/IPv6 header with a bad version, header length or total length.
    #[error("Malformed IP header")]
    BadIpHeader,
    /// A fragment, or an IPv6 extension header this crate does not walk.
    #[error("IP fragment or unsupported extension header")]
    UnsupportedIp,
    /// Neither TCP nor UDP.
    #[error("Unsupported L4 protocol {0}")]
    UnsupportedL4(u8),
    /// A TCP header with a data offset below 5 or past the packet, or a UDP
    /// header whose length field disagrees with the IP length.
    #[error("Malformed L4 header")]
    BadL4Header,
    /// The `gso_type` does not match the IP version / L4 protocol of the frame.
    #[error("GSO type does not match the frame")]
    GsoTypeMismatch,
    /// `csum_start` of a GSO frame is not the L4 header.
    #[error("Checksum start does not match the L4 header")]
    CsumStartMismatch,
    /// The headers are longer than [`gso::MAX_HEADERS_LEN`].
    #[error("Headers too long")]
    HeadersTooLong,
    /// The MTU leaves no room for payload after the L3 and L4 headers.
    #[error("MTU too small for the headers")]
    MtuTooSmall,
}

/// This crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
