//! The physical function's control plane through a real daemon: ip-link
//! style VF settings (all or nothing, clear errors), QEMU/DPDK arguments,
//! VFs added and removed at run time and function-level reset while other
//! VFs forward, config-change notifications to the front end, and (with
//! the adapter in process) the VF-to-PF mailbox on the control queue.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{attach, frame, vf_mac, Daemon};
use serde_json::Value;
use vfnic_pf::api::Request;
use vfnic_pf::pf::VfChange;
use vfnic_user::proto::{backend_request, flags, protocol_features};
use vfnic_user::{Options, VirtioNet};

const T: Duration = Duration::from_secs(5);

/// Runs the CLI against the daemon: (success, stdout, stderr).
fn cli(d: &Daemon, args: &str) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vfnic"))
        .arg("--socket")
        .arg(d.api_path())
        .args(args.split_whitespace())
        .output()
        .expect("run vfnic");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn show(d: &Daemon, vf: u16) -> Value {
    d.api(Request::VfShow { vf })
}

#[test]
fn every_bad_value_gets_a_clear_error_and_changes_nothing() {
    let d = Daemon::start("num_vfs = 2\n");
    let before = show(&d, 1);
    let cases = [
        ("vf set 1 max_tx_rate fast", "max_tx_rate must be a rate in Mbit/s"),
        ("vf set 1 speed 10G", "speed must be a link speed in Mbit/s"),
        ("vf set 1 vlan 5000", "vlan 5000 is out of range"),
        ("vf set 1 vlan 70000", "vlan must be a VLAN id"),
        ("vf set 9 trust on", "VF 9 does not exist"),
        ("vf set 1 promisc on", "promisc on needs a trusted VF"),
        ("vf set 1 mac 02:76:66:6e:00:00", "already VF 0's"),
        ("vf set 1 mac ff:ff:ff:ff:ff:ff", "not a unicast"),
        ("vf set 1 colour red", "unknown VF setting `colour`"),
        ("vf set 1 qos 3", "qos 3 needs a vlan"),
        ("vf set 1 vlan 10 qos 8", "qos 8 is out of range"),
        ("vf set 1 max_tx_rate 100 min_tx_rate 200", "min_tx_rate 200 is above max_tx_rate 100"),
        ("vf set 1 weight 0", "weight 0 is out of range"),
        ("vf set 1 weight 1001", "weight 1001 is out of range"),
        ("vf set 1 spoofchk maybe", "spoofchk must be `on` or `off`"),
        ("vf set 1 state sideways", "state must be auto, enable or disable"),
        ("vf set 1 vlan 10 vlan 11", "given twice"),
        ("vf set 1 rx-usecs 5000000", "rx_usecs 5000000 is above"),
        // All or nothing: good settings before the bad one are not applied.
        ("vf set 1 vlan 10 max_tx_rate 1000 trust off promisc on", "promisc on needs a trusted VF"),
        ("vf set 1 max_tx_rate 1000 spoofchk off weight 0", "weight 0"),
    ];
    for (args, want) in cases {
        let (ok, _, err) = cli(&d, args);
        assert!(!ok, "`{args}` succeeded");
        assert!(err.contains(want), "`{args}`: error {err:?} does not say {want:?}");
        assert!(err.starts_with("vfnic: "), "one line, prefixed: {err:?}");
        assert_eq!(show(&d, 1), before, "`{args}` changed something");
    }
    // Through the API too (no CLI in front): the daemon checks every value.
    let e = vfnic_pf::api::call(
        &d.api_path(),
        &Request::VfSet { vf: 1, change: VfChange { vlan: Some(4095), weight: Some(3), ..VfChange::default() } },
    )
    .unwrap_err();
    assert!(e.to_string().contains("vlan 4095 is out of range"), "{e}");
    assert_eq!(show(&d, 1), before);
    let (ok, _, err) = cli(&d, "vf reset 7");
    assert!(!ok && err.contains("VF 7 does not exist"), "{err}");
    let (ok, _, err) = cli(&d, "pf set-vfs 0");
    assert!(!ok && err.contains("out of range (1 to 256)"), "{err}");
    let (ok, _, err) = cli(&d, "pf set-vfs 300");
    assert!(!ok && err.contains("out of range"), "{err}");
}

