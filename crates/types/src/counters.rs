//! Per-function counters: lock-free, updated by the engines, read by the
//! control plane.
//!
//! Directions are the tenant's: `tx` is what the tenant sent into the adapter,
//! `rx` what the adapter delivered to the tenant (as `ip -s link` inside the
//! guest would count them).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// A monotonically increasing event counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n` events.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one event.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n` events to a counter that has one writer at a time (the
    /// caller holds the lock that serializes its writers, e.g. its queue's
    /// lock). A plain load and store: no locked instruction, so the data
    /// path does not wait here for its stores to guest memory to drain.
    /// Readers may read it at any time.
    #[inline]
    pub fn add_exclusive(&self, n: u64) {
        self.0.store(self.0.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

macro_rules! reasons {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident => $s:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $v,)* }

        impl $name {
            /// Every value, in counter order.
            pub const ALL: &'static [$name] = &[$($name::$v,)*];

            /// Stable counter name used in `vfnic stats`.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s,)* }
            }
        }
    };
}

reasons! {
    /// Why a frame was dropped. The name says on which side of the function
    /// it counts (`tx_` = a frame the tenant sent, `rx_` = a frame for it).
    DropReason {
        /// The TX descriptor chain was malformed (see the error counters).
        TxBadDescriptor => "tx_dropped_bad_descriptor",
        /// Shorter than an Ethernet header.
        TxRunt => "tx_dropped_runt",
        /// Longer than the function's MTU allows.
        TxOversize => "tx_dropped_oversize",
        /// The sending function's link is administratively down.
        TxLinkDown => "tx_dropped_link_down",
        /// Unicast to the sender itself (no hairpin on a VEB).
        TxHairpin => "tx_dropped_hairpin",
        /// Source MAC not the VF's while spoof check is on.
        TxSpoofed => "tx_dropped_spoofed",
        /// An 802.1Q-tagged frame from a VF with a port VLAN, or from an
        /// untrusted VF (no VLAN hopping).
        TxVlan => "tx_dropped_vlan",
        /// Held back by the VF's max_tx_rate and then given up (counted
        /// only when frames are dropped, not when they wait).
        TxRateLimited => "tx_dropped_rate_limited",
        /// An offload request (checksum/GSO header) not negotiated or not
        /// consistent with the frame.
        TxBadOffload => "tx_dropped_bad_offload",
        /// The receiver had no RX buffer posted.
        RxNoBuffer => "rx_dropped_no_buffer",
        /// The receiver's buffer chain cannot hold the frame.
        RxBufferTooSmall => "rx_dropped_buffer_too_small",
        /// The receiver's RX chain was malformed (see the error counters).
        RxBadDescriptor => "rx_dropped_bad_descriptor",
        /// The receiver's link is administratively down.
        RxLinkDown => "rx_dropped_link_down",
        /// The receiver has no tenant attached or its RX queue is not started.
        RxNotReady => "rx_dropped_not_ready",
        /// An offload the engine does in software for a receiver without the
        /// feature failed on malformed headers.
        RxBadOffload => "rx_dropped_bad_offload",
    }
}

reasons! {
    /// Why frames a tenant sent were held back in its TX ring to wait
    /// (backpressure: they are sent later, not dropped). Counted each time
    /// frames go back to the ring, so a frame that waits several turns
    /// counts several times.
    HoldReason {
        /// Its own max_tx_rate shaper.
        RateLimited => "tx_held_rate_limited",
        /// The receiver had no RX buffer posted.
        NoBuffer => "tx_held_no_buffer",
        /// The receiver's link (VF or uplink `speed`) was full.
        LinkFull => "tx_held_link_full",
        /// Its turn at a congested receiver had not come (fair share by
        /// weight, or room held for another VF's min_tx_rate guarantee).
        FairShare => "tx_held_fair_share",
    }
}

impl DropReason {
    /// True for reasons counted against frames the tenant sent.
    pub fn is_tx(self) -> bool {
        self.as_str().starts_with("tx_")
    }
}

