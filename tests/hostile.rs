//! The malicious-tenant acceptance suite.
//!
//! Each case points a hostile vhost-user front end at one VF (VF0, sometimes
//! VF1) of a real daemon with four VFs and checks that
//! 1. the daemon process survives,
//! 2. the fault is counted under its own name (`errors.*` / `drops.*`),
//! 3. a healthy pair (VF2 <-> VF3) forwards before and after, and
//! 4. where the VF was faulted or its connection closed, a fresh front end on
//!    the same socket gets a working VF again (a faulted queue is recoverable
//!    by a reconnect, never stalled for good).

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{attach, attach_with, frame, vf_mac, Daemon};
use serde_json::Value;
use vfnic_pf::api::Request;
use vfnic_user::net::DEFAULT_FEATURES;
use vfnic_user::proto::{self, flags, request, MemRegion, VringAddr};
use vfnic_user::ring::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
use vfnic_user::{Conn, Error, EventFd, GuestMemory, Options, Queue, RawDesc, VirtioNet, RX_QUEUE, TX_QUEUE};

const CONFIG: &str = "num_vfs = 4\nengines = 1\n";
/// The VF the hostile tenant attacks.
const VF: u16 = 0;
/// How long "nothing happens" is watched for.
const QUIET: Duration = Duration::from_millis(300);
const T: Duration = Duration::from_secs(5);
/// `VIRTIO_CONFIG_S_NEEDS_RESET`.
const NEEDS_RESET: u8 = 0x40;
/// `VIRTIO_RING_F_INDIRECT_DESC`.
const INDIRECT_DESC: u64 = 1 << 28;
/// `VIRTIO_NET_F_DEVICE_STATS` (bit 50): never offered.
const NEVER_OFFERED: u64 = 1 << 50;
/// Guest-physical base of hand-made memory tables.
const GPA: u64 = 0x4000_0000;
/// The message deadline of the daemon (`bus::session::MESSAGE_DEADLINE`).
const DEADLINE: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------- harness

/// The healthy pair: VF2 and VF3 exchange frames around every attack.
struct Healthy {
    a: VirtioNet,
    b: VirtioNet,
    round: u8,
}

impl Healthy {
    fn check(&mut self, d: &Daemon, what: &str) {
        self.round = self.round.wrapping_add(1);
        exchange(d, &mut self.a, 2, &mut self.b, 3, self.round, what);
    }
}

/// A daemon with 4 VFs and the healthy pair attached and forwarding.
fn setup() -> (Daemon, Healthy) {
    let d = Daemon::start(CONFIG);
    let mut h = Healthy { a: attach(&d, 2), b: attach(&d, 3), round: 0 };
    h.check(&d, "before the attack");
    (d, h)
}

/// `x` (on `xv`) and `y` (on `yv`) exchange one frame each way.
fn exchange(d: &Daemon, x: &mut VirtioNet, xv: u16, y: &mut VirtioNet, yv: u16, tag: u8, what: &str) {
    one_way(d, x, xv, y, yv, tag, what);
    one_way(d, y, yv, x, xv, tag, what);
}

/// `from` (on `fv`) sends one frame to `to` (on `tv`), which gets it intact.
fn one_way(d: &Daemon, from: &mut VirtioNet, fv: u16, to: &mut VirtioNet, tv: u16, tag: u8, what: &str) {
    let f = frame(vf_mac(tv), vf_mac(fv), 64 + tag as usize, tag);
    from.send(&f).unwrap_or_else(|e| panic!("{what}: vf{fv} send: {e}\n{}", d.log_text()));
    let got = to
        .recv_timeout(T)
        .unwrap_or_else(|e| panic!("{what}: vf{tv} recv: {e}"))
        .unwrap_or_else(|| panic!("{what}: frame vf{fv} -> vf{tv} lost\n{}", d.log_text()));
    assert_eq!(got, f, "{what}: frame vf{fv} -> vf{tv} intact");
}

/// The daemon is alive and the healthy pair still forwards.
fn survived(d: &mut Daemon, h: &mut Healthy, what: &str) {
    if !d.alive() {
        panic!("{what}: the daemon died ({:?})\n{}", d.exit_status(), d.log_text());
    }
    h.check(d, what);
}

fn err(d: &Daemon, vf: u16, name: &str) -> u64 {
    d.counter(vf, &["errors", name])
}

fn drops(d: &Daemon, vf: u16, name: &str) -> u64 {
    d.counter(vf, &["drops", name])
}

fn vf_show(d: &Daemon, vf: u16) -> Value {
    d.api(Request::VfShow { vf })
}

fn wait_free(d: &Daemon, vf: u16) {
    d.wait_for(&format!("vf{vf} to be free"), 5, || d.stats(vf)["connected"] == false);
}

/// After the hostile tenant of `vf` is gone: the VF is free, a fresh front
/// end on the same socket forwards both ways, nothing stays faulted, and the
/// rest of the adapter is fine.
fn recover(d: &mut Daemon, h: &mut Healthy, vf: u16, what: &str) {
    wait_free(d, vf);
    let mut v = attach(d, vf);
    h.round = h.round.wrapping_add(1);
    exchange(d, &mut v, vf, &mut h.a, 2, h.round, &format!("{what}: after reconnect"));
    assert_eq!(vf_show(d, vf)["faulted"], false, "{what}: a fresh session starts unfaulted");
    drop(v);
    wait_free(d, vf);
    survived(d, h, what);
}

/// A raw protocol connection to `vf` (no handshake).
fn raw(d: &Daemon, vf: u16) -> Conn {
    let mut c = Conn::connect(d.sock(vf)).unwrap();
    c.set_timeout(T);
    c
}

/// Like [`raw`], with NEED_REPLY on every typed set-request.
fn raw_acked(d: &Daemon, vf: u16) -> Conn {
    let mut c = raw(d, vf);
    c.set_reply_ack(true);
    c
}

fn expect_reply_status(c: &mut Conn, code: u32, what: &str) -> u64 {
    let r = c.recv_reply(T).unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
    assert_eq!(r.header.request, code, "{what}: the answer names the request");
    assert_ne!(r.header.flags & flags::REPLY, 0, "{what}: the answer is a reply");
    r.as_u64().unwrap_or_else(|| panic!("{what}: ack of {} bytes", r.payload.len()))
}

fn expect_nack(c: &mut Conn, code: u32, what: &str) {
    assert_ne!(expect_reply_status(c, code, what), 0, "{what}: must be nacked");
}

/// A typed request refused with a nack (not a close, not silence).
fn nacked(r: vfnic_user::Result<()>, what: &str) {
    match r {
        Err(Error::Nack { status, .. }) => assert_ne!(status, 0, "{what}"),
        other => panic!("{what}: expected a nack, got {other:?}"),
    }
}

/// The connection still answers requests.
fn expect_open(c: &mut Conn, what: &str) {
    c.get_features().unwrap_or_else(|e| panic!("{what}: the connection should stay usable: {e}"));
}

/// The daemon closes the connection (without answering anything first).
fn expect_closed(c: &mut Conn, what: &str) {
    assert!(c.wait_closed(T).unwrap_or(true), "{what}: the daemon should close the connection");
}

fn send_msg(c: &mut Conn, code: u32, fl: u32, payload: &[u8], fds: &[RawFd]) {
    c.send(code, fl, payload, fds).unwrap_or_else(|e| panic!("send request {code}: {e}"));
}

fn vring_state(index: u32, num: u32) -> Vec<u8> {
    let mut v = index.to_le_bytes().to_vec();
    v.extend_from_slice(&num.to_le_bytes());
    v
}

fn header(code: u32, fl: u32, size: u32) -> Vec<u8> {
    let mut v = code.to_le_bytes().to_vec();
    v.extend_from_slice(&fl.to_le_bytes());
    v.extend_from_slice(&size.to_le_bytes());
    v
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is the 2-element array pipe() fills.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both fds were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn region(gpa: u64, size: u64, uaddr: u64, offset: u64) -> MemRegion {
    MemRegion { guest_phys_addr: gpa, memory_size: size, userspace_addr: uaddr, mmap_offset: offset }
}

/// Deterministic garbage (xorshift64).
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Links of the daemon's open fds.
fn daemon_fds(d: &Daemon) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .map(|dir| {
            dir.flatten().filter_map(|e| std::fs::read_link(e.path()).ok()).map(|p| p.display().to_string()).collect()
        })
        .unwrap_or_default()
}

