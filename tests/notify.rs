//! Notification suppression both ways (EVENT_IDX): the engine honours the
//! driver's `used_event` (no interrupt the driver did not ask for), and the
//! driver honours the engine's `avail_event` (no kicks while it polls).

mod common;

use std::os::fd::BorrowedFd;
use std::time::Duration;

use common::{attach, frame, serial, vf_mac, Daemon};
use vfnic_pf::api::Request;
use vfnic_user::{Options, VirtioNet};

fn readable(fd: i32) -> bool {
    // SAFETY: the device owns `fd` and outlives this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let mut p = [libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&fd), events: libc::POLLIN, revents: 0 }];
    // SAFETY: one valid pollfd, zero timeout.
    unsafe { libc::poll(p.as_mut_ptr(), 1, 0) == 1 }
}

/// A driver's options without EVENT_IDX: it honours the flags
/// (`NO_NOTIFY`, `NO_INTERRUPT`) instead.
fn without_event_idx() -> Options {
    Options {
        features: vfnic_user::net::DEFAULT_FEATURES & !vfnic_user::proto::features::EVENT_IDX,
        ..Options::default()
    }
}

fn sleeps(d: &Daemon) -> u64 {
    d.api(Request::Engines)["engines"][0]["sleeps"].as_u64().unwrap()
}

#[test]
fn engine_honours_used_event() {
    let _one = serial();
    let d = Daemon::start("num_vfs = 2\nengines = 1\n");
    let mut a = attach(&d, 0);
    let b = attach(&d, 1);
    // B never re-arms interrupts while it polls: used_event stays 0, so after
    // the very first completion the engine must not interrupt again.
    for i in 0..200 {
        a.send(&frame(vf_mac(1), vf_mac(0), 80, i as u8)).unwrap();
    }
    d.wait_for("200 frames delivered", 10, || d.counter(1, &["rx_packets"]) == 200);
    let irqs = d.counter(1, &["interrupts"]);
    assert!(irqs <= 1, "{irqs} interrupts for 200 frames with used_event = 0");
    let mut b = b;
    for _ in 0..200 {
        b.recv().unwrap().expect("frame");
    }
    // B re-arms: used_event = its last used index. The next frame interrupts.
    assert!(!b.rx_ring().enable_interrupts(b.memory()).unwrap(), "nothing pending");
    a.send(&frame(vf_mac(1), vf_mac(0), 80, 0xaa)).unwrap();
    d.wait_for("the interrupt", 5, || d.counter(1, &["interrupts"]) == irqs + 1);
    assert!(readable(b.call_fd(0)), "the RX call eventfd was written");
    assert_eq!(b.recv().unwrap().expect("frame")[20], 0xaa);
}

#[test]
fn driver_does_not_kick_a_polling_engine() {
    let _one = serial();
    // A long polling window keeps the engine polling between bursts.
    let d = Daemon::start("num_vfs = 2\nengines = 1\nidle_spin_us = 2000000\n");
    let mut a = attach(&d, 0);
    let mut b = attach(&d, 1);
    d.wait_for("the engine to sleep", 10, || sleeps(&d) > 0);
    let k0 = a.stats().tx_kicks;
    let dk0 = d.counter(0, &["kicks"]);
    // The engine sleeps with notifications on: the first frame must kick.
    a.send(&frame(vf_mac(1), vf_mac(0), 80, 1)).unwrap();
    b.recv_timeout(Duration::from_secs(5)).unwrap().expect("frame after a kick");
    assert_eq!(a.stats().tx_kicks, k0 + 1, "one kick wakes the sleeping engine");
    d.wait_for("the daemon to count the kick", 5, || d.counter(0, &["kicks"]) == dk0 + 1);
    // Now it polls: avail_event stays behind, so 20 more bursts need no kick.
    let k1 = a.stats().tx_kicks;
    let s0 = sleeps(&d);
    for burst in 0..20u8 {
        let frames: Vec<Vec<u8>> = (0..32).map(|i| frame(vf_mac(1), vf_mac(0), 80, burst ^ i)).collect();
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        a.send_burst(&refs).unwrap();
        for _ in 0..32 {
            b.recv_timeout(Duration::from_secs(5)).unwrap().expect("frame");
        }
    }
    assert_eq!(sleeps(&d), s0, "the engine kept polling within its 2 s window");
    assert_eq!(a.stats().tx_kicks, k1, "no kick while the engine polls (640 frames)\n{}", d.log_text());
    assert_eq!(d.counter(0, &["kicks"]), dk0 + 1);
    assert_eq!(d.counter(0, &["tx_packets"]), 641);
}

