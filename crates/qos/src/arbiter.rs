//! The egress arbiter of one destination (a VF's RX or an uplink).
//!
//! One [`Arbiter`] per destination; every sender (VF) that may send to it is
//! registered with its ip-link settings ([`SenderConfig`]). The data path
//! calls [`Arbiter::schedule`] with what the destination accepts now and a
//! view of the senders' queues ([`Backlog`]); the arbiter hands out whole
//! frames in three steps:
//!
//! 1. **Max rate**: a sender whose head frame does not conform to its
//!    `max_tx_rate` bucket is skipped (it is not backlogged for the
//!    following steps, so it cannot hoard credit).
//! 2. **Minimum guarantee**: each backlogged sender with a `min_tx_rate` is
//!    served first, as far as its own min-rate bucket allows.
//! 3. **Deficit round robin** (Shreedhar & Varghese) of what is left: each
//!    visit credits `quantum_bytes * weight` to the sender's deficit, which
//!    pays for whole frames; the credit and the round-robin position carry
//!    over between calls, so sharing stays exact even when each call has
//!    room for only a few frames.
//!
//! Everything is bounded by the caller's budget and, when the destination's
//! capacity is configured, by a line-rate bucket. With no capacity
//! configured the arbiter is work-conserving with an unknown capacity: it
//! only orders and shares what the destination accepts (the budget).

use crate::bucket::{default_burst_bytes, mbps_to_bytes_per_s, TokenBucket};

/// A sender on this destination (a VF today, an uplink later).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SenderId(pub u16);

/// QoS settings of one sender, in the vocabulary of
/// `ip link set DEV vf N max_tx_rate R min_tx_rate R`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderConfig {
    /// Maximum rate in Mbit/s (10^6 bit/s); 0 = unlimited.
    pub max_tx_rate_mbps: u32,
    /// Guaranteed rate under contention in Mbit/s; 0 = no guarantee.
    pub min_tx_rate_mbps: u32,
    /// Share of what is left after the guarantees (DRR weight); 0 is taken
    /// as 1.
    pub weight: u32,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig { max_tx_rate_mbps: 0, min_tx_rate_mbps: 0, weight: 1 }
    }
}

/// Settings of one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArbiterConfig {
    /// Line rate of the destination in bytes/s; 0 = unknown (a VF's RX:
    /// the caller's budget is the only limit).
    pub capacity_bytes_per_s: u64,
    /// DRR quantum per unit of weight, in bytes. Larger = fewer passes per
    /// frame, coarser short-term interleaving; the long-run shares are
    /// exact either way.
    pub quantum_bytes: u32,
    /// [`Arbiter::admit`] drops (instead of deferring) a frame that would
    /// wait longer than this. `u64::MAX` = always defer (shape, never
    /// police).
    pub max_delay_ns: u64,
}

/// Default DRR quantum per unit of weight (one 9 KiB jumbo frame fits).
pub const DEFAULT_QUANTUM_BYTES: u32 = 9216;

impl Default for ArbiterConfig {
    fn default() -> Self {
        ArbiterConfig { capacity_bytes_per_s: 0, quantum_bytes: DEFAULT_QUANTUM_BYTES, max_delay_ns: u64::MAX }
    }
}

/// Per-sender counters. Names follow `<dir>_<what>[_<reason>]`; `tx` is the
/// sender's direction.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct SenderCounters {
    /// Frames granted.
    pub tx_packets: u64,
    /// Bytes granted.
    pub tx_bytes: u64,
    /// Of `tx_bytes`, those granted under the min-rate guarantee.
    pub tx_bytes_guaranteed: u64,
    /// Calls that held the sender's head frame back for its max rate.
    pub tx_deferred_max_rate: u64,
    /// Calls that held it back for the destination's line rate.
    pub tx_deferred_capacity: u64,
    /// Calls that held it back because the destination had no room
    /// (back-pressure from the receiver).
    pub tx_deferred_no_room: u64,
    /// Frames dropped for exceeding the max rate (policing).
    pub tx_dropped_rate_limited: u64,
    /// Frames dropped for exceeding the destination's line rate.
    pub tx_dropped_capacity: u64,
    /// Frames the caller dropped because the destination had no room.
    pub tx_dropped_no_room: u64,
}

/// Counters of the destination itself.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct ArbiterCounters {
    /// Frames refused because their sender is not registered.
    pub dropped_unknown_sender: u64,
}

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Over the sender's max rate by more than `max_delay_ns`.
    RateLimited,
    /// Over the destination's line rate by more than `max_delay_ns`.
    Capacity,
    /// The destination had no room and the caller gave up.
    NoRoom,
    /// The sender is not registered on this destination.
    UnknownSender,
}

/// Answer of [`Arbiter::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the frame now (its tokens are taken).
    Send,
    /// Keep the frame; it conforms at this time (ns).
    Defer(u64),
    /// Drop the frame (counted).
    Drop(DropReason),
}

