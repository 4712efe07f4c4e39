//! The VF<->PF mailbox: what the PF answers to a tenant's control-virtqueue
//! commands, and how the PF tells a tenant its configuration changed.
//!
//! * VF -> PF: a driver that negotiated `VIRTIO_NET_F_CTRL_VQ` puts
//!   `struct virtio_net_ctrl_hdr { u8 class; u8 cmd; }`, the command data and
//!   a one-byte ack in a chain on the control queue. [`decide`] is the PF's
//!   policy for one command, pure and unit-tested: granted (with the
//!   [`Effect`] to apply) or refused (with the reason the adapter logs and
//!   counts; the tenant reads [`VIRTIO_NET_ERR`]). The ring work is in
//!   `vfnic-engine`'s `mailbox` module; granted effects that touch other VFs
//!   (a MAC move) go through the PF's [`MailboxHandler`].
//! * PF -> VF: where the front end negotiated the backend request channel
//!   (`VHOST_USER_PROTOCOL_F_BACKEND_REQ`), a [`BackendChannel`] sends
//!   `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG` when the administrator changes
//!   the link state or the MAC (the front end then re-reads the config
//!   space with `GET_CONFIG`).
//!
//! QEMU and DPDK terminate the control queue themselves and never forward
//! it; this path serves front ends that do (`vfnic-user`).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vfnic_types::{MacAddr, VfId};

use crate::function::{FunctionSettings, Policy};

/// `VIRTIO_NET_OK`: the ack byte of a granted command.
pub const VIRTIO_NET_OK: u8 = 0;
/// `VIRTIO_NET_ERR`: the ack byte of a refused command.
pub const VIRTIO_NET_ERR: u8 = 1;
/// Size of `struct virtio_net_ctrl_hdr`.
pub const CTRL_HDR_LEN: usize = 2;

/// Command classes (`VIRTIO_NET_CTRL_*`).
pub mod class {
    /// RX mode (promiscuous, all-multicast, ...).
    pub const RX: u8 = 0;
    /// MAC filter table and primary address.
    pub const MAC: u8 = 1;
    /// VLAN filter.
    pub const VLAN: u8 = 2;
    /// Gratuitous-announce acknowledgement.
    pub const ANNOUNCE: u8 = 3;
    /// Multiqueue.
    pub const MQ: u8 = 4;
}

/// Commands of [`class::RX`]; the data is one byte, 0 (off) or 1 (on).
pub mod rx {
    /// Promiscuous mode.
    pub const PROMISC: u8 = 0;
    /// All multicast.
    pub const ALLMULTI: u8 = 1;
    /// All unicast.
    pub const ALLUNI: u8 = 2;
    /// No multicast.
    pub const NOMULTI: u8 = 3;
    /// No unicast.
    pub const NOUNI: u8 = 4;
    /// No broadcast.
    pub const NOBCAST: u8 = 5;
}

/// Commands of [`class::MAC`].
pub mod mac {
    /// Filter table: `u32 n` + `n` unicast MACs, then `u32 m` + `m`
    /// multicast MACs (little-endian counts).
    pub const TABLE_SET: u8 = 0;
    /// Primary address: 6 bytes.
    pub const ADDR_SET: u8 = 1;
}

/// Commands of [`class::VLAN`]; the data is a little-endian `u16` VLAN id.
pub mod vlan {
    /// Accept a VLAN.
    pub const ADD: u8 = 0;
    /// Stop accepting a VLAN.
    pub const DEL: u8 = 1;
}

/// Commands of [`class::ANNOUNCE`].
pub mod announce {
    /// The driver sent its gratuitous announcement.
    pub const ACK: u8 = 0;
}

/// Commands of [`class::MQ`].
pub mod mq {
    /// Number of queue pairs in use: a little-endian `u16`.
    pub const VQ_PAIRS_SET: u8 = 0;
}

/// What a granted command changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing the adapter keeps (acknowledged only).
    None,
    /// Promiscuous mode on or off (a trusted VF's `promisc`).
    Promisc(bool),
    /// A trusted VF moves its MAC (the PF checks no other VF uses it and
    /// moves the switch's static entry).
    Mac(MacAddr),
    /// A VLAN filter entry added or removed (the VF has no port VLAN).
    VlanFilter {
        /// VLAN id (0-4094).
        vid: u16,
        /// Added (true) or removed.
        add: bool,
    },
    /// Queue pairs the driver uses from now on.
    QueuePairs(u16),
}

