//! Stage ⑦ of the adapter: the physical function, i.e. the control plane.
//!
//! * [`config`]: the declarative TOML configuration and its checks (a bad
//!   line is reported with its line number and the daemon does not start);
//! * [`pf`]: the running adapter: creates each VF's function (stage ②), its
//!   socket (stage ①) and its place on an engine (stage ③) and switch port
//!   (stage ④); applies administrator settings at run time;
//! * [`api`]: the runtime API: line-delimited JSON over a Unix socket, and
//!   the client the CLI uses.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod api;
pub mod config;
pub mod pf;
pub mod uplink_config;

pub use config::{Config, ConfigError, VfConfig};
pub use pf::{Pf, PfError};
