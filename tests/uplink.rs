//! Uplinks through a real daemon: a VXLAN uplink on the loopback, driven by
//! a UDP socket of the test standing in for the remote endpoint, with the
//! project's own virtio-user front end as tenant.
//!
//! `vf_reaches_ip` is run by the real suites (tests/real/uplink_*_test.sh)
//! inside their network namespaces: it resolves an address with ARP and
//! pings it from a VF.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::{vf_mac, Daemon};
use serde_json::Value;
use vfnic_pf::api::Request;
use vfnic_user::{Options, VirtioNet};

const VNI: u32 = 4242;

fn vxlan(vni: u32, inner: &[u8]) -> Vec<u8> {
    let v = vni.to_be_bytes();
    let mut d = vec![0x08, 0, 0, 0, v[1], v[2], v[3], 0];
    d.extend_from_slice(inner);
    d
}

fn eth(dst: [u8; 6], src: [u8; 6], len: usize, fill: u8) -> Vec<u8> {
    let mut f = vec![fill; len];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    f
}

struct Setup {
    d: Daemon,
    peer: UdpSocket,
    uplink: std::net::SocketAddr,
}

fn setup(num_vfs: u16) -> Setup {
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let d = Daemon::start(&format!(
        "num_vfs = {num_vfs}\nengines = 1\n[[uplink]]\nname = \"up0\"\nkind = \"vxlan\"\nvni = {VNI}\nlocal = \"127.0.0.1:{port}\"\nremotes = [\"{}\"]\n",
        peer.local_addr().unwrap()
    ));
    Setup { d, peer, uplink: format!("127.0.0.1:{port}").parse().unwrap() }
}

fn uplink(d: &Daemon) -> Value {
    d.api(Request::UplinkShow { name: "up0".into() })
}

fn counter(d: &Daemon, name: &str) -> u64 {
    uplink(d)["counters"][name].as_u64().unwrap_or_else(|| panic!("no counter {name}"))
}

#[test]
fn frames_from_vxlan_reach_vfs_and_bad_input_is_counted() {
    let s = setup(2);
    let mut vf0 = VirtioNet::connect(s.d.sock(0), Options::default()).unwrap();
    let mut vf1 = VirtioNet::connect(s.d.sock(1), Options::default()).unwrap();
    let remote_mac = [0x02, 0xee, 0, 0, 0, 1];
    // Broadcast: every VF.
    let b = eth([0xff; 6], remote_mac, 100, 1);
    s.peer.send_to(&vxlan(VNI, &b), s.uplink).unwrap();
    for vf in [&mut vf0, &mut vf1] {
        let f = vf.recv_timeout(Duration::from_secs(5)).unwrap().expect("broadcast from the uplink");
        assert_eq!(f, b);
    }
    // Unicast to VF1 only.
    let u = eth(vf_mac(1), remote_mac, 1514, 2);
    s.peer.send_to(&vxlan(VNI, &u), s.uplink).unwrap();
    assert_eq!(vf1.recv_timeout(Duration::from_secs(5)).unwrap().expect("unicast"), u);
    assert!(vf0.recv_timeout(Duration::from_millis(200)).unwrap().is_none(), "not flooded");
    // The remote MAC is learned behind the uplink's port.
    let fdb = s.d.api(Request::Fdb);
    assert!(fdb.to_string().contains("02:ee:00:00:00:01"), "{fdb}");

    // Hostile input: each dropped and counted, the daemon lives on.
    s.peer.send_to(&[0x08, 0, 0], s.uplink).unwrap();
    s.peer.send_to(&vxlan(VNI + 1, &u), s.uplink).unwrap();
    s.peer.send_to(&vxlan(VNI, &u[..13]), s.uplink).unwrap();
    let mut bad_flags = vxlan(VNI, &u);
    bad_flags[0] = 0x0c;
    s.peer.send_to(&bad_flags, s.uplink).unwrap();
    let stranger = UdpSocket::bind("127.0.0.2:0").unwrap();
    stranger.send_to(&vxlan(VNI, &u), s.uplink).unwrap();
    // A frame that claims a local VF's source MAC: a loop.
    s.peer.send_to(&vxlan(VNI, &eth(vf_mac(1), vf_mac(0), 64, 3)), s.uplink).unwrap();
    let expect = [
        ("rx_dropped_truncated", 1),
        ("rx_dropped_wrong_vni", 1),
        ("rx_dropped_runt", 1),
        ("rx_dropped_bad_flags", 1),
        ("rx_dropped_unknown_peer", 1),
        ("rx_dropped_loop", 1),
    ];
    s.d.wait_for("hostile datagrams counted", 5, || expect.iter().all(|(k, n)| counter(&s.d, k) == *n));
    assert!(vf1.recv_timeout(Duration::from_millis(200)).unwrap().is_none(), "nothing hostile delivered");
    assert_eq!(counter(&s.d, "rx_packets"), 3, "good frames: 2 + the looped one (dropped later)");
    assert_eq!(counter(&s.d, "rx_delivered"), 3, "2 broadcast copies + 1 unicast");
    assert_eq!(s.d.counter(1, &["rx_packets"]), 2);
    // Stats carry the uplinks too.
    let stats = s.d.api(Request::Stats);
    assert_eq!(stats["uplinks"][0]["name"], "up0", "{stats}");
    let list = s.d.api(Request::UplinkList);
    assert_eq!(list[0]["kind"], "vxlan");
    assert_eq!(list[0]["inner_mtu"], 1450);
}

