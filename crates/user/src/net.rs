//! A virtio-net device driven over vhost-user: one queue pair (RX = queue 0, TX = queue 1).
//!
//! Memory layout inside the frontend's [`GuestMemory`] (all page-aligned):
//! RX ring, TX ring, `num` RX buffers, `num` TX buffers, then a free scratch area that
//! tests may use for hand-made descriptors ([`VirtioNet::alloc_scratch`]). Descriptor
//! slot `i` of a queue always points at buffer `i` of that queue.

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::conn::{Conn, DEFAULT_TIMEOUT};
use crate::memory::{GuestMemory, DEFAULT_GPA_BASE};
use crate::proto::{features, protocol_features, status, VringAddr};
use crate::ring::{Descriptor, RawDesc, RingLayout, UsedElem, Vring, DESC_F_WRITE};
use crate::sys::EventFd;
use crate::{Error, Result};

/// Queue index of the receive queue.
pub const RX_QUEUE: u16 = 0;
/// Queue index of the transmit queue.
pub const TX_QUEUE: u16 = 1;
/// `virtio_net_hdr` size with VERSION_1 or MRG_RXBUF (`num_buffers` included).
pub const NET_HDR_SIZE: usize = 12;
/// Legacy `virtio_net_hdr` size (neither VERSION_1 nor MRG_RXBUF).
pub const NET_HDR_SIZE_LEGACY: usize = 10;
/// Device features the driver asks for by default (masked by the backend's offer).
pub const DEFAULT_FEATURES: u64 = features::VERSION_1
    | features::MRG_RXBUF
    | features::EVENT_IDX
    | features::MAC
    | features::STATUS
    | features::PROTOCOL_FEATURES;
/// Protocol features the driver acks by default (masked by the backend's offer).
pub const DEFAULT_PROTOCOL_FEATURES: u64 =
    protocol_features::MQ | protocol_features::REPLY_ACK | protocol_features::CONFIG | protocol_features::STATUS;

const PAGE: u64 = 4096;

/// Connection options for [`VirtioNet::connect`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Ring size of both queues (power of two, default 256).
    pub queue_size: u16,
    /// Size of each RX buffer in bytes, header included (default 2048).
    pub rx_buf_size: u32,
    /// Size of each TX buffer in bytes, header included (default 2048); the largest
    /// frame [`VirtioNet::send`] takes is this minus the header.
    pub tx_buf_size: u32,
    /// Guest memory size in bytes; 0 = rings + buffers + 1 MiB scratch.
    pub mem_size: usize,
    /// Guest-physical base of the memory (default 0x4000_0000).
    pub gpa_base: u64,
    /// Device features to request; the backend's offer masks them (default
    /// [`DEFAULT_FEATURES`]). Clear EVENT_IDX or MRG_RXBUF here to test without them.
    pub features: u64,
    /// Protocol features to ack; the backend's offer masks them (default
    /// [`DEFAULT_PROTOCOL_FEATURES`]).
    pub protocol_features: u64,
    /// Pre-fill the RX ring with device-writable buffers (default true). Turn off to
    /// post hand-made RX descriptors with [`VirtioNet::post_rx_raw`].
    pub fill_rx: bool,
    /// Reply and wait timeout (default 5 s).
    pub timeout: Duration,
    /// Set up a control virtqueue at this vring index (negotiates CTRL_VQ;
    /// the index is `2 * queue pairs` of the device, 2 for one pair).
    /// Default `None`: no control queue.
    pub ctrl_queue: Option<u16>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            queue_size: 256,
            rx_buf_size: 2048,
            tx_buf_size: 2048,
            mem_size: 0,
            gpa_base: DEFAULT_GPA_BASE,
            features: DEFAULT_FEATURES,
            protocol_features: DEFAULT_PROTOCOL_FEATURES,
            fill_rx: true,
            timeout: DEFAULT_TIMEOUT,
            ctrl_queue: None,
        }
    }
}

/// Driver-side counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Kicks written to the TX kick eventfd.
    pub tx_kicks: u64,
    /// Kicks written to the RX kick eventfd.
    pub rx_kicks: u64,
    /// TX interrupts seen (sum of the TX call eventfd counter reads).
    pub tx_interrupts: u64,
    /// RX interrupts seen (sum of the RX call eventfd counter reads).
    pub rx_interrupts: u64,
    /// Frames posted for transmission.
    pub tx_packets: u64,
    /// TX chains the device completed.
    pub tx_completed: u64,
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes of frames received (headers excluded).
    pub rx_bytes: u64,
    /// Malformed used elements seen on RX or TX.
    pub used_errors: u64,
}

/// Where a guest buffer lives, for [`VirtioNet::gpa_of_buffer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queue {
    /// Receive queue (0).
    Rx,
    /// Transmit queue (1).
    Tx,
}

/// Ring size of the control queue.
const CTRL_QUEUE_SIZE: u16 = 64;
/// Longest control command data [`VirtioNet::ctrl_submit`] takes.
pub const MAX_CTRL_DATA: usize = PAGE as usize - 16;

/// The control queue: its ring and one page for the command in flight.
#[derive(Debug)]
struct CtrlQueue {
    index: u16,
    q: QueueState,
    /// Command header + data; the ack byte is the page's last byte.
    cmd_buf: u64,
    in_flight: bool,
}

#[derive(Debug)]
struct QueueState {
    ring: Vring,
    kick: EventFd,
    call: EventFd,
    buf_base: u64,
    buf_size: u32,
}

