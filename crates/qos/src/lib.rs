//! Stage ④a of the adapter: the egress arbiter. Every destination (a VF's
//! RX or an uplink) is shared among the senders that target it with the
//! QoS of an SR-IOV NIC: a maximum rate, a minimum guarantee and weights.
//!
//! Sans-IO: pure logic, no threads, no syscalls, no clock. The caller passes
//! the time as `now_ns` (any monotonic nanosecond count) and gets deadlines
//! back ([`TokenBucket::next_ready_ns`], [`Round::next_ns`]); it owns the
//! timers and the frames.
//!
//! # Algorithm
//!
//! * **Maximum rate** (`max_tx_rate`): a [`TokenBucket`] per sender, refilled
//!   on every call from the nanoseconds elapsed with gcd-reduced integer
//!   arithmetic and the fraction of a byte carried over, so the long-run
//!   rate is exact and there is no cool-down timer to quantize it (the
//!   skew cloud-hypervisor documents for its 100 ms timer). After
//!   firecracker's `rate_limiter::TokenBucket`, with the clock injected.
//! * **Minimum guarantee** (`min_tx_rate`): a second bucket per sender at the
//!   minimum rate; under contention each backlogged sender is served from it
//!   first. mlx5 programs the same setting as a TSAR "bw_share" weight
//!   (min rate = weight / sum of weights); here the guarantee is explicit
//!   and what is left is shared by weight, so a sender gets at least its
//!   minimum and, above it, its weighted share. Without contention every
//!   sender gets what it asks for, up to its maximum (work-conserving).
//! * **Weights**: deficit round robin (M. Shreedhar and G. Varghese,
//!   "Efficient fair queuing using deficit round robin", SIGCOMM 1995) over
//!   byte deficits, so indivisible frames of any size share bytes, not
//!   frames, in proportion to the weights.
//! * **Bursts**: every bucket holds `max(rate x 1 ms, 2 x 1514 B)` and grows
//!   to two of the largest frames it has metered (64 KiB GSO frames
//!   included), so a frame that conforms but waits for room does not let the
//!   bucket overflow and waste the rate. Limits hold within one burst and
//!   one frame.
//! * **Capacity**: an uplink has a line rate (a bucket of its own); a VF's RX
//!   has none the arbiter could know: it drains as fast as its tenant does,
//!   so the caller passes what it accepts now as the budget of each call.
//!
//! # Module map
//!
//! * [`bucket`]: [`TokenBucket`] and rate helpers.
//! * [`arbiter`]: [`Arbiter`] (one per destination), settings, counters.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod arbiter;
pub mod bucket;

pub use arbiter::{
    Arbiter, ArbiterConfig, ArbiterCounters, Backlog, DropReason, Limit, Round, SenderConfig, SenderCounters, SenderId,
    Verdict, DEFAULT_QUANTUM_BYTES,
};
pub use bucket::{default_burst_bytes, mbps_to_bytes_per_s, TokenBucket, NS_PER_S};
