//! Test-only vhost-user backend: answers the handshake, records every request, and
//! loops TX frames back into RX buffers (mergeable when negotiated). It reaches the
//! frontend's memory through `pread`/`pwrite` on the received memfd, so it needs no
//! `unsafe` and exercises both address translations (GPA for descriptors, frontend
//! virtual addresses for the rings).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::conn::Conn;
use crate::proto::{
    self, features, flags, protocol_features, request, ConfigPayload, MemRegion, VringAddr, VringState,
};
use crate::ring::{DESC_F_NEXT, DESC_F_WRITE};
use crate::sys::EventFd;
use crate::Error;

#[derive(Clone, Debug)]
pub(crate) struct FakeConfig {
    pub features: u64,
    pub protocol_features: u64,
    pub mac: [u8; 6],
    /// Connections served before the thread exits.
    pub connections: usize,
    /// Request code answered with a non-zero ack.
    pub nack: Option<u32>,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            features: features::VERSION_1
                | features::MRG_RXBUF
                | features::EVENT_IDX
                | features::MAC
                | features::STATUS
                | features::PROTOCOL_FEATURES
                | features::CSUM,
            protocol_features: protocol_features::MQ
                | protocol_features::REPLY_ACK
                | protocol_features::CONFIG
                | protocol_features::STATUS
                | protocol_features::RESET_DEVICE,
            mac: [0x02, 0, 0, 0, 0, 0x01],
            connections: 1,
            nack: None,
        }
    }
}

pub(crate) struct FakeBackend {
    pub path: PathBuf,
    pub log: Arc<Mutex<Vec<(u32, u32)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl FakeBackend {
    pub fn spawn(cfg: FakeConfig) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "vfnic-user-fake-{}-{}.sock",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l2, s2) = (log.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for _ in 0..cfg.connections {
                let Ok((s, _)) = listener.accept() else {
                    return;
                };
                let mut st = Session::new(&cfg, Conn::from_stream(s));
                st.serve(&l2, &s2);
                if s2.load(Ordering::Relaxed) {
                    return;
                }
            }
        });
        FakeBackend { path, log, stop, thread: Some(thread) }
    }

    pub fn codes(&self) -> Vec<u32> {
        self.log.lock().unwrap().iter().map(|&(c, _)| c).collect()
    }
}

#[derive(Default)]
struct VringSt {
    num: u16,
    addr: VringAddr,
    kick: Option<File>,
    call: Option<EventFd>,
    last_avail: u16,
    used_idx: u16,
}

struct Session<'a> {
    cfg: &'a FakeConfig,
    conn: Conn,
    regions: Vec<(MemRegion, File)>,
    vrings: [VringSt; 2],
    features: u64,
    status: u8,
}

impl<'a> Session<'a> {
    fn new(cfg: &'a FakeConfig, conn: Conn) -> Self {
        Session { cfg, conn, regions: Vec::new(), vrings: Default::default(), features: 0, status: 0 }
    }