/// Tenant memory files the daemon holds open.
fn daemon_memfds(d: &Daemon) -> usize {
    daemon_fds(d).iter().filter(|l| l.contains("memfd:vfnic-user")).count()
}

// ------------------------------------------------------ ring fault driver

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    /// The tenant's TX queue is broken.
    Tx,
    /// The tenant's RX queue is broken (found when a frame is delivered).
    Rx,
}

/// What a ring attack must produce.
struct Fault {
    /// `errors.*` counter of the fault.
    error: &'static str,
    /// `drops.*` counter that counts the frame, if one was taken.
    drop: Option<&'static str>,
    /// Which queue breaks.
    dir: Dir,
    /// A head the device must give back with length 0.
    returned: Option<u16>,
}

fn tx_fault(error: &'static str, returned: Option<u16>) -> Fault {
    Fault { error, drop: returned.map(|_| "tx_dropped_bad_descriptor"), dir: Dir::Tx, returned }
}

fn rx_fault(error: &'static str) -> Fault {
    Fault { error, drop: Some("rx_dropped_bad_descriptor"), dir: Dir::Rx, returned: None }
}

/// Connects a hostile tenant on VF0 with `opts`, runs `attack`, and checks
/// that exactly one fault of the expected kind is counted, that the queue is
/// faulted (API `faulted`, NEEDS_RESET in the device status) and stays
/// stopped, then runs `after` (content checks), and finally that the healthy
/// pair forwards and a reconnect recovers VF0.
fn fault_and_recover(
    d: &mut Daemon,
    h: &mut Healthy,
    what: &str,
    opts: Options,
    f: Fault,
    attack: impl FnOnce(&Daemon, &mut VirtioNet, &mut Healthy),
    after: impl FnOnce(&mut VirtioNet),
) {
    let mut v = attach_with(d, VF, opts);
    let e0 = err(d, VF, f.error);
    let q0 = err(d, VF, "queue_faulted");
    let d0 = f.drop.map(|n| drops(d, VF, n));
    attack(d, &mut v, h);
    d.wait_for(&format!("{what}: the fault to be counted and the queue faulted"), 5, || {
        err(d, VF, f.error) > e0
            && err(d, VF, "queue_faulted") > q0
            && f.drop.is_none_or(|n| drops(d, VF, n) > d0.unwrap())
            && vf_show(d, VF)["faulted"] == true
    });
    assert_eq!(err(d, VF, f.error), e0 + 1, "{what}: one fault counted as errors.{}", f.error);
    assert_eq!(err(d, VF, "queue_faulted"), q0 + 1, "{what}: errors.queue_faulted");
    if let (Some(n), Some(d0)) = (f.drop, d0) {
        assert_eq!(drops(d, VF, n), d0 + 1, "{what}: drops.{n}");
    }
    d.wait_for(&format!("{what}: NEEDS_RESET in the device status"), 5, || {
        v.conn().get_status().unwrap() & NEEDS_RESET != 0
    });
    if let Some(head) = f.returned {
        let mut used = Vec::new();
        d.wait_for(&format!("{what}: the bad chain to come back"), 5, || {
            used.extend(v.take_tx_used().unwrap());
            !used.is_empty()
        });
        assert_eq!((used[0].id, used[0].len), (u32::from(head), 0), "{what}: bad chain returned unused");
    }
    // The faulted queue stays stopped: frames neither leave nor arrive.
    match f.dir {
        Dir::Tx => {
            let tx0 = d.counter(VF, &["tx_packets"]);
            v.send(&frame(vf_mac(2), vf_mac(VF), 80, 0xee)).unwrap();
            assert!(h.a.recv_timeout(QUIET).unwrap().is_none(), "{what}: a faulted TX queue must stay stopped");
            assert_eq!(d.counter(VF, &["tx_packets"]), tx0, "{what}: nothing sent from a faulted queue");
        }
        Dir::Rx => {
            let n0 = drops(d, VF, "rx_dropped_not_ready");
            let r0 = d.counter(VF, &["rx_packets"]);
            h.a.send(&frame(vf_mac(VF), vf_mac(2), 80, 0xee)).unwrap();
            d.wait_for(&format!("{what}: frames to a faulted RX queue dropped"), 5, || {
                drops(d, VF, "rx_dropped_not_ready") > n0
            });
            assert_eq!(d.counter(VF, &["rx_packets"]), r0, "{what}: nothing delivered to a faulted queue");
        }
    }
    after(&mut v);
    survived(d, h, what);
    drop(v);
    recover(d, h, VF, what);
}

fn no_check(_: &mut VirtioNet) {}

/// A TX attack that posts `descs` with `head`.
fn post_tx(descs: Vec<RawDesc>, head: u16) -> impl FnOnce(&Daemon, &mut VirtioNet, &mut Healthy) {
    move |_, v, _| v.post_tx_raw(&descs, head).unwrap()
}

fn desc(index: u16, addr: u64, len: u32, flags: u16, next: u16) -> RawDesc {
    RawDesc { index, addr, len, flags, next }
}

/// A valid TX frame (header + Ethernet) to VF2 in scratch memory.
fn scratch_frame(v: &mut VirtioNet) -> (u64, u32) {
    scratch_frame_of(v, 0x11)
}

/// [`scratch_frame`] with its payload bytes `fill`.
fn scratch_frame_of(v: &mut VirtioNet, fill: u8) -> (u64, u32) {
    let mut bytes = vec![0u8; 12];
    bytes.extend(frame(vf_mac(2), vf_mac(VF), 60, fill));
    let at = v.alloc_scratch(bytes.len() as u64, 64).unwrap();
    v.write_mem(at, &bytes).unwrap();
    (at, bytes.len() as u32)
}

fn mem_end(v: &VirtioNet) -> u64 {
    v.memory().gpa_base() + v.memory().size() as u64
}

/// Where VF0's memory ends for a front end laid out as the attacks' are: a
/// probe attaches, reads it and leaves, and the VF is free again.
fn probed_mem_end(d: &Daemon) -> u64 {
    let probe = attach(d, VF);
    let end = mem_end(&probe);
    drop(probe);
    wait_free(d, VF);
    end
}

// ------------------------------------------------------------- protocol

#[test]
fn truncated_header_or_body_then_silence_hits_the_deadline() {
    let (mut d, mut h) = setup();
    let m0 = [err(&d, 0, "msg_malformed"), err(&d, 1, "msg_malformed")];
    // VF0: 5 bytes of a header; VF1: a whole header, 3 of its 8 body bytes.
    let mut c0 = raw(&d, 0);
    let mut c1 = raw(&d, 1);
    let t = Instant::now();
    c0.send_raw_bytes(&header(request::GET_FEATURES, flags::VERSION, 0)[..5], &[]).unwrap();
    let mut partial = header(request::SET_FEATURES, flags::VERSION, 8);
    partial.extend_from_slice(&[1, 2, 3]);
    c1.send_raw_bytes(&partial, &[]).unwrap();
    for (vf, c) in [(0u16, &mut c0), (1, &mut c1)] {
        assert!(c.wait_closed(DEADLINE * 3).unwrap(), "vf{vf}: closed after the deadline");
        let took = t.elapsed();
        assert!(took >= DEADLINE - Duration::from_millis(300), "vf{vf}: not before the deadline ({took:?})");
        assert_eq!(err(&d, vf, "msg_malformed"), m0[vf as usize] + 1, "vf{vf}: errors.msg_malformed");
    }
    survived(&mut d, &mut h, "truncated message");
    recover(&mut d, &mut h, 0, "truncated header");
    recover(&mut d, &mut h, 1, "truncated body");
}

