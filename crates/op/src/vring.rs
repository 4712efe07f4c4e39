//! One virtqueue's context (a "queue context" of an SR-IOV NIC).

use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use vfnic_dma::{GuestMemory, RingAddrs, RingError, Virtqueue};

use crate::fd::Doorbell;

/// Transmit QoS of one TX queue: the VF's rate limiter and guarantee, and
/// its deficit in the engine's round robin.
#[derive(Debug, Default)]
pub struct TxQos {
    /// `max_tx_rate` shaper (exact token bucket), with the rate it was made for.
    pub max: Option<(u32, vfnic_qos::TokenBucket)>,
    /// `min_tx_rate` guarantee bucket, with its rate.
    pub min: Option<(u32, vfnic_qos::TokenBucket)>,
    /// Deficit-round-robin credit in bytes.
    pub deficit: u64,
    /// Nanosecond time until which the shaper holds the queue.
    pub throttled_until_ns: u64,
    /// Since when (ns) the queue waits for a receiver's RX buffers.
    pub blocked_since_ns: Option<u64>,
    /// Until when (ns) the queue counts as contending for a congested
    /// receiver (its frames were last held by one): its engine turns are
    /// then fine-grained, so senders reach the receiver interleaved.
    pub contending_until_ns: u64,
}

impl TxQos {
    /// Brings the buckets in line with the VF's rates (a changed rate
    /// starts a fresh bucket).
    pub fn configure(&mut self, max_mbps: u32, min_mbps: u32, now_ns: u64) {
        // Burst: 64 KiB or 10 ms of rate, whichever is larger, so an engine
        // that sleeps or is descheduled for a few milliseconds does not lose
        // rate; the long-run rate stays exact.
        let make = |mbps: u32| {
            let rate = vfnic_qos::bucket::mbps_to_bytes_per_s(mbps);
            vfnic_qos::TokenBucket::new(rate, (rate / 100).max(64 * 1024), now_ns)
        };
        match (&self.max, max_mbps) {
            (_, 0) => self.max = None,
            (Some((r, _)), m) if *r == m => {}
            (_, m) => self.max = Some((m, make(m))),
        }
        match (&self.min, min_mbps) {
            (_, 0) => self.min = None,
            (Some((r, _)), m) if *r == m => {}
            (_, m) => self.min = Some((m, make(m))),
        }
    }
}

/// Ring configuration and run state, written by the bus interface and read
/// by the engines, always under [`Vring::lock`].
#[derive(Debug, Default)]
pub struct VringState {
    /// `SET_VRING_NUM`.
    pub size: u32,
    /// `SET_VRING_ADDR`.
    pub addrs: Option<RingAddrs>,
    /// `SET_VRING_BASE`: next avail index when the ring starts.
    pub base: u16,
    /// Doorbell (`SET_VRING_KICK`); `None` in polling mode.
    pub kick: Option<Doorbell>,
    /// Interrupt line (`SET_VRING_CALL`).
    pub call: Option<Doorbell>,
    /// Error line (`SET_VRING_ERR`).
    pub err: Option<Doorbell>,
    /// `SET_VRING_ENABLE`.
    pub enabled: bool,
    /// A `SET_VRING_KICK` arrived: the ring is started.
    pub started: bool,
    /// A ring fault (bad descriptor, runaway index) stopped the queue until
    /// the tenant reprograms or resets it.
    pub faulted: bool,
    /// Features that shape ring access, from the negotiated set.
    pub event_idx: bool,
    /// `INDIRECT_DESC` negotiated.
    pub indirect: bool,
    /// `RING_PACKED` negotiated: the queue uses the packed layout.
    pub packed: bool,
    /// Bytes at the head of each device-readable buffer the device does
    /// not read: the virtio-net header of a driver that negotiated no
    /// send offload ([`crate::features::tx_hdr_unread`]). A hint for the
    /// ring's look-ahead.
    pub read_skip: u8,
    mem: Option<Arc<GuestMemory>>,
    /// Frames completed on this (RX) ring since its last interrupt, while
    /// moderation holds the interrupt back.
    pub irq_pending: u32,
    /// TSC time of the first of those frames.
    pub irq_since: u64,
    /// Transmit QoS state of this (TX) queue.
    pub qos: TxQos,
    /// The mapped ring, present while started with valid addresses.
    pub ring: Option<Virtqueue>,
    /// The device never waits on this ring's doorbell: an RX ring, whose
    /// buffers are taken as frames come (an engine with frames waiting
    /// for buffers keeps polling). Its driver is asked from the start not
    /// to kick it, as DPDK's vhost does for every ring it polls: a
    /// virtio-user driver that is not asked makes a system call (a guest,
    /// an exit) for every RX refill.
    no_kicks: bool,
}