/// The senders' queues for this destination, as the arbiter sees them.
pub trait Backlog {
    /// Length in bytes of the frame at the head of `sender`'s queue, if any.
    fn head_len(&mut self, sender: SenderId) -> Option<u32>;
    /// The head frame of `sender` (of length `len`) is granted: the caller
    /// sends it, and the next `head_len` shows the following frame.
    fn send(&mut self, sender: SenderId, len: u32);
}

/// What ended a call to [`Arbiter::schedule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Limit {
    /// Every queue is empty or held by its max rate.
    #[default]
    Drained,
    /// The caller's budget (room at the destination) ran out: call again
    /// when the destination has drained.
    Budget,
    /// The destination's line rate: call again at `next_ns`.
    Capacity,
}

/// Result of one call to [`Arbiter::schedule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Round {
    /// Frames granted.
    pub frames: u64,
    /// Bytes granted.
    pub bytes: u64,
    /// What ended the call.
    pub limit: Limit,
    /// Earliest time a frame still held back by a rate (a sender's max rate
    /// or the line rate) conforms; `None` if none is held by a rate. The
    /// engine may sleep until then (or until the destination drains).
    pub next_ns: Option<u64>,
}

#[derive(Debug, Clone)]
struct Sender {
    cfg: SenderConfig,
    max: Option<TokenBucket>,
    min: Option<TokenBucket>,
    deficit: u64,
    counters: SenderCounters,
}

impl Sender {
    fn new(cfg: SenderConfig, now_ns: u64) -> Self {
        let rate = |mbps| (mbps > 0).then(|| mbps_to_bytes_per_s(mbps));
        let max = rate(cfg.max_tx_rate_mbps).map(|r| TokenBucket::with_rate(r, now_ns));
        let min = rate(cfg.min_tx_rate_mbps).map(|r| TokenBucket::with_rate(r, now_ns));
        Sender { cfg, max, min, deficit: 0, counters: SenderCounters::default() }
    }

    fn max_conforms(&mut self, len: u64, now_ns: u64) -> bool {
        self.max.as_mut().is_none_or(|m| fits(m, len).conforms(len, now_ns))
    }
}

/// Grows `b`'s burst to two frames of `len` (see
/// [`TokenBucket::grow_burst`]) and returns it.
fn fits(b: &mut TokenBucket, len: u64) -> &mut TokenBucket {
    b.grow_burst(2 * len);
    b
}

/// Why the head frame of a sender cannot go now.
enum Held {
    MaxRate,
    Capacity,
    Budget,
}

/// The egress arbiter of one destination. See the module documentation.
#[derive(Debug, Clone)]
pub struct Arbiter {
    cfg: ArbiterConfig,
    capacity: Option<TokenBucket>,
    senders: Vec<Option<Sender>>,
    /// DRR position: the sender visited next (or being visited).
    drr_next: usize,
    /// Whether the sender at `drr_next` already got its quantum this visit.
    drr_credited: bool,
    /// First sender served in the guarantee step (rotates every call).
    min_next: usize,
    counters: ArbiterCounters,
}

impl Arbiter {
    /// An arbiter with no senders.
    pub fn new(cfg: ArbiterConfig, now_ns: u64) -> Self {
        let mut a = Arbiter {
            cfg,
            capacity: None,
            senders: Vec::new(),
            drr_next: 0,
            drr_credited: false,
            min_next: 0,
            counters: ArbiterCounters::default(),
        };
        a.set_capacity(cfg.capacity_bytes_per_s, now_ns);
        a
    }

    /// Changes the line rate (bytes/s; 0 = unknown). The new bucket starts
    /// full.
    pub fn set_capacity(&mut self, capacity_bytes_per_s: u64, now_ns: u64) {
        self.cfg.capacity_bytes_per_s = capacity_bytes_per_s;
        self.capacity = (capacity_bytes_per_s > 0)
            .then(|| TokenBucket::new(capacity_bytes_per_s, default_burst_bytes(capacity_bytes_per_s), now_ns));
    }

    /// The destination's settings.
    pub fn config(&self) -> ArbiterConfig {
        self.cfg
    }

    /// Registers `id` or changes its settings. Changed rates start with
    /// full buckets; the counters are kept.
    pub fn set_sender(&mut self, id: SenderId, cfg: SenderConfig, now_ns: u64) {
        let i = id.0 as usize;
        if self.senders.len() <= i {
            self.senders.resize_with(i + 1, || None);
        }
        match &mut self.senders[i] {
            Some(s) if s.cfg == cfg => {}
            Some(s) => {
                let counters = std::mem::take(&mut s.counters);
                *s = Sender { counters, ..Sender::new(cfg, now_ns) };
            }
            slot @ None => *slot = Some(Sender::new(cfg, now_ns)),
        }
    }

    /// Unregisters `id`, returning its last counters.
    pub fn remove_sender(&mut self, id: SenderId) -> Option<SenderCounters> {
        let s = self.senders.get_mut(id.0 as usize)?.take()?;
        if self.drr_next == id.0 as usize {
            self.drr_credited = false;
        }
        Some(s.counters)
    }

