//! vfnic vocabulary shared by every stage of the adapter: MAC addresses,
//! function (VF) identifiers and the per-function counters.
//!
//! No I/O and no `unsafe` here; every other crate depends on this one.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod counters;
mod mac;

pub use counters::{Counter, DropReason, ErrorKind, VfCounters, VfCountersSnapshot};
pub use mac::{MacAddr, ParseMacError};

use serde::{Deserialize, Serialize};

/// Index of a virtual function on the physical function (0-based, as in
/// `ip link set DEV vf N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VfId(pub u16);

impl std::fmt::Display for VfId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "vf{}", self.0)
    }
}

/// Most VFs one physical function may carry (as `ICE_MAX_SRIOV_VFS`).
pub const MAX_VFS: u16 = 256;

/// Link state of a function as the administrator sets it (`ip link ... state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// The link follows the tenant's connection.
    #[default]
    Up,
    /// Administratively down: no traffic either way.
    Down,
}
