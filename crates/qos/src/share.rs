//! The egress arbiter of one destination (a VF's receive side).
//!
//! Every destination has one [`Share`]; the engines consult it for each
//! frame they are about to hand to the destination, under its lock. It
//! decides two things:
//!
//! * **Capacity.** A destination with a link speed has a [`TokenBucket`] at
//!   that rate ([`Share::link_wait`], [`Share::take_link`]); one without
//!   takes what its tenant has posted buffers for (the caller knows that).
//!   A full link or a ring without buffers marks the destination congested
//!   ([`Share::mark_congested`]).
//! * **Order under contention.** While congested, senders are admitted by
//!   start-time fair queueing over bytes (P. Goyal, H. Vin, H. Cheng,
//!   "Start-time fair queueing", SIGCOMM 1996; the self-clocked virtual
//!   time of S. J. Golestani, INFOCOM 1994): each backlogged sender has a
//!   tag that grows by `bytes / weight` for every frame it sends; the
//!   destination's virtual time is the least tag of the senders that are
//!   backlogged and eligible; a sender more than one quantum ahead of it
//!   waits. A sender that runs dry ([`Share::idle`]) or is held by its own
//!   shaper ([`Share::admit`]'s `held` query) neither blocks the others
//!   nor banks credit: it comes back at the current virtual time. Long-run
//!   shares are exact in bytes, whatever the frame sizes, and no sender is
//!   ever more than one quantum (plus a frame) ahead of its share.
//!
//!   Minimum guarantees (`min_tx_rate`) are served before this, by the
//!   caller's guaranteed pass: a guaranteed frame that finds no room
//!   reserves the next room for itself ([`Share::reserve`]).
//!
//! Without contention every sender gets what it sends (work-conserving):
//! the fair order only applies while the destination is congested, which
//! lasts [`Share::CONGESTED_NS`] after the last sign of it, or as long as
//! its link bucket is below a full burst.
//!
//! **Arbiter time.** The windows that measure how long ago something was
//! seen (congestion, a sender's last request, a reservation) run on the
//! arbiter's own clock: wall time, except that a gap between two looks at
//! the arbiter counts as at most [`Share::MAX_GAP_NS`]. An engine that the
//! host descheduled for a few milliseconds saw nothing in that time, so
//! the time does not end a congestion or make its senders look gone: when
//! it comes back to buffers the receiver posted meanwhile, they are still
//! shared in fair order (not handed to whichever sender it polls first).

use crate::bucket::{mbps_to_bytes_per_s, TokenBucket};

/// Fixed-point scale of virtual time: units per byte at weight 1.
const VT_ONE: u64 = 1 << 10;
/// Virtual times are rebased (all shifted down) beyond this.
const VT_REBASE: u64 = 1 << 62;

#[derive(Debug, Clone, Copy)]
struct Sender {
    vf: u16,
    /// Start tag: virtual time at which its next frame starts.
    tag: u64,
    /// Last time it asked (arbiter time).
    last_ns: u64,
    /// It has frames waiting (it asked recently and has not run dry).
    backlogged: bool,
}

/// The arbiter of one destination; see the module documentation.
#[derive(Debug, Default)]
pub struct Share {
    senders: Vec<Sender>,
    /// Virtual time: the least start tag among eligible backlogged senders.
    vtime: u64,
    /// Arbiter time (ns): see the module documentation.
    clock_ns: u64,
    /// Wall time (ns) of the last look at the arbiter.
    looked_ns: u64,
    /// Until when (arbiter time) the destination counts as congested.
    congested_until_ns: u64,
    /// Until when (arbiter time) its next room is reserved for a guarantee.
    reserved_until_ns: u64,
    /// The link (`speed`): a bucket at that rate, with the Mbit/s it was
    /// made for.
    link: Option<(u32, TokenBucket)>,
}

impl Share {
    /// A sender that has not asked for this long has gone (a backstop:
    /// senders that run dry say so with [`Share::idle`]). Longer than an
    /// engine's sleep or a scheduler's time slice, so a sender whose
    /// engine merely paused keeps its place.
    pub const ACTIVE_NS: u64 = 5_000_000;
    /// How long one sign of congestion (no room) keeps the fair order on.
    pub const CONGESTED_NS: u64 = 2_000_000;
    /// How long room stays reserved for a guarantee that found none.
    pub const RESERVE_NS: u64 = 1_000_000;
    /// The most arbiter time one gap between looks counts for: more than
    /// an engine's pause between two turns at a busy destination, well
    /// under the windows above.
    pub const MAX_GAP_NS: u64 = 500_000;