    /// Settings of `id`, if registered.
    pub fn sender_config(&self, id: SenderId) -> Option<SenderConfig> {
        self.senders.get(id.0 as usize)?.as_ref().map(|s| s.cfg)
    }

    /// Counters of `id`, if registered.
    pub fn counters(&self, id: SenderId) -> Option<&SenderCounters> {
        self.senders.get(id.0 as usize)?.as_ref().map(|s| &s.counters)
    }

    /// Counters of the destination.
    pub fn arbiter_counters(&self) -> &ArbiterCounters {
        &self.counters
    }

    /// Counts `frames` the caller dropped for `reason` (e.g. it gave up on
    /// frames held for [`DropReason::NoRoom`]).
    pub fn record_drop(&mut self, id: SenderId, reason: DropReason, frames: u64) {
        let Some(s) = self.senders.get_mut(id.0 as usize).and_then(Option::as_mut) else {
            self.counters.dropped_unknown_sender += frames;
            return;
        };
        let c = &mut s.counters;
        match reason {
            DropReason::RateLimited => c.tx_dropped_rate_limited += frames,
            DropReason::Capacity => c.tx_dropped_capacity += frames,
            DropReason::NoRoom => c.tx_dropped_no_room += frames,
            DropReason::UnknownSender => self.counters.dropped_unknown_sender += frames,
        }
    }

    /// Per-frame shaping without sharing: checks one frame of `id` against
    /// its max rate and the line rate only (no guarantee, no DRR). For a
    /// destination with a single sender, or traffic that is not arbitrated
    /// (e.g. policing what a VF sends to the uplink). A frame that would
    /// wait longer than `max_delay_ns` is dropped.
    pub fn admit(&mut self, id: SenderId, bytes: u32, now_ns: u64) -> Verdict {
        let max_delay_ns = self.cfg.max_delay_ns;
        let Some(s) = self.senders.get_mut(id.0 as usize).and_then(Option::as_mut) else {
            self.counters.dropped_unknown_sender += 1;
            return Verdict::Drop(DropReason::UnknownSender);
        };
        let len = u64::from(bytes);
        if let Some(m) = s.max.as_mut() {
            if !fits(m, len).conforms(len, now_ns) {
                let t = m.next_ready_ns(len, now_ns);
                return if t - now_ns > max_delay_ns {
                    s.counters.tx_dropped_rate_limited += 1;
                    Verdict::Drop(DropReason::RateLimited)
                } else {
                    s.counters.tx_deferred_max_rate += 1;
                    Verdict::Defer(t)
                };
            }
        }
        if let Some(c) = self.capacity.as_mut() {
            if !fits(c, len).conforms(len, now_ns) {
                let t = c.next_ready_ns(len, now_ns);
                return if t - now_ns > max_delay_ns {
                    s.counters.tx_dropped_capacity += 1;
                    Verdict::Drop(DropReason::Capacity)
                } else {
                    s.counters.tx_deferred_capacity += 1;
                    Verdict::Defer(t)
                };
            }
            c.consume(len);
        }
        if let Some(m) = s.max.as_mut() {
            m.consume(len);
        }
        s.counters.tx_packets += 1;
        s.counters.tx_bytes += len;
        Verdict::Send
    }

    /// Whether `len` may go now for sender `s`, past `budget`.
    fn gate(
        s: &mut Sender,
        capacity: &mut Option<TokenBucket>,
        len: u64,
        budget: u64,
        now_ns: u64,
    ) -> Result<(), Held> {
        if !s.max_conforms(len, now_ns) {
            return Err(Held::MaxRate);
        }
        if len > budget {
            return Err(Held::Budget);
        }
        if !capacity.as_mut().is_none_or(|c| fits(c, len).conforms(len, now_ns)) {
            return Err(Held::Capacity);
        }
        Ok(())
    }

    /// Takes the tokens of a granted frame and tells the backlog.
    fn grant<B: Backlog>(
        s: &mut Sender,
        capacity: &mut Option<TokenBucket>,
        id: SenderId,
        len: u32,
        budget: &mut u64,
        round: &mut Round,
        backlog: &mut B,
    ) {
        let cost = u64::from(len.max(1));
        if let Some(m) = s.max.as_mut() {
            m.consume(cost);
        }
        if let Some(c) = capacity.as_mut() {
            c.consume(cost);
        }
        *budget -= cost;
        s.counters.tx_packets += 1;
        s.counters.tx_bytes += u64::from(len);
        round.frames += 1;
        round.bytes += u64::from(len);
        backlog.send(id, len);
    }

