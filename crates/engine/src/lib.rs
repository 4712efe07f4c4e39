//! The DMA engines: the adapter's data-plane threads.
//!
//! Stage ③ of the pipeline, driving stage ④: an engine owns the TX queues of
//! the functions mapped to it. For each frame a tenant posts it walks the
//! descriptor chain (through `vfnic-dma`'s translation and checks), asks the
//! switch ([`vfnic_switch::Fdb`]) where the frame goes, and copies it once,
//! straight from the sender's buffers into each receiver's RX buffers
//! ([`deliver`]). It busy-polls while there is work and sleeps on the
//! tenants' doorbells (kick eventfds) once idle, and raises interrupts
//! (call eventfds) as `EVENT_IDX` asks.
//!
//! * [`pool`]: the engines, the queue-to-engine map (least-loaded
//!   placement), and wake-ups when the operation module changes a queue;
//! * [`fabric`]: what all engines share: the switch's forwarding table and
//!   the port table;
//! * [`forward`]: the per-queue burst: TX chain -> switch -> RX chains;
//! * [`deliver`]: writing one frame into a receiver's RX queue;
//! * [`phases`]: cycles per phase of a burst (feature `phase-cycles`);
//! * [`ab`]: the in-process A/B switch for experiments (feature
//!   `ab-switch`);
//! * [`mailbox`]: the control virtqueue (VF-to-PF mailbox): commands
//!   answered by PF policy.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod ab;
pub mod chains;
pub mod deliver;
pub mod fabric;
pub mod forward;
pub mod mailbox;
pub mod phases;
pub mod pool;
pub mod rss;
pub mod uplink;

pub use fabric::Fabric;
pub use pool::{EngineConfig, EnginePool, EngineStats};
