//! One tenant connection: the vhost-user protocol state machine.
//!
//! Per message the session decides one of three outcomes, never silence:
//! * **ack**: the request was applied (a reply body for GET_*, a zero u64 when
//!   the front end set NEED_REPLY);
//! * **nack**: a well-framed request was refused (non-zero u64 with
//!   NEED_REPLY; without it, a refusal that leaves state consistent is
//!   logged and counted, one that does not closes the connection);
//! * **close**: the stream cannot be trusted (bad header, deadline passed in
//!   the middle of a message, too many fds, a refused GET).
//!
//! Requests are applied to the VF's [`Function`]; the data plane is told when
//! a queue changes. Everything here is tenant input and is counted on the
//! VF's error counters.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tracing::{debug, info, warn};
use vfnic_dma::{GuestMemory, RingAddrs};
use vfnic_op::features::{self, PROTOCOL_FEATURES};
use vfnic_op::mailbox::BackendChannel;
use vfnic_op::{Doorbell, Function};
use vfnic_types::ErrorKind;

use crate::message::{
    self, protocol_features, Header, ParseError, Request, HEADER_SIZE, MAX_PAYLOAD, OFFERED_PROTOCOL_FEATURES,
};
use crate::sys;

/// How long the rest of a message may take once its first byte arrived.
pub const MESSAGE_DEADLINE: Duration = Duration::from_secs(2);
/// How often an idle session checks whether it should stop.
const IDLE_POLL: Duration = Duration::from_millis(200);