/// VF -> uplink: the engines hand floods and frames for addresses behind
/// the uplink to `uplink::egress_to`.
#[test]
fn frames_from_vfs_leave_through_vxlan() {
    let s = setup(1);
    let mut vf0 = VirtioNet::connect(s.d.sock(0), Options::default()).unwrap();
    let remote_mac = [0x02, 0xee, 0, 0, 0, 2];
    let b = eth([0xff; 6], vf_mac(0), 200, 4);
    vf0.send(&b).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = s.peer.recv_from(&mut buf).expect("broadcast replicated to the remote");
    assert_eq!(&buf[8..n], &b[..]);
    // Learned unicast back and forth.
    s.peer.send_to(&vxlan(VNI, &eth(vf_mac(0), remote_mac, 64, 5)), s.uplink).unwrap();
    vf0.recv_timeout(Duration::from_secs(5)).unwrap().expect("reply reaches the VF");
    let u = eth(remote_mac, vf_mac(0), 1450 + 14, 6);
    vf0.send(&u).unwrap();
    let (n, _) = s.peer.recv_from(&mut buf).expect("unicast to the learned remote");
    assert_eq!(&buf[8..n], &u[..]);
    // The counter follows the send; the peer may see the datagram first.
    s.d.wait_for("the uplink to count both frames", 5, || counter(&s.d, "tx_packets") == 2);
}