/// The PF's answer to one mailbox command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Granted: `VIRTIO_NET_OK`, and the effect is applied.
    Ack(Effect),
    /// Refused: `VIRTIO_NET_ERR`; the reason is logged and counted.
    Refuse(String),
}

fn refuse(reason: impl Into<String>) -> Decision {
    Decision::Refuse(reason.into())
}

fn on_off(data: &[u8]) -> Option<bool> {
    match data {
        [0] => Some(false),
        [1] => Some(true),
        _ => None,
    }
}

fn le_u16(data: &[u8]) -> Option<u16> {
    <[u8; 2]>::try_from(data).ok().map(u16::from_le_bytes)
}

/// Splits a `MAC_TABLE_SET` payload into its unicast and multicast tables.
fn mac_tables(data: &[u8]) -> Option<(Vec<MacAddr>, Vec<MacAddr>)> {
    let mut rest = data;
    let mut table = || -> Option<Vec<MacAddr>> {
        let n = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let bytes = n.checked_mul(6)?;
        let body = rest.get(4..4usize.checked_add(bytes)?)?;
        rest = &rest[4 + bytes..];
        Some(body.chunks_exact(6).map(|c| MacAddr(c.try_into().expect("chunks of 6"))).collect())
    };
    let uc = table()?;
    let mc = table()?;
    rest.is_empty().then_some((uc, mc))
}

/// The PF's policy for one control-queue command of a VF with `policy`
/// and `queue_pairs` queue pairs: pure, no state changed here.
///
/// * RX: promiscuous and all-unicast mode need a trusted VF; all-multicast
///   and the `NO*` reductions are granted (the switch floods multicast to
///   every VF of the VLAN anyway).
/// * MAC: an untrusted VF may name only its own MAC (as primary address or
///   in its unicast filter); a trusted VF may move its MAC to another
///   unicast address (the PF still checks no other VF has it).
/// * VLAN: filters are the tenant's business unless the PF set a port
///   VLAN, which the tenant does not see and may not change.
/// * MQ: between 1 and the VF's queue pairs.
pub fn decide(policy: &Policy, queue_pairs: u16, class: u8, cmd: u8, data: &[u8]) -> Decision {
    match (class, cmd) {
        (class::RX, rx::PROMISC | rx::ALLUNI | rx::ALLMULTI | rx::NOMULTI | rx::NOUNI | rx::NOBCAST) => {
            let Some(on) = on_off(data) else {
                return refuse(format!("RX command {cmd} needs one byte 0 or 1, got {} bytes", data.len()));
            };
            match cmd {
                rx::PROMISC | rx::ALLUNI if on && !policy.trust => {
                    refuse("promiscuous mode needs a trusted VF (vfnic vf set N trust on)")
                }
                rx::PROMISC | rx::ALLUNI if policy.trust => Decision::Ack(Effect::Promisc(on)),
                _ => Decision::Ack(Effect::None),
            }
        }
        (class::MAC, mac::ADDR_SET) => {
            let Ok(bytes) = <[u8; 6]>::try_from(data) else {
                return refuse(format!("MAC_ADDR_SET needs 6 bytes, got {}", data.len()));
            };
            let new = MacAddr(bytes);
            if new == policy.mac {
                Decision::Ack(Effect::None)
            } else if !new.is_unicast() {
                refuse(format!("MAC {new} is not a unicast address"))
            } else if !policy.trust {
                refuse(format!("untrusted VF may not change its MAC {} to {new}", policy.mac))
            } else {
                Decision::Ack(Effect::Mac(new))
            }
        }
        (class::MAC, mac::TABLE_SET) => {
            let Some((uc, mc)) = mac_tables(data) else {
                return refuse(format!("malformed MAC table of {} bytes", data.len()));
            };
            if let Some(m) = mc.iter().find(|m| m.is_unicast()) {
                return refuse(format!("MAC {m} in the multicast table is not multicast"));
            }
            match uc.iter().find(|m| **m != policy.mac) {
                Some(m) if !policy.trust => refuse(format!("untrusted VF may not receive for MAC {m}")),
                Some(m) if !m.is_unicast() => refuse(format!("MAC {m} in the unicast table is not unicast")),
                _ => Decision::Ack(Effect::None),
            }
        }
        (class::VLAN, vlan::ADD | vlan::DEL) => {
            let Some(vid) = le_u16(data) else {
                return refuse(format!("VLAN command needs a 2-byte VLAN id, got {} bytes", data.len()));
            };
            if vid > 4094 {
                refuse(format!("VLAN {vid} is out of range (0 to 4094)"))
            } else if policy.vlan != 0 {
                refuse(format!("the PF set port VLAN {}: VLAN filters are not the VF's", policy.vlan))
            } else {
                Decision::Ack(Effect::VlanFilter { vid, add: cmd == vlan::ADD })
            }
        }
        (class::ANNOUNCE, announce::ACK) if data.is_empty() => Decision::Ack(Effect::None),
        (class::MQ, mq::VQ_PAIRS_SET) => match le_u16(data) {
            Some(n) if (1..=queue_pairs).contains(&n) => Decision::Ack(Effect::QueuePairs(n)),
            Some(n) => refuse(format!("{n} queue pairs requested, the VF has 1 to {queue_pairs}")),
            None => refuse(format!("VQ_PAIRS_SET needs a 2-byte count, got {} bytes", data.len())),
        },
        _ => refuse(format!("unsupported control command class {class} command {cmd}")),
    }
}

