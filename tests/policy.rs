//! PF policy enforced in the switch (issue 4): spoof check, port VLAN,
//! state, trusted promiscuous mirror.

mod common;

use std::time::Duration;

use common::{attach, frame, vf_mac, Daemon};
use vfnic_user::{Options, VirtioNet};

const QUIET: Duration = Duration::from_millis(300);

fn drops(d: &Daemon, vf: u16, reason: &str) -> u64 {
    d.counter(vf, &["drops", reason])
}

/// An 802.1Q-tagged frame with VLAN id `vid`.
fn tagged(dst: [u8; 6], src: [u8; 6], vid: u16, len: usize, fill: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x81, 0x00]);
    f.extend_from_slice(&vid.to_be_bytes());
    f.extend_from_slice(&[0x08, 0x00]);
    f.resize(len, fill);
    f
}

#[test]
fn spoof_check_drops_foreign_source_and_can_be_turned_off() {
    let d = Daemon::start("num_vfs = 3\n[[vf]]\nid = 2\nspoofchk = \"off\"\n");
    let (mut a, mut b, mut c) = (attach(&d, 0), attach(&d, 1), attach(&d, 2));
    let foreign = [0x02, 0xee, 0, 0, 0, 1];
    for i in 0..5 {
        a.send(&frame(vf_mac(1), foreign, 64, i)).unwrap();
    }
    d.wait_for("spoofed frames counted", 5, || drops(&d, 0, "tx_dropped_spoofed") == 5);
    assert!(b.recv_timeout(QUIET).unwrap().is_none(), "nothing gets through with a foreign source");
    assert_eq!(d.counter(0, &["tx_packets"]), 0);
    // Its own MAC passes.
    a.send(&frame(vf_mac(1), vf_mac(0), 64, 9)).unwrap();
    assert!(b.recv_timeout(Duration::from_secs(5)).unwrap().is_some());
    // With spoofchk off (VF2), a foreign source passes.
    c.send(&frame(vf_mac(1), foreign, 64, 7)).unwrap();
    assert_eq!(b.recv_timeout(Duration::from_secs(5)).unwrap().expect("spoofchk off passes")[6..12], foreign);
    assert_eq!(drops(&d, 2, "tx_dropped_spoofed"), 0);
}

#[test]
fn port_vlan_keeps_traffic_in_its_vlan_untagged() {
    // VF0, VF1 in VLAN 10; VF2 in VLAN 20; VF3 untagged and trusted.
    let d = Daemon::start(
        "num_vfs = 4\n[[vf]]\nid = 0\nvlan = 10\nqos = 3\n[[vf]]\nid = 1\nvlan = 10\n[[vf]]\nid = 2\nvlan = 20\n[[vf]]\nid = 3\ntrust = \"on\"\n",
    );
    let mut v: Vec<VirtioNet> = (0..4).map(|i| attach(&d, i)).collect();
    // Broadcast from VF0 reaches VF1 only, untagged.
    let bc = frame([0xff; 6], vf_mac(0), 100, 1);
    v[0].send(&bc).unwrap();
    assert_eq!(v[1].recv_timeout(Duration::from_secs(5)).unwrap().expect("VLAN 10 peer"), bc, "untagged, intact");
    for i in [2, 3] {
        assert!(v[i].recv_timeout(QUIET).unwrap().is_none(), "VF{i} is not in VLAN 10");
    }
    // Unicast across VLANs does not cross: VF0 -> VF2's MAC is unknown in
    // VLAN 10 (flooded to VF1 only).
    v[0].send(&frame(vf_mac(2), vf_mac(0), 80, 2)).unwrap();
    assert!(v[2].recv_timeout(QUIET).unwrap().is_none(), "no leak into VLAN 20");
    assert!(v[1].recv_timeout(Duration::from_secs(5)).unwrap().is_some(), "unknown unicast floods within VLAN 10");
    // Unicast inside the VLAN.
    let uc = frame(vf_mac(1), vf_mac(0), 90, 3);
    v[0].send(&uc).unwrap();
    assert_eq!(v[1].recv_timeout(Duration::from_secs(5)).unwrap().unwrap(), uc);
    // A VF with a port VLAN may not send tagged frames.
    v[0].send(&tagged(vf_mac(1), vf_mac(0), 20, 80, 4)).unwrap();
    d.wait_for("tagged frame from a port-VLAN VF dropped", 5, || drops(&d, 0, "tx_dropped_vlan") == 1);
    // A trusted untagged VF may tag into VLAN 10: delivered stripped.
    v[3].send(&tagged(vf_mac(1), vf_mac(3), 10, 84, 5)).unwrap();
    let got = v[1].recv_timeout(Duration::from_secs(5)).unwrap().expect("tagged into VLAN 10");
    assert_eq!(got, frame(vf_mac(1), vf_mac(3), 80, 5), "the tag was stripped");
    assert!(v[2].recv_timeout(QUIET).unwrap().is_none());
}