/// An uplink with a line rate is a destination like a VF: two VFs that
/// flood it share its line by weight (1:3), frames held back in their
/// rings, not dropped.
#[test]
fn an_uplinks_line_is_shared_by_weight() {
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // 40 Mbit/s = 5000 frames/s of 1000 bytes.
    let d = Daemon::start(&format!(
        "num_vfs = 2\nengines = 1\n[[vf]]\nid = 0\nweight = 1\n[[vf]]\nid = 1\nweight = 3\n\
         [[uplink]]\nname = \"up0\"\nkind = \"vxlan\"\nvni = {VNI}\nlocal = \"127.0.0.1:{port}\"\n\
         remotes = [\"{}\"]\nspeed = 40\n",
        peer.local_addr().unwrap()
    ));
    assert_eq!(uplink(&d)["speed"], 40);
    let up: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let remote_mac = [0x02, 0xee, 0, 0, 0, 7];
    peer.send_to(&vxlan(VNI, &eth([0xff; 6], remote_mac, 64, 1)), up).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let floods: Vec<_> = (0..2u16)
        .map(|v| {
            let mut tx = VirtioNet::connect(d.sock(v), Options::default()).unwrap();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let f = eth(remote_mac, vf_mac(v), 1000, v as u8);
                let burst: Vec<&[u8]> = (0..32).map(|_| f.as_slice()).collect();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = tx.send_burst(&burst);
                }
            })
        })
        .collect();
    // The remote drains what the uplink sends.
    let drain_stop = stop.clone();
    let drain = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !drain_stop.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = peer.recv_from(&mut buf);
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let b0 = [d.counter(0, &["tx_bytes"]), d.counter(1, &["tx_bytes"])];
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let b1 = [d.counter(0, &["tx_bytes"]), d.counter(1, &["tx_bytes"])];
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    floods.into_iter().for_each(|t| t.join().unwrap());
    drain.join().unwrap();
    let got = [b1[0] - b0[0], b1[1] - b0[1]];
    let mbps = (got[0] + got[1]) as f64 * 8.0 / secs / 1e6;
    assert!((mbps - 40.0).abs() < 4.0, "the uplink carried {mbps:.1} Mbit/s, speed 40: {got:?}");
    let share = got[0] as f64 / (got[0] + got[1]) as f64;
    assert!((share - 0.25).abs() < 0.02, "VF0 (weight 1 of 4) got {share:.3} of the line: {got:?}");
}

// ------------------------------------------------- ARP + ICMP from a VF

fn ip4(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>().expect("IPv4 address").octets()
}

fn csum(b: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in b.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn arp_request(mac: [u8; 6], ip: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0u8; 42];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip);
    f[38..42].copy_from_slice(&target);
    f
}

fn arp_reply_to(req: &[u8], mac: [u8; 6], ip: [u8; 4]) -> Option<Vec<u8>> {
    if req.len() < 42 || req[12..14] != [8, 6] || req[20..22] != [0, 1] || req[38..42] != ip {
        return None;
    }
    let mut f = req[..42].to_vec();
    f[..6].copy_from_slice(&req[6..12]);
    f[6..12].copy_from_slice(&mac);
    f[21] = 2;
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip);
    f[32..38].copy_from_slice(&req[22..28]);
    f[38..42].copy_from_slice(&req[28..32]);
    Some(f)
}