#[test]
fn bad_version_flags_close_the_connection() {
    let (mut d, mut h) = setup();
    let bad = [0, 2, 3, flags::VERSION | flags::REPLY, 0xffff_ffff, 0x2 | flags::NEED_REPLY];
    for (i, fl) in bad.into_iter().enumerate() {
        let m0 = err(&d, VF, "msg_malformed");
        let mut c = raw(&d, VF);
        c.send_raw_bytes(&header(request::GET_FEATURES, fl, 0), &[]).unwrap();
        expect_closed(&mut c, &format!("flags {fl:#x}"));
        assert_eq!(err(&d, VF, "msg_malformed"), m0 + 1, "flags {fl:#x}: errors.msg_malformed");
        if i == 0 {
            survived(&mut d, &mut h, "bad flags");
        }
    }
    recover(&mut d, &mut h, VF, "bad flags");
}

#[test]
fn lying_body_sizes() {
    let (mut d, mut h) = setup();
    // Larger than 4096: a framing error, the stream cannot be trusted.
    for size in [4097u32, 65536, u32::MAX] {
        let m0 = err(&d, VF, "msg_malformed");
        let mut c = raw(&d, VF);
        let mut bytes = header(request::SET_MEM_TABLE, flags::VERSION | flags::NEED_REPLY, size);
        bytes.extend(vec![0u8; 64]);
        c.send_raw_bytes(&bytes, &[]).unwrap();
        expect_closed(&mut c, &format!("body size {size}"));
        assert_eq!(err(&d, VF, "msg_malformed"), m0 + 1, "body size {size}: errors.msg_malformed");
    }
    survived(&mut d, &mut h, "oversized body");
    // A well-framed body of the wrong size for its request: nack when asked
    // for a reply, the connection stays in sync.
    let mut c = raw(&d, VF);
    let m0 = err(&d, VF, "msg_malformed");
    send_msg(&mut c, request::SET_FEATURES, flags::VERSION | flags::NEED_REPLY, &[0; 40], &[]);
    expect_nack(&mut c, request::SET_FEATURES, "SET_FEATURES with 40 bytes");
    send_msg(&mut c, request::SET_VRING_ADDR, flags::VERSION | flags::NEED_REPLY, &[0; 39], &[]);
    expect_nack(&mut c, request::SET_VRING_ADDR, "SET_VRING_ADDR with 39 bytes");
    expect_open(&mut c, "after wrong-size bodies");
    assert_eq!(err(&d, VF, "msg_malformed"), m0 + 2);
    // Without NEED_REPLY there is no way to refuse: closed.
    send_msg(&mut c, request::SET_FEATURES, flags::VERSION, &[0; 4], &[]);
    expect_closed(&mut c, "SET_FEATURES with 4 bytes");
    assert_eq!(err(&d, VF, "msg_malformed"), m0 + 3);
    recover(&mut d, &mut h, VF, "lying body sizes");
}

#[test]
fn unknown_request_codes() {
    let (mut d, mut h) = setup();
    let mut c = raw(&d, VF);
    let u0 = err(&d, VF, "msg_unknown");
    let codes = [0u32, 26, 37, 41, 999, u32::MAX];
    for code in codes {
        send_msg(&mut c, code, flags::VERSION | flags::NEED_REPLY, &[0; 8], &[]);
        expect_nack(&mut c, code, &format!("unknown request {code} with NEED_REPLY"));
    }
    expect_open(&mut c, "after nacked unknown requests");
    assert_eq!(err(&d, VF, "msg_unknown"), u0 + codes.len() as u64);
    let closed0 = err(&d, VF, "connection_closed_on_error");
    send_msg(&mut c, 999, flags::VERSION, &[], &[]);
    expect_closed(&mut c, "unknown request without NEED_REPLY");
    assert_eq!(err(&d, VF, "msg_unknown"), u0 + codes.len() as u64 + 1);
    assert_eq!(err(&d, VF, "connection_closed_on_error"), closed0 + 1);
    recover(&mut d, &mut h, VF, "unknown requests");
}

#[test]
fn mem_table_region_beyond_its_memfd_is_refused() {
    let (mut d, mut h) = setup();
    let mem = GuestMemory::new(64 << 10, GPA).unwrap();
    let ua = mem.user_addr();
    let mut c = raw_acked(&d, VF);
    c.set_owner().unwrap();
    let r0 = err(&d, VF, "mem_table_refused");
    let lies = [
        region(GPA, 1 << 20, ua, 0),        // 16 times the file
        region(GPA, (64 << 10) + 1, ua, 0), // one byte too many
        region(GPA, 64 << 10, ua, 4096),    // the offset pushes it past EOF
        region(GPA, 4096, ua, u64::MAX - 100),
    ];
    for (i, r) in lies.iter().enumerate() {
        nacked(c.set_mem_table(&[*r], &[mem.fd()]), &format!("region {i} beyond its file"));
    }
    assert_eq!(err(&d, VF, "mem_table_refused"), r0 + lies.len() as u64);
    assert!(d.alive(), "a refused table never SIGBUSes the daemon");
    // The same connection still takes a truthful table.
    c.set_mem_table(&[region(GPA, 64 << 10, ua, 0)], &[mem.fd()]).unwrap();
    // Without NEED_REPLY a refused table closes the connection.
    send_msg(&mut c, request::SET_MEM_TABLE, flags::VERSION, &proto::encode_mem_table(&lies[..1]), &[mem.fd()]);
    expect_closed(&mut c, "table beyond its file without NEED_REPLY");
    assert_eq!(err(&d, VF, "mem_table_refused"), r0 + lies.len() as u64 + 1);
    survived(&mut d, &mut h, "region beyond its memfd");
    recover(&mut d, &mut h, VF, "region beyond its memfd");
}

#[test]
fn mem_table_region_count_not_matching_fds() {
    let (mut d, mut h) = setup();
    let m1 = GuestMemory::new(64 << 10, GPA).unwrap();
    let m2 = GuestMemory::new(64 << 10, GPA + (1 << 20)).unwrap();
    let (r1, r2) = (m1.region(), m2.region());
    let nr = flags::VERSION | flags::NEED_REPLY;
    let mut c = raw(&d, VF);
    let m0 = err(&d, VF, "msg_malformed");
    let cases: Vec<(&str, Vec<u8>, Vec<RawFd>)> = vec![
        ("2 regions, 1 fd", proto::encode_mem_table(&[r1, r2]), vec![m1.fd()]),
        ("1 region, 2 fds", proto::encode_mem_table(&[r1]), vec![m1.fd(), m2.fd()]),
        ("1 region, no fd", proto::encode_mem_table(&[r1]), vec![]),
        ("0 regions", proto::encode_mem_table(&[]), vec![]),
        ("9 regions", proto::encode_mem_table(&[r1; 9]), vec![m1.fd(); 8]),
        (
            "count says 2, body holds 1",
            {
                let mut b = proto::encode_mem_table(&[r1]);
                b[0] = 2;
                b
            },
            vec![m1.fd(), m2.fd()],
        ),
    ];
    for (what, body, fds) in &cases {
        send_msg(&mut c, request::SET_MEM_TABLE, nr, body, fds);
        expect_nack(&mut c, request::SET_MEM_TABLE, what);
    }
    expect_open(&mut c, "after mismatched tables");
    assert_eq!(err(&d, VF, "msg_malformed"), m0 + cases.len() as u64);
    send_msg(&mut c, request::SET_MEM_TABLE, flags::VERSION, &cases[0].1, &cases[0].2);
    expect_closed(&mut c, "mismatch without NEED_REPLY");
    assert_eq!(err(&d, VF, "msg_malformed"), m0 + cases.len() as u64 + 1);
    survived(&mut d, &mut h, "region/fd mismatch");
    recover(&mut d, &mut h, VF, "region/fd mismatch");
}

