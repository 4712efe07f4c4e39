//! VF-to-VF forwarding through a real daemon, with the project's own
//! virtio-user front end as tenants.

mod common;

use std::time::Duration;

use common::{attach, frame, vf_mac, Daemon};
use vfnic_user::VirtioNet;

#[test]
fn unicast_between_two_vfs_with_counters() {
    let d = Daemon::start("num_vfs = 4\nengines = 1\n");
    let mut a = attach(&d, 0);
    let mut b = attach(&d, 1);
    assert_eq!(a.mac(), Some(vf_mac(0)), "GET_CONFIG gives the VF's MAC");
    for i in 0..100u8 {
        a.send(&frame(vf_mac(1), vf_mac(0), 60 + i as usize, i)).unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 100 {
        match b.recv_timeout(Duration::from_secs(5)).unwrap() {
            Some(f) => got.push(f),
            None => panic!("only {} frames arrived\n{}", got.len(), d.log_text()),
        }
    }
    for (i, f) in got.iter().enumerate() {
        assert_eq!(f, &frame(vf_mac(1), vf_mac(0), 60 + i, i as u8), "frame {i} intact and in order");
    }
    assert_eq!(d.counter(0, &["tx_packets"]), 100);
    assert_eq!(d.counter(1, &["rx_packets"]), 100);
    let bytes: u64 = (0..100).map(|i| 60 + i).sum();
    assert_eq!(d.counter(1, &["rx_bytes"]), bytes);
    assert_eq!(d.counter(0, &["tx_dropped"]), 0);
    // Nothing leaked to the third VF's counters.
    assert_eq!(d.counter(2, &["rx_packets"]), 0);
}

#[test]
fn broadcast_floods_all_but_sender_and_large_frames_pass() {
    // VF2 fronts other addresses (a bridge behind it): no spoof check.
    let d = Daemon::start("num_vfs = 3\nengines = 2\n[[vf]]\nid = 2\nspoofchk = \"off\"\n");
    let mut v: Vec<VirtioNet> = (0..3).map(|i| attach(&d, i)).collect();
    v[0].send(&frame([0xff; 6], vf_mac(0), 1514, 7)).unwrap();
    for i in [1, 2] {
        let f = v[i].recv_timeout(Duration::from_secs(5)).unwrap().expect("broadcast arrives");
        assert_eq!(f.len(), 1514);
    }
    assert!(v[0].recv_timeout(Duration::from_millis(200)).unwrap().is_none(), "never back to the sender");
    // A learned address: VF2 sends from a foreign MAC, VF0 replies to it.
    let foreign = [0x02, 0xaa, 0, 0, 0, 1];
    v[2].send(&frame(vf_mac(0), foreign, 64, 1)).unwrap();
    v[0].recv_timeout(Duration::from_secs(5)).unwrap().expect("unicast to vf0");
    v[0].send(&frame(foreign, vf_mac(0), 64, 2)).unwrap();
    assert!(v[2].recv_timeout(Duration::from_secs(5)).unwrap().is_some(), "learned MAC reached");
    assert!(v[1].recv_timeout(Duration::from_millis(200)).unwrap().is_none(), "not flooded once learned");
}

#[test]
fn reconnect_after_disconnect() {
    let d = Daemon::start("num_vfs = 2\n");
    let mut b = attach(&d, 1);
    for round in 0..3 {
        let mut a = attach(&d, 0);
        a.send(&frame(vf_mac(1), vf_mac(0), 100, round)).unwrap();
        let f = b.recv_timeout(Duration::from_secs(5)).unwrap().expect("frame after reconnect");
        assert_eq!(f[20], round);
        drop(a);
        d.wait_for("vf0 to disconnect", 5, || d.stats(0)["connected"] == false);
    }
    assert_eq!(d.counter(0, &["connects"]), 3);
}

#[test]
fn burst_larger_than_the_receivers_ring_waits_in_the_senders_ring_in_order() {
    // VF1 posts 8 RX buffers; VF0 sends 64 frames in one burst, all to VF1.
    // The engine sends what VF1 has room for and leaves the rest in VF0's
    // ring (held, counted): as VF1 takes frames and reposts buffers, they
    // follow, in order. A receiver that takes nothing for 2 ms gets the
    // rest dropped instead (counted), so what arrives plus what was dropped
    // is the whole burst, and what arrives is in order.
    let d = Daemon::start("num_vfs = 2\nengines = 1\n");
    let mut a = attach(&d, 0);
    let mut b = common::attach_with(&d, 1, vfnic_user::Options { queue_size: 8, ..Default::default() });
    let frames: Vec<Vec<u8>> = (0..64u8).map(|i| frame(vf_mac(1), vf_mac(0), 60, i)).collect();
    a.send_burst(&frames.iter().map(Vec::as_slice).collect::<Vec<_>>()).unwrap();
    let mut got = Vec::new();
    while let Some(f) = b.recv_timeout(Duration::from_secs(2)).unwrap() {
        got.push(f);
        if got.len() == frames.len() {
            break;
        }
    }
    let dropped = d.counter(1, &["drops", "rx_dropped_no_buffer"]);
    assert_eq!(got.len() as u64 + dropped, 64, "every frame arrived or was counted as dropped\n{}", d.log_text());
    let mut at = 0;
    for f in &got {
        let i = frames[at..].iter().position(|g| g == f).expect("frames arrive in order, intact");
        at += i + 1;
    }
    assert!(got.len() >= 8, "at least a ring's worth arrived");
    assert!(d.counter(0, &["held", "tx_held_no_buffer"]) >= 56, "the burst waited for VF1's buffers");
    assert_eq!(d.counter(0, &["tx_packets"]), got.len() as u64 + dropped);
}