fn icmp_echo(dst_mac: [u8; 6], mac: [u8; 6], src: [u8; 4], dst: [u8; 4], seq: u16, payload: usize) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 8 + payload];
    f[..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + 8 + payload) as u16;
    {
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[4..6].copy_from_slice(&seq.to_be_bytes());
        ip[8] = 64;
        ip[9] = 1;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        let c = csum(ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
    }
    let icmp = &mut f[34..];
    icmp[0] = 8;
    icmp[4..6].copy_from_slice(&0x7666u16.to_be_bytes());
    icmp[6..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in icmp[8..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let c = csum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    f
}

/// Env: `VF_SOCK`, `VF_IP`, `TARGET_IP`, optional `PINGS` (default 5),
/// `PAYLOAD` (default 56). Answers ARP for `VF_IP`, resolves `TARGET_IP`,
/// sends `PINGS` echo requests and expects every reply.
#[test]
#[ignore = "run by tests/real/uplink_*_test.sh inside network namespaces"]
fn vf_reaches_ip() {
    let sock = std::env::var("VF_SOCK").expect("VF_SOCK");
    let me = ip4(&std::env::var("VF_IP").expect("VF_IP"));
    let target = ip4(&std::env::var("TARGET_IP").expect("TARGET_IP"));
    let pings: u16 = std::env::var("PINGS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let payload: usize = std::env::var("PAYLOAD").ok().and_then(|s| s.parse().ok()).unwrap_or(56);
    let mut vf = VirtioNet::connect(&sock, Options::default()).expect("connect to the VF");
    let mac = vf.mac().expect("the VF has a MAC");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut peer_mac = None;
    let mut replies = 0u16;
    let mut seq = 0u16;
    let mut last_send = Instant::now() - Duration::from_secs(1);
    while replies < pings {
        assert!(Instant::now() < deadline, "only {replies}/{pings} replies (peer mac {peer_mac:?})");
        if last_send.elapsed() >= Duration::from_millis(200) {
            last_send = Instant::now();
            match peer_mac {
                None => vf.send(&arp_request(mac, me, target)).unwrap(),
                Some(pm) => {
                    seq += 1;
                    vf.send(&icmp_echo(pm, mac, me, target, seq, payload)).unwrap();
                }
            }
        }
        let Some(f) = vf.recv_timeout(Duration::from_millis(50)).unwrap() else { continue };
        if let Some(r) = arp_reply_to(&f, mac, me) {
            vf.send(&r).unwrap();
            continue;
        }
        if f.len() >= 42 && f[12..14] == [8, 6] && f[20..22] == [0, 2] && f[28..32] == target {
            peer_mac = Some(f[22..28].try_into().unwrap());
            eprintln!("ARP: {target:?} is at {:02x?}", peer_mac.unwrap());
            continue;
        }
        if f.len() >= 42 && f[12..14] == [8, 0] && f[23] == 1 && f[26..30] == target && f[34] == 0 {
            assert_eq!(f.len(), 42 + payload, "echo reply intact");
            replies += 1;
            eprintln!("reply {replies}: seq {}", u16::from_be_bytes([f[40], f[41]]));
        }
    }
    println!("{replies} replies from {target:?}");
}

// ------------------------------------------- a tenant that also answers

/// An echo reply to `f` when it is an ICMP echo request for `me`.
fn echo_reply_to(f: &[u8], mac: [u8; 6], me: [u8; 4]) -> Option<Vec<u8>> {
    if f.len() < 42 || f[12..14] != [8, 0] || f[14] >> 4 != 4 || f[23] != 1 || f[30..34] != me {
        return None;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    if f.len() < 14 + ihl + 8 || f[14 + ihl] != 8 {
        return None;
    }
    let mut r = f.to_vec();
    r[..6].copy_from_slice(&f[6..12]);
    r[6..12].copy_from_slice(&mac);
    // Swapping the addresses leaves the IP header checksum valid.
    r[26..30].copy_from_slice(&f[30..34]);
    r[30..34].copy_from_slice(&f[26..30]);
    let total = usize::from(u16::from_be_bytes([f[16], f[17]])).clamp(ihl + 8, f.len() - 14);
    let icmp = &mut r[14 + ihl..14 + total];
    icmp[0] = 0;
    icmp[2..4].copy_from_slice(&[0, 0]);
    let c = csum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Some(r)
}

fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k).ok().and_then(|s| s.parse().ok()).unwrap_or(d)
}

/// A tenant for the multi-host suites (tests/real/uplink_{pair,ring}_test.sh):
/// it answers ARP and ICMP echo for `VF_IP` the whole time it runs and,
/// with `TARGET_IP`, pings that address.
///
/// Env: `VF_SOCK`, `VF_IP`; optional `TARGET_IP`, `PINGS` (5),
/// `INTERVAL_MS` (200), `MODE` (`count`: stop after `PINGS` replies, fail
/// after `TIMEOUT_MS` (20000); `stream`: send `PINGS` requests every
/// `INTERVAL_MS` whatever the replies, then report: never fails on loss),
/// `HOLD_MS` (0: answer this long after the pings are done), `FLOOD_FRAMES`
/// (0: first send that many frames to the unknown unicast MAC
/// 02:99:99:99:99:99). Prints `reply seq=N t_ms=T` per reply and one
/// `SUMMARY sent=S replies=R max_gap_ms=G answered=A` line.
#[test]
#[ignore = "run by tests/real/uplink_*_test.sh inside network namespaces"]
fn vf_tenant() {
    let sock = std::env::var("VF_SOCK").expect("VF_SOCK");
    let me = ip4(&std::env::var("VF_IP").expect("VF_IP"));
    let target = std::env::var("TARGET_IP").ok().filter(|s| !s.is_empty()).map(|s| ip4(&s));
    let pings: u32 = env_or("PINGS", 5);
    let interval = Duration::from_millis(env_or("INTERVAL_MS", 200));
    let stream = std::env::var("MODE").is_ok_and(|m| m == "stream");
    let timeout = Duration::from_millis(env_or("TIMEOUT_MS", 20_000));
    let hold = Duration::from_millis(env_or("HOLD_MS", 0));
    let flood: u32 = env_or("FLOOD_FRAMES", 0);
    let mut vf = VirtioNet::connect(&sock, Options::default()).expect("connect to the VF");
    let mac = vf.mac().expect("the VF has a MAC");
    for i in 0..flood {
        vf.send(&eth([0x02, 0x99, 0x99, 0x99, 0x99, 0x99], mac, 64, i as u8)).unwrap();
    }
    if flood > 0 {
        println!("FLOODED {flood}");
    }
    let t0 = Instant::now();
    let ms = |t: Instant| t.duration_since(t0).as_millis() as u64;
    let mut peer_mac: Option<[u8; 6]> = None;
    let (mut replies, mut sent, mut answered) = (0u32, 0u32, 0u64);
    let mut seq = 0u16;
    let mut last_send = t0 - Duration::from_secs(1);
    let mut last_reply: Option<Instant> = None;
    let mut first_send: Option<Instant> = None;
    let mut max_gap = 0u64;
    let mut done_at: Option<Instant> = if target.is_none() { Some(t0) } else { None };
    loop {
        let now = Instant::now();
        match done_at {
            Some(d) if now.duration_since(d) >= hold => break,
            Some(_) => {}
            None => {
                let Some(target) = target else { unreachable!() };
                let finished = if stream {
                    sent >= pings && now.duration_since(last_send) >= Duration::from_secs(1)
                } else {
                    replies >= pings
                };
                if finished {
                    done_at = Some(now);
                    if stream {
                        // Silence up to the last request counts as a gap.
                        let from = last_reply.or(first_send).unwrap_or(t0);
                        max_gap = max_gap.max(ms(last_send).saturating_sub(ms(from)));
                    }
                    continue;
                }
                assert!(
                    stream || now.duration_since(t0) < timeout,
                    "only {replies}/{pings} replies (peer mac {peer_mac:?})"
                );
                if now.duration_since(last_send) >= interval && (!stream || sent < pings || peer_mac.is_none()) {
                    last_send = now;
                    match peer_mac {
                        None => vf.send(&arp_request(mac, me, target)).unwrap(),
                        Some(pm) => {
                            seq = seq.wrapping_add(1);
                            sent += 1;
                            first_send.get_or_insert(now);
                            vf.send(&icmp_echo(pm, mac, me, target, seq, 56)).unwrap();
                        }
                    }
                }
            }
        }
        let Some(f) = vf.recv_timeout(Duration::from_millis(10)).unwrap() else { continue };
        if let Some(r) = arp_reply_to(&f, mac, me) {
            vf.send(&r).unwrap();
            continue;
        }
        if let Some(r) = echo_reply_to(&f, mac, me) {
            vf.send(&r).unwrap();
            answered += 1;
            continue;
        }
        let Some(target) = target else { continue };
        if peer_mac.is_none() && f.len() >= 42 && f[12..14] == [8, 6] && f[20..22] == [0, 2] && f[28..32] == target {
            peer_mac = Some(f[22..28].try_into().unwrap());
            println!("ARP {target:?} is at {:02x?} t_ms={}", peer_mac.unwrap(), ms(Instant::now()));
            continue;
        }
        if f.len() >= 42 && f[12..14] == [8, 0] && f[23] == 1 && f[26..30] == target && f[30..34] == me && f[34] == 0 {
            let now = Instant::now();
            let from = last_reply.or(first_send).unwrap_or(t0);
            max_gap = max_gap.max(ms(now).saturating_sub(ms(from)));
            last_reply = Some(now);
            replies += 1;
            println!("reply seq={} t_ms={}", u16::from_be_bytes([f[40], f[41]]), ms(now));
        }
    }
    println!("SUMMARY sent={sent} replies={replies} max_gap_ms={max_gap} answered={answered}");
}
