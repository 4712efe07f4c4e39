//! A raw vhost-user frontend connection over a Unix stream socket.
//!
//! [`Conn`] sends any bytes the caller likes (well-formed requests through the typed
//! helpers, or malformed ones through [`Conn::send`] / [`Conn::send_raw_bytes`]) and
//! reads replies with a deadline: no call blocks longer than the connection's timeout.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::proto::{
    self, flags, protocol_features, request, ConfigPayload, Header, MemRegion, VringAddr, VringState, HEADER_SIZE,
    MAX_PAYLOAD,
};
use crate::{sys, Error, Result};

/// Default reply timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// One message received from the backend.
#[derive(Debug)]
pub struct Reply {
    /// The header as received.
    pub header: Header,
    /// The payload (`header.size` bytes).
    pub payload: Vec<u8>,
    /// File descriptors that rode along (closed on drop).
    pub fds: Vec<OwnedFd>,
}

impl Reply {
    /// The payload as a `u64`, if it is exactly 8 bytes.
    pub fn as_u64(&self) -> Option<u64> {
        proto::decode_u64(&self.payload)
    }
}

/// A vhost-user frontend connection.
#[derive(Debug)]
pub struct Conn {
    sock: UnixStream,
    timeout: Duration,
    reply_ack: bool,
}