/// The engine never waits on an RX ring's doorbell (frames waiting for
/// buffers keep it polling), so every RX ring is set up asking its driver
/// not to kick it: with EVENT_IDX (a stale `avail_event`) and without
/// (`NO_NOTIFY`), a receiver refills its buffers with no kick.
#[test]
fn rx_refills_are_not_kicked() {
    let _one = serial();
    let d = Daemon::start("num_vfs = 3\nengines = 1\n");
    let plain = without_event_idx();
    let mut a = attach(&d, 0);
    let b = attach(&d, 1);
    let c = VirtioNet::connect(d.sock(2), plain).unwrap();
    for (dst, mut rx) in [(1u16, b), (2, c)] {
        let k0 = rx.stats().rx_kicks;
        for i in 0..300u32 {
            a.send(&frame(vf_mac(dst), vf_mac(0), 80, i as u8)).unwrap();
            assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap().expect("frame")[20], i as u8);
        }
        // 300 frames through a ring of 256 buffers: each refilled.
        assert_eq!(rx.stats().rx_packets, 300);
        assert_eq!(rx.stats().rx_kicks, k0, "VF{dst}: no kick for a refill");
    }
}

/// Interrupt moderation (ethtool `rx-usecs`/`rx-frames`): with a driver
/// that wants every interrupt (no EVENT_IDX, no NO_INTERRUPT), interrupts
/// come per `rx-frames` frames, and a held one fires by `rx-usecs`.
#[test]
fn interrupt_moderation_coalesces() {
    let _one = serial();
    let d = Daemon::start("num_vfs = 4\nengines = 1\n[[vf]]\nid = 3\nrx_frames = 4\nrx_usecs = 1000000\n");
    let plain = without_event_idx();
    let mut a = attach(&d, 0);
    let mut b = VirtioNet::connect(d.sock(1), plain.clone()).unwrap();
    let mut m = VirtioNet::connect(d.sock(3), plain).unwrap();
    for (dst, rx) in [(1u16, &mut b), (3, &mut m)] {
        assert!(!rx.rx_ring().enable_interrupts(rx.memory()).unwrap());
        let i0 = d.counter(dst, &["interrupts"]);
        for i in 0..8u64 {
            a.send(&frame(vf_mac(dst), vf_mac(0), 80, i as u8)).unwrap();
            d.wait_for("delivery", 5, || d.counter(dst, &["rx_packets"]) == i + 1);
        }
        let irqs = d.counter(dst, &["interrupts"]) - i0;
        if dst == 1 {
            assert_eq!(irqs, 8, "unmoderated: one interrupt per frame");
        } else {
            assert_eq!(irqs, 2, "rx-frames 4: one interrupt per 4 frames");
        }
        while rx.recv().unwrap().is_some() {}
    }
    // Two more frames stay below rx-frames: the held interrupt fires at the
    // 1 s deadline, not before.
    let i0 = d.counter(3, &["interrupts"]);
    let t = std::time::Instant::now();
    a.send(&frame(vf_mac(3), vf_mac(0), 80, 9)).unwrap();
    a.send(&frame(vf_mac(3), vf_mac(0), 80, 10)).unwrap();
    d.wait_for("delivery", 5, || d.counter(3, &["rx_packets"]) == 10);
    assert_eq!(d.counter(3, &["interrupts"]), i0, "held below rx-frames");
    d.wait_for("the held interrupt", 5, || d.counter(3, &["interrupts"]) == i0 + 1);
    assert!(t.elapsed() >= Duration::from_millis(900), "fired by the deadline, not early: {:?}", t.elapsed());
    // Changed at run time: moderation off again.
    d.api(Request::VfSet {
        vf: 3,
        change: vfnic_pf::pf::VfChange { rx_frames: Some(0), rx_usecs: Some(0), ..Default::default() },
    });
    while m.recv().unwrap().is_some() {}
    assert!(!m.rx_ring().enable_interrupts(m.memory()).unwrap());
    let i1 = d.counter(3, &["interrupts"]);
    a.send(&frame(vf_mac(3), vf_mac(0), 80, 11)).unwrap();
    d.wait_for("an immediate interrupt", 5, || d.counter(3, &["interrupts"]) == i1 + 1);
}