    /// Arbiter time at wall time `now_ns`, without taking the look.
    #[inline(always)]
    fn clock_at(&self, now_ns: u64) -> u64 {
        self.clock_ns + now_ns.saturating_sub(self.looked_ns).min(Self::MAX_GAP_NS)
    }

    /// A look at the arbiter at wall time `now_ns`: advances its clock and
    /// returns it. Looks from several engines may arrive slightly out of
    /// order; an earlier one counts as no time.
    #[inline(always)]
    fn tick(&mut self, now_ns: u64) -> u64 {
        self.clock_ns = self.clock_at(now_ns);
        self.looked_ns = self.looked_ns.max(now_ns);
        self.clock_ns
    }

    /// Brings the link bucket in line with the destination's speed in
    /// Mbit/s (a changed speed starts a fresh bucket; 0 removes it).
    #[inline]
    pub fn set_speed(&mut self, mbps: u32, now_ns: u64) {
        match (&self.link, mbps) {
            (_, 0) => self.link = None,
            (Some((m, _)), s) if *m == s => {}
            (_, s) => {
                // A burst of 10 ms of rate (64 KiB at least), as the max
                // rate shaper: an engine that sleeps a millisecond or two
                // between turns does not lose the link's rate.
                let rate = mbps_to_bytes_per_s(s);
                self.link = Some((s, TokenBucket::new(rate, (rate / 100).max(64 * 1024), now_ns)));
            }
        }
    }

    /// True if the destination has a link speed (a bucket to draw from).
    #[inline]
    pub fn has_link(&self) -> bool {
        self.link.is_some()
    }

    /// When the link has room for `bytes`: `None` = now (or no link),
    /// `Some(t)` = not before `t` (ns). Takes nothing.
    #[inline]
    pub fn link_wait(&mut self, bytes: u64, now_ns: u64) -> Option<u64> {
        let (_, b) = self.link.as_mut()?;
        if b.conforms(bytes, now_ns) {
            None
        } else {
            Some(b.next_ready_ns(bytes, now_ns))
        }
    }

    /// Puts `bytes` on the link (after [`Share::link_wait`] said yes).
    #[inline]
    pub fn take_link(&mut self, bytes: u64) {
        if let Some((_, b)) = self.link.as_mut() {
            b.consume(bytes);
        }
    }

    /// Records a sign of congestion at `now_ns` (no room for a frame).
    #[inline]
    pub fn mark_congested(&mut self, now_ns: u64) {
        self.congested_until_ns = self.tick(now_ns) + Self::CONGESTED_NS;
    }

    /// True while senders are admitted in fair order.
    #[inline(always)]
    pub fn congested(&mut self, now_ns: u64) -> bool {
        self.tick(now_ns) < self.congested_until_ns || (self.link.is_some() && self.link_busy(now_ns))
    }

    /// A link that has not refilled to a full burst is in use at its rate:
    /// its senders contend for it. (Out of line: the per-run check of a
    /// receiver without a link stays a few instructions.)
    #[inline(never)]
    fn link_busy(&mut self, now_ns: u64) -> bool {
        match self.link.as_mut() {
            Some((_, b)) => b.tokens(now_ns) < b.burst_bytes() as i64,
            None => false,
        }
    }

    /// A guaranteed frame found no room: hold the next room for it.
    pub fn reserve(&mut self, now_ns: u64) {
        self.reserved_until_ns = self.tick(now_ns) + Self::RESERVE_NS;
    }

    /// The guaranteed sender got its room.
    pub fn release(&mut self) {
        self.reserved_until_ns = 0;
    }

    /// True while room is held for a guarantee.
    pub fn reserved(&self, now_ns: u64) -> bool {
        self.clock_at(now_ns) < self.reserved_until_ns
    }

    /// `vf` ran dry (its queue is empty): it leaves the contention until
    /// it asks again.
    pub fn idle(&mut self, vf: u16) {
        if let Some(s) = self.senders.iter_mut().find(|s| s.vf == vf) {
            s.backlogged = false;
        }
    }