#[test]
fn mem_table_overlapping_or_invalid_regions() {
    let (mut d, mut h) = setup();
    let m1 = GuestMemory::new(64 << 10, GPA).unwrap();
    let m2 = GuestMemory::new(64 << 10, GPA + (1 << 20)).unwrap();
    let (u1, u2) = (m1.user_addr(), m2.user_addr());
    let (p, _w) = pipe();
    let k = 64 << 10;
    let mut c = raw_acked(&d, VF);
    let r0 = err(&d, VF, "mem_table_refused");
    let cases: Vec<(&str, Vec<MemRegion>, Vec<RawFd>)> = vec![
        ("guest-physical overlap", vec![region(GPA, k, u1, 0), region(GPA + k / 2, k, u2, 0)], vec![m1.fd(), m2.fd()]),
        (
            "front-end address overlap",
            vec![region(GPA, k, u1, 0), region(GPA + 4 * k, k, u1 + 4096, 0)],
            vec![m1.fd(), m2.fd()],
        ),
        ("the same region twice", vec![region(GPA, k, u1, 0); 2], vec![m1.fd(), m1.fd()]),
        ("zero size", vec![region(GPA, 0, u1, 0)], vec![m1.fd()]),
        ("guest-physical end overflows", vec![region(u64::MAX - 4095, k, u1, 0)], vec![m1.fd()]),
        ("front-end end overflows", vec![region(GPA, k, u64::MAX - 4095, 0)], vec![m1.fd()]),
        ("a pipe instead of a file", vec![region(GPA, k, u1, 0)], vec![p.as_raw_fd()]),
    ];
    for (what, regions, fds) in &cases {
        nacked(c.set_mem_table(regions, fds), what);
    }
    assert_eq!(err(&d, VF, "mem_table_refused"), r0 + cases.len() as u64);
    // Two disjoint regions are fine on the same connection.
    c.set_mem_table(&[region(GPA, k, u1, 0), region(GPA + 4 * k, k, u2, 0)], &[m1.fd(), m2.fd()]).unwrap();
    survived(&mut d, &mut h, "overlapping regions");
    drop(c);
    recover(&mut d, &mut h, VF, "overlapping regions");
}

#[test]
fn vring_num_and_index_out_of_range_are_nacked() {
    let (mut d, mut h) = setup();
    let mut c = raw_acked(&d, VF);
    c.set_owner().unwrap();
    let r0 = err(&d, VF, "msg_refused");
    let ev = EventFd::new().unwrap();
    let mut n = 0u64;
    for num in [0u32, 3, 100, 65536, u32::MAX] {
        nacked(c.set_vring_num(0, num), &format!("SET_VRING_NUM {num}"));
        n += 1;
    }
    // VF queues are 0 (RX), 1 (TX), 2 (control).
    for index in [3u32, 255, u32::MAX] {
        nacked(c.set_vring_num(index, 256), &format!("SET_VRING_NUM on queue {index}"));
        nacked(c.set_vring_base(index, 0), &format!("SET_VRING_BASE on queue {index}"));
        nacked(c.set_vring_enable(index, true), &format!("SET_VRING_ENABLE on queue {index}"));
        let addr = VringAddr { index, ..VringAddr::default() };
        nacked(c.set_vring_addr(&addr), &format!("SET_VRING_ADDR on queue {index}"));
        n += 4;
    }
    for index in [3u8, 200] {
        nacked(c.set_vring_kick(index, Some(ev.as_raw_fd())), &format!("SET_VRING_KICK on queue {index}"));
        nacked(c.set_vring_call(index, None), &format!("SET_VRING_CALL on queue {index}"));
        n += 2;
    }
    nacked(c.set_vring_base(0, 70000), "SET_VRING_BASE beyond 16 bits");
    n += 1;
    assert_eq!(err(&d, VF, "msg_refused"), r0 + n);
    // Garbage above the index bits of a kick payload is malformed.
    let m0 = err(&d, VF, "msg_malformed");
    send_msg(&mut c, request::SET_VRING_KICK, flags::VERSION | flags::NEED_REPLY, &(1u64 << 40).to_le_bytes(), &[]);
    expect_nack(&mut c, request::SET_VRING_KICK, "kick payload with high bits");
    assert_eq!(err(&d, VF, "msg_malformed"), m0 + 1);
    // A harmless refusal without NEED_REPLY is counted, the connection stays.
    send_msg(&mut c, request::SET_VRING_NUM, flags::VERSION, &vring_state(0, 3), &[]);
    expect_open(&mut c, "after SET_VRING_NUM 3 without NEED_REPLY");
    assert_eq!(err(&d, VF, "msg_refused"), r0 + n + 1);
    // A refused GET cannot be answered: closed.
    send_msg(&mut c, request::GET_VRING_BASE, flags::VERSION, &vring_state(9, 0), &[]);
    expect_closed(&mut c, "GET_VRING_BASE on queue 9");
    assert_eq!(err(&d, VF, "msg_refused"), r0 + n + 2);
    survived(&mut d, &mut h, "vring index/num");
    recover(&mut d, &mut h, VF, "vring index/num");
}

#[test]
fn vring_addr_outside_memory_is_refused_and_leaves_the_ring_alone() {
    let (mut d, mut h) = setup();
    let mut v = attach(&d, VF);
    let base = v.memory().user_addr();
    let end = base + v.memory().size() as u64;
    let l = *v.tx_ring().layout();
    let user = |gpa: u64| v.memory().gpa_to_user(gpa).unwrap();
    let good = VringAddr {
        index: 1,
        flags: 0,
        desc_user_addr: user(l.desc),
        used_user_addr: user(l.used),
        avail_user_addr: user(l.avail),
        log_guest_addr: 0,
    };
    let bad = [
        ("descriptors past the end", VringAddr { desc_user_addr: end, ..good }),
        ("descriptors below the start", VringAddr { desc_user_addr: base - 4096, ..good }),
        ("used ring straddling the end", VringAddr { used_user_addr: end - 8, ..good }),
        ("avail ring at a guest-physical address", VringAddr { avail_user_addr: l.avail, ..good }),
        ("misaligned descriptors", VringAddr { desc_user_addr: good.desc_user_addr + 8, ..good }),
        ("descriptor end overflows", VringAddr { desc_user_addr: u64::MAX - 15, ..good }),
    ];
    let a0 = err(&d, VF, "ring_addr_invalid");
    for (what, addr) in &bad {
        nacked(v.conn().set_vring_addr(addr), what);
    }
    assert_eq!(err(&d, VF, "ring_addr_invalid"), a0 + bad.len() as u64);
    // The refused updates changed nothing: VF0 still forwards.
    exchange(&d, &mut v, VF, &mut h.a, 2, 0x21, "after refused SET_VRING_ADDR");
    // Without NEED_REPLY the front end would believe a false ring: closed.
    let c0 = err(&d, VF, "connection_closed_on_error");
    send_msg(v.conn(), request::SET_VRING_ADDR, flags::VERSION, &bad[0].1.encode(), &[]);
    expect_closed(v.conn(), "bad SET_VRING_ADDR without NEED_REPLY");
    assert_eq!(err(&d, VF, "ring_addr_invalid"), a0 + bad.len() as u64 + 1);
    assert_eq!(err(&d, VF, "connection_closed_on_error"), c0 + 1);
    drop(v);
    survived(&mut d, &mut h, "ring address outside memory");
    recover(&mut d, &mut h, VF, "ring address outside memory");
}

#[test]
fn vring_kick_with_a_non_eventfd_is_refused() {
    let (mut d, mut h) = setup();
    let mut v = attach(&d, VF);
    let (pr, pw) = pipe();
    let file = std::fs::File::create(d.dir.join("not-an-eventfd")).unwrap();
    let (s1, _s2) = UnixStream::pair().unwrap();
    let mem = GuestMemory::new(4096, GPA).unwrap();
    let r0 = err(&d, VF, "msg_refused");
    nacked(v.conn().set_vring_kick(1, Some(pr.as_raw_fd())), "kick: pipe");
    nacked(v.conn().set_vring_kick(1, Some(file.as_raw_fd())), "kick: regular file");
    nacked(v.conn().set_vring_kick(1, Some(s1.as_raw_fd())), "kick: socket");
    nacked(v.conn().set_vring_call(0, Some(pw.as_raw_fd())), "call: pipe");
    nacked(v.conn().set_vring_err(1, Some(mem.fd())), "err: memfd");
    assert_eq!(err(&d, VF, "msg_refused"), r0 + 5);
    // An fd promised but not attached, or attached but not promised.
    let m0 = err(&d, VF, "msg_malformed");
    let nr = flags::VERSION | flags::NEED_REPLY;
    send_msg(v.conn(), request::SET_VRING_KICK, nr, &proto::encode_vring_fd(1, false), &[]);
    expect_nack(v.conn(), request::SET_VRING_KICK, "kick without its fd");
    let ev = EventFd::new().unwrap();
    send_msg(v.conn(), request::SET_VRING_KICK, nr, &proto::encode_vring_fd(1, true), &[ev.as_raw_fd()]);
    expect_nack(v.conn(), request::SET_VRING_KICK, "NOFD kick with an fd");
    assert_eq!(err(&d, VF, "msg_malformed"), m0 + 2);
    // The refused fds replaced nothing: kicks and interrupts still work.
    for tag in 0x30..0x34 {
        exchange(&d, &mut v, VF, &mut h.a, 2, tag, "after refused doorbells");
    }
    drop(v);
    survived(&mut d, &mut h, "non-eventfd doorbells");
    recover(&mut d, &mut h, VF, "non-eventfd doorbells");
}