/// Applies a granted effect to a VF's own settings (what the PF does for
/// effects that concern this VF only).
pub fn apply_to_settings(s: &mut FunctionSettings, effect: Effect) {
    match effect {
        Effect::Promisc(on) => s.promisc = on && s.trust,
        Effect::Mac(mac) => s.mac = mac,
        Effect::None | Effect::VlanFilter { .. } | Effect::QueuePairs(_) => {}
    }
}

/// The PF's side of the mailbox: applies a granted effect that may concern
/// other VFs (a MAC move must not take another VF's address, and moves the
/// switch's static entry). Called by the engine holding the VF's control
/// queue lock: an implementation must not lock a vring.
pub trait MailboxHandler: Send + Sync {
    /// Applies `effect` to `vf`, or says why it cannot (the command is then
    /// refused).
    fn apply(&self, vf: VfId, effect: Effect) -> Result<(), String>;
}

/// `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG` (a backend-to-front-end request).
pub const BACKEND_CONFIG_CHANGE_MSG: u32 = 2;
/// Header flag: protocol version 1.
const FLAG_VERSION: u32 = 0x1;
/// Header flag: the sender wants an ack.
const FLAG_NEED_REPLY: u32 = 0x8;
/// Header flag: this is a reply.
const FLAG_REPLY: u32 = 0x4;
/// How long a notification may block the control plane, each way.
pub const NOTIFY_TIMEOUT: Duration = Duration::from_millis(500);

/// The backend request channel a front end gave the VF
/// (`SET_BACKEND_REQ_FD`): the PF->VF half of the mailbox.
#[derive(Debug)]
pub struct BackendChannel {
    stream: UnixStream,
    need_reply: bool,
}

/// A notification that did not get through.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// Writing the request or reading the ack failed or timed out.
    #[error("Backend channel I/O failed")]
    Io(#[from] io::Error),
    /// The front end answered with an error status or a malformed reply.
    #[error("Front end refused the notification (status {0})")]
    Refused(u64),
}

impl BackendChannel {
    /// Wraps the channel; with `need_reply` (REPLY_ACK negotiated) each
    /// request asks for an ack. Reads and writes time out after
    /// [`NOTIFY_TIMEOUT`].
    pub fn new(stream: UnixStream, need_reply: bool) -> io::Result<BackendChannel> {
        stream.set_write_timeout(Some(NOTIFY_TIMEOUT))?;
        stream.set_read_timeout(Some(NOTIFY_TIMEOUT))?;
        Ok(BackendChannel { stream, need_reply })
    }

    /// Whether requests ask for an ack.
    pub fn need_reply(&self) -> bool {
        self.need_reply
    }