#[test]
fn several_settings_at_once_in_ip_link_order() {
    let d = Daemon::start("num_vfs = 2\n");
    let (ok, out, err) = cli(
        &d,
        "vf set 1 max_tx_rate 1000 spoofchk off vlan 10 qos 3 trust on promisc on state enable min_tx_rate 100 \
         weight 20 rx-usecs 50 speed 10000",
    );
    assert!(ok, "{err}");
    assert!(out.contains("max_tx_rate    1000 Mbit/s") && out.contains("spoofchk       off"), "{out}");
    let v = show(&d, 1);
    assert_eq!(v["max_tx_rate"], 1000);
    assert_eq!(v["min_tx_rate"], 100);
    assert_eq!(v["weight"], 20);
    assert_eq!(v["speed"], 10000);
    assert!(out.contains("speed          10000 Mbit/s"), "{out}");
    assert_eq!((v["vlan"].clone(), v["qos"].clone()), (Value::from(10), Value::from(3)));
    assert_eq!(
        (v["spoofchk"].clone(), v["trust"].clone(), v["promisc"].clone()),
        (false.into(), true.into(), true.into())
    );
    assert_eq!(v["state"], "enable");
    assert_eq!(v["rx_usecs"], 50);
    // Trust off takes promiscuous mode with it; vlan 0 clears the priority.
    let (ok, _, err) = cli(&d, "vf set 1 trust off vlan 0 link down");
    assert!(ok, "{err}");
    let v = show(&d, 1);
    assert_eq!((v["trust"].clone(), v["promisc"].clone()), (false.into(), false.into()));
    assert_eq!((v["vlan"].clone(), v["qos"].clone()), (Value::from(0), Value::from(0)));
    assert_eq!(v["state"], "disable");
    // JSON output names the settings with ip-link's words.
    let (ok, out, _) = cli(&d, "--json vf show 1");
    assert!(ok);
    let j: Value = serde_json::from_str(&out).unwrap();
    for key in ["mac", "vlan", "qos", "spoofchk", "trust", "promisc", "state", "max_tx_rate", "min_tx_rate", "weight"] {
        assert!(j.get(key).is_some(), "{key} missing from {out}");
    }
    // VF 0 was not touched.
    assert_eq!(show(&d, 0)["max_tx_rate"], 0);
}

#[test]
fn qemu_and_dpdk_arguments() {
    let d = Daemon::start("num_vfs = 2\n[[vf]]\nid = 1\nmac = \"02:00:00:00:01:01\"\n");
    let sock = std::path::absolute(d.sock(1)).unwrap();
    let q = d.api(Request::VfQemuArgs { vf: 1 });
    let args = q["args"].as_str().unwrap();
    assert!(args.contains("-object memory-backend-memfd,id=vfnicmem,size=1G,share=on"), "{args}");
    assert!(args.contains(&format!("-chardev socket,id=vfnic1,path={}", sock.display())), "{args}");
    assert!(args.contains("-netdev vhost-user,id=vfnic1net,chardev=vfnic1"), "{args}");
    assert!(args.contains("-device virtio-net-pci,netdev=vfnic1net,mac=02:00:00:00:01:01,vectors=0"), "{args}");
    let (ok, out, _) = cli(&d, "vf qemu-args 1");
    assert!(ok);
    assert!(out.lines().any(|l| l.starts_with('#') && l.contains("vectors=0") && l.contains("QEMU 7.2")), "{out}");
    assert!(out.contains("mac=02:00:00:00:01:01,vectors=0"), "{out}");
    let p = d.api(Request::VfDpdkArgs { vf: 1 });
    assert_eq!(p["args"], format!("--vdev net_virtio_user1,path={},mac=02:00:00:00:01:01,queues=1", sock.display()));
    let (ok, out, _) = cli(&d, "vf dpdk-args 1");
    assert!(ok && out.trim() == p["args"].as_str().unwrap(), "{out}");
    // A MAC set at run time is what the arguments carry.
    cli(&d, "vf set 1 mac 02:00:00:00:01:99");
    assert!(d.api(Request::VfDpdkArgs { vf: 1 })["vdev"].as_str().unwrap().contains("mac=02:00:00:00:01:99"));
    let (ok, out, _) = cli(&d, "pf show");
    assert!(ok && out.contains("num_vfs      2"), "{out}");
}