/// A partially received mergeable packet.
#[derive(Debug)]
struct RxPartial {
    data: Vec<u8>,
    remaining: u16,
}

/// A virtio-net device: the handshake done, one RX and one TX queue driven by this
/// process.
#[derive(Debug)]
pub struct VirtioNet {
    conn: Conn,
    mem: GuestMemory,
    path: PathBuf,
    options: Options,
    features: u64,
    protocol_features: u64,
    hdr_len: usize,
    mac: Option<[u8; 6]>,
    rx: QueueState,
    tx: QueueState,
    ctrl: Option<CtrlQueue>,
    rx_partial: Option<RxPartial>,
    last_rx_hdr: [u8; 12],
    scratch_next: u64,
    scratch_end: u64,
    stats: Stats,
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

impl VirtioNet {
    /// Connects to the VF socket at `path` and performs the full handshake (DPDK order):
    /// SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES, SET_FEATURES, SET_STATUS
    /// (FEATURES_OK, checked back with GET_STATUS), SET_MEM_TABLE, per queue
    /// NUM/BASE/ADDR/KICK/CALL/ENABLE, SET_STATUS DRIVER_OK.
    pub fn connect(path: impl AsRef<Path>, options: Options) -> Result<Self> {
        let path = path.as_ref().to_owned();
        let num = options.queue_size;
        if !num.is_power_of_two() || num > crate::ring::MAX_QUEUE_SIZE {
            return Err(Error::InvalidOptions("queue size must be a power of two <= 32768"));
        }
        if (options.rx_buf_size as usize) < NET_HDR_SIZE || (options.tx_buf_size as usize) < NET_HDR_SIZE {
            return Err(Error::InvalidOptions("buffers smaller than the net header"));
        }

        // Memory layout.
        let n = u64::from(num);
        let ring_bytes = align_up(
            RingLayout::desc_size(num) + align_up(RingLayout::avail_size(num), 16) + RingLayout::used_size(num),
            PAGE,
        ) + 2 * PAGE;
        let rx_bufs = align_up(n * u64::from(options.rx_buf_size), PAGE);
        let tx_bufs = align_up(n * u64::from(options.tx_buf_size), PAGE);
        let need = 2 * ring_bytes + rx_bufs + tx_bufs;
        let size = if options.mem_size == 0 { align_up(need + (1 << 20), PAGE) as usize } else { options.mem_size };
        if (size as u64) < need {
            return Err(Error::MemoryTooSmall { need, have: size as u64 });
        }
        let mem = GuestMemory::new(size, options.gpa_base)?;
        let base = mem.gpa_base();
        let ring_at = |start: u64| {
            let desc = start;
            let avail = desc + RingLayout::desc_size(num);
            let used = align_up(avail + RingLayout::avail_size(num), PAGE);
            RingLayout { num, desc, avail, used }
        };
        let rx_layout = ring_at(base);
        let tx_layout = ring_at(base + ring_bytes);
        let rx_buf_base = base + 2 * ring_bytes;
        let tx_buf_base = rx_buf_base + rx_bufs;
        let scratch = tx_buf_base + tx_bufs;

        // Negotiation.
        let mut conn = Conn::connect(&path)?;
        conn.set_timeout(options.timeout);
        conn.set_owner()?;
        let offered = conn.get_features()?;
        let wanted = options.features | if options.ctrl_queue.is_some() { features::CTRL_VQ } else { 0 };
        let mut features = wanted & offered;
        if options.ctrl_queue.is_some() && features & features::CTRL_VQ == 0 {
            return Err(Error::InvalidOptions("the backend does not offer a control queue"));
        }
        let mut proto = 0;
        if offered & features::PROTOCOL_FEATURES != 0 {
            let offered_proto = conn.get_protocol_features()?;
            proto = options.protocol_features & offered_proto;
            conn.set_protocol_features(proto)?;
        } else {
            features &= !features::PROTOCOL_FEATURES;
        }
        conn.set_features(features)?;
        let use_status = proto & protocol_features::STATUS != 0;
        let mut dev_status = 0;
        if use_status {
            dev_status = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
            conn.set_status(dev_status)?;
            if conn.get_status()? & status::FEATURES_OK == 0 {
                return Err(Error::FeaturesRejected(features));
            }
        }
        let event_idx = features & features::EVENT_IDX != 0;
        let hdr_len = if features & (features::VERSION_1 | features::MRG_RXBUF) != 0 {
            NET_HDR_SIZE
        } else {
            NET_HDR_SIZE_LEGACY
        };

        conn.set_mem_table(&[mem.region()], &[mem.fd()])?;

        let rx = QueueState {
            ring: Vring::new(rx_layout, event_idx)?,
            kick: EventFd::new().map_err(Error::EventFd)?,
            call: EventFd::new().map_err(Error::EventFd)?,
            buf_base: rx_buf_base,
            buf_size: options.rx_buf_size,
        };
        let tx = QueueState {
            ring: Vring::new(tx_layout, event_idx)?,
            kick: EventFd::new().map_err(Error::EventFd)?,
            call: EventFd::new().map_err(Error::EventFd)?,
            buf_base: tx_buf_base,
            buf_size: options.tx_buf_size,
        };
        let mut dev = VirtioNet {
            conn,
            mem,
            path,
            options,
            features,
            protocol_features: proto,
            hdr_len,
            mac: None,
            rx,
            tx,
            ctrl: None,
            rx_partial: None,
            last_rx_hdr: [0; 12],
            scratch_next: scratch,
            scratch_end: base + size as u64,
            stats: Stats::default(),
        };
        dev.rx.ring.init(&dev.mem)?;
        dev.tx.ring.init(&dev.mem)?;
        if dev.options.fill_rx {
            dev.fill_rx()?;
        }
        for q in [RX_QUEUE, TX_QUEUE] {
            dev.setup_queue(q)?;
        }
        if let Some(index) = dev.options.ctrl_queue {
            dev.setup_ctrl(index, event_idx)?;
        }
        if use_status {
            dev_status |= status::DRIVER_OK;
            dev.conn.set_status(dev_status)?;
        }
        if proto & protocol_features::CONFIG != 0 && features & features::MAC != 0 {
            let b = dev.conn.get_config(0, 6)?;
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&b);
            dev.mac = Some(mac);
        }
        Ok(dev)
    }