#[test]
fn too_many_fds_on_one_message() {
    let (mut d, mut h) = setup();
    let evs: Vec<EventFd> = (0..20).map(|_| EventFd::new().unwrap()).collect();
    let fds: Vec<RawFd> = evs.iter().map(|e| e.as_raw_fd()).collect();
    // The stray fds are eventfds; the daemon's own (engine wake-ups, the
    // healthy pair's doorbells) do not change during the test.
    let eventfds = |d: &Daemon| daemon_fds(d).iter().filter(|l| l.contains("eventfd")).count();
    // Let the engines settle on the healthy pair's doorbells first.
    let mut fd_base = eventfds(&d);
    d.wait_for("the engines' doorbell set to settle", 5, || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let now = eventfds(&d);
        std::mem::replace(&mut fd_base, now) == now
    });
    let m0 = err(&d, VF, "msg_malformed");
    // 9 and 20 fds on one message: the stream cannot be trusted.
    for n in [9, 20] {
        let mut c = raw(&d, VF);
        send_msg(&mut c, request::SET_OWNER, flags::VERSION | flags::NEED_REPLY, &[], &fds[..n]);
        expect_closed(&mut c, &format!("{n} fds"));
    }
    // 8 on the header and 8 more on the body of the same message.
    let mut c = raw(&d, VF);
    c.send_raw_bytes(&header(request::SET_FEATURES, flags::VERSION | flags::NEED_REPLY, 8), &fds[..8]).unwrap();
    c.send_raw_bytes(&0u64.to_le_bytes(), &fds[8..16]).unwrap();
    expect_closed(&mut c, "8 + 8 fds on one message");
    assert_eq!(err(&d, VF, "msg_malformed"), m0 + 3);
    // At most 8 fds on a request that takes none: nacked, and none leak.
    let mut c = raw(&d, VF);
    for i in 0..50 {
        send_msg(&mut c, request::SET_OWNER, flags::VERSION | flags::NEED_REPLY, &[], &fds[..8]);
        expect_nack(&mut c, request::SET_OWNER, &format!("8 stray fds, round {i}"));
    }
    expect_open(&mut c, "after stray fds");
    assert_eq!(err(&d, VF, "msg_malformed"), m0 + 53);
    // The engines re-open their doorbell clones when queues change, so the
    // count may be in flux for a moment; a leak never settles back.
    d.wait_for("stray fds to be closed", 5, || eventfds(&d) == fd_base);
    drop(c);
    wait_free(&d, VF);
    d.wait_for("no eventfd kept after the session", 5, || eventfds(&d) == fd_base);
    survived(&mut d, &mut h, "too many fds");
    recover(&mut d, &mut h, VF, "too many fds");
}

#[test]
fn set_features_never_offered_is_refused() {
    let (mut d, mut h) = setup();
    let mut c = raw_acked(&d, VF);
    c.set_owner().unwrap();
    let offered = c.get_features().unwrap();
    let r0 = err(&d, VF, "msg_refused");
    let never = [NEVER_OFFERED, 1 << 63, !offered, offered | (1 << 41)];
    for bits in never {
        nacked(c.set_features(bits), &format!("SET_FEATURES {bits:#x}"));
    }
    assert_eq!(vf_show(&d, VF)["features"], "0x0", "refused features are not recorded");
    nacked(c.set_protocol_features(1 << 60), "SET_PROTOCOL_FEATURES never offered");
    assert_eq!(err(&d, VF, "msg_refused"), r0 + never.len() as u64 + 1);
    // Offered bits are accepted; a later bogus set leaves them alone, with or
    // without NEED_REPLY.
    let v1 = 1u64 << 32;
    c.set_features(v1).unwrap();
    send_msg(&mut c, request::SET_FEATURES, flags::VERSION, &(v1 | NEVER_OFFERED).to_le_bytes(), &[]);
    expect_open(&mut c, "after a bogus SET_FEATURES without NEED_REPLY");
    assert_eq!(vf_show(&d, VF)["features"], format!("{v1:#x}"));
    assert_eq!(err(&d, VF, "msg_refused"), r0 + never.len() as u64 + 2);
    drop(c);
    survived(&mut d, &mut h, "features never offered");
    recover(&mut d, &mut h, VF, "features never offered");
}

#[test]
fn random_garbage() {
    let (mut d, mut h) = setup();
    let bad = |d: &Daemon| err(d, VF, "msg_malformed") + err(d, VF, "msg_unknown");
    for seed in 1..=8u64 {
        let b0 = bad(&d);
        let mut c = raw(&d, VF);
        c.send_raw_bytes(&garbage(seed, 1024), &[]).unwrap();
        // Whatever the daemon made of it, EOF ends any message it waits for.
        c.stream().shutdown(std::net::Shutdown::Write).unwrap();
        expect_closed(&mut c, &format!("garbage seed {seed}"));
        assert!(bad(&d) > b0, "garbage seed {seed}: counted as malformed or unknown");
    }
    survived(&mut d, &mut h, "garbage");
    // Garbage in the middle of a working session tears it down and resets VF0.
    let mut v = attach(&d, VF);
    exchange(&d, &mut v, VF, &mut h.a, 2, 0x40, "before mid-session garbage");
    let b0 = bad(&d);
    v.conn().send_raw_bytes(&garbage(99, 1024), &[]).unwrap();
    expect_closed(v.conn(), "garbage mid-session");
    assert!(bad(&d) > b0);
    wait_free(&d, VF);
    assert_eq!(vf_show(&d, VF)["features"], "0x0", "the session's state was reset");
    drop(v);
    recover(&mut d, &mut h, VF, "garbage");
}

/// A message trickled one byte at a time, each well within the per-read
/// timeout, must still be cut off once the whole message has taken longer
/// than the deadline ("how long the rest of a message may take once its
/// first byte arrived"); otherwise a tenant can park its session thread
/// mid-message indefinitely.
#[test]

fn slow_drip_message_hits_the_deadline() {
    let (mut d, mut h) = setup();
    let m0 = err(&d, VF, "msg_malformed");
    let mut c = raw(&d, VF);
    let msg = header(request::SET_OWNER, flags::VERSION | flags::NEED_REPLY, 0);
    let t = Instant::now();
    let mut cut = false;
    for b in &msg {
        if c.send_raw_bytes(std::slice::from_ref(b), &[]).is_err() {
            cut = true;
            break;
        }
        // Deliberate trickle (the attack itself, not synchronisation).
        std::thread::sleep(Duration::from_millis(350));
    }
    let closed = cut || c.wait_closed(Duration::from_millis(500)).unwrap_or(true);
    assert!(closed, "a message trickled over {:?} was accepted", t.elapsed());
    assert!(t.elapsed() < DEADLINE * 2 + Duration::from_millis(500), "cut off near the deadline");
    assert_eq!(err(&d, VF, "msg_malformed"), m0 + 1);
    survived(&mut d, &mut h, "slow drip");
    recover(&mut d, &mut h, VF, "slow drip");
}

/// Framing errors (bad header, deadline) close the connection just like a
/// refused request does, but only the latter counts
/// `errors.connection_closed_on_error` ("the tenant connection was closed
/// because of a protocol error").
#[test]

