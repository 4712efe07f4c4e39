//! A token bucket with an injected clock and exact integer refill.
//!
//! After firecracker's `rate_limiter::TokenBucket`, with three changes:
//!
//! * the clock is a parameter (`now_ns`), so tests simulate time instead of
//!   sleeping;
//! * refill is computed on every call from the nanoseconds elapsed, with the
//!   fractional token carried over (in units of `1/den` bytes), so the long-run
//!   rate is exact and there is no cool-down timer that quantizes it;
//! * the owner asks [`TokenBucket::next_ready_ns`] for a deadline instead of
//!   the bucket owning a timer.
//!
//! Arithmetic: the rate in bytes per nanosecond is `rate_bytes_per_s / 1e9`,
//! reduced by their gcd to `num / den` (`den <= 1e9`). One refill computes
//! `elapsed_ns * num + carry` in `u128`: `elapsed_ns < 2^64` and
//! `num < 2^64`, so the product is below `2^128` and cannot overflow.

/// Nanoseconds per second.
pub const NS_PER_S: u64 = 1_000_000_000;
/// Smallest default burst: two full-size standard Ethernet frames (1514 B).
pub const MIN_BURST_BYTES: u64 = 2 * 1514;
/// The default burst holds this many nanoseconds of traffic (1 ms) when
/// that is more than [`MIN_BURST_BYTES`].
pub const DEFAULT_BURST_NS: u64 = 1_000_000;

/// Largest burst accepted, so that token arithmetic stays in `i64`.
const MAX_BURST_BYTES: u64 = 1 << 60;

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Default burst for a rate: `max(MIN_BURST_BYTES, rate * 1 ms)`.
pub fn default_burst_bytes(rate_bytes_per_s: u64) -> u64 {
    let per_ms = (rate_bytes_per_s as u128 * DEFAULT_BURST_NS as u128 / NS_PER_S as u128) as u64;
    per_ms.max(MIN_BURST_BYTES)
}

/// Converts ip-link's Mbit/s (10^6 bit/s) to bytes per second.
pub fn mbps_to_bytes_per_s(mbps: u32) -> u64 {
    mbps as u64 * 125_000
}

/// A token bucket metering bytes.
///
/// Tokens are bytes. A request of `n` bytes conforms when the bucket holds at
/// least `min(n, burst)` tokens; it then takes all `n`, which may leave the
/// bucket in debt (a frame larger than the burst, such as a 64 KiB GSO
/// frame on a slow limit, still passes once the bucket is full, and the
/// debt is repaid at the configured rate, so the long-run rate stays exact;
/// firecracker's `BucketReduction::OverConsumption`).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_bytes_per_s: u64,
    burst_bytes: u64,
    /// Bytes per nanosecond = `num / den`, gcd-reduced.
    num: u64,
    den: u64,
    /// Current balance in bytes; negative = debt. Never above `burst_bytes`.
    tokens: i64,
    /// Fraction of a byte already earned, in units of `1 / den` bytes
    /// (`carry < den`).
    carry: u64,
    /// Time of the last refill.
    last_ns: u64,
}

impl TokenBucket {
    /// A bucket of `rate_bytes_per_s` (must be > 0) holding at most
    /// `burst_bytes` (at least 1), full at `now_ns`.
    ///
    /// # Panics
    /// If `rate_bytes_per_s` is 0 (a zero rate means "unlimited" in the
    /// ip-link vocabulary; model it as no bucket).
    pub fn new(rate_bytes_per_s: u64, burst_bytes: u64, now_ns: u64) -> Self {
        assert!(rate_bytes_per_s > 0, "a token bucket needs a rate > 0");
        let burst_bytes = burst_bytes.clamp(1, MAX_BURST_BYTES);
        let g = gcd(rate_bytes_per_s, NS_PER_S);
        TokenBucket {
            rate_bytes_per_s,
            burst_bytes,
            num: rate_bytes_per_s / g,
            den: NS_PER_S / g,
            tokens: burst_bytes as i64,
            carry: 0,
            last_ns: now_ns,
        }
    }

    /// A bucket of `rate_bytes_per_s` with the default burst
    /// ([`default_burst_bytes`]).
    pub fn with_rate(rate_bytes_per_s: u64, now_ns: u64) -> Self {
        Self::new(rate_bytes_per_s, default_burst_bytes(rate_bytes_per_s), now_ns)
    }

