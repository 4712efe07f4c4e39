//! vfnic user-level library (design module 8): a vhost-user **frontend** and a
//! split-virtqueue virtio-net driver in plain Rust.
//!
//! A process opens a VF's vhost-user socket and drives its own queue pair: buffers live
//! in memory it shares with the adapter (a memfd), it posts sends and receive buffers,
//! and it polls the used rings or waits on the interrupt (call) eventfd. The same crate
//! is the project's test client, so it also exposes the raw protocol connection and
//! hooks for writing arbitrary descriptors, indices and messages (hostile-tenant tests).
//!
//! Module map, from the wire up:
//! - [`proto`]: vhost-user message vocabulary and encoding (sans-IO).
//! - [`conn`]: [`Conn`], one frontend connection: raw sends, replies with deadlines,
//!   typed request helpers, REPLY_ACK handling.
//! - [`memory`]: [`GuestMemory`], the shared memory and its two numberings (guest
//!   physical vs. this process's virtual addresses).
//! - [`ring`]: driver side of a split virtqueue ([`Vring`]), notification rules.
//! - [`net`]: [`VirtioNet`], the handshake, the RX/TX data path and the
//!   optional control queue (the VF-to-PF mailbox); [`BackendChannel`]
//!   receives the backend's own requests (config changes).
//!
//! `unsafe` is confined to `sys` (fd passing, poll, eventfd, memfd) and [`memory`]
//! (mmap and the volatile/atomic accessors); everything else is safe code.
#![deny(missing_docs)]
#![deny(unsafe_code)]

use std::io;
use std::path::PathBuf;

pub mod conn;
pub mod memory;
pub mod net;
pub mod proto;
pub mod ring;
mod sys;

#[cfg(test)]
mod fake_backend;

pub use conn::{BackendChannel, Conn, Reply};
pub use memory::GuestMemory;
pub use net::{Options, Queue, Stats, VirtioNet, RX_QUEUE, TX_QUEUE};
pub use proto::MemRegion;
pub use ring::{Descriptor, RawDesc, UsedElem, Vring};
pub use sys::EventFd;

/// Errors of the user-level library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Connecting to the VF socket failed.
    #[error("Connect to {path}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Sending a message failed (`code` is `u32::MAX` for raw bytes).
    #[error("Send vhost-user request {code}")]
    Send {
        /// Request code.
        code: u32,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Receiving a message failed.
    #[error("Receive vhost-user message")]
    Recv(#[source] io::Error),
    /// No reply before the deadline.
    #[error("Timed out waiting for the backend")]
    Timeout,
    /// The backend closed the connection.
    #[error("Backend closed the connection")]
    Disconnected,
    /// The backend's reply was malformed.
    #[error("Malformed reply: {0}")]
    BadReply(String),
    /// The backend refused a request (non-zero REPLY_ACK status, or a failed GET_CONFIG).
    #[error("Backend refused request {code} (status {status})")]
    Nack {
        /// Request code.
        code: u32,
        /// Status the backend returned.
        status: u64,
    },
    /// Creating or mapping the shared memory failed.
    #[error("Create shared memory")]
    CreateMemory(#[source] io::Error),
    /// A guest address range lies outside the shared memory.
    #[error("Guest range {gpa:#x}+{len} outside shared memory")]
    OutOfRange {
        /// Guest physical address.
        gpa: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Creating an eventfd failed.
    #[error("Create eventfd")]
    EventFd(#[source] io::Error),
    /// Signalling, reading or waiting on an eventfd failed.
    #[error("Eventfd I/O")]
    EventFdIo(#[source] io::Error),
    /// The options cannot work.
    #[error("Invalid options: {0}")]
    InvalidOptions(&'static str),
    /// The memory size is too small for rings and buffers.
    #[error("Memory too small: need {need} bytes, have {have}")]
    MemoryTooSmall {
        /// Bytes needed.
        need: u64,
        /// Bytes configured.
        have: u64,
    },
    /// The backend cleared FEATURES_OK after SET_FEATURES.
    #[error("Backend rejected features {0:#x}")]
    FeaturesRejected(u64),
    /// A frame does not fit a TX buffer.
    #[error("Frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// Frame length.
        len: usize,
        /// Largest frame accepted.
        max: usize,
    },
    /// No free descriptors (for TX: none freed before the timeout).
    #[error("Ring full")]
    RingFull,
    /// A raw post named a descriptor slot that is out of range or in flight.
    #[error("Descriptor slot {0} is busy")]
    SlotBusy(u16),
    /// The device wrote a malformed used element or index.
    #[error("Bad used element: {0}")]
    BadUsed(String),
}

/// Result with the library's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