    /// Sends `CONFIG_CHANGE_MSG` (no payload) and, with REPLY_ACK, waits
    /// (bounded) for the front end's ack.
    pub fn config_change(&mut self) -> Result<(), NotifyError> {
        let flags = FLAG_VERSION | if self.need_reply { FLAG_NEED_REPLY } else { 0 };
        let mut msg = [0u8; 12];
        msg[..4].copy_from_slice(&BACKEND_CONFIG_CHANGE_MSG.to_le_bytes());
        msg[4..8].copy_from_slice(&flags.to_le_bytes());
        self.stream.write_all(&msg)?;
        if !self.need_reply {
            return Ok(());
        }
        let mut reply = [0u8; 20];
        self.stream.read_exact(&mut reply)?;
        let word = |i: usize| u32::from_le_bytes(reply[i..i + 4].try_into().expect("4 bytes"));
        let status = u64::from_le_bytes(reply[12..20].try_into().expect("8 bytes"));
        if word(0) != BACKEND_CONFIG_CHANGE_MSG || word(4) & FLAG_REPLY == 0 || word(8) != 8 {
            return Err(NotifyError::Refused(u64::MAX));
        }
        if status != 0 {
            return Err(NotifyError::Refused(status));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(trust: bool, vlan: u16) -> Policy {
        let mut s = FunctionSettings::new(MacAddr::for_vf(1), "x".into());
        s.trust = trust;
        s.vlan = vlan;
        crate::Function::new(VfId(1), s, 1).policy()
    }

    fn refused(d: Decision) -> String {
        match d {
            Decision::Refuse(r) => r,
            other => panic!("granted: {other:?}"),
        }
    }

    #[test]
    fn promiscuous_mode_needs_trust() {
        let r = refused(decide(&policy(false, 0), 1, class::RX, rx::PROMISC, &[1]));
        assert!(r.contains("trusted"), "{r}");
        assert!(refused(decide(&policy(false, 0), 1, class::RX, rx::ALLUNI, &[1])).contains("trusted"));
        assert_eq!(decide(&policy(false, 0), 1, class::RX, rx::PROMISC, &[0]), Decision::Ack(Effect::None));
        assert_eq!(decide(&policy(true, 0), 1, class::RX, rx::PROMISC, &[1]), Decision::Ack(Effect::Promisc(true)));
        assert_eq!(decide(&policy(true, 0), 1, class::RX, rx::PROMISC, &[0]), Decision::Ack(Effect::Promisc(false)));
        assert_eq!(decide(&policy(false, 0), 1, class::RX, rx::ALLMULTI, &[1]), Decision::Ack(Effect::None));
        assert_eq!(decide(&policy(false, 0), 1, class::RX, rx::NOBCAST, &[1]), Decision::Ack(Effect::None));
        for bad in [&[][..], &[2], &[1, 0]] {
            assert!(refused(decide(&policy(true, 0), 1, class::RX, rx::PROMISC, bad)).contains("one byte"));
        }
        assert!(refused(decide(&policy(true, 0), 1, class::RX, 9, &[1])).contains("unsupported"));
    }

    #[test]
    fn mac_address_set() {
        let own = MacAddr::for_vf(1).0;
        let other = [0x02, 0, 0, 0, 0, 0x42];
        assert_eq!(decide(&policy(false, 0), 1, class::MAC, mac::ADDR_SET, &own), Decision::Ack(Effect::None));
        let r = refused(decide(&policy(false, 0), 1, class::MAC, mac::ADDR_SET, &other));
        assert!(r.contains("untrusted") && r.contains("02:00:00:00:00:42"), "{r}");
        assert_eq!(
            decide(&policy(true, 0), 1, class::MAC, mac::ADDR_SET, &other),
            Decision::Ack(Effect::Mac(MacAddr(other)))
        );
        assert!(refused(decide(&policy(true, 0), 1, class::MAC, mac::ADDR_SET, &[0xff; 6])).contains("unicast"));
        assert!(refused(decide(&policy(true, 0), 1, class::MAC, mac::ADDR_SET, &other[..5])).contains("6 bytes"));
    }

    fn table(uc: &[[u8; 6]], mc: &[[u8; 6]]) -> Vec<u8> {
        let mut v = Vec::new();
        for t in [uc, mc] {
            v.extend_from_slice(&(t.len() as u32).to_le_bytes());
            t.iter().for_each(|m| v.extend_from_slice(m));
        }
        v
    }

    #[test]
    fn mac_table_set() {
        let own = MacAddr::for_vf(1).0;
        let other = [0x02, 0, 0, 0, 0, 0x42];
        let mcast = [0x01, 0, 0x5e, 0, 0, 1];
        let ok = |p: Policy, d: &[u8]| decide(&p, 1, class::MAC, mac::TABLE_SET, d);
        assert_eq!(ok(policy(false, 0), &table(&[own], &[mcast])), Decision::Ack(Effect::None));
        assert_eq!(ok(policy(false, 0), &table(&[], &[])), Decision::Ack(Effect::None));
        assert!(refused(ok(policy(false, 0), &table(&[other], &[]))).contains("untrusted"));
        assert_eq!(ok(policy(true, 0), &table(&[other], &[])), Decision::Ack(Effect::None));
        assert!(refused(ok(policy(true, 0), &table(&[], &[other]))).contains("not multicast"));
        let mut long = table(&[own], &[]);
        long.push(0);
        assert!(refused(ok(policy(false, 0), &long)).contains("malformed"));
        assert!(refused(ok(policy(false, 0), &[0xff, 0xff, 0xff, 0xff])).contains("malformed"));
    }

    #[test]
    fn vlan_filters_and_port_vlan() {
        assert_eq!(
            decide(&policy(false, 0), 1, class::VLAN, vlan::ADD, &10u16.to_le_bytes()),
            Decision::Ack(Effect::VlanFilter { vid: 10, add: true })
        );
        assert_eq!(
            decide(&policy(false, 0), 1, class::VLAN, vlan::DEL, &10u16.to_le_bytes()),
            Decision::Ack(Effect::VlanFilter { vid: 10, add: false })
        );
        assert!(
            refused(decide(&policy(true, 5), 1, class::VLAN, vlan::ADD, &10u16.to_le_bytes())).contains("port VLAN 5")
        );
        assert!(refused(decide(&policy(false, 0), 1, class::VLAN, vlan::ADD, &4095u16.to_le_bytes())).contains("4094"));
        assert!(refused(decide(&policy(false, 0), 1, class::VLAN, vlan::ADD, &[1])).contains("2-byte"));
    }

    #[test]
    fn announce_and_multiqueue() {
        assert_eq!(decide(&policy(false, 0), 1, class::ANNOUNCE, announce::ACK, &[]), Decision::Ack(Effect::None));
        assert!(matches!(decide(&policy(false, 0), 1, class::ANNOUNCE, announce::ACK, &[1]), Decision::Refuse(_)));
        let pairs = |n: u16| decide(&policy(false, 0), 4, class::MQ, mq::VQ_PAIRS_SET, &n.to_le_bytes());
        assert_eq!(pairs(1), Decision::Ack(Effect::QueuePairs(1)));
        assert_eq!(pairs(4), Decision::Ack(Effect::QueuePairs(4)));
        assert!(refused(pairs(0)).contains("1 to 4"));
        assert!(refused(pairs(5)).contains("1 to 4"));
        assert!(refused(decide(&policy(false, 0), 4, class::MQ, 1, &[])).contains("unsupported"));
        assert!(refused(decide(&policy(false, 0), 4, 77, 0, &[])).contains("class 77"));
    }

    #[test]
    fn effects_on_settings() {
        let mut s = FunctionSettings::new(MacAddr::for_vf(1), "x".into());
        apply_to_settings(&mut s, Effect::Promisc(true));
        assert!(!s.promisc, "never promiscuous without trust");
        s.trust = true;
        apply_to_settings(&mut s, Effect::Promisc(true));
        assert!(s.promisc);
        apply_to_settings(&mut s, Effect::Mac(MacAddr::for_vf(9)));
        assert_eq!(s.mac, MacAddr::for_vf(9));
    }

    #[test]
    fn config_change_message_with_and_without_ack() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut ch = BackendChannel::new(a, false).unwrap();
        ch.config_change().unwrap();
        let mut hdr = [0u8; 12];
        b.read_exact(&mut hdr).unwrap();
        assert_eq!(hdr, [2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);

        let (a, mut b) = UnixStream::pair().unwrap();
        let mut ch = BackendChannel::new(a, true).unwrap();
        let front = std::thread::spawn(move || {
            let mut hdr = [0u8; 12];
            b.read_exact(&mut hdr).unwrap();
            let mut reply = vec![2, 0, 0, 0, 0x5, 0, 0, 0, 8, 0, 0, 0];
            reply.extend_from_slice(&0u64.to_le_bytes());
            b.write_all(&reply).unwrap();
            hdr
        });
        ch.config_change().unwrap();
        assert_eq!(front.join().unwrap()[4], 0x9, "version 1 | NEED_REPLY");
        // No answer: bounded by the timeout, an error, not a hang.
        let (a, _b) = UnixStream::pair().unwrap();
        let mut ch = BackendChannel::new(a, true).unwrap();
        let t = std::time::Instant::now();
        assert!(ch.config_change().is_err());
        assert!(t.elapsed() < NOTIFY_TIMEOUT * 4);
    }
}