    /// May `vf` (with `weight`) hand over a frame of `bytes` now, in fair
    /// order? Charges its tag when it may. `quantum` is how far (bytes at
    /// weight 1) a sender may run ahead of the virtual time; `held(v)`
    /// says whether sender `v` is held by its own shaper (not eligible, so
    /// it does not hold the others back).
    pub fn admit(
        &mut self,
        vf: u16,
        weight: u32,
        bytes: u64,
        quantum: u64,
        now_ns: u64,
        held: impl Fn(u16) -> bool,
    ) -> bool {
        let clock = self.tick(now_ns);
        let i = match self.senders.iter().position(|s| s.vf == vf) {
            Some(i) => i,
            None => {
                self.senders.push(Sender { vf, tag: self.vtime, last_ns: clock, backlogged: false });
                self.senders.len() - 1
            }
        };
        for (k, s) in self.senders.iter_mut().enumerate() {
            if k != i && clock.saturating_sub(s.last_ns) >= Self::ACTIVE_NS {
                s.backlogged = false;
            }
        }
        let me = &mut self.senders[i];
        me.last_ns = clock;
        if !me.backlogged {
            // Back from idle: start at the current virtual time (no credit
            // banked while away, none lost by it either).
            me.backlogged = true;
            me.tag = me.tag.max(self.vtime);
        }
        let least = self
            .senders
            .iter()
            .filter(|s| s.backlogged && (s.vf == vf || !held(s.vf)))
            .map(|s| s.tag)
            .min()
            .unwrap_or(self.vtime);
        self.vtime = self.vtime.max(least);
        let me = &mut self.senders[i];
        if me.tag > self.vtime.saturating_add(quantum * VT_ONE) {
            return false;
        }
        me.tag = me.tag.saturating_add(bytes * VT_ONE / weight.max(1) as u64);
        if self.vtime > VT_REBASE {
            let base = self.vtime;
            self.vtime = 0;
            for s in &mut self.senders {
                s.tag = s.tag.saturating_sub(base);
            }
        }
        true
    }