reasons! {
    /// A fault caused by the tenant: malformed protocol messages or rings.
    ErrorKind {
        /// A vhost-user message that could not be framed or parsed.
        MsgMalformed => "msg_malformed",
        /// A vhost-user request code the backend does not know.
        MsgUnknown => "msg_unknown",
        /// A well-formed request refused (bad index, bad state, bad value).
        MsgRefused => "msg_refused",
        /// A memory table refused (overlap, size beyond its file, too many regions).
        MemTableRefused => "mem_table_refused",
        /// A vring address outside the memory table.
        RingAddrInvalid => "ring_addr_invalid",
        /// A descriptor pointing outside the memory table.
        DescOutOfBounds => "desc_out_of_bounds",
        /// A descriptor chain that loops or is longer than the ring.
        ChainLoop => "desc_chain_loop",
        /// A descriptor index or next index beyond the ring.
        DescIndexInvalid => "desc_index_invalid",
        /// A length that overflows, or an indirect table of bad size.
        DescLengthInvalid => "desc_length_invalid",
        /// More buffers announced in the avail ring than the ring holds.
        AvailIndexInvalid => "avail_idx_invalid",
        /// Writable descriptors in a TX chain, or read-only ones in an RX chain.
        DescPermission => "desc_permission",
        /// A queue faulted by a ring error; it stays stopped until reset.
        QueueFaulted => "queue_faulted",
        /// The tenant connection was closed because of a protocol error.
        ConnectionClosed => "connection_closed_on_error",
        /// The tenant shrank its memory file under the adapter (SIGBUS
        /// contained); its queues are faulted.
        MemoryRevoked => "memory_revoked",
        /// A control-virtqueue (mailbox) command refused by PF policy or
        /// malformed; answered with `VIRTIO_NET_ERR`.
        MailboxRefused => "mailbox_refused",
    }
}

/// Traffic of one queue pair. Each counter is written under its queue's
/// lock only ([`Counter::add_exclusive`]); a VF's totals are the sums over
/// its queue pairs ([`VfCounters::snapshot`]).
#[derive(Debug, Default)]
pub struct QueueCounters {
    /// Frames delivered on this pair's RX queue.
    pub rx_packets: Counter,
    /// Bytes delivered on it (Ethernet frames, without the virtio-net
    /// header).
    pub rx_bytes: Counter,
    /// Frames taken from this pair's TX queue that entered the switch.
    pub tx_packets: Counter,
    /// Bytes of those frames.
    pub tx_bytes: Counter,
}

/// Counters of one virtual function (its traffic is counted per queue
/// pair: [`QueueCounters`]).
#[derive(Debug, Default)]
pub struct VfCounters {
    /// Kicks (doorbells) received from the tenant and acted upon.
    pub kicks: Counter,
    /// Interrupts (call eventfd writes) sent to the tenant.
    pub interrupts: Counter,
    /// Times the tenant connected.
    pub connects: Counter,
    /// GSO frames for this receiver that the engine segmented in software
    /// (it did not negotiate GUEST_TSO).
    pub gso_segmented: Counter,
    /// Partial checksums the engine completed in software for this
    /// receiver (it did not negotiate GUEST_CSUM).
    pub csum_completed: Counter,
    /// GSO frames delivered whole (passed through unsegmented).
    pub gso_passed: Counter,
    drops: [Counter; DropReason::ALL.len()],
    held: [Counter; HoldReason::ALL.len()],
    errors: [Counter; ErrorKind::ALL.len()],
}

impl VfCounters {
    /// Counts `n` frames dropped for `reason`.
    #[inline]
    pub fn drop_frames(&self, reason: DropReason, n: u64) {
        self.drops[reason as usize].add(n);
    }

    /// Counts `n` frames held back in the sender's ring for `reason`.
    #[inline]
    pub fn hold_frames(&self, reason: HoldReason, n: u64) {
        self.held[reason as usize].add(n);
    }

    /// Frames held back for `reason` so far.
    pub fn held(&self, reason: HoldReason) -> u64 {
        self.held[reason as usize].get()
    }

