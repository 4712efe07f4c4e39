//! The CPU's time-stamp counter: how the engines account busy and idle
//! cycles (the unit testpmd's `--record-core-cycles` reports in).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Reads the time-stamp counter.
#[inline(always)]
pub fn now() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC reads a counter; it has no memory effects and is
        // available on every x86_64 CPU.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

/// Nanoseconds on the TSC's clock (monotonic; cheap: no system call, no
/// division: one multiply by a 32.32 fixed-point ns-per-tick factor).
#[inline]
pub fn ns() -> u64 {
    static NS_PER_TICK_Q32: OnceLock<u64> = OnceLock::new();
    let q = *NS_PER_TICK_Q32.get_or_init(|| ((1_000_000_000u128 << 32) / hz() as u128) as u64);
    ((now() as u128 * q as u128) >> 32) as u64
}

/// Ticks in `d` (for comparing against [`now`] without a clock call).
pub fn ticks(d: Duration) -> u64 {
    (d.as_nanos() * hz() as u128 / 1_000_000_000) as u64
}

/// Ticks per second, measured once (20 ms against the monotonic clock).
pub fn hz() -> u64 {
    static HZ: OnceLock<u64> = OnceLock::new();
    *HZ.get_or_init(|| {
        let (t0, c0) = (Instant::now(), now());
        std::thread::sleep(Duration::from_millis(20));
        let (dt, dc) = (t0.elapsed(), now().wrapping_sub(c0));
        (dc as f64 / dt.as_secs_f64()) as u64
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn ticks_forward_at_a_plausible_rate() {
        let a = super::now();
        let hz = super::hz();
        assert!(super::now() > a);
        assert!((10_000_000..100_000_000_000).contains(&hz), "{hz}");
    }
}
