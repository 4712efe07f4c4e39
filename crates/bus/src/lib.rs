//! Stage ① of the adapter: the bus interface.
//!
//! Each VF is a vhost-user backend socket; the tenant's driver (QEMU, DPDK
//! virtio-user, `vfnic-user`) connects to it as the front end. This crate
//! is the project's own thin protocol layer (ANCHORS.md sec. 5 explains why
//! not the `vhost` crate):
//!
//! * [`message`]: framing constants and a pure parser from bytes to a typed
//!   [`message::Request`] (fuzzed in `fuzz/`);
//! * [`sys`]: the socket edge: `recvmsg` with `SCM_RIGHTS` and
//!   `MSG_CMSG_CLOEXEC`, read deadlines, fd-count checks;
//! * [`session`]: one connection's protocol state machine, applying requests
//!   to the VF's [`vfnic_op::Function`] and deciding, per message, ack, nack
//!   or close;
//! * [`listener`]: the per-VF socket and its accept loop (a tenant that goes
//!   away frees its resources and the socket accepts it again).
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod listener;
pub mod message;
pub mod session;
#[allow(unsafe_code)] // recvmsg/cmsg and poll only
pub mod sys;

pub use listener::VfListener;
pub use session::{Session, SessionEnd};
