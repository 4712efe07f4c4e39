//! vfnic vocabulary shared by every stage of the adapter: MAC addresses,
//! function (VF) identifiers and the per-function counters.
//!
//! No I/O and no `unsafe` here; every other crate depends on this one.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod counters;
mod mac;

pub mod vhost_user;

pub use counters::{Counter, DropReason, ErrorKind, HoldReason, QueueCounters, VfCounters, VfCountersSnapshot};
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

/// Link state of a function as the administrator sets it
/// (`ip link set DEV vf N state auto|enable|disable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// The link follows the tenant's connection (`up` is accepted too).
    #[default]
    #[serde(alias = "up")]
    Auto,
    /// Forced up.
    Enable,
    /// Administratively down: no traffic either way (`down` is accepted too).
    #[serde(alias = "down")]
    Disable,
}

impl LinkState {
    /// True unless disabled.
    pub fn passes_traffic(self) -> bool {
        self != LinkState::Disable
    }
}

impl std::str::FromStr for LinkState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" | "up" => Ok(LinkState::Auto),
            "enable" => Ok(LinkState::Enable),
            "disable" | "down" => Ok(LinkState::Disable),
            other => Err(format!("state must be auto, enable or disable, not `{other}`")),
        }
    }
}