    /// Forgets `vf` (it was removed).
    pub fn remove(&mut self, vf: u16) {
        self.senders.retain(|s| s.vf != vf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: u64 = 1536;
    const NEVER_HELD: fn(u16) -> bool = |_| false;

    fn shares(got: &[u64]) -> Vec<f64> {
        let total: u64 = got.iter().sum();
        got.iter().map(|&g| g as f64 / total as f64).collect()
    }

    /// Three always-backlogged senders with weights 1:2:3 share a
    /// destination that takes one frame per step; they ask in turn.
    #[test]
    fn shares_follow_weights() {
        let mut f = Share::default();
        let weights = [1u32, 2, 3];
        let mut got = [0u64; 3];
        for step in 0..60_000u64 {
            for k in 0..3 {
                let v = ((step as usize) + k) % 3;
                if f.admit(v as u16, weights[v], 1000, Q, step * 10, NEVER_HELD) {
                    got[v] += 1000;
                    break;
                }
            }
        }
        for (v, s) in shares(&got).iter().enumerate() {
            let want = weights[v] as f64 / 6.0;
            assert!((s - want).abs() < 0.005, "sender {v}: {s:.4}, want {want:.4} ({got:?})");
        }
    }

    /// Frames of different sizes share bytes, not frames.
    #[test]
    fn shares_are_in_bytes() {
        let mut f = Share::default();
        let len = [64u64, 1500];
        let mut got = [0u64; 2];
        for step in 0..200_000u64 {
            for k in 0..2 {
                let v = ((step as usize) + k) % 2;
                if f.admit(v as u16, 1, len[v], Q, step, NEVER_HELD) {
                    got[v] += len[v];
                    break;
                }
            }
        }
        let s = shares(&got);
        assert!((s[0] - 0.5).abs() < 0.01, "{s:?} {got:?}");
    }

    /// The engine's view of a destination whose link is the bottleneck:
    /// three backlogged senders visited in turn, one frame per visit, each
    /// resting until the link has room when it finds it full, and the
    /// engine sleeping a millisecond (or three) whenever all rest.
    #[test]
    fn a_full_link_is_shared_by_weight() {
        for sleep_ns in [1_000_000u64, 4_000_000] {
            let mut f = Share::default();
            let weights = [1u32, 2, 3];
            let mut held = [0u64; 3];
            let mut got = [0u64; 3];
            let mut now = 0u64;
            let frame = 1024u64;
            while now < 2_000_000_000 {
                f.set_speed(300, now);
                let mut progress = false;
                for v in 0..3 {
                    if held[v] > now {
                        continue;
                    }
                    if let Some(t) = f.link_wait(frame, now) {
                        f.mark_congested(now);
                        held[v] = t;
                        continue;
                    }
                    if f.congested(now) && !f.admit(v as u16, weights[v], frame, Q, now, NEVER_HELD) {
                        continue;
                    }
                    f.take_link(frame);
                    got[v] += frame;
                    progress = true;
                }
                now += if progress {
                    200
                } else if held.iter().all(|&h| h > now) {
                    sleep_ns
                } else {
                    100
                };
            }
            let total: u64 = got.iter().sum();
            let rate = total as f64 * 8.0 / 2.0 / 1e6;
            assert!((rate - 300.0).abs() < 3.0, "sleep {sleep_ns}: link carried {rate:.1} Mbit/s, want 300");
            for (v, s) in shares(&got).iter().enumerate() {
                let want = weights[v] as f64 / 6.0;
                assert!(
                    (s - want).abs() / want < 0.01,
                    "sleep {sleep_ns}: sender {v}: {s:.4}, want {want:.4} ({got:?})"
                );
            }
        }
    }

    /// A sender that runs dry neither blocks the others nor banks credit
    /// for when it comes back.
    #[test]
    fn an_idle_sender_neither_blocks_nor_banks() {
        let mut f = Share::default();
        assert!(f.admit(1, 1, 1000, Q, 0, NEVER_HELD));
        f.idle(1);
        // Sender 2 alone: never held back for sender 1.
        for t in 0..1000 {
            assert!(f.admit(2, 1, 1000, Q, 10 + t, NEVER_HELD), "step {t}");
        }
        // Sender 1 returns: it gets about half from now on, not a burst
        // of the 1000 frames it missed.
        let mut run = 0;
        while f.admit(1, 1, 1000, Q, 2000, NEVER_HELD) {
            run += 1;
            assert!(run < 5, "sender 1 came back with banked credit");
        }
        assert!(f.admit(2, 1, 1000, Q, 2001, NEVER_HELD));
    }

    /// A sender that stops asking (its engine stopped serving it) leaves
    /// the contention after ACTIVE_NS.
    #[test]
    fn a_silent_sender_leaves_the_contention() {
        let mut f = Share::default();
        assert!(f.admit(1, 1, 1000, Q, 0, NEVER_HELD));
        let mut t = 1;
        while f.admit(2, 1, 1000, Q, t, NEVER_HELD) {
            t += 1;
        }
        assert!(t < 10, "sender 2 ran ahead of a backlogged sender 1");
        // Sender 2 keeps asking (every 100 us) and is held back until
        // sender 1 has been silent for ACTIVE_NS.
        let step = 100_000;
        let mut waited = 0;
        while !f.admit(2, 1, 1000, Q, t + waited, NEVER_HELD) {
            waited += step;
            assert!(waited <= Share::ACTIVE_NS + step, "sender 1 never left");
        }
        assert!(waited + step >= Share::ACTIVE_NS, "sender 1 left after {waited} ns");
    }

    /// An engine that the host paused (no look at the arbiter for far
    /// longer than the windows) finds the destination still congested and
    /// its senders still in contention; only watched time ends them.
    #[test]
    fn a_pause_without_looks_ends_nothing() {
        let mut f = Share::default();
        assert!(f.admit(1, 1, 1000, Q, 0, NEVER_HELD));
        f.mark_congested(1);
        f.reserve(1);
        let back = 50 * Share::ACTIVE_NS;
        assert!(f.reserved(back), "a reservation outlives the pause");
        assert!(f.congested(back), "congestion outlives the pause");
        // Sender 1 did not ask during the pause, nor did anyone: it still
        // holds sender 2 to its fair order.
        let mut t = back;
        while f.admit(2, 1, 1000, Q, t, NEVER_HELD) {
            t += 1;
        }
        assert!(t - back < 10, "sender 2 ran ahead of sender 1 after a pause");
        // Looks every 100 us with no new sign: congestion ends after
        // CONGESTED_NS of them.
        let mut watched = 0;
        while f.congested(t + watched) {
            watched += 100_000;
            assert!(watched <= Share::CONGESTED_NS + Share::MAX_GAP_NS, "congestion never ends");
        }
        assert!(watched >= Share::CONGESTED_NS - Share::MAX_GAP_NS, "ended after {watched} ns");
    }

    /// A sender held by its own shaper does not hold the others back.
    #[test]
    fn a_shaped_sender_does_not_block() {
        let mut f = Share::default();
        assert!(f.admit(1, 1, 1000, Q, 0, NEVER_HELD));
        for t in 0..100 {
            assert!(f.admit(2, 1, 1000, Q, 1 + t, |v| v == 1), "step {t}");
        }
    }

    #[test]
    fn congestion_lasts_and_a_busy_link_counts() {
        let mut f = Share::default();
        assert!(!f.congested(0));
        f.mark_congested(10);
        // Looked at every 100 us: congested for CONGESTED_NS, then not.
        let mut t = 10;
        while t < 10 + Share::CONGESTED_NS {
            assert!(f.congested(t), "{t}");
            t += 100_000;
        }
        assert!(!f.congested(t));
        let t0 = 10 * Share::CONGESTED_NS;
        f.set_speed(100, t0);
        assert!(!f.congested(t0 + 1), "a full link bucket is not contention");
        f.take_link(1000);
        assert!(f.congested(t0 + 2), "a link in use is");
        assert_eq!(f.link_wait(1000, t0 + 2), None, "the burst still has room");
        f.take_link(200_000);
        let t = f.link_wait(1000, t0 + 3).expect("link full");
        assert!(t > t0 + 3);
        assert_eq!(f.link_wait(1000, t), None);
        f.set_speed(0, t);
        assert_eq!(f.link_wait(1_000_000, t), None, "no speed, no link limit");
    }

    #[test]
    fn reservation_expires_or_is_released() {
        let mut f = Share::default();
        f.reserve(0);
        assert!(f.reserved(Share::RESERVE_NS - 1));
        // Watched time (looks every 100 us) ends it.
        let mut t = 0;
        while t <= Share::RESERVE_NS {
            t += 100_000;
            f.congested(t);
        }
        assert!(!f.reserved(t));
        f.reserve(t);
        f.release();
        assert!(!f.reserved(t + 1));
    }

    proptest::proptest! {
        /// Any weights, frame sizes and visiting order: always-backlogged
        /// senders at a destination that takes one frame per step get
        /// bytes in proportion to their weights, each within one quantum
        /// plus one frame of its exact share.
        #[test]
        fn shares_are_exact_within_a_quantum(
            weights in proptest::collection::vec(1u32..20, 2..5),
            lens in proptest::collection::vec(60u64..9000, 5),
            order in proptest::collection::vec(0usize..5, 64),
        ) {
            let n = weights.len();
            let mut f = Share::default();
            let mut got = vec![0u64; n];
            // Every sender has asked once: all are backlogged.
            for v in 0..n {
                proptest::prop_assert!(f.admit(v as u16, weights[v], lens[v], Q, 0, NEVER_HELD));
                got[v] += lens[v];
            }
            for step in 1..20_000usize {
                for k in 0..n {
                    let v = (order[step % order.len()] + k) % n;
                    let len = lens[v];
                    if f.admit(v as u16, weights[v], len, Q, step as u64, NEVER_HELD) {
                        got[v] += len;
                        break;
                    }
                }
            }
            let total: u64 = got.iter().sum();
            let wsum: u64 = weights.iter().map(|&w| w as u64).sum();
            for v in 0..n {
                let want = total as f64 * weights[v] as f64 / wsum as f64;
                let slack = (Q * weights[v] as u64 + 2 * lens.iter().max().unwrap()) as f64 * n as f64;
                proptest::prop_assert!((got[v] as f64 - want).abs() <= slack,
                    "sender {v}: {} bytes, want {want:.0} +- {slack:.0} ({got:?})", got[v]);
            }
        }
    }
}