    /// Counts one tenant fault of `kind`.
    #[inline]
    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].inc();
    }

    /// Frames dropped for `reason` so far.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].get()
    }

    /// Faults of `kind` so far.
    pub fn errors(&self, kind: ErrorKind) -> u64 {
        self.errors[kind as usize].get()
    }

    /// A consistent-enough copy for reporting, with the traffic totals of
    /// the VF's queue pairs.
    pub fn snapshot(&self, queues: &[QueueCounters]) -> VfCountersSnapshot {
        let sum = |f: fn(&QueueCounters) -> &Counter| queues.iter().map(|q| f(q).get()).sum();
        let drops: BTreeMap<&'static str, u64> = DropReason::ALL.iter().map(|r| (r.as_str(), self.drops(*r))).collect();
        let side = |tx: bool| DropReason::ALL.iter().filter(|r| r.is_tx() == tx).map(|r| self.drops(*r)).sum();
        VfCountersSnapshot {
            tx_packets: sum(|q| &q.tx_packets),
            tx_bytes: sum(|q| &q.tx_bytes),
            rx_packets: sum(|q| &q.rx_packets),
            rx_bytes: sum(|q| &q.rx_bytes),
            tx_dropped: side(true),
            rx_dropped: side(false),
            kicks: self.kicks.get(),
            interrupts: self.interrupts.get(),
            connects: self.connects.get(),
            gso_segmented: self.gso_segmented.get(),
            csum_completed: self.csum_completed.get(),
            gso_passed: self.gso_passed.get(),
            drops,
            tx_held: HoldReason::ALL.iter().map(|r| self.held(*r)).sum(),
            held: HoldReason::ALL.iter().map(|r| (r.as_str(), self.held(*r))).collect(),
            errors: ErrorKind::ALL.iter().map(|k| (k.as_str(), self.errors(*k))).collect(),
        }
    }
}

/// Plain copy of [`VfCounters`], as reported by `vfnic stats`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct VfCountersSnapshot {
    /// Frames the tenant sent.
    pub tx_packets: u64,
    /// Bytes the tenant sent.
    pub tx_bytes: u64,
    /// Frames delivered to the tenant.
    pub rx_packets: u64,
    /// Bytes delivered to the tenant.
    pub rx_bytes: u64,
    /// Sum of the `tx_dropped_*` reasons.
    pub tx_dropped: u64,
    /// Sum of the `rx_dropped_*` reasons.
    pub rx_dropped: u64,
    /// Doorbells received.
    pub kicks: u64,
    /// Interrupts sent.
    pub interrupts: u64,
    /// Tenant connections accepted.
    pub connects: u64,
    /// GSO frames segmented in software for this receiver.
    pub gso_segmented: u64,
    /// Checksums completed in software for this receiver.
    pub csum_completed: u64,
    /// GSO frames delivered unsegmented.
    pub gso_passed: u64,
    /// Drops by reason.
    pub drops: BTreeMap<&'static str, u64>,
    /// Sum of the `tx_held_*` reasons (backpressure).
    pub tx_held: u64,
    /// Frames held back in the sender's ring, by reason.
    pub held: BTreeMap<&'static str, u64>,
    /// Tenant faults by kind.
    pub errors: BTreeMap<&'static str, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_cover_every_reason() {
        let c = VfCounters::default();
        for r in DropReason::ALL {
            c.drop_frames(*r, 1);
        }
        for k in ErrorKind::ALL {
            c.error(*k);
        }
        for h in HoldReason::ALL {
            c.hold_frames(*h, 2);
        }
        let q = [QueueCounters::default(), QueueCounters::default()];
        q[0].rx_packets.add_exclusive(2);
        q[1].rx_packets.add(3);
        q[1].tx_bytes.add_exclusive(100);
        let s = c.snapshot(&q);
        assert_eq!((s.rx_packets, s.tx_bytes, s.tx_packets), (5, 100, 0));
        assert_eq!(s.tx_dropped + s.rx_dropped, DropReason::ALL.len() as u64);
        assert_eq!(s.errors.values().sum::<u64>(), ErrorKind::ALL.len() as u64);
        assert_eq!(s.tx_held, 2 * HoldReason::ALL.len() as u64);
        assert_eq!(s.held["tx_held_link_full"], 2);
        assert_eq!(s.tx_dropped, 9);
    }
}