fn framing_close_counts_connection_closed() {
    let (d, _h) = setup();
    let c0 = err(&d, VF, "connection_closed_on_error");
    let mut c = raw(&d, VF);
    c.send_raw_bytes(&header(request::GET_FEATURES, 0, 0), &[]).unwrap();
    expect_closed(&mut c, "bad version");
    assert_eq!(err(&d, VF, "connection_closed_on_error"), c0 + 1);
}

// ----------------------------------------------------------------- rings

#[test]
fn tx_descriptor_outside_memory() {
    let (mut d, mut h) = setup();
    let end = probed_mem_end(&d);
    for (what, addr, len) in [
        ("below the memory table", 0x1000u64, 64u32),
        ("just past the end", end, 64),
        ("straddling the end", end - 8, 64),
        ("huge length from inside", GPA, u32::MAX),
    ] {
        fault_and_recover(
            &mut d,
            &mut h,
            what,
            Options::default(),
            tx_fault("desc_out_of_bounds", Some(7)),
            post_tx(vec![desc(7, addr, len, 0, 0)], 7),
            no_check,
        );
    }
}

/// Good chains made available together with a bad one after them: the
/// good ones are sent (in order), then the queue faults at the bad one.
#[test]
fn tx_good_chains_before_a_bad_one_are_sent_then_the_queue_faults() {
    let (mut d, mut h) = setup();
    let end = probed_mem_end(&d);
    let attack = move |_: &Daemon, v: &mut VirtioNet, h: &mut Healthy| {
        let bufs = [scratch_frame_of(v, 0x21), scratch_frame_of(v, 0x22)];
        let good0 = [desc(5, bufs[0].0, bufs[0].1, 0, 0)];
        let good1 = [desc(6, bufs[1].0, bufs[1].1, 0, 0)];
        let bad = [desc(7, end, 64, 0, 0)];
        v.post_tx_raw_chains(&[(&good0, 5), (&good1, 6), (&bad, 7)]).unwrap();
        for fill in [0x21u8, 0x22] {
            let got = h.a.recv_timeout(T).unwrap().expect("the good chains before the bad one are sent");
            assert_eq!(got, frame(vf_mac(2), vf_mac(VF), 60, fill), "sent whole and in order");
        }
    };
    fault_and_recover(
        &mut d,
        &mut h,
        "good, good, out of bounds",
        Options::default(),
        tx_fault("desc_out_of_bounds", Some(7)),
        attack,
        no_check,
    );
}

#[test]
fn tx_chain_loops() {
    let (mut d, mut h) = setup();
    // A small ring: the walk gives up after `size` descriptors.
    let opts = Options { queue_size: 16, features: DEFAULT_FEATURES | INDIRECT_DESC, ..Options::default() };
    let two_loop = |_: &Daemon, v: &mut VirtioNet, _: &mut Healthy| {
        let (buf, _) = scratch_frame(v);
        v.post_tx_raw(&[desc(3, buf, 12, DESC_F_NEXT, 4), desc(4, buf + 12, 60, DESC_F_NEXT, 3)], 3).unwrap();
    };
    fault_and_recover(
        &mut d,
        &mut h,
        "a -> b -> a",
        opts.clone(),
        tx_fault("desc_chain_loop", Some(3)),
        two_loop,
        no_check,
    );
    let self_loop = |_: &Daemon, v: &mut VirtioNet, _: &mut Healthy| {
        let (buf, len) = scratch_frame(v);
        v.post_tx_raw(&[desc(5, buf, len, DESC_F_NEXT, 5)], 5).unwrap();
    };
    fault_and_recover(
        &mut d,
        &mut h,
        "self loop",
        opts.clone(),
        tx_fault("desc_chain_loop", Some(5)),
        self_loop,
        no_check,
    );
    let indirect_loop = |_: &Daemon, v: &mut VirtioNet, _: &mut Healthy| {
        let (buf, _) = scratch_frame(v);
        let table = v.alloc_scratch(32, 16).unwrap();
        let mut t = proto_desc(buf, 12, DESC_F_NEXT, 1);
        t.extend(proto_desc(buf + 12, 60, DESC_F_NEXT, 0));
        v.write_mem(table, &t).unwrap();
        v.post_tx_raw(&[desc(6, table, 32, DESC_F_INDIRECT, 0)], 6).unwrap();
    };
    fault_and_recover(
        &mut d,
        &mut h,
        "indirect loop",
        opts,
        tx_fault("desc_chain_loop", Some(6)),
        indirect_loop,
        no_check,
    );
}

/// On a ring larger than the 64-segment limit of a chain, a looping chain of
/// non-empty buffers runs out of segments before the walk has visited
/// `size` descriptors, so the loop is counted as a length error.
#[test]

fn tx_chain_loop_on_a_default_ring_is_counted_as_a_loop() {
    let (mut d, mut h) = setup();
    let two_loop = |_: &Daemon, v: &mut VirtioNet, _: &mut Healthy| {
        let (buf, _) = scratch_frame(v);
        v.post_tx_raw(&[desc(3, buf, 12, DESC_F_NEXT, 4), desc(4, buf + 12, 60, DESC_F_NEXT, 3)], 3).unwrap();
    };
    fault_and_recover(
        &mut d,
        &mut h,
        "a -> b -> a on 256 entries",
        Options::default(),
        tx_fault("desc_chain_loop", Some(3)),
        two_loop,
        no_check,
    );
}

/// A descriptor in its table encoding (for indirect tables).
fn proto_desc(addr: u64, len: u32, flags: u16, next: u16) -> Vec<u8> {
    vfnic_user::Descriptor { addr, len, flags, next }.encode().to_vec()
}

#[test]
fn tx_next_index_beyond_the_ring() {
    let (mut d, mut h) = setup();
    for next in [256u16, u16::MAX] {
        let attack = move |_: &Daemon, v: &mut VirtioNet, _: &mut Healthy| {
            let (buf, _) = scratch_frame(v);
            v.post_tx_raw(&[desc(9, buf, 12, DESC_F_NEXT, next)], 9).unwrap();
        };
        let what = format!("next = {next}");
        fault_and_recover(
            &mut d,
            &mut h,
            &what,
            Options::default(),
            tx_fault("desc_index_invalid", Some(9)),
            attack,
            no_check,
        );
    }
    // The avail ring itself names a head beyond the table.
    fault_and_recover(
        &mut d,
        &mut h,
        "avail head 300",
        Options::default(),
        tx_fault("desc_index_invalid", None),
        post_tx(vec![], 300),
        no_check,
    );
}

#[test]
fn tx_descriptor_length_overflow() {
    let (mut d, mut h) = setup();
    for addr in [u64::MAX - 10, u64::MAX - 0x7fff_ffff] {
        fault_and_recover(
            &mut d,
            &mut h,
            &format!("addr {addr:#x} + len overflows"),
            Options::default(),
            tx_fault("desc_length_invalid", Some(2)),
            post_tx(vec![desc(2, addr, u32::MAX, 0, 0)], 2),
            no_check,
        );
    }
}

#[test]
fn avail_idx_jumped_past_the_ring() {
    let (mut d, mut h) = setup();
    for idx in [257u16, 0x8000, u16::MAX] {
        fault_and_recover(
            &mut d,
            &mut h,
            &format!("TX avail.idx = {idx}"),
            Options::default(),
            tx_fault("avail_idx_invalid", None),
            move |_, v, _| v.set_avail_idx_raw(TX_QUEUE, idx).unwrap(),
            no_check,
        );
    }
    // RX: found when a frame is delivered (256 buffers were posted).
    fault_and_recover(
        &mut d,
        &mut h,
        "RX avail.idx = 256 + 257",
        Options::default(),
        rx_fault("avail_idx_invalid"),
        |_, v, h| {
            v.set_avail_idx_raw(RX_QUEUE, 256 + 257).unwrap();
            h.a.send(&frame(vf_mac(VF), vf_mac(2), 70, 1)).unwrap();
        },
        no_check,
    );
}