    /// The configured rate.
    pub fn rate_bytes_per_s(&self) -> u64 {
        self.rate_bytes_per_s
    }

    /// The configured burst (bucket size).
    pub fn burst_bytes(&self) -> u64 {
        self.burst_bytes
    }

    /// Raises the burst to at least `burst_bytes` (never lowers it; the
    /// balance is kept). The arbiter keeps every bucket at two of the
    /// largest frames it has metered, so a frame that conforms but waits
    /// (for room at the destination) does not let the bucket overflow and
    /// waste the rate.
    pub fn grow_burst(&mut self, burst_bytes: u64) {
        let burst_bytes = burst_bytes.min(MAX_BURST_BYTES);
        if burst_bytes > self.burst_bytes {
            // A full bucket stays full.
            if self.tokens == self.burst_bytes as i64 {
                self.tokens = burst_bytes as i64;
            }
            self.burst_bytes = burst_bytes;
        }
    }

    /// Balance and carry the bucket would have at `now_ns`.
    fn peek(&self, now_ns: u64) -> (i64, u64) {
        if now_ns <= self.last_ns || self.tokens >= self.burst_bytes as i64 {
            // Time going backwards is ignored; a full bucket earns nothing.
            return (self.tokens, if self.tokens >= self.burst_bytes as i64 { 0 } else { self.carry });
        }
        let acc = (now_ns - self.last_ns) as u128 * self.num as u128 + self.carry as u128;
        let add = acc / self.den as u128;
        let room = (self.burst_bytes as i64 - self.tokens) as u128;
        if add >= room {
            (self.burst_bytes as i64, 0)
        } else {
            // add < room <= 2^61: fits in i64.
            (self.tokens + add as i64, (acc % self.den as u128) as u64)
        }
    }

    /// Adds the tokens earned since the last refill (exactly, carrying the
    /// fraction of a byte). A clock that goes backwards adds nothing.
    pub fn refill(&mut self, now_ns: u64) {
        let (tokens, carry) = self.peek(now_ns);
        self.tokens = tokens;
        self.carry = carry;
        self.last_ns = self.last_ns.max(now_ns);
        debug_assert!(self.tokens <= self.burst_bytes as i64);
        debug_assert!(self.carry < self.den);
    }

    /// Balance in bytes at `now_ns` (negative = debt).
    pub fn tokens(&mut self, now_ns: u64) -> i64 {
        self.refill(now_ns);
        self.tokens
    }

    /// Whether `bytes` conform at `now_ns` (see the type's doc), without
    /// taking them.
    pub fn conforms(&mut self, bytes: u64, now_ns: u64) -> bool {
        self.refill(now_ns);
        self.tokens >= bytes.min(self.burst_bytes) as i64
    }

    /// Takes `bytes` unconditionally (the bucket may go into debt). For
    /// traffic that was sent anyway and must still be accounted.
    pub fn consume(&mut self, bytes: u64) {
        let bytes = bytes.min(MAX_BURST_BYTES) as i64;
        self.tokens = self.tokens.saturating_sub(bytes);
    }

    /// Gives back `bytes` taken for traffic that was not sent after all
    /// (never beyond a full bucket).
    pub fn refund(&mut self, bytes: u64) {
        let bytes = bytes.min(MAX_BURST_BYTES) as i64;
        self.tokens = self.tokens.saturating_add(bytes).min(self.burst_bytes() as i64);
    }

    /// Takes `bytes` if they conform at `now_ns`.
    pub fn try_consume(&mut self, bytes: u64, now_ns: u64) -> bool {
        if self.conforms(bytes, now_ns) {
            self.consume(bytes);
            true
        } else {
            false
        }
    }

