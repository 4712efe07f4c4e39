//! Transmit QoS in the data path (issue 4): the max_tx_rate shaper keeps
//! its promise; guarantees and weights share a congested engine.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{frame, vf_mac, Daemon};
use vfnic_user::{Options, VirtioNet};

fn attach(d: &Daemon, vf: u16) -> VirtioNet {
    VirtioNet::connect(d.sock(vf), Options::default())
        .unwrap_or_else(|e| panic!("connect vf{vf}: {e}\n{}", d.log_text()))
}

/// Floods `dst` from `tx` until `stop`, never waiting for the receiver.
fn flood(mut tx: VirtioNet, src: u16, dst: u16, len: usize, stop: Arc<AtomicBool>) {
    let f = frame(vf_mac(dst), vf_mac(src), len, src as u8);
    let burst: Vec<&[u8]> = (0..32).map(|_| f.as_slice()).collect();
    while !stop.load(Ordering::Relaxed) {
        let _ = tx.send_burst(&burst);
    }
}

/// Drains `rx` until `stop`.
fn drain(mut rx: VirtioNet, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let _ = rx.recv_timeout(Duration::from_millis(10));
    }
}

/// Bytes per second VF `vf` sent over a `secs` window (vfnic's counters).
fn tx_rate(d: &Daemon, vf: u16, secs: f64) -> f64 {
    let b0 = d.counter(vf, &["tx_bytes"]);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let b1 = d.counter(vf, &["tx_bytes"]);
    (b1 - b0) as f64 / t0.elapsed().as_secs_f64()
}

#[test]
fn max_tx_rate_is_exact() {
    // 8 Mbit/s = 1 MB/s of 1000-byte frames: far below what the client offers.
    let d = Daemon::start("num_vfs = 2\n[[vf]]\nid = 0\nmax_tx_rate = 8\n");
    let (a, b) = (attach(&d, 0), attach(&d, 1));
    let stop = Arc::new(AtomicBool::new(false));
    let (s1, s2) = (stop.clone(), stop.clone());
    let t1 = std::thread::spawn(move || flood(a, 0, 1, 1000, s1));
    let t2 = std::thread::spawn(move || drain(b, s2));
    std::thread::sleep(Duration::from_millis(300)); // past the initial burst
    let rate = tx_rate(&d, 0, 2.0);
    stop.store(true, Ordering::Relaxed);
    t1.join().unwrap();
    t2.join().unwrap();
    let promised = 8e6 / 8.0;
    assert!((rate - promised).abs() / promised < 0.03, "max_tx_rate 8 Mbit/s: measured {:.3} Mbit/s", rate * 8.0 / 1e6);
    assert_eq!(d.counter(0, &["drops", "tx_dropped_rate_limited"]), 0, "held in the ring, not dropped");
}