#[test]
fn untrusted_vf_cannot_hop_vlans() {
    let d = Daemon::start("num_vfs = 2\n[[vf]]\nid = 1\nvlan = 10\n");
    let (mut a, mut b) = (attach(&d, 0), attach(&d, 1));
    a.send(&tagged(vf_mac(1), vf_mac(0), 10, 84, 6)).unwrap();
    a.send(&tagged([0xff; 6], vf_mac(0), 10, 84, 6)).unwrap();
    d.wait_for("tagged frames from an untrusted VF dropped", 5, || drops(&d, 0, "tx_dropped_vlan") == 2);
    assert!(b.recv_timeout(QUIET).unwrap().is_none());
}

#[test]
fn trusted_promiscuous_vf_mirrors_its_vlan() {
    let d = Daemon::start("num_vfs = 4\n[[vf]]\nid = 2\ntrust = \"on\"\npromisc = \"on\"\n[[vf]]\nid = 3\n");
    let mut v: Vec<VirtioNet> = (0..4).map(|i| attach(&d, i)).collect();
    let uc = frame(vf_mac(1), vf_mac(0), 70, 8);
    v[0].send(&uc).unwrap();
    assert_eq!(v[1].recv_timeout(Duration::from_secs(5)).unwrap().unwrap(), uc);
    assert_eq!(v[2].recv_timeout(Duration::from_secs(5)).unwrap().expect("mirror copy"), uc);
    assert!(v[3].recv_timeout(QUIET).unwrap().is_none(), "an untrusted VF sees no other VF's unicast");
}

#[test]
fn state_disable_stops_both_ways() {
    let d = Daemon::start("num_vfs = 2\n[[vf]]\nid = 1\nstate = \"disable\"\n");
    let (mut a, mut b) = (attach(&d, 0), attach(&d, 1));
    a.send(&frame(vf_mac(1), vf_mac(0), 64, 1)).unwrap();
    b.send(&frame(vf_mac(0), vf_mac(1), 64, 2)).unwrap();
    d.wait_for("both directions dropped", 5, || {
        drops(&d, 1, "rx_dropped_link_down") == 1 && drops(&d, 1, "tx_dropped_link_down") == 1
    });
    assert!(a.recv_timeout(QUIET).unwrap().is_none());
    assert!(b.recv_timeout(QUIET).unwrap().is_none());
}

