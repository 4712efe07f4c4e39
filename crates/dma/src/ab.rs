//! An in-process A/B switch for data-path experiments (feature
//! `ab-switch`; `scripts/ab-switch.sh`).
//!
//! Two builds timed one after the other land on different placements of
//! this machine's two cores, and their figures differ by up to 2x for the
//! same code; one frame per burst is the worst. With the switch, one
//! binary carries both variants (`if vfnic_dma::ab::b() { .. } else { .. }`
//! where they differ) and the engine flips between them every few
//! milliseconds, counting the chains it moves in each: both variants then
//! share every placement and the ratio of their rates holds to about 1%.
//! Without the feature [`b`] is a constant `false` and the variant B code
//! is compiled out.

#[cfg(feature = "ab-switch")]
mod imp {
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Whether variant B runs now (flipped by the engine).
    pub static B: AtomicBool = AtomicBool::new(false);

    /// Whether variant B runs now.
    #[inline(always)]
    pub fn b() -> bool {
        B.load(Ordering::Relaxed)
    }

    /// Switches to variant B (`true`) or A.
    pub fn set(b: bool) {
        B.store(b, Ordering::Relaxed);
    }
}

#[cfg(not(feature = "ab-switch"))]
mod imp {
    /// Whether variant B runs now: never, without the feature.
    #[inline(always)]
    pub const fn b() -> bool {
        false
    }

    /// Does nothing without the feature.
    pub fn set(_: bool) {}
}

pub use imp::*;
