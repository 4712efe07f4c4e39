//! Stage ② of the adapter: the operation module.
//!
//! Per virtual function it holds what an SR-IOV NIC keeps in its function
//! and queue contexts:
//!
//! * [`function::Function`]: the VF's configuration space (MAC, MTU, link,
//!   offered and negotiated features, device status), its counters, and its
//!   queue pairs;
//! * [`vring::Vring`]: one virtqueue's context: size, ring addresses, base
//!   index, doorbell (kick eventfd), interrupt (call eventfd), enable and
//!   fault state, and once started the mapped [`vfnic_dma::SplitRing`];
//! * [`fd::Doorbell`]: a checked, non-blocking eventfd;
//! * [`mailbox`]: the VF<->PF mailbox: the PF's policy for control-queue
//!   commands ([`mailbox::decide`]) and config-change notifications to the
//!   front end ([`mailbox::BackendChannel`]).
//!
//! The bus interface (`vfnic-bus`) writes this state from vhost-user
//! messages; the DMA engines (`vfnic-engine`) read it under each vring's
//! lock. The lock order is always TX vring, then RX vring.
#![deny(unsafe_code)]
#![deny(missing_docs)]

#[allow(unsafe_code)] // fcntl and eventfd adoption only
pub mod fd;
pub mod features;
pub mod function;
pub mod mailbox;
pub mod vring;

pub use fd::Doorbell;
pub use function::{
    any_promiscuous, DataPlaneHooks, Function, FunctionSettings, NoHooks, Policy, PolicyCache, QueueCounters, QueueLoad,
};
pub use vring::{Vring, VringState};