#[test]
fn tx_descriptor_marked_write() {
    let (mut d, mut h) = setup();
    let single = |_: &Daemon, v: &mut VirtioNet, _: &mut Healthy| {
        let (buf, len) = scratch_frame(v);
        v.post_tx_raw(&[desc(1, buf, len, DESC_F_WRITE, 0)], 1).unwrap();
    };
    fault_and_recover(
        &mut d,
        &mut h,
        "WRITE TX buffer",
        Options::default(),
        tx_fault("desc_permission", Some(1)),
        single,
        no_check,
    );
    let second = |_: &Daemon, v: &mut VirtioNet, _: &mut Healthy| {
        let (buf, _) = scratch_frame(v);
        v.post_tx_raw(&[desc(1, buf, 12, DESC_F_NEXT, 2), desc(2, buf + 12, 60, DESC_F_WRITE, 0)], 1).unwrap();
    };
    fault_and_recover(
        &mut d,
        &mut h,
        "WRITE second TX buffer",
        Options::default(),
        tx_fault("desc_permission", Some(1)),
        second,
        no_check,
    );
}

#[test]
fn rx_buffers_not_writable_are_never_written() {
    let (mut d, mut h) = setup();
    let opts = Options { fill_rx: false, ..Options::default() };
    const PATTERN: u8 = 0xa5;
    let buf = std::cell::Cell::new(0u64);
    // One read-only buffer.
    read_only_rx_buffer(&mut d, &mut h, "read-only RX buffer", rx_fault("desc_permission"), 1);
    // A writable header buffer chained to a read-only one: neither is touched.
    fault_and_recover(
        &mut d,
        &mut h,
        "writable then read-only RX buffer",
        opts,
        rx_fault("desc_permission"),
        |_, v, h| {
            let at = v.alloc_scratch(2048, 64).unwrap();
            v.write_mem(at, &[PATTERN; 2048]).unwrap();
            buf.set(at);
            v.post_rx_raw(&[desc(4, at, 12, DESC_F_WRITE | DESC_F_NEXT, 5), desc(5, at + 64, 1900, 0, 0)], 4).unwrap();
            h.a.send(&frame(vf_mac(VF), vf_mac(2), 100, 2)).unwrap();
        },
        |v| {
            assert!(v.read_mem(buf.get(), 2048).unwrap().iter().all(|&b| b == PATTERN), "RX buffers modified");
            let used = v.pop_rx_used().unwrap().expect("the chain is given back");
            assert_eq!((used.id, used.len), (4, 0));
        },
    );
}

/// A malformed RX buffer met while counting the receiver's buffers for a
/// burst that then takes the per-frame way (the receiver has a link speed,
/// so its arbiter is not open): the chains taken for the count are given
/// back, the bad one unwritten, and the queue is faulted as a delivery would
/// have; the frame is then dropped at the faulted queue.
#[test]
fn rx_bad_buffer_met_while_counting_for_a_receiver_with_a_link_speed() {
    let (mut d, mut h) = setup();
    let change = vfnic_pf::pf::VfChange { speed: Some(10_000), ..Default::default() };
    d.api(Request::VfSet { vf: VF, change });
    let fault = Fault { error: "desc_permission", drop: Some("rx_dropped_not_ready"), dir: Dir::Rx, returned: None };
    read_only_rx_buffer(&mut d, &mut h, "read-only RX buffer, receiver with a link speed", fault, 3);
}

/// One read-only RX buffer posted on VF0 and a frame sent to it: the fault
/// `f` follows, and the buffer comes back untouched with length 0.
fn read_only_rx_buffer(d: &mut Daemon, h: &mut Healthy, what: &str, f: Fault, tag: u8) {
    const PATTERN: u8 = 0x5a;
    let buf = std::cell::Cell::new(0u64);
    fault_and_recover(
        d,
        h,
        what,
        Options { fill_rx: false, ..Options::default() },
        f,
        |_, v, h| {
            let at = v.alloc_scratch(2048, 64).unwrap();
            v.write_mem(at, &[PATTERN; 2048]).unwrap();
            buf.set(at);
            v.post_rx_raw(&[desc(0, at, 2048, 0, 0)], 0).unwrap();
            h.a.send(&frame(vf_mac(VF), vf_mac(2), 100, tag)).unwrap();
        },
        |v| {
            assert!(v.read_mem(buf.get(), 2048).unwrap().iter().all(|&b| b == PATTERN), "read-only buffer modified");
            let used = v.pop_rx_used().unwrap().expect("the chain is given back");
            assert_eq!((used.id, used.len), (0, 0), "given back with nothing written");
        },
    );
}

/// Two good RX buffers and then one outside memory, and three frames sent in
/// one burst: the good buffers get the first two frames (a group's RX chains
/// are taken together, before any is written), then the queue faults.
#[test]
fn rx_good_buffers_before_a_bad_one_are_filled_then_the_queue_faults() {
    let (mut d, mut h) = setup();
    let end = probed_mem_end(&d);
    let opts = Options { fill_rx: false, ..Options::default() };
    let frames: Vec<Vec<u8>> = (1..=3u8).map(|k| frame(vf_mac(VF), vf_mac(2), 100, k)).collect();
    let bufs = std::cell::Cell::new([0u64; 2]);
    fault_and_recover(
        &mut d,
        &mut h,
        "good, good, out of bounds RX buffers",
        opts,
        rx_fault("desc_out_of_bounds"),
        |_, v, h| {
            let good = [v.alloc_scratch(2048, 64).unwrap(), v.alloc_scratch(2048, 64).unwrap()];
            bufs.set(good);
            v.post_rx_raw(&[desc(0, good[0], 2048, DESC_F_WRITE, 0)], 0).unwrap();
            v.post_rx_raw(&[desc(1, good[1], 2048, DESC_F_WRITE, 0)], 1).unwrap();
            v.post_rx_raw(&[desc(2, end, 2048, DESC_F_WRITE, 0)], 2).unwrap();
            h.a.send_burst(&frames.iter().map(Vec::as_slice).collect::<Vec<_>>()).unwrap();
        },
        |v| {
            // Used elements in any order (no IN_ORDER): each buffer once.
            let mut used: Vec<(u32, u32)> = (0..3)
                .map(|_| v.pop_rx_used().unwrap().map(|u| (u.id, u.len)).expect("all three given back"))
                .collect();
            used.sort_unstable();
            let hdr = v.hdr_len();
            let filled = (hdr + frames[0].len()) as u32;
            assert_eq!(used, [(0, filled), (1, filled), (2, 0)], "good buffers filled, the bad one given back empty");
            for (k, at) in bufs.get().into_iter().enumerate() {
                let got = v.read_mem(at + hdr as u64, frames[k].len()).unwrap();
                assert_eq!(got, frames[k], "buffer {k} holds frame {k}, in order");
            }
        },
    );
}

#[test]
fn rx_buffer_smaller_than_the_header_is_refused_not_half_written() {
    let (mut d, mut h) = setup();
    let mut v = attach_with(&d, VF, Options { fill_rx: false, ..Options::default() });
    const PATTERN: u8 = 0x5a;
    for (slot, len) in [(0u16, 0u32), (1, 8), (2, 11)] {
        let what = format!("{len}-byte RX buffer");
        let at = v.alloc_scratch(64, 64).unwrap();
        v.write_mem(at, &[PATTERN; 64]).unwrap();
        v.post_rx_raw(&[desc(slot, at, len, DESC_F_WRITE, 0)], slot).unwrap();
        let s0 = drops(&d, VF, "rx_dropped_buffer_too_small");
        h.a.send(&frame(vf_mac(VF), vf_mac(2), 100, slot as u8)).unwrap();
        d.wait_for(&format!("{what}: counted"), 5, || drops(&d, VF, "rx_dropped_buffer_too_small") > s0);
        assert_eq!(drops(&d, VF, "rx_dropped_buffer_too_small"), s0 + 1, "{what}");
        let used = v.pop_rx_used().unwrap().expect("the buffer is given back");
        assert_eq!((used.id, used.len), (u32::from(slot), 0), "{what}: given back empty");
        assert!(v.read_mem(at, 64).unwrap().iter().all(|&b| b == PATTERN), "{what}: buffer modified");
    }
    // Not a fault: a proper buffer on the same queue gets the next frame.
    assert_eq!(vf_show(&d, VF)["faulted"], false);
    let slot = 3;
    let at = v.gpa_of_buffer(Queue::Rx, slot);
    v.post_rx_raw(&[desc(slot, at, v.options().rx_buf_size, DESC_F_WRITE, 0)], slot).unwrap();
    let f = frame(vf_mac(VF), vf_mac(2), 200, 9);
    h.a.send(&f).unwrap();
    assert_eq!(v.recv_timeout(T).unwrap().expect("frame into a proper buffer"), f);
    drop(v);
    survived(&mut d, &mut h, "RX buffer too small");
    recover(&mut d, &mut h, VF, "RX buffer too small");
}