    /// Grants whole frames from the senders' queues, at most `budget_bytes`
    /// in all (what the destination accepts now, e.g. the free bytes of a
    /// VF's RX ring; pass a finite value: with no capacity and no max rates
    /// it is the only bound on an endless backlog). Granted frames are
    /// reported through [`Backlog::send`], in the order they should be
    /// delivered. A frame costs at least one byte.
    pub fn schedule<B: Backlog>(&mut self, now_ns: u64, budget_bytes: u64, backlog: &mut B) -> Round {
        let mut round = Round::default();
        let n = self.senders.len();
        if n == 0 {
            return round;
        }
        let mut budget = budget_bytes;
        let mut stop = None;
        let Arbiter { senders, capacity, .. } = self;

        // Step 2: minimum guarantees, from a rotating first sender.
        'min: for k in 0..n {
            let i = (self.min_next + k) % n;
            let id = SenderId(i as u16);
            let Some(s) = senders[i].as_mut() else { continue };
            if s.min.is_none() {
                continue;
            }
            while let Some(len) = backlog.head_len(id) {
                let cost = u64::from(len.max(1));
                if !s.min.as_mut().is_some_and(|m| fits(m, cost).conforms(cost, now_ns)) {
                    break;
                }
                match Self::gate(s, capacity, cost, budget, now_ns) {
                    Ok(()) => {}
                    Err(Held::MaxRate) => break,
                    Err(Held::Budget) => {
                        stop = Some(Limit::Budget);
                        break 'min;
                    }
                    Err(Held::Capacity) => {
                        stop = Some(Limit::Capacity);
                        break 'min;
                    }
                }
                if let Some(m) = s.min.as_mut() {
                    m.consume(cost);
                }
                s.counters.tx_bytes_guaranteed += u64::from(len);
                Self::grant(s, capacity, id, len, &mut budget, &mut round, backlog);
            }
        }
        self.min_next = (self.min_next + 1) % n;

        // Step 3: deficit round robin of what is left.
        let quantum = u64::from(self.cfg.quantum_bytes.max(1));
        'drr: while stop.is_none() {
            let mut backlogged = false;
            for _ in 0..n {
                let i = self.drr_next % n;
                let id = SenderId(i as u16);
                if let Some(s) = senders[i].as_mut() {
                    match backlog.head_len(id) {
                        Some(len) if s.max_conforms(u64::from(len.max(1)), now_ns) => {
                            backlogged = true;
                            if !self.drr_credited {
                                s.deficit += quantum * u64::from(s.cfg.weight.max(1));
                                self.drr_credited = true;
                            }
                            let mut len = len;
                            while u64::from(len.max(1)) <= s.deficit {
                                let cost = u64::from(len.max(1));
                                match Self::gate(s, capacity, cost, budget, now_ns) {
                                    Ok(()) => {}
                                    Err(Held::MaxRate) => {
                                        s.deficit = 0;
                                        break;
                                    }
                                    // Keep the position and the credit: the
                                    // next call resumes this visit.
                                    Err(Held::Budget) => {
                                        stop = Some(Limit::Budget);
                                        break 'drr;
                                    }
                                    Err(Held::Capacity) => {
                                        stop = Some(Limit::Capacity);
                                        break 'drr;
                                    }
                                }
                                s.deficit -= cost;
                                Self::grant(s, capacity, id, len, &mut budget, &mut round, backlog);
                                match backlog.head_len(id) {
                                    Some(l) => len = l,
                                    None => {
                                        s.deficit = 0;
                                        break;
                                    }
                                }
                            }
                        }
                        // Empty, or held by its max rate: not backlogged,
                        // so it keeps no credit (no hoarding).
                        _ => s.deficit = 0,
                    }
                }
                self.drr_next = (i + 1) % n;
                self.drr_credited = false;
            }
            if !backlogged {
                break;
            }
        }

        // Account who was held back and why; find the next deadline.
        round.limit = stop.unwrap_or(Limit::Drained);
        for (i, slot) in senders.iter_mut().enumerate() {
            let Some(s) = slot.as_mut() else { continue };
            let Some(len) = backlog.head_len(SenderId(i as u16)) else { continue };
            let cost = u64::from(len.max(1));
            let mut next = None;
            if !s.max_conforms(cost, now_ns) {
                s.counters.tx_deferred_max_rate += 1;
                next = s.max.as_ref().map(|m| m.next_ready_ns(cost, now_ns));
            } else if round.limit == Limit::Capacity {
                s.counters.tx_deferred_capacity += 1;
                next = capacity.as_ref().map(|c| c.next_ready_ns(cost, now_ns));
            } else if round.limit == Limit::Budget {
                s.counters.tx_deferred_no_room += 1;
            }
            if let Some(t) = next {
                round.next_ns = Some(round.next_ns.map_or(t, |r: u64| r.min(t)));
            }
        }
        round
    }
}