    fn serve(&mut self, log: &Mutex<Vec<(u32, u32)>>, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            match self.conn.recv_reply(Duration::from_millis(1)) {
                Ok(msg) => {
                    log.lock().unwrap().push((msg.header.request, msg.header.flags));
                    self.handle(msg);
                }
                Err(Error::Timeout) => {}
                Err(_) => return,
            }
            self.loopback();
        }
    }

    fn reply(&mut self, code: u32, payload: &[u8]) {
        let _ = self.conn.send(code, flags::VERSION | flags::REPLY, payload, &[]);
    }

    fn handle(&mut self, msg: crate::Reply) {
        let code = msg.header.request;
        let p = &msg.payload;
        let mut fds = msg.fds;
        match code {
            request::GET_FEATURES => {
                return self.reply(code, &proto::encode_u64(self.cfg.features));
            }
            request::GET_PROTOCOL_FEATURES => {
                return self.reply(code, &proto::encode_u64(self.cfg.protocol_features));
            }
            request::GET_STATUS => {
                return self.reply(code, &proto::encode_u64(u64::from(self.status)));
            }
            request::GET_QUEUE_NUM => return self.reply(code, &proto::encode_u64(2)),
            request::GET_CONFIG => {
                let req = ConfigPayload::decode(p).unwrap();
                let mut space = self.cfg.mac.to_vec();
                space.extend_from_slice(&1u16.to_le_bytes()); // link up
                space.extend_from_slice(&1u16.to_le_bytes());
                space.extend_from_slice(&1500u16.to_le_bytes());
                let (o, s) = (req.offset as usize, req.size as usize);
                let out = ConfigPayload { payload: space[o..o + s].to_vec(), ..req };
                return self.reply(code, &out.encode());
            }
            request::GET_VRING_BASE => {
                let s = VringState::decode(p).unwrap();
                let v = &self.vrings[s.index as usize];
                let r = VringState { index: s.index, num: u32::from(v.last_avail) };
                return self.reply(code, &r.encode());
            }
            request::SET_FEATURES => self.features = proto::decode_u64(p).unwrap(),
            request::SET_STATUS => self.status = proto::decode_u64(p).unwrap() as u8,
            request::SET_MEM_TABLE => {
                let regions = proto::decode_mem_table(p).unwrap();
                self.regions = regions.into_iter().zip(fds.drain(..).map(File::from)).collect();
            }
            request::SET_VRING_NUM => {
                let s = VringState::decode(p).unwrap();
                self.vrings[s.index as usize].num = s.num as u16;
            }
            request::SET_VRING_BASE => {
                let s = VringState::decode(p).unwrap();
                self.vrings[s.index as usize].last_avail = s.num as u16;
            }
            request::SET_VRING_ADDR => {
                let a = VringAddr::decode(p).unwrap();
                self.vrings[a.index as usize].addr = a;
            }
            request::SET_VRING_KICK => {
                let i = (proto::decode_u64(p).unwrap() & 0xff) as usize;
                self.vrings[i].kick = fds.pop().map(File::from);
            }
            request::SET_VRING_CALL => {
                let i = (proto::decode_u64(p).unwrap() & 0xff) as usize;
                self.vrings[i].call = fds.pop().map(|f| EventFd::from_file(File::from(f)));
            }
            _ => {}
        }
        if msg.header.flags & flags::NEED_REPLY != 0 {
            let status = u64::from(self.cfg.nack == Some(code));
            self.reply(code, &proto::encode_u64(status));
        }
    }

    fn gpa(&self, gpa: u64) -> (&File, u64) {
        for (r, f) in &self.regions {
            if gpa >= r.guest_phys_addr && gpa < r.guest_phys_addr + r.memory_size {
                return (f, gpa - r.guest_phys_addr + r.mmap_offset);
            }
        }
        panic!("fake backend: gpa {gpa:#x} unmapped");
    }

    fn uva(&self, uva: u64) -> (&File, u64) {
        for (r, f) in &self.regions {
            if uva >= r.userspace_addr && uva < r.userspace_addr + r.memory_size {
                return (f, uva - r.userspace_addr + r.mmap_offset);
            }
        }
        panic!("fake backend: uva {uva:#x} unmapped");
    }

    fn rd(&self, (f, off): (&File, u64), len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        f.read_exact_at(&mut b, off).unwrap();
        b
    }

    fn wr(&self, (f, off): (&File, u64), b: &[u8]) {
        f.write_all_at(b, off).unwrap();
    }

    fn rd16(&self, uva: u64) -> u16 {
        let b = self.rd(self.uva(uva), 2);
        u16::from_le_bytes([b[0], b[1]])
    }

    fn wr16(&self, uva: u64, v: u16) {
        self.wr(self.uva(uva), &v.to_le_bytes());
    }

    fn ready(&self) -> bool {
        self.vrings.iter().all(|v| v.call.is_some() && v.num > 0) && !self.regions.is_empty()
    }

    /// Pops the next avail head of queue `q`, if any.
    fn pop_avail(&mut self, q: usize) -> Option<u16> {
        let v = &self.vrings[q];
        let avail_idx = self.rd16(v.addr.avail_user_addr + 2);
        if avail_idx == v.last_avail {
            return None;
        }
        let slot = u64::from(v.last_avail % v.num);
        let head = self.rd16(v.addr.avail_user_addr + 4 + 2 * slot);
        self.vrings[q].last_avail = v.last_avail.wrapping_add(1);
        Some(head)
    }

    fn desc(&self, q: usize, i: u16) -> (u64, u32, u16, u16) {
        let b = self.rd(self.uva(self.vrings[q].addr.desc_user_addr + 16 * u64::from(i)), 16);
        (
            proto::le_u64(&b[0..8]),
            proto::le_u32(&b[8..12]),
            u16::from_le_bytes([b[12], b[13]]),
            u16::from_le_bytes([b[14], b[15]]),
        )
    }

    fn push_used(&mut self, q: usize, id: u16, len: u32) {
        let v = &self.vrings[q];
        let at = v.addr.used_user_addr + 4 + 8 * u64::from(v.used_idx % v.num);
        let mut e = u32::from(id).to_le_bytes().to_vec();
        e.extend_from_slice(&len.to_le_bytes());
        self.wr(self.uva(at), &e);
        self.vrings[q].used_idx = v.used_idx.wrapping_add(1);
    }

    fn publish_used(&mut self, q: usize) {
        let v = &self.vrings[q];
        self.wr16(v.addr.used_user_addr + 2, v.used_idx);
        if self.features & features::EVENT_IDX != 0 {
            // avail_event: kick me once you pass what I consumed.
            let at = v.addr.used_user_addr + 4 + 8 * u64::from(v.num);
            self.wr16(at, v.last_avail);
        }
        if let Some(c) = &v.call {
            c.signal().unwrap();
        }
    }

    fn loopback(&mut self) {
        if !self.ready() {
            return;
        }
        if let Some(k) = &self.vrings[1].kick {
            let mut b = [0u8; 8];
            let _ = std::io::Read::read(&mut &*k, &mut b);
        }
        let mut did = false;
        while let Some(head) = self.pop_avail(1) {
            let mut frame = Vec::new();
            let mut i = head;
            loop {
                let (addr, len, fl, next) = self.desc(1, i);
                assert_eq!(fl & DESC_F_WRITE, 0, "TX descriptor marked WRITE");
                frame.extend(self.rd(self.gpa(addr), len as usize));
                if fl & DESC_F_NEXT == 0 {
                    break;
                }
                i = next;
            }
            self.push_used(1, head, 0);
            did = true;
            assert!(frame.len() >= 12, "TX chain shorter than the header");
            self.deliver(&frame[12..]);
        }
        if did {
            self.publish_used(1);
        }
    }

    fn deliver(&mut self, frame: &[u8]) {
        let mrg = self.features & features::MRG_RXBUF != 0;
        let mut used: Vec<(u16, u64, u32)> = Vec::new(); // head, addr, cap
        let mut need = frame.len() + 12;
        while need > 0 {
            let Some(head) = self.pop_avail(0) else {
                // Out of buffers: drop; give taken ones back empty.
                for (h, _, _) in used {
                    self.push_used(0, h, 0);
                }
                self.publish_used(0);
                return;
            };
            let (addr, len, fl, _) = self.desc(0, head);
            assert_ne!(fl & DESC_F_WRITE, 0, "RX descriptor not WRITE");
            used.push((head, addr, len));
            need = need.saturating_sub(len as usize);
            if !mrg && need > 0 {
                panic!("fake backend: frame does not fit one buffer");
            }
        }
        let mut bytes = vec![0u8; 12];
        bytes[10..12].copy_from_slice(&(used.len() as u16).to_le_bytes());
        bytes.extend_from_slice(frame);
        let mut off = 0;
        for (h, addr, cap) in used {
            let n = (cap as usize).min(bytes.len() - off);
            self.wr(self.gpa(addr), &bytes[off..off + n]);
            off += n;
            self.push_used(0, h, n as u32);
        }
        self.publish_used(0);
    }
}