/// Why a session ended.
#[derive(Debug, Error)]
pub enum SessionEnd {
    /// The front end closed the connection.
    #[error("Front end disconnected")]
    Disconnected,
    /// The daemon asked the session to stop (VF removed, shutdown).
    #[error("Session stopped")]
    Stopped,
    /// A framing error or a missed deadline: the stream is out of sync.
    #[error("Protocol error, connection closed")]
    Framing(#[source] FrameError),
    /// A request was refused and could not be answered.
    #[error("Request {request} refused without a way to answer: {reason}")]
    Refused {
        /// Request code.
        request: u32,
        /// What was wrong.
        reason: String,
    },
}

/// A message that could not be framed.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The header or body did not parse.
    #[error("Malformed message")]
    Parse(#[from] ParseError),
    /// The message did not complete within [`MESSAGE_DEADLINE`].
    #[error("Message incomplete after the read deadline")]
    Deadline,
    /// More fds than allowed, or fds not matching the request.
    #[error("Message carried {got} fds, expected {expected}")]
    Fds {
        /// Fds received.
        got: usize,
        /// Fds the request needs.
        expected: usize,
    },
    /// Reading or writing the socket failed.
    #[error("Socket I/O failed")]
    Io(#[source] io::Error),
}

/// A refusal of a well-framed request.
#[derive(Debug)]
struct Refusal {
    kind: ErrorKind,
    reason: String,
}

fn refuse(kind: ErrorKind, reason: impl Into<String>) -> Refusal {
    Refusal { kind, reason: reason.into() }
}

type Handled = Result<Option<Vec<u8>>, Refusal>;

/// A whole message as read off the socket: header, body, fds.
type Message = (Header, Vec<u8>, Vec<OwnedFd>);

/// Protocol state of one connection.
pub struct Session {
    func: Arc<Function>,
    stream: UnixStream,
    acked_protocol: u64,
    mem: Option<Arc<GuestMemory>>,
}

impl Session {
    /// A session for `func` over `stream`.
    pub fn new(func: Arc<Function>, stream: UnixStream) -> io::Result<Session> {
        stream.set_read_timeout(Some(MESSAGE_DEADLINE))?;
        stream.set_write_timeout(Some(MESSAGE_DEADLINE))?;
        Ok(Session { func, stream, acked_protocol: 0, mem: None })
    }

    /// Serves requests until the front end leaves, an unrecoverable error,
    /// or `stop` is set.
    pub fn run(&mut self, stop: &AtomicBool) -> SessionEnd {
        loop {
            if stop.load(Ordering::Relaxed) {
                return SessionEnd::Stopped;
            }
            match sys::wait_readable(self.stream.as_raw_fd(), IDLE_POLL) {
                Ok(false) => continue,
                Ok(true) => {}
                Err(e) => return SessionEnd::Framing(FrameError::Io(e)),
            }
            let (hdr, body, fds) = match self.read_message() {
                Ok(Some(m)) => m,
                Ok(None) => return SessionEnd::Disconnected,
                Err(e) => {
                    self.func.counters.error(ErrorKind::MsgMalformed);
                    self.func.counters.error(ErrorKind::ConnectionClosed);
                    return SessionEnd::Framing(e);
                }
            };
            if let Err(end) = self.dispatch(hdr, &body, fds) {
                self.func.counters.error(ErrorKind::ConnectionClosed);
                return end;
            }
        }
    }

    /// Reads one whole message. `None` on a clean EOF before any byte. The
    /// whole message must arrive within [`MESSAGE_DEADLINE`] of its first
    /// byte, however the peer trickles it.
    fn read_message(&mut self) -> Result<Option<Message>, FrameError> {
        let deadline = Instant::now() + MESSAGE_DEADLINE;
        let mut hdr = [0u8; HEADER_SIZE];
        let mut fds = Vec::new();
        let got = self.read_exact_fds(&mut hdr, &mut fds, deadline)?;
        if got == 0 {
            return Ok(None);
        }
        if got < HEADER_SIZE {
            return Err(FrameError::Deadline);
        }
        let h = Header::parse(&hdr)?;
        let mut body = vec![0u8; h.size as usize];
        if self.read_exact_fds(&mut body, &mut fds, deadline)? < body.len() {
            return Err(FrameError::Deadline);
        }
        Ok(Some((h, body, fds)))
    }

    /// Fills `buf` before `deadline`, collecting fds; returns bytes read
    /// (short only on EOF).
    fn read_exact_fds(
        &mut self,
        buf: &mut [u8],
        fds: &mut Vec<OwnedFd>,
        deadline: Instant,
    ) -> Result<usize, FrameError> {
        let mut off = 0;
        while off < buf.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !sys::wait_readable(self.stream.as_raw_fd(), left).map_err(FrameError::Io)? {
                return Err(FrameError::Deadline);
            }
            match sys::recv_with_fds(&self.stream, &mut buf[off..]) {
                Ok(r) => {
                    fds.extend(r.fds);
                    if r.fds_truncated || fds.len() > message::MAX_FDS {
                        return Err(FrameError::Fds {
                            got: fds.len().max(message::MAX_FDS + 1),
                            expected: message::MAX_FDS,
                        });
                    }
                    if r.len == 0 {
                        return Ok(off);
                    }
                    off += r.len;
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return Err(FrameError::Deadline)
                }
                Err(e) => return Err(FrameError::Io(e)),
            }
        }
        Ok(off)
    }

    fn dispatch(&mut self, h: Header, body: &[u8], fds: Vec<OwnedFd>) -> Result<(), SessionEnd> {
        let req = match message::parse(&h, body) {
            Ok(r) => r,
            Err(e) => {
                let kind =
                    if matches!(e, ParseError::Unknown(_)) { ErrorKind::MsgUnknown } else { ErrorKind::MsgMalformed };
                return self.refused(h, refuse(kind, e.to_string()), false);
            }
        };
        if fds.len() != req.fds_expected() {
            let e = FrameError::Fds { got: fds.len(), expected: req.fds_expected() };
            return self.refused(h, refuse(ErrorKind::MsgMalformed, e.to_string()), req.has_reply());
        }
        debug!(vf = self.func.id.0, request = h.request, "vhost-user request");
        let has_reply = req.has_reply();
        match self.handle(req, fds) {
            Ok(Some(reply)) => self.reply(h.request, &reply),
            Ok(None) if h.need_reply() => self.reply(h.request, &0u64.to_le_bytes()),
            Ok(None) => Ok(()),
            Err(r) => self.refused(h, r, has_reply),
        }
    }

    /// Nack when we can; close when the front end would wait for a body we
    /// cannot give, or when it does not expect an answer and the refusal
    /// leaves it believing something false about our state.
    fn refused(&mut self, h: Header, r: Refusal, has_reply: bool) -> Result<(), SessionEnd> {
        self.func.counters.error(r.kind);
        warn!(vf = self.func.id.0, request = h.request, reason = %r.reason, "vhost-user request refused");
        let critical = matches!(
            r.kind,
            ErrorKind::MemTableRefused | ErrorKind::RingAddrInvalid | ErrorKind::MsgUnknown | ErrorKind::MsgMalformed
        );
        if has_reply || (!h.need_reply() && critical) {
            return Err(SessionEnd::Refused { request: h.request, reason: r.reason });
        }
        if h.need_reply() {
            return self.reply(h.request, &1u64.to_le_bytes());
        }
        Ok(())
    }

    fn reply(&mut self, request: u32, body: &[u8]) -> Result<(), SessionEnd> {
        debug_assert!(body.len() <= MAX_PAYLOAD);
        let mut msg = Vec::with_capacity(HEADER_SIZE + body.len());
        msg.extend_from_slice(&Header::reply(request, body.len()));
        msg.extend_from_slice(body);
        self.stream.write_all(&msg).map_err(|e| SessionEnd::Framing(FrameError::Io(e)))
    }

    fn vring_index(&self, index: u32) -> Result<&vfnic_op::Vring, Refusal> {
        self.func.vring(index).ok_or_else(|| refuse(ErrorKind::MsgRefused, format!("queue {index} does not exist")))
    }

    fn handle(&mut self, req: Request, mut fds: Vec<OwnedFd>) -> Handled {
        let f = self.func.clone();
        let u64_reply = |v: u64| Ok(Some(v.to_le_bytes().to_vec()));
        match req {
            Request::GetFeatures => u64_reply(f.offered_features()),
            Request::SetFeatures(v) => {
                let offered = f.offered_features();
                if v & !offered != 0 {
                    return Err(refuse(
                        ErrorKind::MsgRefused,
                        format!("features {:#x} were not offered", v & !offered),
                    ));
                }
                f.set_acked_features(v);
                for vr in f.vrings() {
                    let mut s = vr.lock();
                    s.event_idx = features::event_idx(v);
                    s.indirect = features::indirect(v);
                    s.packed = features::packed(v);
                    s.read_skip = features::tx_hdr_unread(v);
                    if s.ring.is_some() {
                        s.rebuild().map_err(|e| refuse(ErrorKind::RingAddrInvalid, e.to_string()))?;
                    }
                }
                f.queues_changed();
                Ok(None)
            }
            Request::SetOwner => Ok(None),
            Request::ResetOwner | Request::ResetDevice => {
                f.reset_device();
                self.mem = None;
                Ok(None)
            }
            Request::SetMemTable(regions) => {
                let mem =
                    GuestMemory::map(&regions, fds).map_err(|e| refuse(ErrorKind::MemTableRefused, e.to_string()))?;
                let mem = Arc::new(mem);
                info!(vf = f.id.0, regions = regions.len(), "memory table mapped");
                for vr in f.vrings() {
                    if let Err(e) = vr.lock().set_mem(Some(mem.clone())) {
                        f.counters.error(ErrorKind::RingAddrInvalid);
                        warn!(vf = f.id.0, queue = vr.index, error = %e, "ring does not fit the new memory table");
                    }
                }
                self.mem = Some(mem);
                f.queues_changed();
                Ok(None)
            }
            Request::SetVringNum { index, num } => {
                let vr = self.vring_index(index)?;
                if num == 0 || num > 32768 || !num.is_power_of_two() {
                    return Err(refuse(ErrorKind::MsgRefused, format!("ring size {num} is invalid")));
                }
                vr.lock().size = num;
                Ok(None)
            }
            Request::SetVringAddr { index, flags: _, desc, used, avail, log: _ } => {
                let vr = self.vring_index(index)?;
                let addrs = RingAddrs { desc, avail, used };
                let mut s = vr.lock();
                s.check_addrs(addrs).map_err(|e| refuse(ErrorKind::RingAddrInvalid, e.to_string()))?;
                s.addrs = Some(addrs);
                let r = s.rebuild();
                drop(s);
                f.queues_changed();
                r.map(|_| None).map_err(|e| refuse(ErrorKind::RingAddrInvalid, e.to_string()))
            }
            Request::SetVringBase { index, num } => {
                let vr = self.vring_index(index)?;
                let base = u16::try_from(num)
                    .map_err(|_| refuse(ErrorKind::MsgRefused, format!("base {num} beyond 16 bits")))?;
                vr.lock().base = base;
                Ok(None)
            }
            Request::GetVringBase { index } => {
                let vr = self.vring_index(index)?;
                let base = vr.lock().stop();
                f.queues_changed();
                let mut b = index.to_le_bytes().to_vec();
                b.extend_from_slice(&(base as u32).to_le_bytes());
                Ok(Some(b))
            }
            Request::SetVringKick { index, has_fd } => {
                let vr = self.vring_index(index)?;
                let kick = match has_fd {
                    true => Some(doorbell(fds.pop())?),
                    false => None,
                };
                let mut s = vr.lock();
                s.kick = kick;
                s.started = true;
                if f.acked_features() & PROTOCOL_FEATURES == 0 {
                    // Without protocol features a ring is enabled once kicked.
                    s.enabled = true;
                }
                let r = s.rebuild();
                drop(s);
                f.queues_changed();
                r.map(|_| None).map_err(|e| refuse(ErrorKind::RingAddrInvalid, e.to_string()))
            }
            Request::SetVringCall { index, has_fd } => {
                let vr = self.vring_index(index)?;
                let call = if has_fd { Some(doorbell(fds.pop())?) } else { None };
                vr.lock().call = call;
                Ok(None)
            }
            Request::SetVringErr { index, has_fd } => {
                let vr = self.vring_index(index)?;
                let err = if has_fd { Some(doorbell(fds.pop())?) } else { None };
                vr.lock().err = err;
                Ok(None)
            }
            Request::GetProtocolFeatures => u64_reply(OFFERED_PROTOCOL_FEATURES),
            Request::SetProtocolFeatures(v) => {
                if v & !OFFERED_PROTOCOL_FEATURES != 0 {
                    return Err(refuse(
                        ErrorKind::MsgRefused,
                        format!("protocol features {:#x} were not offered", v & !OFFERED_PROTOCOL_FEATURES),
                    ));
                }
                self.acked_protocol = v;
                Ok(None)
            }
            Request::GetQueueNum => u64_reply(f.queue_pairs() as u64),
            Request::SetVringEnable { index, enable } => {
                // QEMU sends this before SET_FEATURES: accept and record.
                let vr = self.vring_index(index)?;
                vr.lock().enabled = enable;
                f.queues_changed();
                Ok(None)
            }
            Request::SendRarp(_) => Ok(None),
            Request::NetSetMtu(mtu) => {
                if !(68..=65535).contains(&mtu) {
                    return Err(refuse(ErrorKind::MsgRefused, format!("MTU {mtu} out of range")));
                }
                Ok(None)
            }
            Request::SetBackendReqFd => {
                // The PF->VF half of the mailbox: config-change
                // notifications (link state, MAC) go out on it. Kept by the
                // function so the control plane reaches it; forgotten when
                // the tenant disconnects.
                let fd = fds.pop().expect("fd count checked by dispatch");
                let need_reply = self.acked_protocol & protocol_features::REPLY_ACK != 0;
                let channel = BackendChannel::new(UnixStream::from(fd), need_reply)
                    .map_err(|e| refuse(ErrorKind::MsgRefused, format!("bad backend request fd: {e}")))?;
                f.set_backend_channel(Some(channel));
                Ok(None)
            }
            Request::GetConfig(a) => {
                let space = f.config_space();
                let mut out = Vec::with_capacity(12 + a.size as usize);
                out.extend_from_slice(&a.offset.to_le_bytes());
                out.extend_from_slice(&a.size.to_le_bytes());
                out.extend_from_slice(&a.flags.to_le_bytes());
                out.extend((a.offset..a.offset + a.size).map(|i| space.get(i as usize).copied().unwrap_or(0)));
                Ok(Some(out))
            }
            Request::SetConfig(..) => {
                Err(refuse(ErrorKind::MsgRefused, "the config space is set by the PF, not the tenant"))
            }
            Request::GetMaxMemSlots => u64_reply(vfnic_dma::mem::MAX_REGIONS as u64),
            Request::SetStatus(s) => {
                let s = u8::try_from(s)
                    .map_err(|_| refuse(ErrorKind::MsgRefused, format!("status {s:#x} beyond 8 bits")))?;
                f.set_status(s);
                Ok(None)
            }
            Request::GetStatus => u64_reply(f.status() as u64),
            Request::SetLogBase | Request::SetLogFd | Request::IotlbMsg | Request::SetVringEndian => {
                Err(refuse(ErrorKind::MsgRefused, "not supported (feature not offered)"))
            }
        }
    }
}

fn doorbell(fd: Option<OwnedFd>) -> Result<Doorbell, Refusal> {
    let fd = fd.ok_or_else(|| refuse(ErrorKind::MsgMalformed, "missing fd"))?;
    Doorbell::from_fd(fd).map_err(|e| refuse(ErrorKind::MsgRefused, format!("bad eventfd: {e}")))
}