impl VringState {
    /// True when the engines may move packets through this queue.
    #[inline]
    pub fn ready(&self) -> bool {
        self.enabled && !self.faulted && self.ring.is_some()
    }

    /// Installs a new memory table, remapping a started ring onto it.
    pub fn set_mem(&mut self, mem: Option<Arc<GuestMemory>>) -> Result<(), RingError> {
        if let Some(r) = &self.ring {
            self.base = r.base();
        }
        self.mem = mem;
        self.rebuild()
    }

    /// The current memory table.
    pub fn mem(&self) -> Option<&Arc<GuestMemory>> {
        self.mem.as_ref()
    }

    /// Rebuilds the mapped ring from the configuration (after any change).
    /// A ring that does not map is left absent and the error returned.
    pub fn rebuild(&mut self) -> Result<(), RingError> {
        self.ring = None;
        self.faulted = false;
        let (Some(mem), Some(addrs), true) = (&self.mem, self.addrs, self.started) else {
            return Ok(());
        };
        let mut ring = Virtqueue::new(mem.clone(), self.size, addrs, self.base, self.event_idx, self.packed)?;
        if self.no_kicks {
            ring.set_notification(false);
        }
        ring.set_read_skip(self.read_skip);
        self.ring = Some(ring);
        Ok(())
    }

    /// Checks `addrs` against the current memory table without starting.
    pub fn check_addrs(&self, addrs: RingAddrs) -> Result<(), RingError> {
        match &self.mem {
            Some(mem) => {
                let base = if self.packed { 0x8000 } else { 0 };
                Virtqueue::new(mem.clone(), self.size.max(1), addrs, base, false, self.packed).map(|_| ())
            }
            None => Ok(()),
        }
    }

    /// Stops the ring (`GET_VRING_BASE`) and returns the index to resume at.
    pub fn stop(&mut self) -> u16 {
        if let Some(r) = self.ring.take() {
            self.base = r.base();
        }
        self.started = false;
        self.kick = None;
        self.base
    }

    /// Back to the state of a fresh connection.
    pub fn reset(&mut self) {
        *self = VringState { no_kicks: self.no_kicks, ..VringState::default() };
    }

    /// Raises the interrupt the driver asked for (EVENT_IDX or flags) for
    /// everything published so far; returns whether one was sent.
    pub fn interrupt(&mut self) -> bool {
        self.irq_pending = 0;
        self.irq_since = 0;
        let Some(ring) = self.ring.as_mut() else { return false };
        if !ring.needs_interrupt() {
            return false;
        }
        match &self.call {
            Some(call) => {
                call.signal();
                true
            }
            None => false,
        }
    }

    /// Marks the queue faulted and tells the tenant on its error line.
    pub fn fault(&mut self) {
        self.faulted = true;
        if let Some(err) = &self.err {
            err.signal();
        }
    }
}

/// One virtqueue of a function.
#[derive(Debug)]
pub struct Vring {
    /// Index within the function (even = RX, odd = TX, last = control).
    pub index: u16,
    state: Mutex<VringState>,
}

impl Vring {
    /// An unconfigured queue; `rx`: an RX queue (its driver is asked not
    /// to kick it).
    pub fn new(index: u16, rx: bool) -> Vring {
        Vring { index, state: Mutex::new(VringState { no_kicks: rx, ..VringState::default() }) }
    }

    /// Locks the queue context (`parking_lot`: one atomic each way, no
    /// poison bookkeeping, taken at least once per burst). A panic in an
    /// engine that held the lock leaves the state usable: the engine
    /// faults the queue itself.
    #[inline]
    pub fn lock(&self) -> MutexGuard<'_, VringState> {
        self.state.lock()
    }

    /// The queue context if no one holds it (for hints that are not worth
    /// a wait).
    #[inline]
    pub fn try_lock(&self) -> Option<MutexGuard<'_, VringState>> {
        self.state.try_lock()
    }
}
