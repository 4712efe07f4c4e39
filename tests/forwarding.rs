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

/// A burst the engine's fast path takes (plain frames from one VF to one
/// VF, forward.rs `plain`), into a receiver whose buffers do not each hold
/// a frame: the frames that fit go in one run up to the first that does
/// not (deliver.rs `deliver_plain`); from it on each frame is merged over
/// buffers (MRG_RXBUF) or, without it, dropped as too big for its buffer.
/// Everything delivered arrives whole and in order, and is counted.
#[test]
fn fast_bursts_into_small_buffers_merge_or_drop_in_order() {
    use vfnic_user::net::DEFAULT_FEATURES;
    use vfnic_user::Options;
    let d = Daemon::start("num_vfs = 3\nengines = 1\n");
    let mut a = attach(&d, 0);
    // Room for a 12-byte header and 80 bytes of frame per buffer.
    let small = |features| Options { rx_buf_size: 12 + 80, features, ..Options::default() };
    let mrg = vfnic_user::proto::features::MRG_RXBUF;
    let receivers = [(1u16, small(DEFAULT_FEATURES)), (2, small(DEFAULT_FEATURES & !mrg))];
    for (vf, opts) in receivers {
        let merges = opts.features & mrg != 0;
        let mut b = common::attach_with(&d, vf, opts);
        let mut fill = 0u8;
        let (mut expected, mut too_big) = (0u64, 0u64);
        // Bursts that fit first (they set up the fast path's decision), then
        // ones with a frame too big for one buffer at the start, middle or end.
        let bursts: [&[usize]; 5] =
            [&[64; 8], &[64; 8], &[64, 70, 100, 64, 120, 66, 64, 90], &[81, 64, 64, 64], &[64, 64, 64, 200]];
        for sizes in bursts {
            let frames: Vec<Vec<u8>> = sizes
                .iter()
                .map(|&len| {
                    fill = fill.wrapping_add(1);
                    frame(vf_mac(vf), vf_mac(0), len, fill)
                })
                .collect();
            a.send_burst(&frames.iter().map(Vec::as_slice).collect::<Vec<_>>()).unwrap();
            for f in &frames {
                let got = b.recv_timeout(Duration::from_secs(5));
                if !merges && f.len() > 80 {
                    // Its buffer comes back empty: the driver counts an error.
                    assert!(got.is_err(), "vf{vf}: a {}-byte frame's buffer returned empty: {got:?}", f.len());
                    too_big += 1;
                    continue;
                }
                assert_eq!(
                    got.unwrap().as_ref(),
                    Some(f),
                    "vf{vf}: a {}-byte frame, in order\n{}",
                    f.len(),
                    d.log_text()
                );
                expected += 1;
            }
            assert!(b.recv_timeout(Duration::from_millis(200)).unwrap().is_none(), "vf{vf}: nothing more");
        }
        assert_eq!(d.counter(vf, &["rx_packets"]), expected);
        assert_eq!(b.stats().used_errors, too_big, "vf{vf}");
        assert_eq!(d.counter(vf, &["drops", "rx_dropped_buffer_too_small"]), too_big, "vf{vf}");
    }
}
