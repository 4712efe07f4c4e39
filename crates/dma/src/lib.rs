//! Stage ③ of the adapter: what the DMA engines use to touch tenant memory.
//!
//! * [`mem`]: the DMA window. The memory table a tenant shares (one fd per
//!   region) is mapped here, checked against each file's size, and every
//!   address the tenant hands us (vring addresses in its virtual space,
//!   descriptor addresses in guest-physical space) is translated and
//!   bounds-checked through it.
//! * [`ring`]: raw access to a split virtqueue (descriptor table, avail and
//!   used rings) with the memory ordering the virtio spec asks for, and
//!   notification suppression (`EVENT_IDX`, `NO_NOTIFY`).
//! * [`packed`]: the same for a packed virtqueue (`VIRTIO_F_RING_PACKED`):
//!   one descriptor ring with wrap counters, chains taken and returned by
//!   [`packed::Token`], and event suppression areas.
//! * [`chain`]: walking a descriptor chain (direct or indirect) into a fixed
//!   array of host segments, with loop, length and permission checks. No
//!   allocation.
//! * [`copy`]: the one copy, from the sender's segments straight into the
//!   receiver's segments.
//!
//! This crate is where the data path's `unsafe` lives; each block says which
//! invariant makes it sound. The engine threads that drive it are in
//! `vfnic-engine`.
#![deny(missing_docs)]

pub mod ab;
pub mod chain;
pub mod copy;
pub mod mem;
pub mod packed;
pub mod ring;
pub mod sigbus;
pub mod tsc;
pub mod vq;

pub use chain::{Chain, ChainError, Segment, MAX_CHAIN_SEGMENTS};
pub use mem::{GuestMemory, MemError, RegionSpec, Window};
pub use packed::{PackedRing, PopError, Token};
pub use ring::{RingAddrs, RingError, SplitRing};
pub use vq::{Filled, Virtqueue};