/// Sends `n` sequence-numbered frames VF a -> VF b in bursts, receiving each
/// burst before the next: any loss or reordering fails.
fn stream(a: &mut VirtioNet, b: &mut VirtioNet, from: u16, to: u16, seq: &mut u32, n: u32) {
    for _ in 0..n / 16 {
        let frames: Vec<Vec<u8>> = (0..16)
            .map(|k| {
                let mut f = frame(vf_mac(to), vf_mac(from), 64, 0);
                f[14..18].copy_from_slice(&(*seq + k).to_be_bytes());
                f
            })
            .collect();
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        a.send_burst(&refs).unwrap();
        for _ in 0..16 {
            let f = b.recv_timeout(T).unwrap().unwrap_or_else(|| panic!("frame {seq} lost"));
            assert_eq!(u32::from_be_bytes(f[14..18].try_into().unwrap()), *seq, "in order, none lost");
            *seq += 1;
        }
    }
}

#[test]
fn set_vfs_up_and_down_while_others_forward_without_loss() {
    let d = Daemon::start("num_vfs = 2\nengines = 2\n");
    let mut a = attach(&d, 0);
    let mut b = attach(&d, 1);
    let mut seq = 0;
    let api = d.api_path();
    let (s2, s3) = (d.sock(2), d.sock(3));
    let churn = std::thread::spawn(move || {
        for _ in 0..4 {
            let r = vfnic_pf::api::call(&api, &Request::PfSetVfs { num_vfs: 4 }).unwrap();
            assert_eq!(r["num_vfs"], 4);
            let mut t2 = VirtioNet::connect(&s2, Options::default()).expect("VF2 added");
            let _t3 = VirtioNet::connect(&s3, Options::default()).expect("VF3 added");
            // VF2's tenant is cut off cleanly when VF2 goes away.
            let r = vfnic_pf::api::call(&api, &Request::PfSetVfs { num_vfs: 2 }).unwrap();
            assert_eq!(r["num_vfs"], 2);
            assert!(t2.conn().wait_closed(T).unwrap(), "removed VF's tenant disconnected");
            assert!(!s2.exists() && !s3.exists(), "sockets removed");
        }
    });
    while !churn.is_finished() {
        stream(&mut a, &mut b, 0, 1, &mut seq, 64);
    }
    churn.join().unwrap();
    stream(&mut a, &mut b, 0, 1, &mut seq, 64);
    assert_eq!(d.counter(1, &["rx_packets"]), u64::from(seq));
    assert_eq!(d.counter(0, &["tx_dropped"]) + d.counter(1, &["rx_dropped"]), 0, "no loss on the others");
    assert_eq!(d.api(Request::VfList).as_array().unwrap().len(), 2);
    // Added VFs come with their default settings and forward.
    d.api(Request::PfSetVfs { num_vfs: 3 });
    let v = show(&d, 2);
    assert_eq!(
        (v["mac"].clone(), v["weight"].clone(), v["spoofchk"].clone()),
        ("02:76:66:6e:00:02".into(), 1.into(), true.into())
    );
    let mut c = attach(&d, 2);
    c.send(&frame(vf_mac(0), vf_mac(2), 60, 9)).unwrap();
    assert!(a.recv_timeout(T).unwrap().is_some(), "new VF forwards");
}