/// Frames sent one at a time, so that each is a burst of one and, once the
/// first has gone through, takes the engine's one-frame way (its port's
/// last decision reused, forward.rs `lone`): every change of policy between
/// two frames still decides the next one.
#[test]
fn one_frame_bursts_follow_every_policy_change() {
    use vfnic_pf::api::Request;
    use vfnic_pf::pf::VfChange;
    use vfnic_types::LinkState;
    let d = Daemon::start("num_vfs = 2\nengines = 1\n");
    let (mut a, mut b) = (attach(&d, 0), attach(&d, 1));
    let set = |vf: u16, change: VfChange| {
        d.api(Request::VfSet { vf, change });
    };
    let mut fill = 0u8;
    let mut passes = |a: &mut VirtioNet, b: &mut VirtioNet| {
        fill += 1;
        let f = frame(vf_mac(1), vf_mac(0), 64, fill);
        a.send(&f).unwrap();
        assert_eq!(b.recv_timeout(Duration::from_secs(5)).unwrap().expect("delivered"), f);
    };
    passes(&mut a, &mut b);
    passes(&mut a, &mut b);
    // A foreign source.
    a.send(&frame(vf_mac(1), [0x02, 0xee, 0, 0, 0, 1], 64, 0)).unwrap();
    d.wait_for("spoofed frame dropped", 5, || drops(&d, 0, "tx_dropped_spoofed") == 1);
    passes(&mut a, &mut b);
    // The receiver's link, then the sender's, administratively down.
    set(1, VfChange { state: Some(LinkState::Disable), ..Default::default() });
    a.send(&frame(vf_mac(1), vf_mac(0), 64, 0)).unwrap();
    d.wait_for("receiver down", 5, || drops(&d, 1, "rx_dropped_link_down") == 1);
    set(1, VfChange { state: Some(LinkState::Auto), ..Default::default() });
    passes(&mut a, &mut b);
    set(0, VfChange { state: Some(LinkState::Disable), ..Default::default() });
    a.send(&frame(vf_mac(1), vf_mac(0), 64, 0)).unwrap();
    d.wait_for("sender down", 5, || drops(&d, 0, "tx_dropped_link_down") == 1);
    set(0, VfChange { state: Some(LinkState::Auto), ..Default::default() });
    passes(&mut a, &mut b);
    // The receiver moved into a VLAN: the sender's untagged frame to it
    // has no receiver left in the sender's (no) VLAN.
    set(1, VfChange { vlan: Some(10), ..Default::default() });
    a.send(&frame(vf_mac(1), vf_mac(0), 64, 0)).unwrap();
    assert!(b.recv_timeout(QUIET).unwrap().is_none(), "no frame across VLANs");
    set(1, VfChange { vlan: Some(0), ..Default::default() });
    passes(&mut a, &mut b);
    // A tagged frame from an untrusted VF, and one past the MTU.
    a.send(&tagged(vf_mac(1), vf_mac(0), 10, 84, 0)).unwrap();
    a.send(&frame(vf_mac(1), vf_mac(0), 1600, 0)).unwrap();
    d.wait_for("tagged and oversize frames dropped", 5, || {
        drops(&d, 0, "tx_dropped_vlan") == 1 && drops(&d, 0, "tx_dropped_oversize") == 1
    });
    assert!(b.recv_timeout(QUIET).unwrap().is_none());
    passes(&mut a, &mut b);
    assert_eq!(d.counter(1, &["rx_packets"]), 7);
}

