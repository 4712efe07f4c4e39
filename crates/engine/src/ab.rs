//! The engine's side of the in-process A/B switch ([`vfnic_dma::ab`],
//! feature `ab-switch`): engine 0 flips the variant every `VFNIC_AB_MS`
//! milliseconds (default 20), counts the chains moved under each, and
//! logs both rates and their ratio every [`REPORT_FLIPS`] flips (target
//! `vfnic::ab`, level info; `scripts/ab-switch.sh` reads them). Without the
//! feature every call here is empty.

/// Flips summed per line logged (4 s at the default 20 ms).
pub const REPORT_FLIPS: u64 = 200;

#[cfg(feature = "ab-switch")]
mod imp {
    use super::REPORT_FLIPS;
    use std::time::Duration;
    use vfnic_dma::tsc;

    /// Times the variants and counts their chains.
    pub struct AbClock {
        /// Flips (engine 0 only).
        owner: bool,
        period: u64,
        since: u64,
        chains: u64,
        /// (chains, ticks) of A and of B since the last line.
        sums: [(u64, u64); 2],
        flips: u64,
    }

    impl AbClock {
        /// The clock of engine `engine`.
        pub fn new(engine: usize) -> AbClock {
            let ms = std::env::var("VFNIC_AB_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
            tracing::info!(target: "vfnic::ab", engine, ms, "A/B switch built in");
            AbClock {
                owner: engine == 0,
                period: tsc::ticks(Duration::from_millis(ms)),
                since: tsc::now(),
                chains: 0,
                sums: [(0, 0); 2],
                flips: 0,
            }
        }

        /// Chains moved in a poll round.
        #[inline]
        pub fn count(&mut self, chains: usize) {
            self.chains += chains as u64;
        }

        /// Flips the variant when its time is up (once per poll round).
        #[inline]
        pub fn tick(&mut self) {
            if !self.owner {
                return;
            }
            let t = tsc::now();
            if t.wrapping_sub(self.since) < self.period {
                return;
            }
            let b = vfnic_dma::ab::b();
            let s = &mut self.sums[b as usize];
            s.0 += std::mem::take(&mut self.chains);
            s.1 += t.wrapping_sub(self.since);
            self.since = t;
            vfnic_dma::ab::set(!b);
            self.flips += 1;
            if self.flips % REPORT_FLIPS == 0 {
                let rate = |(chains, ticks): (u64, u64)| chains as f64 * tsc::hz() as f64 / ticks.max(1) as f64;
                let (a, b) = (rate(self.sums[0]), rate(self.sums[1]));
                tracing::info!(target: "vfnic::ab", a, b, ratio = b / a, "chains/s per variant");
                self.sums = [(0, 0); 2];
            }
        }
    }
}

#[cfg(not(feature = "ab-switch"))]
mod imp {
    /// Nothing, without the feature.
    pub struct AbClock;

    impl AbClock {
        /// Nothing, without the feature.
        #[inline(always)]
        pub fn new(_engine: usize) -> AbClock {
            AbClock
        }

        /// Nothing, without the feature.
        #[inline(always)]
        pub fn count(&mut self, _chains: usize) {}

        /// Nothing, without the feature.
        #[inline(always)]
        pub fn tick(&mut self) {}
    }
}

pub use imp::AbClock;