#[test]
fn vf_reset_returns_configured_settings_and_drops_queues_while_others_forward() {
    let d = Daemon::start("num_vfs = 3\nengines = 2\n[[vf]]\nid = 2\ntrust = \"on\"\nweight = 5\nmax_tx_rate = 5000\n");
    let mut a = attach(&d, 0);
    let mut b = attach(&d, 1);
    let mut t = attach(&d, 2);
    let (ok, _, err) = cli(&d, "vf set 2 trust off weight 9 max_tx_rate 0 mac 02:00:00:00:02:99 vlan 7");
    assert!(ok, "{err}");
    let mut seq = 0;
    stream(&mut a, &mut b, 0, 1, &mut seq, 64);
    let api = d.api_path();
    let reset = std::thread::spawn(move || vfnic_pf::api::call(&api, &Request::VfReset { vf: 2 }).unwrap());
    while !reset.is_finished() {
        stream(&mut a, &mut b, 0, 1, &mut seq, 32);
    }
    let v = reset.join().unwrap();
    stream(&mut a, &mut b, 0, 1, &mut seq, 64);
    assert_eq!(d.counter(0, &["tx_dropped"]) + d.counter(1, &["rx_dropped"]), 0, "no loss on the others");
    // Back to the configuration file's settings, not the run-time ones.
    assert_eq!(v["mac"], "02:76:66:6e:00:02");
    assert_eq!(
        (v["trust"].clone(), v["weight"].clone(), v["max_tx_rate"].clone()),
        (true.into(), 5.into(), 5000.into())
    );
    assert_eq!(v["vlan"], 0);
    // Its queues were dropped: the tenant was disconnected, and may attach again.
    assert!(t.conn().wait_closed(T).unwrap(), "tenant disconnected by the reset");
    d.wait_for("vf2 to disconnect", 5, || d.stats(2)["connected"] == false);
    drop(t);
    let mut t = attach(&d, 2);
    assert_eq!(t.mac(), Some(vf_mac(2)));
    t.send(&frame(vf_mac(0), vf_mac(2), 60, 1)).unwrap();
    assert!(a.recv_timeout(T).unwrap().is_some(), "re-attached tenant forwards");
    assert_eq!(d.counter(2, &["connects"]), 2);
}

#[test]
fn config_change_sent_to_the_front_end_on_state_and_mac_changes() {
    let d = Daemon::start("num_vfs = 2\n");
    for reply_ack in [true, false] {
        let mut proto = vfnic_user::net::DEFAULT_PROTOCOL_FEATURES | protocol_features::BACKEND_REQ;
        if !reply_ack {
            proto &= !protocol_features::REPLY_ACK;
        }
        let mut dev =
            VirtioNet::connect(d.sock(0), Options { protocol_features: proto, ..Options::default() }).unwrap();
        let mut ch = dev.open_backend_channel().unwrap();
        d.wait_for("the backend channel", 5, || show(&d, 0)["backend_channel"] == true);
        assert!(dev.link_up().unwrap());
        let api = d.api_path();
        let set = std::thread::spawn(move || {
            vfnic_pf::api::call(
                &api,
                &Request::VfSet {
                    vf: 0,
                    change: VfChange { state: Some(vfnic_types::LinkState::Disable), ..VfChange::default() },
                },
            )
        });
        let req = ch.recv(T).unwrap_or_else(|e| panic!("no config change: {e}\n{}", d.log_text()));
        assert_eq!(req.header.request, backend_request::CONFIG_CHANGE_MSG);
        assert!(req.payload.is_empty());
        let want = flags::VERSION | if reply_ack { flags::NEED_REPLY } else { 0 };
        assert_eq!(req.header.flags, want, "NEED_REPLY only with REPLY_ACK");
        if reply_ack {
            ch.ack(&req, 0).unwrap();
        }
        set.join().unwrap().unwrap();
        assert!(!dev.link_up().unwrap(), "the config space says link down");
        // Settings that are not in the config space send nothing.
        d.api(Request::VfSet { vf: 0, change: VfChange { weight: Some(4), ..VfChange::default() } });
        assert!(ch.recv(Duration::from_millis(300)).is_err(), "no message for a weight change");
        // A MAC change is announced too (ack from a helper thread).
        let api = d.api_path();
        let set = std::thread::spawn(move || {
            let mac = Some("02:00:00:00:00:77".parse().unwrap());
            vfnic_pf::api::call(&api, &Request::VfSet { vf: 0, change: VfChange { mac, ..VfChange::default() } })
        });
        let req = ch.recv(T).unwrap();
        assert_eq!(req.header.request, backend_request::CONFIG_CHANGE_MSG);
        if reply_ack {
            ch.ack(&req, 0).unwrap();
        }
        set.join().unwrap().unwrap();
        assert_eq!(dev.conn().get_config(0, 6).unwrap(), vec![2, 0, 0, 0, 0, 0x77]);
        // Back as it was for the next round.
        d.api(Request::VfReset { vf: 0 });
        assert!(dev.conn().wait_closed(T).unwrap());
    }
}