/// Frames sent eight at a time (one kick, so mostly one burst), which once
/// the port's first burst has gone through take the engine's way for a
/// burst whose frames all match its port's last decision (forward.rs
/// `plain`): one frame in a burst that does not (spoofed, tagged, too
/// long, to another VF) sends the whole burst the general way, and each
/// frame gets its own decision, in order.
#[test]
fn bursts_with_one_odd_frame_decide_each_frame() {
    use vfnic_pf::api::Request;
    use vfnic_pf::pf::VfChange;
    use vfnic_types::LinkState;
    let d = Daemon::start("num_vfs = 3\nengines = 1\n");
    let (mut a, mut b, mut c) = (attach(&d, 0), attach(&d, 1), attach(&d, 2));
    let mut fill = 0u8;
    // A burst of eight to VF1, with `odd` (if any) in place of the sixth.
    let mut burst = |odd: Option<Vec<u8>>| -> Vec<Vec<u8>> {
        let mut frames: Vec<Vec<u8>> = (0..8)
            .map(|_| {
                fill = fill.wrapping_add(1);
                frame(vf_mac(1), vf_mac(0), 64 + fill as usize % 64, fill)
            })
            .collect();
        if let Some(o) = odd {
            frames[5] = o;
        }
        frames
    };
    let send = |a: &mut VirtioNet, frames: &[Vec<u8>]| {
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        a.send_burst(&refs).unwrap();
    };
    let expect = |b: &mut VirtioNet, frames: &[Vec<u8>]| {
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(&b.recv_timeout(Duration::from_secs(5)).unwrap().expect("delivered"), f, "frame {i}");
        }
        assert!(b.recv_timeout(QUIET).unwrap().is_none(), "nothing more");
    };
    for _ in 0..3 {
        let fs = burst(None);
        send(&mut a, &fs);
        expect(&mut b, &fs);
    }
    let cases: [(Vec<u8>, &str); 3] = [
        (frame(vf_mac(1), [0x02, 0xee, 0, 0, 0, 1], 64, 0), "tx_dropped_spoofed"),
        (tagged(vf_mac(1), vf_mac(0), 10, 84, 0), "tx_dropped_vlan"),
        (frame(vf_mac(1), vf_mac(0), 1600, 0), "tx_dropped_oversize"),
    ];
    for (odd, reason) in cases {
        let mut fs = burst(Some(odd));
        send(&mut a, &fs);
        d.wait_for(reason, 5, || drops(&d, 0, reason) == 1);
        fs.remove(5);
        expect(&mut b, &fs);
        let fs = burst(None);
        send(&mut a, &fs);
        expect(&mut b, &fs);
    }
    // One frame of the burst to VF2: each receiver gets its own, in order.
    let to_c = frame(vf_mac(2), vf_mac(0), 70, 0xcc);
    let mut fs = burst(Some(to_c.clone()));
    send(&mut a, &fs);
    assert_eq!(c.recv_timeout(Duration::from_secs(5)).unwrap().expect("to VF2"), to_c);
    fs.remove(5);
    expect(&mut b, &fs);
    // The receiver's link down: the next burst is not delivered.
    d.api(Request::VfSet { vf: 1, change: VfChange { state: Some(LinkState::Disable), ..Default::default() } });
    send(&mut a, &burst(None));
    d.wait_for("receiver down", 5, || drops(&d, 1, "rx_dropped_link_down") == 8);
    d.api(Request::VfSet { vf: 1, change: VfChange { state: Some(LinkState::Auto), ..Default::default() } });
    let fs = burst(None);
    send(&mut a, &fs);
    expect(&mut b, &fs);
    assert_eq!(d.counter(1, &["rx_packets"]), 3 * 8 + 3 * (7 + 8) + 7 + 8);
    // The sender sent the burst the receiver dropped.
    assert_eq!(d.counter(0, &["tx_packets"]), 3 * 8 + 3 * (7 + 8) + 8 + 8 + 8);
}

/// The VF-to-PF mailbox through the daemon's engines: an untrusted VF asking
/// for promiscuous mode is refused (VIRTIO_NET_ERR, counted); a trusted one
/// is granted and then receives other VFs' unicast.
#[test]
fn mailbox_promisc_by_policy() {
    use vfnic_op::mailbox::{class, VIRTIO_NET_ERR, VIRTIO_NET_OK};
    let d = Daemon::start("num_vfs = 4\n[[vf]]\nid = 3\ntrust = \"on\"\n");
    let with_ctrl = || Options { ctrl_queue: Some(2), ..Options::default() };
    let mut a = attach(&d, 0);
    let mut b = attach(&d, 1);
    let mut u = VirtioNet::connect(d.sock(2), with_ctrl()).unwrap();
    let mut t = VirtioNet::connect(d.sock(3), with_ctrl()).unwrap();
    let refused0 = d.counter(2, &["errors", "mailbox_refused"]);
    assert_eq!(u.ctrl_command(class::RX, 0, &[1]).unwrap(), VIRTIO_NET_ERR, "untrusted: promisc refused");
    assert_eq!(d.counter(2, &["errors", "mailbox_refused"]), refused0 + 1);
    assert_eq!(t.ctrl_command(class::RX, 0, &[1]).unwrap(), VIRTIO_NET_OK, "trusted: promisc granted");
    let uc = frame(vf_mac(1), vf_mac(0), 70, 8);
    a.send(&uc).unwrap();
    assert_eq!(b.recv_timeout(Duration::from_secs(5)).unwrap().unwrap(), uc);
    assert_eq!(t.recv_timeout(Duration::from_secs(5)).unwrap().expect("mirror after the grant"), uc);
    assert!(u.recv_timeout(QUIET).unwrap().is_none());
}