    /// Earliest time at or after `now_ns` at which `bytes` conform (exact:
    /// at that nanosecond [`TokenBucket::conforms`] is true, one nanosecond
    /// earlier it is false).
    pub fn next_ready_ns(&self, bytes: u64, now_ns: u64) -> u64 {
        let now_ns = now_ns.max(self.last_ns);
        let (tokens, carry) = self.peek(now_ns);
        let need = bytes.min(self.burst_bytes) as i64 - tokens;
        if need <= 0 {
            return now_ns;
        }
        // Smallest t with (t * num + carry) / den >= need.
        let target = need as u128 * self.den as u128 - carry as u128;
        let t = target.div_ceil(self.num as u128);
        now_ns.saturating_add(u64::try_from(t).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MBPS: u64 = 125_000;

    /// Sends `len`-byte frames as fast as the bucket allows for `dur_ns`,
    /// jumping straight to each deadline; returns the bytes sent.
    fn greedy(rate: u64, len: u64, dur_ns: u64) -> u64 {
        let mut b = TokenBucket::with_rate(rate, 0);
        let (mut t, mut sent) = (0u64, 0u64);
        while t < dur_ns {
            if b.try_consume(len, t) {
                sent += len;
            } else {
                let next = b.next_ready_ns(len, t);
                assert!(next > t);
                assert!(!b.conforms(len, next - 1), "deadline not tight");
                t = next;
            }
        }
        sent
    }

    #[test]
    fn long_run_rate_is_exact() {
        for rate in [MBPS, 999 * MBPS, 10_000 * MBPS, 1_234_567] {
            for len in [64u64, 1514, 9000, 65550] {
                // Long enough for >= 2000 frames and >= 1 s, at most 5e5 frames.
                let frames = (rate / len).clamp(2000, 500_000);
                let dur_ns = (frames as u128 * len as u128 * NS_PER_S as u128 / rate as u128) as u64;
                let dur_ns = dur_ns.max(NS_PER_S);
                let sent = greedy(rate, len, dur_ns);
                let b = TokenBucket::with_rate(rate, 0);
                let ideal = rate as u128 * dur_ns as u128 / NS_PER_S as u128 + b.burst_bytes() as u128;
                let err = (sent as f64 - ideal as f64).abs() / ideal as f64;
                assert!(
                    err < 0.001 || (sent as f64 - ideal as f64).abs() <= len as f64,
                    "rate {rate} len {len}: sent {sent} ideal {ideal} err {err}"
                );
            }
        }
    }

    #[test]
    fn oversize_frame_goes_into_debt_and_repays_it() {
        let mut b = TokenBucket::new(MBPS, 3028, 0);
        assert!(b.try_consume(65550, 0));
        assert_eq!(b.tokens(0), 3028 - 65550);
        // Needs min(len, burst) = 3028 tokens back: 65550 bytes at 125000 B/s.
        let next = b.next_ready_ns(65550, 0);
        assert_eq!(next, 65550 * NS_PER_S / MBPS);
        assert!(!b.conforms(65550, next - 1));
        assert!(b.conforms(65550, next));
    }

    #[test]
    fn refill_carries_fractions() {
        // 3 bytes per 7 ns is not an integer per ns; 1 ns steps must not lose it.
        let rate = 3 * NS_PER_S / 7 + 1; // odd rate
        let mut b = TokenBucket::new(rate, 1 << 40, 0);
        b.consume(1 << 40);
        for t in 1..=1_000_000u64 {
            b.refill(t);
        }
        let expect = (rate as u128 * 1_000_000 / NS_PER_S as u128) as i64;
        assert_eq!(b.tokens(1_000_000), expect);
    }

    #[test]
    fn clock_going_backwards_is_harmless() {
        let mut b = TokenBucket::new(MBPS, 10_000, 1_000);
        assert!(b.try_consume(10_000, 1_000));
        b.refill(500);
        assert_eq!(b.tokens(500), 0);
        assert_eq!(b.tokens(1_000 + 8_000), 1); // 8 us at 125 B/ms = 1 byte
    }

    /// Fine refill polled at an odd period keeps the rate; a limiter that
    /// re-checks only after a coarse cool-down (cloud-hypervisor's 100 ms
    /// timer) with the same bucket loses most of it.
    #[test]
    fn no_cool_down_skew() {
        let rate = 100 * MBPS;
        let len = 1514;
        let dur = 2 * NS_PER_S;
        // Poll every `period_ns`; send whatever conforms at each poll.
        let run = |period_ns: u64| {
            let mut b = TokenBucket::with_rate(rate, 0);
            let (mut t, mut sent) = (0, 0u64);
            while t < dur {
                while b.try_consume(len, t) {
                    sent += len;
                }
                t += period_ns;
            }
            sent
        };
        let burst = default_burst_bytes(rate) as f64;
        let ideal = (rate * dur / NS_PER_S) as f64 + burst;
        let fine = run(37_000) as f64;
        let coarse = run(100_000_000) as f64;
        assert!((fine - ideal).abs() / ideal < 0.001, "fine {fine} ideal {ideal}");
        assert!(coarse < 0.2 * ideal, "coarse {coarse} ideal {ideal}");
    }
}