mod mailbox {
    use super::*;
    use vfnic_op::mailbox::{class, mac, mq, rx, vlan, VIRTIO_NET_ERR, VIRTIO_NET_OK};
    use vfnic_pf::{Config, Pf};

    /// The adapter in this process, so the test can drive the control
    /// queue's processing (`Pf::process_mailbox`) itself.
    struct Local {
        pf: Pf,
        dir: std::path::PathBuf,
    }

    impl Drop for Local {
        fn drop(&mut self) {
            self.pf.shutdown();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn start() -> Local {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vfnic-mbox-{}-{n}", std::process::id()));
        let cfg =
            Config::parse(&format!("run_dir = {:?}\nnum_vfs = 2\nengines = 1\n", dir.display().to_string())).unwrap();
        Local { pf: Pf::start(cfg).unwrap(), dir }
    }

    fn tenant(l: &Local, vf: u16) -> VirtioNet {
        let opts = Options { ctrl_queue: Some(2), ..Options::default() };
        VirtioNet::connect(l.dir.join(format!("vf{vf}.sock")), opts).unwrap()
    }

    /// Sends one command and answers it; returns the ack byte.
    fn command(l: &Local, dev: &mut VirtioNet, vf: u16, c: u8, cmd: u8, data: &[u8]) -> u8 {
        dev.ctrl_submit(c, cmd, data).unwrap();
        let deadline = Instant::now() + T;
        loop {
            l.pf.process_mailbox(vf).unwrap();
            if let Some(ack) = dev.ctrl_poll().unwrap() {
                return ack;
            }
            assert!(Instant::now() < deadline, "no answer on the control queue");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn refused(l: &Local, vf: u16) -> u64 {
        let s = l.pf.stats();
        s[vf as usize].counters.errors["mailbox_refused"]
    }

    fn set(l: &Local, vf: u16, change: VfChange) {
        l.pf.vf_set(vf, &change).unwrap();
    }

    #[test]
    fn promiscuous_mode_refused_untrusted_granted_trusted() {
        let l = start();
        let mut dev = tenant(&l, 1);
        assert_eq!(command(&l, &mut dev, 1, class::RX, rx::PROMISC, &[1]), VIRTIO_NET_ERR);
        assert_eq!(refused(&l, 1), 1, "refusal counted");
        assert!(!l.pf.vf_show(1).unwrap().promisc);
        // Switching it off, or all-multicast, is harmless.
        assert_eq!(command(&l, &mut dev, 1, class::RX, rx::PROMISC, &[0]), VIRTIO_NET_OK);
        assert_eq!(command(&l, &mut dev, 1, class::RX, rx::ALLMULTI, &[1]), VIRTIO_NET_OK);
        set(&l, 1, VfChange { trust: Some(true), ..VfChange::default() });
        assert_eq!(command(&l, &mut dev, 1, class::RX, rx::PROMISC, &[1]), VIRTIO_NET_OK);
        assert!(l.pf.vf_show(1).unwrap().promisc, "granted and applied");
        assert_eq!(l.pf.stats()[1].mailbox_granted, 3);
        assert_eq!(command(&l, &mut dev, 1, class::RX, rx::PROMISC, &[0]), VIRTIO_NET_OK);
        assert!(!l.pf.vf_show(1).unwrap().promisc);
        // Malformed data: refused, counted.
        assert_eq!(command(&l, &mut dev, 1, class::RX, rx::PROMISC, &[1, 1]), VIRTIO_NET_ERR);
        assert_eq!(refused(&l, 1), 2);
        assert_eq!(l.pf.stats()[0].counters.errors["mailbox_refused"], 0, "other VFs untouched");
    }

    #[test]
    fn mac_addr_set() {
        let l = start();
        let mut dev = tenant(&l, 1);
        let new = [0x02, 0, 0, 0, 0x0a, 0x0b];
        assert_eq!(command(&l, &mut dev, 1, class::MAC, mac::ADDR_SET, &new), VIRTIO_NET_ERR, "untrusted");
        assert_eq!(l.pf.vf_show(1).unwrap().mac, vfnic_types::MacAddr::for_vf(1));
        // Its own MAC is always fine.
        assert_eq!(command(&l, &mut dev, 1, class::MAC, mac::ADDR_SET, &vf_mac(1)), VIRTIO_NET_OK);
        set(&l, 1, VfChange { trust: Some(true), ..VfChange::default() });
        // Not another VF's.
        assert_eq!(command(&l, &mut dev, 1, class::MAC, mac::ADDR_SET, &vf_mac(0)), VIRTIO_NET_ERR);
        assert_eq!(command(&l, &mut dev, 1, class::MAC, mac::ADDR_SET, &new), VIRTIO_NET_OK);
        assert_eq!(l.pf.vf_show(1).unwrap().mac, vfnic_types::MacAddr(new), "the VF's MAC moved");
        let fdb = l.pf.fdb();
        assert!(fdb.iter().any(|e| e.mac.0 == new && e.port == 1 && e.r#static), "static entry moved");
        assert!(!fdb.iter().any(|e| e.mac == vfnic_types::MacAddr::for_vf(1) && e.r#static), "old entry gone");
        assert_eq!(dev.conn().get_config(0, 6).unwrap(), new.to_vec());
        assert_eq!(refused(&l, 1), 2);
        // A reset returns the configured MAC.
        l.pf.vf_reset(1).unwrap();
        assert_eq!(l.pf.vf_show(1).unwrap().mac, vfnic_types::MacAddr::for_vf(1));
    }

    #[test]
    fn multiqueue_vlan_and_unknown_commands() {
        let l = start();
        let mut dev = tenant(&l, 0);
        assert_eq!(command(&l, &mut dev, 0, class::MQ, mq::VQ_PAIRS_SET, &1u16.to_le_bytes()), VIRTIO_NET_OK);
        assert_eq!(command(&l, &mut dev, 0, class::MQ, mq::VQ_PAIRS_SET, &2u16.to_le_bytes()), VIRTIO_NET_ERR);
        assert_eq!(command(&l, &mut dev, 0, class::MQ, mq::VQ_PAIRS_SET, &0u16.to_le_bytes()), VIRTIO_NET_ERR);
        assert_eq!(command(&l, &mut dev, 0, class::VLAN, vlan::ADD, &10u16.to_le_bytes()), VIRTIO_NET_OK);
        set(&l, 0, VfChange { vlan: Some(5), ..VfChange::default() });
        assert_eq!(command(&l, &mut dev, 0, class::VLAN, vlan::ADD, &10u16.to_le_bytes()), VIRTIO_NET_ERR, "port VLAN");
        assert_eq!(command(&l, &mut dev, 0, 42, 0, &[]), VIRTIO_NET_ERR);
        assert_eq!(refused(&l, 0), 4);
        assert_eq!(l.pf.stats()[0].mailbox_granted, 2);
        // The data path is unaffected: the queues are not faulted.
        assert!(!l.pf.vf_show(0).unwrap().faulted);
    }
}