#[cfg(test)]
// The simulations index parallel per-sender vectors.
#[allow(clippy::needless_range_loop)]
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;
    use crate::bucket::NS_PER_S;

    const MBPS: u64 = 125_000;
    const GBPS: u64 = 1000 * MBPS;

    /// Per-sender queues: either endless frames of one size (a flood) or a
    /// finite FIFO of frame lengths.
    #[derive(Default)]
    struct Queues {
        flood: Vec<Option<u32>>,
        fifo: Vec<VecDeque<u32>>,
        sent_bytes: Vec<u64>,
        order: Vec<(u16, u32)>,
        keep_order: bool,
    }

    impl Queues {
        fn new(n: usize) -> Self {
            Queues {
                flood: vec![None; n],
                fifo: vec![VecDeque::new(); n],
                sent_bytes: vec![0; n],
                ..Default::default()
            }
        }
        fn flooding(lens: &[u32]) -> Self {
            let mut q = Self::new(lens.len());
            for (i, &l) in lens.iter().enumerate() {
                q.flood[i] = (l > 0).then_some(l);
            }
            q
        }
        fn backlogged(&self, i: usize) -> bool {
            self.flood[i].is_some() || !self.fifo[i].is_empty()
        }
    }

    impl Backlog for Queues {
        fn head_len(&mut self, s: SenderId) -> Option<u32> {
            let i = s.0 as usize;
            self.flood.get(i).copied().flatten().or_else(|| self.fifo.get(i)?.front().copied())
        }
        fn send(&mut self, s: SenderId, len: u32) {
            let i = s.0 as usize;
            if self.flood[i].is_none() {
                assert_eq!(self.fifo[i].pop_front(), Some(len));
            }
            self.sent_bytes[i] += u64::from(len);
            if self.keep_order {
                self.order.push((s.0, len));
            }
        }
    }

    /// The destination: either a line rate the arbiter knows (capacity
    /// mode, large budget) or a receiver that drains `drain` bytes/s from a
    /// ring of `ring` bytes the arbiter knows nothing about.
    enum Dest {
        LineRate,
        Drains { drain: u64, ring: u64 },
    }

    /// Runs `arb` for `dur_ns` in steps of `step_ns`; `arrive` is called
    /// at each step to add traffic.
    fn simulate(
        arb: &mut Arbiter,
        q: &mut Queues,
        dest: Dest,
        dur_ns: u64,
        step_ns: u64,
        mut arrive: impl FnMut(u64, &mut Queues),
    ) {
        let mut room = match dest {
            Dest::LineRate => None,
            Dest::Drains { drain, ring } => Some(TokenBucket::new(drain, ring, 0)),
        };
        let mut t = 0;
        while t < dur_ns {
            arrive(t, q);
            let budget = match room.as_mut() {
                None => 1 << 30,
                Some(r) => r.tokens(t).max(0) as u64,
            };
            let round = arb.schedule(t, budget, q);
            assert!(round.bytes <= budget);
            if let Some(r) = room.as_mut() {
                r.consume(round.bytes);
            }
            if let Some(next) = round.next_ns {
                assert!(next >= t);
            }
            t += step_ns;
        }
    }

    fn arbiter(capacity: u64, senders: &[SenderConfig]) -> Arbiter {
        let mut a = Arbiter::new(ArbiterConfig { capacity_bytes_per_s: capacity, ..Default::default() }, 0);
        for (i, c) in senders.iter().enumerate() {
            a.set_sender(SenderId(i as u16), *c, 0);
        }
        a
    }

    fn weight(w: u32) -> SenderConfig {
        SenderConfig { weight: w, ..Default::default() }
    }

    fn close(got: u64, want: f64, tol: f64) -> bool {
        (got as f64 - want).abs() <= tol * want
    }

    #[test]
    fn drr_shares_by_weight_with_unknown_capacity() {
        // Mixed frame sizes: shares are in bytes, not frames.
        let mut a = arbiter(0, &[weight(1), weight(2), weight(3)]);
        let mut q = Queues::flooding(&[1514, 64, 9000]);
        let dur = NS_PER_S / 2;
        simulate(&mut a, &mut q, Dest::Drains { drain: GBPS, ring: 256 << 10 }, dur, 20_000, |_, _| {});
        let total: u64 = q.sent_bytes.iter().sum();
        let ideal = (GBPS * dur / NS_PER_S) as f64;
        assert!(close(total, ideal, 0.01), "total {total} ideal {ideal}");
        for (i, w) in [1.0, 2.0, 3.0].iter().enumerate() {
            let want = total as f64 * w / 6.0;
            assert!(close(q.sent_bytes[i], want, 0.01), "sender {i}: {} want {want}", q.sent_bytes[i]);
        }
        assert!(a.counters(SenderId(0)).unwrap().tx_deferred_no_room > 0);
    }

    #[test]
    fn drr_shares_by_weight_at_line_rate() {
        let mut a = arbiter(10 * GBPS, &[weight(1), weight(2), weight(3)]);
        let mut q = Queues::flooding(&[65550, 1514, 9000]);
        let dur = NS_PER_S / 5;
        simulate(&mut a, &mut q, Dest::LineRate, dur, 50_000, |_, _| {});
        let total: u64 = q.sent_bytes.iter().sum();
        let ideal = (10 * GBPS * dur / NS_PER_S) as f64;
        assert!(close(total, ideal, 0.01), "total {total} ideal {ideal}");
        for (i, w) in [1.0, 2.0, 3.0].iter().enumerate() {
            let want = total as f64 * w / 6.0;
            assert!(close(q.sent_bytes[i], want, 0.01), "sender {i}: {} want {want}", q.sent_bytes[i]);
        }
    }

    #[test]
    fn max_rate_caps_one_sender_others_share_the_rest() {
        let capped = SenderConfig { max_tx_rate_mbps: 100, ..Default::default() };
        for dest in [Dest::LineRate, Dest::Drains { drain: GBPS, ring: 128 << 10 }] {
            let mut a = arbiter(if matches!(dest, Dest::LineRate) { GBPS } else { 0 }, &[capped, weight(1), weight(1)]);
            let mut q = Queues::flooding(&[1514, 1514, 9000]);
            let dur = NS_PER_S;
            simulate(&mut a, &mut q, dest, dur, 10_000, |_, _| {});
            let cap = (100 * MBPS * dur / NS_PER_S) as f64;
            assert!(close(q.sent_bytes[0], cap, 0.01), "capped {} want {cap}", q.sent_bytes[0]);
            let rest = (GBPS * dur / NS_PER_S) as f64 - cap;
            for i in 1..3 {
                assert!(
                    close(q.sent_bytes[i], rest / 2.0, 0.01),
                    "sender {i}: {} want {}",
                    q.sent_bytes[i],
                    rest / 2.0
                );
            }
            assert!(a.counters(SenderId(0)).unwrap().tx_deferred_max_rate > 0);
        }
    }

    #[test]
    fn min_rate_is_guaranteed_under_flood() {
        // Sender 0 wants 300 Mbit/s of a 1 Gbit/s destination against two
        // flooders with ten times its weight.
        let guaranteed = SenderConfig { min_tx_rate_mbps: 300, ..Default::default() };
        for dest in [Dest::LineRate, Dest::Drains { drain: GBPS, ring: 128 << 10 }] {
            let cap = if matches!(dest, Dest::LineRate) { GBPS } else { 0 };
            let mut a = arbiter(cap, &[guaranteed, weight(10), weight(10)]);
            let mut q = Queues::flooding(&[1514, 9000, 64]);
            let dur = NS_PER_S / 2;
            simulate(&mut a, &mut q, dest, dur, 10_000, |_, _| {});
            let total = (GBPS * dur / NS_PER_S) as f64;
            let min = (300 * MBPS * dur / NS_PER_S) as f64;
            // At least the minimum, plus its weighted share of the rest.
            let want = min + (total - min) / 21.0;
            assert!(close(q.sent_bytes[0], want, 0.01), "guaranteed {} want {want}", q.sent_bytes[0]);
            assert!(a.counters(SenderId(0)).unwrap().tx_bytes_guaranteed as f64 >= 0.99 * min);
            for i in 1..3 {
                let w = (total - want) / 2.0;
                assert!(close(q.sent_bytes[i], w, 0.01), "sender {i}: {} want {w}", q.sent_bytes[i]);
            }
        }
    }

    #[test]
    fn no_contention_everyone_gets_what_they_ask() {
        // 200 + 300 Mbit/s of offered load on a 1 Gbit/s line: all of it
        // passes, whatever the weights and guarantees.
        let mut a = arbiter(GBPS, &[weight(1), SenderConfig { min_tx_rate_mbps: 10, weight: 5, ..Default::default() }]);
        let mut q = Queues::new(2);
        let dur = NS_PER_S / 2;
        let mut offered = [0u64; 2];
        let mut src = [TokenBucket::new(200 * MBPS, 1514, 0), TokenBucket::new(300 * MBPS, 1514, 0)];
        simulate(&mut a, &mut q, Dest::LineRate, dur, 10_000, |t, q| {
            for i in 0..2 {
                while src[i].try_consume(1514, t) {
                    q.fifo[i].push_back(1514);
                    offered[i] += 1514;
                }
            }
        });
        for i in 0..2 {
            assert!(offered[i] - q.sent_bytes[i] <= 1514, "sender {i} left {} bytes", offered[i] - q.sent_bytes[i]);
        }
    }

    #[test]
    fn idle_share_is_redistributed() {
        let mut a = arbiter(0, &[weight(1), weight(1), weight(2)]);
        let mut q = Queues::flooding(&[1514, 1514, 0]);
        let dest = Dest::Drains { drain: GBPS, ring: 64 << 10 };
        let half = NS_PER_S / 4;
        // First half: sender 2 idle, 0 and 1 split the whole destination;
        // second half: sender 2 floods and takes half.
        let mut at_half = None;
        simulate(&mut a, &mut q, dest, 2 * half, 10_000, |t, q| {
            if t >= half && q.flood[2].is_none() {
                at_half = Some(q.sent_bytes.clone());
                q.flood[2] = Some(1514);
            }
        });
        let first = at_half.unwrap();
        let each = (GBPS * half / NS_PER_S) as f64 / 2.0;
        assert!(close(first[0], each, 0.01) && close(first[1], each, 0.01), "{first:?} want {each}");
        let second: Vec<u64> = (0..3).map(|i| q.sent_bytes[i] - first[i]).collect();
        let total = (GBPS * half / NS_PER_S) as f64;
        assert!(close(second[2], total / 2.0, 0.01), "{second:?}");
        assert!(close(second[0], total / 4.0, 0.01), "{second:?}");
    }

    #[test]
    fn drr_state_survives_tiny_budgets() {
        // Room for about one frame per call: the round-robin position and
        // credit carry over, so weights still hold.
        let mut a = arbiter(0, &[weight(1), weight(3)]);
        let mut q = Queues::flooding(&[1514, 1514]);
        for t in 0..40_000u64 {
            a.schedule(t, 1600, &mut q);
        }
        let total = q.sent_bytes[0] + q.sent_bytes[1];
        assert!(close(q.sent_bytes[1], total as f64 * 0.75, 0.01), "{:?}", q.sent_bytes);
    }

    #[test]
    fn frames_keep_their_order_per_sender() {
        let mut a = arbiter(0, &[weight(1), weight(2)]);
        let mut q = Queues::new(2);
        q.keep_order = true;
        for k in 0..100u32 {
            q.fifo[0].push_back(64 + k);
            q.fifo[1].push_back(1000 + k);
        }
        let r = a.schedule(0, u64::MAX, &mut q);
        assert_eq!(r.frames, 200);
        assert_eq!(r.limit, Limit::Drained);
        for s in 0..2u16 {
            let lens: Vec<u32> = q.order.iter().filter(|o| o.0 == s).map(|o| o.1).collect();
            assert!(lens.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn next_ns_is_the_max_rate_deadline() {
        let mut a = arbiter(0, &[SenderConfig { max_tx_rate_mbps: 1, ..Default::default() }]);
        let mut q = Queues::flooding(&[1514]);
        let r = a.schedule(0, 1 << 20, &mut q);
        // The default burst (3028 bytes) lets two frames through.
        assert_eq!(r.frames, 2);
        assert_eq!(r.limit, Limit::Drained);
        let next = r.next_ns.unwrap();
        assert_eq!(next, 1514 * NS_PER_S / MBPS);
        assert_eq!(a.schedule(next - 1, 1 << 20, &mut q).frames, 0);
        assert_eq!(a.schedule(next, 1 << 20, &mut q).frames, 1);
    }

    #[test]
    fn admit_shapes_and_polices() {
        let mut a = Arbiter::new(ArbiterConfig { max_delay_ns: 20_000_000, ..Default::default() }, 0);
        let s = SenderId(3);
        assert_eq!(a.admit(s, 64, 0), Verdict::Drop(DropReason::UnknownSender));
        assert_eq!(a.arbiter_counters().dropped_unknown_sender, 1);
        a.set_sender(s, SenderConfig { max_tx_rate_mbps: 1, ..Default::default() }, 0);
        assert_eq!(a.admit(s, 1514, 0), Verdict::Send);
        assert_eq!(a.admit(s, 1514, 0), Verdict::Send);
        assert_eq!(a.admit(s, 1514, 0), Verdict::Defer(1514 * NS_PER_S / MBPS));
        // The bucket grows to hold two 65550-byte frames (full: both go);
        // a third is 0.52 s away at 125 kB/s, more than 10 ms: dropped.
        let mut b = Arbiter::new(ArbiterConfig { max_delay_ns: 10_000_000, ..Default::default() }, 0);
        b.set_sender(s, SenderConfig { max_tx_rate_mbps: 1, ..Default::default() }, 0);
        assert_eq!(b.admit(s, 65550, 0), Verdict::Send);
        assert_eq!(b.admit(s, 65550, 0), Verdict::Send);
        assert_eq!(b.admit(s, 65550, 0), Verdict::Drop(DropReason::RateLimited));
        let c = b.counters(s).unwrap();
        assert_eq!((c.tx_packets, c.tx_bytes, c.tx_dropped_rate_limited), (2, 131100, 1));
        b.record_drop(s, DropReason::NoRoom, 5);
        assert_eq!(b.counters(s).unwrap().tx_dropped_no_room, 5);
    }

    #[test]
    fn admit_respects_line_rate() {
        let mut a = Arbiter::new(ArbiterConfig { capacity_bytes_per_s: MBPS, ..Default::default() }, 0);
        a.set_sender(SenderId(0), SenderConfig::default(), 0);
        let mut sent = 0u64;
        let mut t = 0;
        while t < 10 * NS_PER_S {
            match a.admit(SenderId(0), 1000, t) {
                Verdict::Send => sent += 1000,
                Verdict::Defer(at) => t = at,
                Verdict::Drop(r) => panic!("dropped {r:?}"),
            }
        }
        let ideal = (10 * MBPS + default_burst_bytes(MBPS)) as f64;
        assert!(close(sent, ideal, 0.001), "{sent} {ideal}");
        assert!(a.counters(SenderId(0)).unwrap().tx_deferred_capacity > 0);
    }

    #[test]
    fn reconfigure_and_remove() {
        let mut a = arbiter(0, &[weight(1), weight(1)]);
        let mut q = Queues::flooding(&[1514, 1514]);
        a.schedule(0, 100_000, &mut q);
        let before = a.counters(SenderId(1)).unwrap().tx_packets;
        a.set_sender(SenderId(1), SenderConfig { max_tx_rate_mbps: 5, ..Default::default() }, 0);
        assert_eq!(a.counters(SenderId(1)).unwrap().tx_packets, before);
        let c = a.remove_sender(SenderId(0)).unwrap();
        assert!(c.tx_packets > 0);
        assert!(a.counters(SenderId(0)).is_none());
        // Only sender 1 is left, and it is capped.
        let r = a.schedule(1, 100_000, &mut q);
        assert!(r.bytes <= default_burst_bytes(5 * MBPS) + 1514);
        assert!(r.next_ns.is_some());
    }

    #[derive(Debug, Clone)]
    struct Case {
        cfg: Vec<SenderConfig>,
        /// Offered load per sender in Mbit/s; 0 = flood.
        offered_mbps: Vec<u32>,
        lens: Vec<u32>,
        line_rate: bool,
    }

    fn case() -> impl Strategy<Value = Case> {
        (1usize..=5, any::<bool>()).prop_flat_map(|(n, line_rate)| {
            let cfg = (0u32..1500, 0u32..=250, 1u32..=8).prop_map(|(max, min, w)| SenderConfig {
                // A third of the senders have no max rate.
                max_tx_rate_mbps: if max < 500 { 0 } else { max - 400 },
                min_tx_rate_mbps: min.saturating_sub(50),
                weight: w,
            });
            let len = prop_oneof![Just(64u32), Just(1514), Just(9000), Just(65550), 60u32..9000];
            (
                proptest::collection::vec(cfg, n),
                proptest::collection::vec(prop_oneof![Just(0u32), 1u32..1500], n),
                proptest::collection::vec(len, n),
            )
                .prop_map(move |(cfg, offered_mbps, lens)| Case { cfg, offered_mbps, lens, line_rate })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Capacity and every max rate hold (within one burst and one
        /// frame), and a backlogged sender with a guarantee gets it.
        #[test]
        fn limits_hold_and_guarantees_are_served(c in case()) {
            let n = c.cfg.len();
            // Sum of guarantees <= 1000 Mbit/s (at most 5 * 200).
            let mut a = arbiter(if c.line_rate { GBPS } else { 0 }, &c.cfg);
            let mut q = Queues::new(n);
            for i in 0..n {
                if c.offered_mbps[i] == 0 {
                    q.flood[i] = Some(c.lens[i]);
                }
            }
            let mut src: Vec<TokenBucket> = (0..n)
                .map(|i| {
                    // Room for one step of arrivals, so the source really offers its rate.
                    let rate = mbps_to_bytes_per_s(c.offered_mbps[i].max(1));
                    TokenBucket::new(rate, u64::from(c.lens[i]) + rate / 10_000, 0)
                })
                .collect();
            let dest = if c.line_rate { Dest::LineRate } else { Dest::Drains { drain: GBPS, ring: 128 << 10 } };
            let dur = NS_PER_S / 10;
            let step = 20_000;
            let mut always_backlogged = vec![true; n];
            let mut sent_at = vec![0u64; n];
            simulate(&mut a, &mut q, dest, dur, step, |t, q| {
                for i in 0..n {
                    if q.flood[i].is_none() {
                        while src[i].try_consume(u64::from(c.lens[i]), t) {
                            q.fifo[i].push_back(c.lens[i]);
                        }
                    }
                    if t > 0 && !q.backlogged(i) {
                        always_backlogged[i] = false;
                    }
                    sent_at[i] = q.sent_bytes[i];
                }
            });
            let total: u64 = q.sent_bytes.iter().sum();
            let secs = dur as f64 / NS_PER_S as f64;
            let max_len = u64::from(*c.lens.iter().max().unwrap());
            let cap = GBPS as f64 * secs + default_burst_bytes(GBPS).max(2 * max_len) as f64 + max_len as f64;
            prop_assert!(total as f64 <= cap + (128 << 10) as f64, "total {} cap {}", total, cap);
            for i in 0..n {
                let sent = q.sent_bytes[i] as f64;
                if c.cfg[i].max_tx_rate_mbps > 0 {
                    let rate = mbps_to_bytes_per_s(c.cfg[i].max_tx_rate_mbps);
                    // One burst (grown to two of its frames) and one frame of debt.
                    let len = u64::from(c.lens[i]);
                    let lim = (rate as f64 * secs) + default_burst_bytes(rate).max(2 * len) as f64 + len as f64;
                    prop_assert!(sent <= lim, "sender {} sent {} max {}", i, sent, lim);
                }
                if c.cfg[i].min_tx_rate_mbps > 0 && always_backlogged[i] {
                    let mut want = mbps_to_bytes_per_s(c.cfg[i].min_tx_rate_mbps);
                    // Nobody gets more than its max rate or what it offers.
                    for cap in [c.cfg[i].max_tx_rate_mbps, c.offered_mbps[i]] {
                        if cap > 0 {
                            want = want.min(mbps_to_bytes_per_s(cap));
                        }
                    }
                    let floor = 0.98 * want as f64 * secs - 2.0 * c.lens[i] as f64;
                    prop_assert!(sent >= floor, "sender {} sent {} guaranteed {}", i, sent, floor);
                }
            }
        }
    }
}
