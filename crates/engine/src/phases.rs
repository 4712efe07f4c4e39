//! Where a burst's cycles go: TSC cycles per phase of `process_tx`, per
//! frame, for finding what the data path waits on when no hardware
//! performance counters are at hand (this VM has none). Built only with the
//! `phase-cycles` feature (`scripts/phase-profile.sh`); without it every
//! call here is empty and compiles to nothing.
//!
//! Each engine thread sums its own bursts and logs one line per
//! [`REPORT_BURSTS`] bursts (target `vfnic::phases`, level info): frames
//! per burst and cycles per frame of each [`Phase`]. The phases of one
//! burst add up to its time inside `process_tx` past the TX queue's lock;
//! [`Phase::RxTake`] and [`Phase::RxFill`] are parts of [`Phase::Deliver`].

/// A phase of one burst.
#[derive(Clone, Copy, Debug)]
pub enum Phase {
    /// Step 1: the TX chains taken, walked and admitted.
    Take,
    /// Step 2: policy and the switch.
    Classify,
    /// Step 2b: backpressure and egress arbitration.
    Arbitrate,
    /// Step 3: delivery to every receiver (includes the two below).
    Deliver,
    /// Step 4: TX completion, publish and interrupt.
    Complete,
    /// Within delivery: the RX chains taken ahead of the frames.
    RxTake,
    /// Within delivery: the frames written.
    RxFill,
}

/// Bursts summed per line logged.
pub const REPORT_BURSTS: u64 = 1 << 17;

#[cfg(feature = "phase-cycles")]
mod imp {
    use super::{Phase, REPORT_BURSTS};
    use std::cell::RefCell;

    const PHASES: usize = 7;

    #[derive(Default)]
    struct Sums {
        cycles: [u64; PHASES],
        frames: u64,
        bursts: u64,
    }

    thread_local! {
        static SUMS: RefCell<Sums> = RefCell::new(Sums::default());
    }

    /// Times consecutive phases.
    pub struct Stopwatch(u64);

    impl Stopwatch {
        /// Starts the first phase now.
        #[inline]
        pub fn start() -> Stopwatch {
            Stopwatch(vfnic_dma::tsc::now())
        }

        /// Ends phase `p` now (the next one starts).
        #[inline]
        pub fn lap(&mut self, p: Phase) {
            let t = vfnic_dma::tsc::now();
            SUMS.with(|s| s.borrow_mut().cycles[p as usize] += t.wrapping_sub(self.0));
            self.0 = t;
        }
    }

    /// Counts a burst of `frames` that went through every phase.
    pub fn burst(frames: u64) {
        SUMS.with(|s| {
            let mut s = s.borrow_mut();
            s.frames += frames;
            s.bursts += 1;
            if s.bursts < REPORT_BURSTS {
                return;
            }
            let per = |p: Phase| s.cycles[p as usize] as f64 / s.frames.max(1) as f64;
            tracing::info!(
                target: "vfnic::phases",
                frames_per_burst = format_args!("{:.1}", s.frames as f64 / s.bursts as f64),
                take = format_args!("{:.0}", per(Phase::Take)),
                classify = format_args!("{:.0}", per(Phase::Classify)),
                arbitrate = format_args!("{:.0}", per(Phase::Arbitrate)),
                deliver = format_args!("{:.0}", per(Phase::Deliver)),
                rx_take = format_args!("{:.0}", per(Phase::RxTake)),
                rx_fill = format_args!("{:.0}", per(Phase::RxFill)),
                complete = format_args!("{:.0}", per(Phase::Complete)),
                "cycles per frame by phase"
            );
            *s = Sums::default();
        });
    }
}

#[cfg(not(feature = "phase-cycles"))]
mod imp {
    use super::Phase;

    /// Times consecutive phases (this build: nothing).
    pub struct Stopwatch;

    impl Stopwatch {
        /// Starts the first phase now (this build: nothing).
        #[inline(always)]
        pub fn start() -> Stopwatch {
            Stopwatch
        }

        /// Ends phase `p` now (this build: nothing).
        #[inline(always)]
        pub fn lap(&mut self, _p: Phase) {}
    }

    /// Counts a burst (this build: nothing).
    #[inline(always)]
    pub fn burst(_frames: u64) {}
}

pub use imp::{burst, Stopwatch};