#[test]
fn indirect_table_of_bad_size() {
    let (mut d, mut h) = setup();
    let opts = Options { features: DEFAULT_FEATURES | INDIRECT_DESC, ..Options::default() };
    {
        let v = attach_with(&d, VF, opts.clone());
        assert_ne!(v.features() & INDIRECT_DESC, 0, "INDIRECT_DESC negotiated");
        drop(v);
        wait_free(&d, VF);
    }
    // (table length, flags of the ring descriptor, a nested table inside)
    let cases: [(&str, u32, u16, bool); 6] = [
        ("20-byte table", 20, DESC_F_INDIRECT, false),
        ("empty table", 0, DESC_F_INDIRECT, false),
        ("1025 entries", 16 * 1025, DESC_F_INDIRECT, false),
        ("table of 2^32 - 16 bytes", u32::MAX - 15, DESC_F_INDIRECT, false),
        ("INDIRECT with NEXT", 32, DESC_F_INDIRECT | DESC_F_NEXT, false),
        ("nested indirect table", 32, DESC_F_INDIRECT, true),
    ];
    for (what, len, fl, nested) in cases {
        let attack = move |_: &Daemon, v: &mut VirtioNet, _: &mut Healthy| {
            let (buf, _) = scratch_frame(v);
            let table = v.alloc_scratch(16 * 1025, 16).unwrap();
            let mut t = proto_desc(buf, 12, DESC_F_NEXT, 1);
            t.extend(match nested {
                true => proto_desc(table, 32, DESC_F_INDIRECT, 0),
                false => proto_desc(buf + 12, 60, 0, 0),
            });
            v.write_mem(table, &t).unwrap();
            v.post_tx_raw(&[desc(8, table, len, fl, 9)], 8).unwrap();
        };
        fault_and_recover(
            &mut d,
            &mut h,
            what,
            opts.clone(),
            tx_fault("desc_length_invalid", Some(8)),
            attack,
            no_check,
        );
    }
    // Without INDIRECT_DESC negotiated any indirect descriptor is refused.
    let attack = |_: &Daemon, v: &mut VirtioNet, _: &mut Healthy| {
        let (buf, _) = scratch_frame(v);
        let table = v.alloc_scratch(32, 16).unwrap();
        let mut t = proto_desc(buf, 12, DESC_F_NEXT, 1);
        t.extend(proto_desc(buf + 12, 60, 0, 0));
        v.write_mem(table, &t).unwrap();
        v.post_tx_raw(&[desc(8, table, 32, DESC_F_INDIRECT, 0)], 8).unwrap();
    };
    fault_and_recover(
        &mut d,
        &mut h,
        "indirect not negotiated",
        Options::default(),
        tx_fault("desc_length_invalid", Some(8)),
        attack,
        no_check,
    );
}

/// The memory table was checked against the file size when it was mapped,
/// but the tenant can shrink its (unsealed) memfd afterwards: the daemon
/// must not die of SIGBUS when it then touches the vanished pages (or must
/// refuse memfds that are not sealed against shrinking).
#[test]

fn memfd_shrunk_after_the_mem_table_does_not_kill_the_daemon() {
    let (mut d, mut h) = setup();
    let r0 = err(&d, VF, "mem_table_refused");
    let mut v = match VirtioNet::connect(d.sock(VF), Options::default()) {
        Ok(v) => v,
        // Refusing memfds that are not sealed against shrinking is a fix too.
        Err(Error::Nack { code: request::SET_MEM_TABLE, .. }) => {
            assert_eq!(err(&d, VF, "mem_table_refused"), r0 + 1);
            return survived(&mut d, &mut h, "unsealed memfd refused");
        }
        Err(e) => panic!("connect: {e}"),
    };
    exchange(&d, &mut v, VF, &mut h.a, 2, 0x50, "before the shrink");
    // Keep the rings, cut off every buffer.
    let keep = v.gpa_of_buffer(Queue::Rx, 0) - v.memory().gpa_base();
    // SAFETY: ftruncate on the memfd the tenant owns; this process never
    // touches the memory past `keep` again.
    assert_eq!(unsafe { libc::ftruncate(v.memory().fd(), keep as i64) }, 0);
    let tx = v.gpa_of_buffer(Queue::Tx, 0);
    let used0 = v.tx_used_idx().unwrap();
    v.post_tx_raw(&[desc(0, tx, 72, 0, 0)], 0).unwrap();
    d.wait_for("the daemon to process the frame (or die)", 5, || {
        !std::path::Path::new(&format!("/proc/{}/fd", d.pid())).exists()
            || daemon_fds(&d).is_empty()
            || v.tx_used_idx().unwrap() != used0
    });
    if !d.alive() {
        panic!("the daemon died touching a shrunk memfd ({:?})\n{}", d.exit_status(), d.log_text());
    }
    drop(v);
    survived(&mut d, &mut h, "shrunk memfd");
    recover(&mut d, &mut h, VF, "shrunk memfd");
}

// -------------------------------------------------------------- resources

#[test]
fn disconnect_mid_stream_frees_the_vf() {
    let (mut d, mut h) = setup();
    let mut tx = attach(&d, 0);
    let mut rx = attach(&d, 1);
    exchange(&d, &mut tx, 0, &mut rx, 1, 0x60, "before the disconnects");
    let burst: Vec<Vec<u8>> = (0..64).map(|i| frame(vf_mac(1), vf_mac(0), 60 + i, i as u8)).collect();
    let refs: Vec<&[u8]> = burst.iter().map(Vec::as_slice).collect();
    // The receiver vanishes with frames in flight to it.
    tx.send_burst(&refs).unwrap();
    drop(rx);
    wait_free(&d, 1);
    let n0 = drops(&d, 1, "rx_dropped_not_ready");
    tx.send_burst(&refs).unwrap();
    d.wait_for("frames to the vanished receiver dropped", 5, || drops(&d, 1, "rx_dropped_not_ready") >= n0 + 64);
    // The sender vanishes with frames posted and not yet completed.
    tx.send_burst(&refs).unwrap();
    tx.send_burst(&refs).unwrap();
    drop(tx);
    wait_free(&d, 0);
    for vf in [0, 1] {
        let s = d.stats(vf);
        assert_eq!(s["connected"], false, "vf{vf} freed");
        assert_eq!(vf_show(&d, vf)["features"], "0x0", "vf{vf} reset");
    }
    survived(&mut d, &mut h, "disconnect mid-stream");
    // Both sockets accept again and the pair works.
    let mut tx = attach(&d, 0);
    let mut rx = attach(&d, 1);
    exchange(&d, &mut tx, 0, &mut rx, 1, 0x61, "after reconnecting both");
    assert_eq!(d.counter(0, &["connects"]), 2);
    assert_eq!(d.counter(1, &["connects"]), 2);
    drop((tx, rx));
    recover(&mut d, &mut h, 0, "disconnect mid-stream");
}

/// Disconnecting is documented to free the tenant's memory mappings; the
/// engines' reusable chains must not keep the last tenant's memory table
/// (and its memfd) alive until some other frame happens to be walked.
#[test]

fn disconnect_releases_the_tenant_memory() {
    let (d, mut h) = setup();
    let base = daemon_memfds(&d);
    assert_eq!(base, 2, "one memory table per attached healthy VF");
    let mut v = attach(&d, VF);
    exchange(&d, &mut v, VF, &mut h.a, 2, 0x70, "VF0 in use");
    assert_eq!(daemon_memfds(&d), base + 1);
    drop(v);
    wait_free(&d, VF);
    d.wait_for("VF0's memory to be released", 3, || daemon_memfds(&d) == base);
}