    /// Connects again to the same socket with the same options (the old session must
    /// have been dropped, or the backend may refuse a second frontend).
    pub fn reconnect(self) -> Result<Self> {
        let path = self.path.clone();
        let options = self.options.clone();
        drop(self);
        Self::connect(path, options)
    }

    fn setup_queue(&mut self, q: u16) -> Result<()> {
        let (layout, kick, call) = {
            let s = self.queue(q);
            (*s.ring.layout(), s.kick.as_raw_fd(), s.call.as_raw_fd())
        };
        self.register_ring(q, &layout, kick, call)
    }

    /// Tells the backend about ring `index` (size, base, addresses, doorbell
    /// fds) and enables it when the protocol needs that.
    fn register_ring(&mut self, index: u16, layout: &RingLayout, kick: RawFd, call: RawFd) -> Result<()> {
        let user = |gpa: u64| self.mem.gpa_to_user(gpa).expect("rings are laid out inside the shared memory");
        let idx = u32::from(index);
        let addr = VringAddr {
            index: idx,
            flags: 0,
            desc_user_addr: user(layout.desc),
            used_user_addr: user(layout.used),
            avail_user_addr: user(layout.avail),
            log_guest_addr: 0,
        };
        let slot = u8::try_from(index).map_err(|_| Error::InvalidOptions("queue index above 255"))?;
        self.conn.set_vring_num(idx, u32::from(layout.num))?;
        self.conn.set_vring_base(idx, 0)?;
        self.conn.set_vring_addr(&addr)?;
        self.conn.set_vring_kick(slot, Some(kick))?;
        self.conn.set_vring_call(slot, Some(call))?;
        if self.features & features::PROTOCOL_FEATURES != 0 {
            self.conn.set_vring_enable(idx, true)?;
        }
        Ok(())
    }

    fn setup_ctrl(&mut self, index: u16, event_idx: bool) -> Result<()> {
        let num = CTRL_QUEUE_SIZE;
        let ring_bytes = align_up(
            RingLayout::desc_size(num) + align_up(RingLayout::avail_size(num), 16) + RingLayout::used_size(num),
            PAGE,
        ) + PAGE;
        let at = self.alloc_scratch(ring_bytes, PAGE)?;
        let cmd_buf = self.alloc_scratch(PAGE, PAGE)?;
        let avail = at + RingLayout::desc_size(num);
        let layout = RingLayout { num, desc: at, avail, used: align_up(avail + RingLayout::avail_size(num), PAGE) };
        let q = QueueState {
            ring: Vring::new(layout, event_idx)?,
            kick: EventFd::new().map_err(Error::EventFd)?,
            call: EventFd::new().map_err(Error::EventFd)?,
            buf_base: cmd_buf,
            buf_size: PAGE as u32,
        };
        q.ring.init(&self.mem)?;
        self.register_ring(index, &layout, q.kick.as_raw_fd(), q.call.as_raw_fd())?;
        self.ctrl = Some(CtrlQueue { index, q, cmd_buf, in_flight: false });
        Ok(())
    }

    /// Posts one control command (`class`, `cmd`, `data`) on the control
    /// queue and kicks: a chain of the device-readable header and data and
    /// a device-writable ack byte. One command at a time.
    pub fn ctrl_submit(&mut self, class: u8, cmd: u8, data: &[u8]) -> Result<()> {
        let Some(c) = self.ctrl.as_mut() else { return Err(Error::InvalidOptions("no control queue")) };
        if c.in_flight {
            return Err(Error::InvalidOptions("a control command is already in flight"));
        }
        if data.len() > MAX_CTRL_DATA {
            return Err(Error::FrameTooLarge { len: data.len(), max: MAX_CTRL_DATA });
        }
        let ack = c.cmd_buf + PAGE - 1;
        self.mem.write(c.cmd_buf, &[class, cmd])?;
        self.mem.write(c.cmd_buf + 2, data)?;
        self.mem.write(ack, &[0xff])?;
        let mut descs = vec![Descriptor { addr: c.cmd_buf, len: 2, flags: 0, next: 0 }];
        if !data.is_empty() {
            descs.push(Descriptor { addr: c.cmd_buf + 2, len: data.len() as u32, flags: 0, next: 0 });
        }
        descs.push(Descriptor { addr: ack, len: 1, flags: DESC_F_WRITE, next: 0 });
        let head = c.q.ring.add_chain(&self.mem, &descs)?;
        c.q.ring.push_avail(&self.mem, head)?;
        c.q.ring.publish(&self.mem)?;
        c.q.ring.needs_kick(&self.mem)?;
        c.q.kick.signal().map_err(Error::EventFdIo)?;
        c.in_flight = true;
        Ok(())
    }

