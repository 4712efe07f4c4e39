//! Stage ④a of the adapter: transmit QoS and the egress arbiter. Every
//! destination (a VF's receive side) is shared among the senders that
//! target it with the QoS of an SR-IOV NIC: a maximum rate, a minimum
//! guarantee and weights.
//!
//! Sans-IO: pure logic, no threads, no syscalls, no clock. The caller passes
//! the time as `now_ns` (any monotonic nanosecond count) and gets deadlines
//! back ([`TokenBucket::next_ready_ns`], [`Share::link_wait`]); it owns the
//! timers and the frames (the engines, `crates/engine/src/forward.rs` step
//! 2b).
//!
//! # Algorithm
//!
//! * **Maximum rate** (`max_tx_rate`): a [`TokenBucket`] per sender queue,
//!   refilled on every call from the nanoseconds elapsed with gcd-reduced
//!   integer arithmetic and the fraction of a byte carried over, so the
//!   long-run rate is exact and there is no cool-down timer to quantize it
//!   (the skew cloud-hypervisor documents for its 100 ms timer). After
//!   firecracker's `rate_limiter::TokenBucket`, with the clock injected.
//! * **Minimum guarantee** (`min_tx_rate`): a second bucket per sender at
//!   the minimum rate; under contention the engines serve each guaranteed
//!   sender from it first, and a guaranteed frame that finds no room
//!   reserves the destination's next room ([`Share::reserve`]). mlx5
//!   programs the same setting as a TSAR "bw_share" weight; here the
//!   guarantee is explicit and what is left is shared by weight, so a
//!   sender gets at least its minimum and, above it, its weighted share.
//! * **Weights**: at a congested destination (no RX buffer, or its link
//!   full) senders are admitted by start-time fair queueing over bytes
//!   ([`Share`]): exact long-run shares in proportion to the weights, at
//!   most one quantum of lag, and no credit banked by a sender that ran dry
//!   or was held by its own shaper. Without contention every sender gets
//!   what it sends (work-conserving).
//! * **Capacity**: a VF with a link speed (`speed`) has a bucket at that
//!   rate in its [`Share`]; one without drains as fast as its tenant posts
//!   buffers, and the caller counts those.
//!
//! # Module map
//!
//! * [`bucket`]: [`TokenBucket`] and rate helpers.
//! * [`share`]: [`Share`], the arbiter of one destination.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod bucket;
pub mod share;

pub use bucket::{default_burst_bytes, mbps_to_bytes_per_s, TokenBucket, NS_PER_S};
pub use share::Share;
