//! DMA engines: queue pairs move to the least busy engine under shifting
//! load without losing or reordering frames; idle engines sleep.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{attach, frame, vf_mac, Daemon};
use serde_json::Value;
use vfnic_pf::api::Request;
use vfnic_user::VirtioNet;

fn engines_of(d: &Daemon, vf: u16) -> Vec<u64> {
    let v = d.api(Request::VfShow { vf });
    v["engines"].as_array().unwrap().iter().map(|e| e.as_u64().unwrap()).collect()
}

/// Sends sequence-numbered frames `from -> to` in windows of 32 until `stop`,
/// checking every frame arrives, intact and in order. Returns frames moved.
fn flow(mut tx: VirtioNet, txv: u16, mut rx: VirtioNet, rxv: u16, stop: Arc<AtomicBool>) -> u64 {
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let window: Vec<Vec<u8>> = (0..32)
            .map(|i| {
                let mut f = frame(vf_mac(rxv), vf_mac(txv), 128, 0);
                f[14..22].copy_from_slice(&(seq + i).to_le_bytes());
                f
            })
            .collect();
        let refs: Vec<&[u8]> = window.iter().map(Vec::as_slice).collect();
        tx.send_burst(&refs).expect("send");
        for expect in &window {
            let got = rx.recv_timeout(Duration::from_secs(5)).expect("recv").unwrap_or_else(|| {
                panic!("frame {} lost on vf{txv} -> vf{rxv}", u64::from_le_bytes(expect[14..22].try_into().unwrap()))
            });
            assert_eq!(&got, expect, "frame out of order or damaged on vf{txv} -> vf{rxv}");
        }
        seq += 32;
    }
    seq
}

#[test]
fn queue_pairs_move_to_the_idle_engine_without_loss_or_reordering() {
    let d = Daemon::start("num_vfs = 4\nengines = 2\nrebalance_interval_ms = 300\nrebalance_threshold_pct = 1\n");
    // Least-busy placement on an idle pool alternates: VF0, VF2 on engine 0.
    assert_eq!(engines_of(&d, 0), vec![0]);
    assert_eq!(engines_of(&d, 1), vec![1]);
    assert_eq!(engines_of(&d, 2), vec![0]);
    // Both busy senders start on engine 0; engine 1 has only idle queues.
    let stop = Arc::new(AtomicBool::new(false));
    let (a, b, c, e) = (attach(&d, 0), attach(&d, 1), attach(&d, 2), attach(&d, 3));
    let s1 = stop.clone();
    let f1 = std::thread::spawn(move || flow(a, 0, b, 1, s1));
    let s2 = stop.clone();
    let f2 = std::thread::spawn(move || flow(c, 2, e, 3, s2));
    let t0 = Instant::now();
    let mut moved_at = None;
    while t0.elapsed() < Duration::from_secs(30) {
        let pool: Value = d.api(Request::Engines);
        if moved_at.is_none() && pool["moves"].as_u64().unwrap() >= 1 {
            moved_at = Some(Instant::now());
        }
        // Keep the flows going a while after the move.
        if moved_at.is_some_and(|t| t.elapsed() > Duration::from_millis(700)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let (n1, n2) = (f1.join().expect("flow 0->1"), f2.join().expect("flow 2->3"));
    assert!(moved_at.is_some(), "no queue pair moved in 30 s: {}\n{}", d.api(Request::Engines), d.log_text());
    let (e0, e2) = (engines_of(&d, 0), engines_of(&d, 2));
    assert_ne!(e0, e2, "the two busy senders now sit on different engines");
    for (vf, sent) in [(0u16, n1), (2, n2)] {
        assert_eq!(d.counter(vf, &["tx_packets"]), sent);
        assert_eq!(d.counter(vf + 1, &["rx_packets"]), sent);
        assert_eq!(d.counter(vf, &["tx_dropped"]) + d.counter(vf + 1, &["rx_dropped"]), 0);
    }
}

#[test]
fn idle_engines_sleep() {
    let d = Daemon::start("num_vfs = 2\nengines = 2\n");
    let mut a = attach(&d, 0);
    let mut b = attach(&d, 1);
    a.send(&frame(vf_mac(1), vf_mac(0), 64, 1)).unwrap();
    b.recv_timeout(Duration::from_secs(5)).unwrap().expect("frame");
    let sample = || -> Vec<(u64, u64)> {
        let pool = d.api(Request::Engines);
        pool["engines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["sleep_cycles"].as_u64().unwrap(),
                    e["idle_cycles"].as_u64().unwrap() + e["busy_cycles"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    // The frame's burst was counted, inside its busy round (the engine
    // counts once the poll is done: the frame may arrive first).
    let counted = || {
        let pool = d.api(Request::Engines);
        let cycles = |k: &str| pool["engines"].as_array().unwrap().iter().map(|e| e[k].as_u64().unwrap()).sum::<u64>();
        (cycles("burst_cycles"), cycles("busy_cycles"))
    };
    d.wait_for("the burst counted inside its busy round", 5, || {
        let (burst, busy) = counted();
        burst > 0 && burst <= busy
    });
    let before = sample();
    std::thread::sleep(Duration::from_secs(2));
    let after = sample();
    for (i, ((s0, a0), (s1, a1))) in before.iter().zip(&after).enumerate() {
        let (slept, awake) = (s1 - s0, a1 - a0);
        assert!(slept > 50 * awake, "engine {i} should sleep when idle: asleep {slept} cycles, awake {awake}");
    }
    // And wakes on the next doorbell.
    a.send(&frame(vf_mac(1), vf_mac(0), 64, 2)).unwrap();
    b.recv_timeout(Duration::from_secs(5)).unwrap().expect("frame after sleeping");
}

#[test]
fn administrator_moves_a_queue_pair() {
    let d = Daemon::start("num_vfs = 2\nengines = 2\nrebalance_interval_ms = 0\n");
    assert_eq!(engines_of(&d, 0), vec![0]);
    let mut a = attach(&d, 0);
    let mut b = attach(&d, 1);
    d.api(Request::EngineMove { vf: 0, qp: 0, engine: 1 });
    assert_eq!(engines_of(&d, 0), vec![1]);
    a.send(&frame(vf_mac(1), vf_mac(0), 64, 3)).unwrap();
    b.recv_timeout(Duration::from_secs(5)).unwrap().expect("frame after the move");
    let err = vfnic_pf::api::call(&d.api_path(), &Request::EngineMove { vf: 0, qp: 0, engine: 7 }).unwrap_err();
    assert!(err.to_string().contains("engine 7 does not exist"), "{err}");
}