    /// The answer to the command in flight, if the device gave it: the ack
    /// byte (0 = `VIRTIO_NET_OK`, 1 = `VIRTIO_NET_ERR`).
    ///
    /// # Errors
    /// `BadUsed` if the device completed the chain without writing the ack.
    pub fn ctrl_poll(&mut self) -> Result<Option<u8>> {
        let Some(c) = self.ctrl.as_mut() else { return Err(Error::InvalidOptions("no control queue")) };
        let Some(elem) = c.q.ring.pop_used(&self.mem)? else { return Ok(None) };
        c.in_flight = false;
        let _ = c.q.call.take();
        if elem.len != 1 {
            return Err(Error::BadUsed(format!("control ack of {} bytes", elem.len)));
        }
        Ok(Some(self.mem.read_vec(c.cmd_buf + PAGE - 1, 1)?[0]))
    }

    /// Sends a control command and waits up to the options' timeout for
    /// its ack byte.
    pub fn ctrl_command(&mut self, class: u8, cmd: u8, data: &[u8]) -> Result<u8> {
        self.ctrl_submit(class, cmd, data)?;
        let deadline = Instant::now() + self.options.timeout;
        loop {
            if let Some(ack) = self.ctrl_poll()? {
                return Ok(ack);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout);
            }
            let c = self.ctrl.as_ref().expect("submitted above");
            let slice = (Instant::now() + Duration::from_millis(10)).min(deadline);
            c.q.call.wait(slice).map_err(Error::EventFdIo)?;
        }
    }

    /// The control queue's vring index, if there is one.
    pub fn ctrl_queue(&self) -> Option<u16> {
        self.ctrl.as_ref().map(|c| c.index)
    }

    /// Gives the backend a request channel (`SET_BACKEND_REQ_FD`; negotiate
    /// `BACKEND_REQ` in the options' protocol features) and returns the end
    /// its requests arrive on.
    pub fn open_backend_channel(&mut self) -> Result<crate::conn::BackendChannel> {
        self.conn.set_backend_req_fd()
    }

    fn queue(&self, q: u16) -> &QueueState {
        if q == RX_QUEUE {
            &self.rx
        } else {
            &self.tx
        }
    }

    fn fill_rx(&mut self) -> Result<()> {
        while self.rx.ring.free_slots() > 0 {
            self.post_rx_buffer()?;
        }
        self.rx.ring.publish(&self.mem)?;
        // The device has not started: no kick needed, but keep the kick shadow in step.
        self.rx.ring.needs_kick(&self.mem)?;
        Ok(())
    }

    /// Adds one RX buffer (the one belonging to the slot the ring hands out).
    fn post_rx_buffer(&mut self) -> Result<()> {
        let size = self.rx.buf_size;
        // Allocate first to learn the slot, then point the descriptor at its buffer.
        let head =
            self.rx.ring.add_chain(&self.mem, &[Descriptor { addr: 0, len: size, flags: DESC_F_WRITE, next: 0 }])?;
        let d = Descriptor {
            addr: self.rx.buf_base + u64::from(head) * u64::from(size),
            len: size,
            flags: DESC_F_WRITE,
            next: 0,
        };
        self.rx.ring.write_desc(&self.mem, head, &d)?;
        self.rx.ring.push_avail(&self.mem, head)
    }

    /// Negotiated device features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Negotiated protocol features (0 if PROTOCOL_FEATURES was not negotiated).
    pub fn protocol_features(&self) -> u64 {
        self.protocol_features
    }

    /// Length of the virtio-net header in use (12 or 10).
    pub fn hdr_len(&self) -> usize {
        self.hdr_len
    }

    /// The MAC read with GET_CONFIG at connect, if CONFIG and MAC were negotiated.
    pub fn mac(&self) -> Option<[u8; 6]> {
        self.mac
    }

    /// Reads the link status word of the config space (offset 6; needs CONFIG and
    /// STATUS): `true` when VIRTIO_NET_S_LINK_UP is set.
    pub fn link_up(&mut self) -> Result<bool> {
        let b = self.conn.get_config(6, 2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]) & 1 != 0)
    }

    /// The options this device was opened with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The raw protocol connection, to send extra messages after the handshake.
    pub fn conn(&mut self) -> &mut Conn {
        &mut self.conn
    }

    /// The shared guest memory.
    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    /// Driver counters (call eventfds are drained first, so interrupt counts are current).
    pub fn stats(&mut self) -> Stats {
        self.drain_calls();
        self.stats
    }

    fn drain_calls(&mut self) {
        self.stats.rx_interrupts += self.rx.call.take().unwrap_or(0);
        self.stats.tx_interrupts += self.tx.call.take().unwrap_or(0);
    }

    /// Kick eventfd of queue `q` (RX_QUEUE or TX_QUEUE).
    pub fn kick_fd(&self, q: u16) -> RawFd {
        self.queue(q).kick.as_raw_fd()
    }

    /// Call (interrupt) eventfd of queue `q`, to poll it from an event loop.
    pub fn call_fd(&self, q: u16) -> RawFd {
        self.queue(q).call.as_raw_fd()
    }

    /// Kicks queue `q` unconditionally.
    pub fn kick(&mut self, q: u16) -> Result<()> {
        self.queue(q).kick.signal().map_err(Error::EventFdIo)?;
        if q == RX_QUEUE {
            self.stats.rx_kicks += 1;
        } else {
            self.stats.tx_kicks += 1;
        }
        Ok(())
    }

    fn kick_if_needed(&mut self, q: u16) -> Result<()> {
        let need =
            if q == RX_QUEUE { self.rx.ring.needs_kick(&self.mem)? } else { self.tx.ring.needs_kick(&self.mem)? };
        if need {
            self.kick(q)?;
        }
        Ok(())
    }

    /// Sends one frame: a zeroed virtio-net header, then `frame`, in one descriptor.
    /// Waits (up to the options' timeout) for a free TX slot if the ring is full.
    pub fn send(&mut self, frame: &[u8]) -> Result<()> {
        self.send_burst(&[frame])
    }

    /// Sends several frames with one publish of `avail.idx` and at most one kick.
    pub fn send_burst(&mut self, frames: &[&[u8]]) -> Result<()> {
        let max = self.tx.buf_size as usize - self.hdr_len;
        if let Some(f) = frames.iter().find(|f| f.len() > max) {
            return Err(Error::FrameTooLarge { len: f.len(), max });
        }
        let mut posted = 0usize;
        let result = self.post_tx_frames(frames, &mut posted);
        if posted > 0 {
            self.tx.ring.publish(&self.mem)?;
            self.stats.tx_packets += posted as u64;
            self.kick_if_needed(TX_QUEUE)?;
        }
        result
    }

    /// Sends one frame with the given virtio-net header (offload requests:
    /// `NEEDS_CSUM`, GSO type and size). Only the first `hdr_len()` bytes of
    /// `hdr` are used.
    pub fn send_with_hdr(&mut self, hdr: &[u8; 12], frame: &[u8]) -> Result<()> {
        let max = self.tx.buf_size as usize - self.hdr_len;
        if frame.len() > max {
            return Err(Error::FrameTooLarge { len: frame.len(), max });
        }
        let mut posted = 0usize;
        let result = self.post_tx_frames_hdr(&[frame], &hdr[..self.hdr_len], &mut posted);
        if posted > 0 {
            self.tx.ring.publish(&self.mem)?;
            self.stats.tx_packets += posted as u64;
            self.kick_if_needed(TX_QUEUE)?;
        }
        result
    }

    /// The virtio-net header of the last frame `recv` returned (zeros
    /// beyond `hdr_len()`).
    pub fn last_rx_hdr(&self) -> [u8; 12] {
        self.last_rx_hdr
    }

    fn post_tx_frames(&mut self, frames: &[&[u8]], posted: &mut usize) -> Result<()> {
        let hdr = [0u8; 12];
        self.post_tx_frames_hdr(frames, &hdr[..self.hdr_len], posted)
    }

    fn post_tx_frames_hdr(&mut self, frames: &[&[u8]], hdr: &[u8], posted: &mut usize) -> Result<()> {
        for frame in frames {
            self.wait_tx_slot(*posted > 0)?;
            let size = self.tx.buf_size;
            let len = u32::try_from(self.hdr_len + frame.len()).expect("frame length bounded by tx_buf_size");
            let head = self.tx.ring.add_chain(&self.mem, &[Descriptor { addr: 0, len, flags: 0, next: 0 }])?;
            let addr = self.tx.buf_base + u64::from(head) * u64::from(size);
            self.mem.write(addr, hdr)?;
            self.mem.write(addr + self.hdr_len as u64, frame)?;
            self.tx.ring.write_desc(&self.mem, head, &Descriptor { addr, len, flags: 0, next: 0 })?;
            self.tx.ring.push_avail(&self.mem, head)?;
            *posted += 1;
        }
        Ok(())
    }

    /// Reclaims TX completions until a slot is free, waiting on the TX call eventfd.
    /// `flush` publishes and kicks what is pending first, so the device can make progress.
    fn wait_tx_slot(&mut self, flush: bool) -> Result<()> {
        self.reclaim_tx()?;
        if self.tx.ring.free_slots() > 0 {
            return Ok(());
        }
        if flush {
            self.tx.ring.publish(&self.mem)?;
            self.kick_if_needed(TX_QUEUE)?;
        }
        let deadline = Instant::now() + self.options.timeout;
        loop {
            if self.tx.ring.enable_interrupts(&self.mem)? {
                self.reclaim_tx()?;
            }
            if self.tx.ring.free_slots() > 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::RingFull);
            }
            // Short slices: a device that suppresses interrupts must not stall us.
            let slice = (Instant::now() + Duration::from_millis(10)).min(deadline);
            self.tx.call.wait(slice).map_err(Error::EventFdIo)?;
            self.stats.tx_interrupts += self.tx.call.take().map_err(Error::EventFdIo)?;
            self.reclaim_tx()?;
        }
    }

    /// Consumes TX completions; returns how many chains completed.
    ///
    /// # Errors
    /// `BadUsed` if the device returned a malformed used element (counted in
    /// `used_errors`; the element is consumed).
    pub fn reclaim_tx(&mut self) -> Result<usize> {
        Ok(self.take_tx_used()?.len())
    }

    /// Consumes TX completions and returns them (to check e.g. that a bad chain was
    /// completed with len 0).
    pub fn take_tx_used(&mut self) -> Result<Vec<UsedElem>> {
        let mut v = Vec::new();
        loop {
            match self.tx.ring.pop_used(&self.mem) {
                Ok(Some(e)) => v.push(e),
                Ok(None) => break,
                Err(e) => {
                    self.stats.used_errors += 1;
                    return Err(e);
                }
            }
        }
        self.stats.tx_completed += v.len() as u64;
        Ok(v)
    }

    /// Polls the RX used ring once: returns the next complete frame (header stripped,
    /// mergeable buffers joined) and re-posts the buffers it used. Assumes the device's
    /// slot-owned buffers (`fill_rx: true`); after raw RX posts use
    /// [`Self::pop_rx_used`] instead.
    ///
    /// # Errors
    /// `BadUsed` for a malformed used element (bad id, length beyond the buffer, shorter
    /// than the header, bad `num_buffers`); the element is consumed and counted.
    pub fn recv(&mut self) -> Result<Option<Vec<u8>>> {
        let r = self.recv_inner();
        if r.is_err() {
            self.stats.used_errors += 1;
        }
        // Re-posted buffers become visible whatever happened.
        self.rx.ring.publish(&self.mem)?;
        self.kick_if_needed(RX_QUEUE)?;
        r
    }

    fn recv_inner(&mut self) -> Result<Option<Vec<u8>>> {
        let mrg = self.features & features::MRG_RXBUF != 0;
        loop {
            let Some(elem) = self.rx.ring.pop_used(&self.mem)? else {
                return Ok(None);
            };
            let slot = u16::try_from(elem.id).expect("pop_used checked the id is a slot");
            let size = self.rx.buf_size;
            let addr = self.rx.buf_base + u64::from(slot) * u64::from(size);
            let data = if elem.len > size { None } else { Some(self.mem.read_vec(addr, elem.len as usize)?) };
            // Only slot-owned buffers are re-posted: raw posts are the test's business.
            if self.options.fill_rx {
                self.post_rx_buffer()?;
            }
            let data = data.ok_or_else(|| Error::BadUsed(format!("rx len {} exceeds buffer {size}", elem.len)))?;
            match self.rx_partial.take() {
                Some(mut p) => {
                    p.data.extend_from_slice(&data);
                    p.remaining -= 1;
                    if p.remaining == 0 {
                        return Ok(Some(self.finish_rx(p.data)));
                    }
                    self.rx_partial = Some(p);
                }
                None => {
                    if data.len() < self.hdr_len {
                        return Err(Error::BadUsed(format!("rx len {} shorter than the net header", data.len())));
                    }
                    let nbufs = if mrg { u16::from_le_bytes([data[10], data[11]]) } else { 1 };
                    self.last_rx_hdr = [0; 12];
                    self.last_rx_hdr[..self.hdr_len].copy_from_slice(&data[..self.hdr_len]);
                    if nbufs == 0 || nbufs > self.rx.ring.num() {
                        return Err(Error::BadUsed(format!("num_buffers {nbufs}")));
                    }
                    let frame = data[self.hdr_len..].to_vec();
                    if nbufs == 1 {
                        return Ok(Some(self.finish_rx(frame)));
                    }
                    self.rx_partial = Some(RxPartial { data: frame, remaining: nbufs - 1 });
                }
            }
        }
    }

    fn finish_rx(&mut self, frame: Vec<u8>) -> Vec<u8> {
        self.stats.rx_packets += 1;
        self.stats.rx_bytes += frame.len() as u64;
        frame
    }

    /// Waits up to `timeout` for a frame: polls the ring, re-enables interrupts, re-checks,
    /// then sleeps on the RX call eventfd. Returns `Ok(None)` on timeout.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self.recv()? {
                return Ok(Some(f));
            }
            if self.rx.ring.enable_interrupts(&self.mem)? {
                continue;
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            self.rx.call.wait(deadline).map_err(Error::EventFdIo)?;
            self.stats.rx_interrupts += self.rx.call.take().map_err(Error::EventFdIo)?;
        }
    }

    /// Guest physical address of buffer `slot` of a queue.
    pub fn gpa_of_buffer(&self, q: Queue, slot: u16) -> u64 {
        let s = match q {
            Queue::Rx => &self.rx,
            Queue::Tx => &self.tx,
        };
        s.buf_base + u64::from(slot) * u64::from(s.buf_size)
    }

    /// Reserves `len` bytes (aligned to `align`, a power of two) of the scratch area and
    /// returns their guest physical address, for hand-made buffers or indirect tables.
    pub fn alloc_scratch(&mut self, len: u64, align: u64) -> Result<u64> {
        let at = align_up(self.scratch_next, align.max(1));
        let end = at.checked_add(len).ok_or(Error::OutOfRange { gpa: at, len })?;
        if end > self.scratch_end {
            return Err(Error::OutOfRange { gpa: at, len });
        }
        self.scratch_next = end;
        Ok(at)
    }

    /// Reads guest memory.
    pub fn read_mem(&self, gpa: u64, len: usize) -> Result<Vec<u8>> {
        self.mem.read_vec(gpa, len)
    }

    /// Writes guest memory.
    pub fn write_mem(&self, gpa: u64, bytes: &[u8]) -> Result<()> {
        self.mem.write(gpa, bytes)
    }

    /// The TX ring's driver state (layout, indices).
    pub fn tx_ring(&self) -> &Vring {
        &self.tx.ring
    }

    /// The RX ring's driver state (layout, indices).
    pub fn rx_ring(&self) -> &Vring {
        &self.rx.ring
    }

    /// The device's TX `used.idx`.
    pub fn tx_used_idx(&self) -> Result<u16> {
        self.tx.ring.used_idx(&self.mem)
    }

    /// The device's RX `used.idx`.
    pub fn rx_used_idx(&self) -> Result<u16> {
        self.rx.ring.used_idx(&self.mem)
    }

    /// Hostile-test hook: writes `descs` verbatim into the TX descriptor table, publishes
    /// `head` in the avail ring and kicks. Completed TX chains are reclaimed first.
    pub fn post_tx_raw(&mut self, descs: &[RawDesc], head: u16) -> Result<()> {
        self.post_tx_raw_chains(&[(descs, head)])
    }

    /// Hostile-test hook: like [`Self::post_tx_raw`] with several chains
    /// (each its descriptors and head), made available together in this
    /// order: one avail index store and one kick, so the device sees them
    /// in one burst.
    pub fn post_tx_raw_chains(&mut self, chains: &[(&[RawDesc], u16)]) -> Result<()> {
        // A bad used element is for the test to see through `take_tx_used`; ignore here.
        let _ = self.reclaim_tx();
        for &(descs, head) in chains {
            self.tx.ring.add_raw(&self.mem, descs, head)?;
            self.tx.ring.push_avail(&self.mem, head)?;
        }
        self.tx.ring.publish(&self.mem)?;
        self.tx.ring.needs_kick(&self.mem)?;
        self.kick(TX_QUEUE)
    }

    /// Hostile-test hook: like [`Self::post_tx_raw`] on the RX queue (e.g. buffers not
    /// marked WRITE, or shorter than the header). Needs free RX slots: open the device
    /// with `fill_rx: false`.
    pub fn post_rx_raw(&mut self, descs: &[RawDesc], head: u16) -> Result<()> {
        self.rx.ring.add_raw(&self.mem, descs, head)?;
        self.rx.ring.push_avail(&self.mem, head)?;
        self.rx.ring.publish(&self.mem)?;
        self.rx.ring.needs_kick(&self.mem)?;
        self.kick(RX_QUEUE)
    }

    /// Hostile-test hook: sets queue `q`'s `avail.idx` to any value and kicks.
    pub fn set_avail_idx_raw(&mut self, q: u16, idx: u16) -> Result<()> {
        if q == RX_QUEUE {
            self.rx.ring.set_avail_idx_raw(&self.mem, idx)?;
        } else {
            self.tx.ring.set_avail_idx_raw(&self.mem, idx)?;
        }
        self.kick(q)
    }

    /// Consumes one RX used element without interpreting it (for raw RX posts).
    pub fn pop_rx_used(&mut self) -> Result<Option<UsedElem>> {
        self.rx.ring.pop_used(&self.mem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_backend::{FakeBackend, FakeConfig};
    use crate::proto::{flags, request};
    use crate::ring::DESC_F_NEXT;

    const T: Duration = Duration::from_secs(5);

    fn frame(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn handshake_follows_dpdk_order() {
        let b = FakeBackend::spawn(FakeConfig::default());
        let dev = VirtioNet::connect(&b.path, Options::default()).unwrap();
        assert_eq!(dev.mac(), Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(dev.features(), DEFAULT_FEATURES);
        assert_eq!(dev.protocol_features(), DEFAULT_PROTOCOL_FEATURES);
        assert_eq!(dev.hdr_len(), 12);
        use request::*;
        let per_queue =
            [SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ADDR, SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ENABLE];
        let mut want = vec![
            SET_OWNER,
            GET_FEATURES,
            GET_PROTOCOL_FEATURES,
            SET_PROTOCOL_FEATURES,
            SET_FEATURES,
            SET_STATUS,
            GET_STATUS,
            SET_MEM_TABLE,
        ];
        want.extend(per_queue);
        want.extend(per_queue);
        want.extend([SET_STATUS, GET_CONFIG]);
        assert_eq!(b.codes(), want);
        // NEED_REPLY on every set-request after REPLY_ACK was acked, never on GETs.
        for &(code, fl) in b.log.lock().unwrap().iter().skip(4) {
            let is_get = matches!(code, GET_STATUS | GET_CONFIG);
            assert_eq!(fl & flags::NEED_REPLY != 0, !is_get, "request {code}");
        }
    }

    #[test]
    fn loopback_many_frames_through_small_rings() {
        let b = FakeBackend::spawn(FakeConfig::default());
        let opts = Options { queue_size: 8, ..Options::default() };
        let mut dev = VirtioNet::connect(&b.path, opts).unwrap();
        for i in 0..300u32 {
            let f = frame(60 + (i as usize % 1400), i as u8);
            dev.send(&f).unwrap();
            let got = dev.recv_timeout(T).unwrap().expect("frame looped back");
            assert_eq!(got, f, "frame {i}");
        }
        let s = dev.stats();
        assert_eq!(s.rx_packets, 300);
        assert!(s.tx_kicks > 0 && s.tx_kicks <= 300);
        assert!(s.rx_interrupts > 0);
        assert_eq!(s.used_errors, 0);
        assert_eq!(dev.rx_used_idx().unwrap(), 300);
    }

    #[test]
    fn bursts_and_mergeable_rx() {
        let b = FakeBackend::spawn(FakeConfig::default());
        let opts = Options { queue_size: 64, rx_buf_size: 256, tx_buf_size: 4096, ..Options::default() };
        let mut dev = VirtioNet::connect(&b.path, opts).unwrap();
        let frames: Vec<Vec<u8>> = (0..5).map(|i| frame(1000 + i * 333, i as u8)).collect();
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        dev.send_burst(&refs).unwrap();
        for f in &frames {
            assert_eq!(&dev.recv_timeout(T).unwrap().unwrap(), f);
        }
        assert!(dev.recv().unwrap().is_none());
        assert!(dev.rx_used_idx().unwrap() > 5, "frames spanned several buffers");
    }

    #[test]
    fn without_event_idx_and_mrg_rxbuf() {
        let b = FakeBackend::spawn(FakeConfig::default());
        let opts = Options {
            queue_size: 16,
            features: DEFAULT_FEATURES & !features::EVENT_IDX & !features::MRG_RXBUF,
            ..Options::default()
        };
        let mut dev = VirtioNet::connect(&b.path, opts).unwrap();
        assert_eq!(dev.features() & features::EVENT_IDX, 0);
        for i in 0..50u8 {
            let f = frame(1514, i);
            dev.send(&f).unwrap();
            assert_eq!(dev.recv_timeout(T).unwrap().unwrap(), f);
        }
        // Without EVENT_IDX and no NO_NOTIFY every publish kicks.
        assert_eq!(dev.stats().tx_kicks, 50);
    }

    #[test]
    fn recv_timeout_expires_and_frames_are_bounded() {
        let b = FakeBackend::spawn(FakeConfig::default());
        let mut dev = VirtioNet::connect(&b.path, Options::default()).unwrap();
        let t = Instant::now();
        assert!(dev.recv_timeout(Duration::from_millis(50)).unwrap().is_none());
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert!(matches!(dev.send(&[0u8; 2048]), Err(Error::FrameTooLarge { max: 2036, .. })));
    }

    #[test]
    fn nack_fails_connect() {
        let b = FakeBackend::spawn(FakeConfig { nack: Some(request::SET_VRING_ADDR), ..FakeConfig::default() });
        let e = VirtioNet::connect(&b.path, Options::default()).unwrap_err();
        assert!(matches!(e, Error::Nack { code: request::SET_VRING_ADDR, .. }));
    }

    #[test]
    fn connect_errors() {
        let e = VirtioNet::connect("/nonexistent/vfnic.sock", Options::default()).unwrap_err();
        assert!(matches!(e, Error::Connect { .. }));
        let opts = Options { queue_size: 100, ..Options::default() };
        assert!(matches!(VirtioNet::connect("/nonexistent", opts), Err(Error::InvalidOptions(_))));
        let opts = Options { mem_size: 4096, ..Options::default() };
        assert!(matches!(VirtioNet::connect("/nonexistent", opts), Err(Error::MemoryTooSmall { .. })));
    }

    #[test]
    fn reconnect_works() {
        let b = FakeBackend::spawn(FakeConfig { connections: 2, ..FakeConfig::default() });
        let dev = VirtioNet::connect(&b.path, Options::default()).unwrap();
        let mut dev = dev.reconnect().unwrap();
        dev.send(&frame(100, 7)).unwrap();
        assert_eq!(dev.recv_timeout(T).unwrap().unwrap(), frame(100, 7));
        assert_eq!(b.codes().iter().filter(|&&c| c == request::SET_OWNER).count(), 2);
    }

    #[test]
    fn raw_tx_chain_from_scratch_memory() {
        let b = FakeBackend::spawn(FakeConfig::default());
        let mut dev = VirtioNet::connect(&b.path, Options::default()).unwrap();
        // Header and frame in two descriptors at slots 10 -> 11.
        let hdr = dev.alloc_scratch(12, 16).unwrap();
        let body = dev.alloc_scratch(64, 64).unwrap();
        dev.write_mem(hdr, &[0u8; 12]).unwrap();
        dev.write_mem(body, &frame(64, 3)).unwrap();
        let descs = [
            RawDesc { index: 10, addr: hdr, len: 12, flags: DESC_F_NEXT, next: 11 },
            RawDesc { index: 11, addr: body, len: 64, flags: 0, next: 0 },
        ];
        dev.post_tx_raw(&descs, 10).unwrap();
        assert_eq!(dev.recv_timeout(T).unwrap().unwrap(), frame(64, 3));
        // The chain came back; its slots are reusable.
        let deadline = Instant::now() + T;
        while dev.tx_ring().is_in_flight(10) && Instant::now() < deadline {
            dev.reclaim_tx().unwrap();
        }
        assert!(!dev.tx_ring().is_in_flight(10));
        assert_eq!(dev.tx_used_idx().unwrap(), 1);
        assert!(dev.read_mem(dev.memory().gpa_base() - 1, 1).is_err());
        assert_ne!(dev.gpa_of_buffer(Queue::Rx, 1), dev.gpa_of_buffer(Queue::Tx, 1));
    }

    #[test]
    fn raw_conn_after_handshake() {
        let b = FakeBackend::spawn(FakeConfig::default());
        let mut dev = VirtioNet::connect(&b.path, Options::default()).unwrap();
        assert!(dev.link_up().unwrap());
        assert_eq!(dev.conn().get_queue_num().unwrap(), 2);
        assert_eq!(dev.conn().get_vring_base(0).unwrap(), 0);
        assert_eq!(
            dev.conn().get_status().unwrap(),
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK
        );
    }
}