impl Conn {
    /// Connects to a backend listening at `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let sock = UnixStream::connect(path).map_err(|source| Error::Connect { path: path.to_owned(), source })?;
        Ok(Self::from_stream(sock))
    }

    /// Wraps an already connected stream.
    pub fn from_stream(sock: UnixStream) -> Self {
        Conn { sock, timeout: DEFAULT_TIMEOUT, reply_ack: false }
    }

    /// The underlying socket.
    pub fn stream(&self) -> &UnixStream {
        &self.sock
    }

    /// Reply timeout used by the typed helpers.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sets the reply timeout used by the typed helpers.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Whether set-requests carry NEED_REPLY and expect an ack.
    pub fn reply_ack(&self) -> bool {
        self.reply_ack
    }

    /// Forces REPLY_ACK use on or off (normally set by [`Self::set_protocol_features`]).
    pub fn set_reply_ack(&mut self, on: bool) {
        self.reply_ack = on;
    }

    /// Sends one message: header `{code, flags, payload.len()}`, payload, and `fds`.
    /// `flags` go out exactly as given (pass [`flags::VERSION`] for a normal message).
    pub fn send(&mut self, code: u32, flags: u32, payload: &[u8], fds: &[RawFd]) -> Result<()> {
        let msg = proto::encode_message(code, flags, payload);
        self.send_all(code, &msg, fds)
    }

    /// Sends arbitrary bytes (partial headers, lying sizes, garbage) with `fds` attached
    /// to the first segment.
    pub fn send_raw_bytes(&mut self, bytes: &[u8], fds: &[RawFd]) -> Result<()> {
        self.send_all(u32::MAX, bytes, fds)
    }

    fn send_all(&mut self, code: u32, bytes: &[u8], fds: &[RawFd]) -> Result<()> {
        let fd = self.sock.as_raw_fd();
        let mut sent = sys::send_with_fds(fd, bytes, fds).map_err(|source| Error::Send { code, source })?;
        while sent < bytes.len() {
            let n = sys::send_with_fds(fd, &bytes[sent..], &[]).map_err(|source| Error::Send { code, source })?;
            sent += n;
        }
        Ok(())
    }

    /// Receives one message within `timeout`.
    ///
    /// # Errors
    /// `Timeout`, `Disconnected` (EOF), `Recv`, or `BadReply` if the header announces a
    /// payload larger than [`MAX_PAYLOAD`].
    pub fn recv_reply(&mut self, timeout: Duration) -> Result<Reply> {
        let deadline = Instant::now() + timeout;
        let mut fds = Vec::new();
        let mut hdr = [0u8; HEADER_SIZE];
        self.recv_exact(&mut hdr, &mut fds, deadline)?;
        let header = Header::decode(&hdr);
        let size = header.size as usize;
        if size > MAX_PAYLOAD {
            return Err(Error::BadReply(format!("payload size {size} for request {}", header.request)));
        }
        let mut payload = vec![0u8; size];
        self.recv_exact(&mut payload, &mut fds, deadline)?;
        Ok(Reply { header, payload, fds })
    }

    fn recv_exact(&mut self, buf: &mut [u8], fds: &mut Vec<OwnedFd>, deadline: Instant) -> Result<()> {
        let fd = self.sock.as_raw_fd();
        let mut got = 0;
        while got < buf.len() {
            if !sys::wait_readable(fd, deadline).map_err(Error::Recv)? {
                return Err(Error::Timeout);
            }
            match sys::recv_with_fds(fd, &mut buf[got..], fds) {
                Ok(0) => return Err(Error::Disconnected),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(Error::Disconnected),
                Err(e) => return Err(Error::Recv(e)),
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` for the backend to close the connection, discarding anything
    /// it sends meanwhile. `Ok(true)` once closed, `Ok(false)` on timeout.
    pub fn wait_closed(&mut self, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        let fd = self.sock.as_raw_fd();
        let mut buf = [0u8; 256];
        loop {
            if !sys::wait_readable(fd, deadline).map_err(Error::Recv)? {
                return Ok(false);
            }
            let mut fds = Vec::new();
            match sys::recv_with_fds(fd, &mut buf, &mut fds) {
                Ok(0) => return Ok(true),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(true),
                Err(e) => return Err(Error::Recv(e)),
            }
        }
    }

    /// Sends a GET-style request and returns its reply, checking that the reply names
    /// the same request and carries the REPLY flag.
    pub fn request(&mut self, code: u32, payload: &[u8], fds: &[RawFd]) -> Result<Reply> {
        self.send(code, flags::VERSION, payload, fds)?;
        let reply = self.recv_reply(self.timeout)?;
        check_reply_header(code, &reply.header)?;
        Ok(reply)
    }

    /// Sends a set-style request; with REPLY_ACK negotiated it sets NEED_REPLY and
    /// fails with `Nack` unless the backend answers 0.
    pub fn set_request(&mut self, code: u32, payload: &[u8], fds: &[RawFd]) -> Result<()> {
        if !self.reply_ack {
            return self.send(code, flags::VERSION, payload, fds);
        }
        self.send(code, flags::VERSION | flags::NEED_REPLY, payload, fds)?;
        let reply = self.recv_reply(self.timeout)?;
        check_reply_header(code, &reply.header)?;
        let status = reply.as_u64().ok_or_else(|| Error::BadReply(format!("ack of {} bytes", reply.payload.len())))?;
        if status != 0 {
            return Err(Error::Nack { code, status });
        }
        Ok(())
    }

    fn get_u64(&mut self, code: u32) -> Result<u64> {
        let r = self.request(code, &[], &[])?;
        r.as_u64().ok_or_else(|| Error::BadReply(format!("request {code}: {} byte payload, want 8", r.payload.len())))
    }

    /// GET_FEATURES: the device features the backend offers.
    pub fn get_features(&mut self) -> Result<u64> {
        self.get_u64(request::GET_FEATURES)
    }

    /// SET_FEATURES.
    pub fn set_features(&mut self, features: u64) -> Result<()> {
        self.set_request(request::SET_FEATURES, &proto::encode_u64(features), &[])
    }

    /// SET_OWNER.
    pub fn set_owner(&mut self) -> Result<()> {
        self.set_request(request::SET_OWNER, &[], &[])
    }

    /// RESET_OWNER.
    pub fn reset_owner(&mut self) -> Result<()> {
        self.set_request(request::RESET_OWNER, &[], &[])
    }

    /// GET_PROTOCOL_FEATURES.
    pub fn get_protocol_features(&mut self) -> Result<u64> {
        self.get_u64(request::GET_PROTOCOL_FEATURES)
    }

    /// SET_PROTOCOL_FEATURES; turns on REPLY_ACK use if `features` includes it.
    pub fn set_protocol_features(&mut self, features: u64) -> Result<()> {
        self.set_request(request::SET_PROTOCOL_FEATURES, &proto::encode_u64(features), &[])?;
        self.reply_ack = features & protocol_features::REPLY_ACK != 0;
        Ok(())
    }

    /// GET_QUEUE_NUM: the most queues the backend supports.
    pub fn get_queue_num(&mut self) -> Result<u64> {
        self.get_u64(request::GET_QUEUE_NUM)
    }

    /// GET_MAX_MEM_SLOTS.
    pub fn get_max_mem_slots(&mut self) -> Result<u64> {
        self.get_u64(request::GET_MAX_MEM_SLOTS)
    }

    /// SET_MEM_TABLE with `regions` and one fd per region (count not checked, so a test
    /// may send a mismatch).
    pub fn set_mem_table(&mut self, regions: &[MemRegion], fds: &[RawFd]) -> Result<()> {
        self.set_request(request::SET_MEM_TABLE, &proto::encode_mem_table(regions), fds)
    }

    /// ADD_MEM_REG with the region's fd.
    pub fn add_mem_reg(&mut self, region: &MemRegion, fd: RawFd) -> Result<()> {
        self.set_request(request::ADD_MEM_REG, &proto::encode_single_region(region), &[fd])
    }

    /// REM_MEM_REG.
    pub fn rem_mem_reg(&mut self, region: &MemRegion) -> Result<()> {
        self.set_request(request::REM_MEM_REG, &proto::encode_single_region(region), &[])
    }

    /// SET_VRING_NUM.
    pub fn set_vring_num(&mut self, index: u32, num: u32) -> Result<()> {
        let p = VringState { index, num }.encode();
        self.set_request(request::SET_VRING_NUM, &p, &[])
    }

    /// SET_VRING_BASE.
    pub fn set_vring_base(&mut self, index: u32, base: u32) -> Result<()> {
        let p = VringState { index, num: base }.encode();
        self.set_request(request::SET_VRING_BASE, &p, &[])
    }

    /// SET_VRING_ADDR (addresses in this process's virtual address space).
    pub fn set_vring_addr(&mut self, addr: &VringAddr) -> Result<()> {
        self.set_request(request::SET_VRING_ADDR, &addr.encode(), &[])
    }

    /// GET_VRING_BASE: stops the ring and returns its next avail index.
    pub fn get_vring_base(&mut self, index: u32) -> Result<u32> {
        let p = VringState { index, num: 0 }.encode();
        let r = self.request(request::GET_VRING_BASE, &p, &[])?;
        let s = VringState::decode(&r.payload)
            .ok_or_else(|| Error::BadReply(format!("vring state of {} bytes", r.payload.len())))?;
        Ok(s.num)
    }

    fn set_vring_fd(&mut self, code: u32, index: u8, fd: Option<RawFd>) -> Result<()> {
        let p = proto::encode_vring_fd(index, fd.is_none());
        match fd {
            Some(fd) => self.set_request(code, &p, &[fd]),
            None => self.set_request(code, &p, &[]),
        }
    }

    /// SET_VRING_KICK (`None`: no fd, polling mode).
    pub fn set_vring_kick(&mut self, index: u8, fd: Option<RawFd>) -> Result<()> {
        self.set_vring_fd(request::SET_VRING_KICK, index, fd)
    }

    /// SET_VRING_CALL (`None`: no fd).
    pub fn set_vring_call(&mut self, index: u8, fd: Option<RawFd>) -> Result<()> {
        self.set_vring_fd(request::SET_VRING_CALL, index, fd)
    }

    /// SET_VRING_ERR (`None`: no fd).
    pub fn set_vring_err(&mut self, index: u8, fd: Option<RawFd>) -> Result<()> {
        self.set_vring_fd(request::SET_VRING_ERR, index, fd)
    }

    /// SET_VRING_ENABLE.
    pub fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<()> {
        let p = VringState { index, num: u32::from(enable) }.encode();
        self.set_request(request::SET_VRING_ENABLE, &p, &[])
    }

    /// GET_CONFIG: `size` bytes of device config space from `offset`.
    pub fn get_config(&mut self, offset: u32, size: u32) -> Result<Vec<u8>> {
        let req = ConfigPayload { offset, size, flags: 0, payload: vec![0; size as usize] };
        let r = self.request(request::GET_CONFIG, &req.encode(), &[])?;
        let c = ConfigPayload::decode(&r.payload)
            .ok_or_else(|| Error::BadReply(format!("config of {} bytes", r.payload.len())))?;
        if c.size != size || c.offset != offset {
            return Err(Error::Nack { code: request::GET_CONFIG, status: u64::from(c.size) });
        }
        Ok(c.payload)
    }

    /// SET_CONFIG: write `bytes` at `offset` of the device config space.
    pub fn set_config(&mut self, offset: u32, bytes: &[u8]) -> Result<()> {
        let size = u32::try_from(bytes.len()).map_err(|_| Error::InvalidOptions("config write too large"))?;
        let req = ConfigPayload { offset, size, flags: 0, payload: bytes.to_vec() };
        self.set_request(request::SET_CONFIG, &req.encode(), &[])
    }

    /// SET_STATUS.
    pub fn set_status(&mut self, status: u8) -> Result<()> {
        self.set_request(request::SET_STATUS, &proto::encode_u64(u64::from(status)), &[])
    }

    /// GET_STATUS.
    pub fn get_status(&mut self) -> Result<u8> {
        let v = self.get_u64(request::GET_STATUS)?;
        u8::try_from(v).map_err(|_| Error::BadReply(format!("status {v:#x}")))
    }

    /// RESET_DEVICE.
    pub fn reset_device(&mut self) -> Result<()> {
        self.set_request(request::RESET_DEVICE, &[], &[])
    }

    /// SET_BACKEND_REQ_FD: gives the backend one end of a fresh socket pair
    /// for its own requests (config changes) and returns the other end.
    pub fn set_backend_req_fd(&mut self) -> Result<BackendChannel> {
        let (ours, theirs) =
            UnixStream::pair().map_err(|source| Error::Send { code: request::SET_BACKEND_REQ_FD, source })?;
        self.set_request(request::SET_BACKEND_REQ_FD, &[], &[theirs.as_raw_fd()])?;
        Ok(BackendChannel { conn: Conn::from_stream(ours) })
    }
}

/// The front end's end of the backend request channel: the backend's
/// requests (e.g. `CONFIG_CHANGE_MSG`) arrive here.
#[derive(Debug)]
pub struct BackendChannel {
    conn: Conn,
}

impl BackendChannel {
    /// Waits up to `timeout` for the backend's next request.
    pub fn recv(&mut self, timeout: Duration) -> Result<Reply> {
        self.conn.recv_reply(timeout)
    }

    /// Answers a request that asked for an ack (NEED_REPLY) with `status`
    /// (0 = success).
    pub fn ack(&mut self, req: &Reply, status: u64) -> Result<()> {
        self.conn.send(req.header.request, flags::VERSION | flags::REPLY, &proto::encode_u64(status), &[])
    }
}

fn check_reply_header(code: u32, h: &Header) -> Result<()> {
    if h.request != code {
        return Err(Error::BadReply(format!("reply to request {} while waiting for {code}", h.request)));
    }
    if h.flags & flags::REPLY == 0 || h.flags & flags::VERSION_MASK != flags::VERSION {
        return Err(Error::BadReply(format!("reply flags {:#x} for request {code}", h.flags)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Conn, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (Conn::from_stream(a), b)
    }

    fn reply(peer: &UnixStream, code: u32, payload: &[u8]) {
        let m = proto::encode_message(code, flags::VERSION | flags::REPLY, payload);
        sys::send_with_fds(peer.as_raw_fd(), &m, &[]).unwrap();
    }

    fn read_msg(peer: &UnixStream) -> (Header, Vec<u8>) {
        let mut c = Conn::from_stream(peer.try_clone().unwrap());
        let r = c.recv_reply(Duration::from_secs(2)).unwrap();
        (r.header, r.payload)
    }

    #[test]
    fn get_features_roundtrip() {
        let (mut c, peer) = pair();
        reply(&peer, request::GET_FEATURES, &proto::encode_u64(0xabc));
        assert_eq!(c.get_features().unwrap(), 0xabc);
        let (h, p) = read_msg(&peer);
        assert_eq!(h.request, request::GET_FEATURES);
        assert_eq!(h.flags, flags::VERSION);
        assert!(p.is_empty());
    }

    #[test]
    fn reply_for_wrong_request_is_rejected() {
        let (mut c, peer) = pair();
        reply(&peer, request::GET_STATUS, &proto::encode_u64(0));
        assert!(matches!(c.get_features(), Err(Error::BadReply(_))));
    }

    #[test]
    fn need_reply_and_nack() {
        let (mut c, peer) = pair();
        c.set_reply_ack(true);
        reply(&peer, request::SET_VRING_NUM, &proto::encode_u64(1));
        let e = c.set_vring_num(0, 256).unwrap_err();
        assert!(matches!(e, Error::Nack { code: request::SET_VRING_NUM, status: 1 }));
        let (h, p) = read_msg(&peer);
        assert_eq!(h.flags, flags::VERSION | flags::NEED_REPLY);
        assert_eq!(VringState::decode(&p), Some(VringState { index: 0, num: 256 }));
        reply(&peer, request::SET_VRING_NUM, &proto::encode_u64(0));
        c.set_vring_num(1, 64).unwrap();
    }

    #[test]
    fn timeouts_and_disconnects() {
        let (mut c, peer) = pair();
        c.set_timeout(Duration::from_millis(30));
        assert!(matches!(c.get_features(), Err(Error::Timeout)));
        // A partial header then silence also times out.
        sys::send_with_fds(peer.as_raw_fd(), &[1, 0, 0], &[]).unwrap();
        assert!(matches!(c.recv_reply(Duration::from_millis(30)), Err(Error::Timeout)));
        drop(peer);
        assert!(c.wait_closed(Duration::from_secs(1)).unwrap());
        assert!(matches!(c.recv_reply(Duration::from_secs(1)), Err(Error::Disconnected)));
        // Sending into a closed socket is an error, not SIGPIPE.
        assert!(c.set_owner().is_err() || c.set_owner().is_err());
    }

    #[test]
    fn oversized_reply_is_rejected() {
        let (mut c, peer) = pair();
        let h = Header { request: request::GET_FEATURES, flags: flags::VERSION | flags::REPLY, size: 1 << 20 };
        sys::send_with_fds(peer.as_raw_fd(), &h.encode(), &[]).unwrap();
        assert!(matches!(c.get_features(), Err(Error::BadReply(_))));
    }

    #[test]
    fn kick_payload_and_fd() {
        let (mut c, peer) = pair();
        let e = sys::EventFd::new().unwrap();
        c.set_vring_kick(1, Some(e.as_raw_fd())).unwrap();
        c.set_vring_call(0, None).unwrap();
        let mut rc = Conn::from_stream(peer.try_clone().unwrap());
        let r = rc.recv_reply(Duration::from_secs(1)).unwrap();
        assert_eq!(r.header.request, request::SET_VRING_KICK);
        assert_eq!(r.as_u64(), Some(1));
        assert_eq!(r.fds.len(), 1);
        let r = rc.recv_reply(Duration::from_secs(1)).unwrap();
        assert_eq!(r.as_u64(), Some(0x100));
        assert!(r.fds.is_empty());
    }
}
