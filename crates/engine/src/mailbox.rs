//! The control virtqueue: the VF-to-PF mailbox on the ring side.
//!
//! Each chain on a VF's control queue (`Function::ctrl`, vring
//! `2 * queue_pairs`) is a device-readable command (`struct
//! virtio_net_ctrl_hdr { u8 class; u8 cmd; }` and its data) followed by a
//! device-writable ack byte. [`process_ctrl`] walks each chain with
//! [`Access::Mixed`] (every buffer translated and bounds-checked, readable
//! part first), asks the PF's policy ([`vfnic_op::mailbox::decide`]),
//! applies what was granted, writes `VIRTIO_NET_OK` or `VIRTIO_NET_ERR`,
//! completes the chain with length 1, publishes and interrupts.
//!
//! A malformed chain faults the control queue like any other queue; a
//! well-formed but refused command is answered, counted
//! (`mailbox_refused`) and logged (rate-limited by the tenant's own pace:
//! one line per command it sends).

use vfnic_dma::chain::Access;
use vfnic_dma::copy::Cursor;
use vfnic_dma::Chain;
use vfnic_op::mailbox::{self, Decision, CTRL_HDR_LEN, VIRTIO_NET_ERR, VIRTIO_NET_OK};
use vfnic_op::Function;
use vfnic_types::ErrorKind;

use crate::deliver::fault_queue;

/// Most chains answered per call.
pub const CTRL_BURST: usize = 32;
/// Longest command (header + data) read; a longer one is refused unread
/// (a MAC table of 10,000 entries fits).
pub const MAX_CTRL_COMMAND: u64 = 64 * 1024;

/// Answers up to [`CTRL_BURST`] commands on `f`'s control queue; returns
/// how many chains were completed.
///
/// Call it without holding any fabric or vring lock: it locks the control
/// queue, and a granted MAC move calls the PF (which locks the VF table,
/// the settings and the forwarding table, never a vring).
pub fn process_ctrl(f: &Function) -> usize {
    let ctrl = f.ctrl();
    let mut s = ctrl.lock();
    if !s.ready() {
        return 0;
    }
    let indirect = s.indirect;
    let mut chain = Chain::default();
    let mut cmd = Vec::new();
    let mut done = 0;
    let mut fault = None;
    {
        let ring = s.ring.as_mut().expect("ready() checked the ring");
        while done < CTRL_BURST {
            match ring.pop_chain(&mut chain, Access::Mixed, indirect) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    fault = Some(e.kind());
                    break;
                }
            }
            let ack = answer(f, &chain, &mut cmd);
            let mut cur = Cursor::new(&chain);
            let written = cur.skip(chain.readable_len()) && cur.scatter(&[ack]) == 1;
            ring.complete(&chain, u32::from(written));
            done += 1;
        }
        chain.release();
        if done > 0 || fault.is_some() {
            ring.publish_used();
        }
    }
    if let Some(kind) = fault {
        fault_queue(f, &mut s, kind, ctrl.index);
    }
    if done > 0 {
        s.interrupt();
    }
    done
}

/// Reads one command out of `chain` and answers it.
fn answer(f: &Function, chain: &Chain, cmd: &mut Vec<u8>) -> u8 {
    let len = chain.readable_len();
    let refused = |reason: String| {
        f.counters.error(ErrorKind::MailboxRefused);
        tracing::warn!(vf = f.id.0, %reason, "mailbox command refused");
        VIRTIO_NET_ERR
    };
    if len < CTRL_HDR_LEN as u64 || len > MAX_CTRL_COMMAND || len == chain.len() {
        return refused(format!(
            "control chain of {len} readable and {} writable bytes (need a header and an ack byte)",
            chain.len() - len
        ));
    }
    cmd.clear();
    cmd.resize(len as usize, 0);
    if Cursor::new(chain).gather(cmd) != cmd.len() {
        return refused("control command shorter than its descriptors".into());
    }
    let (class, code, data) = (cmd[0], cmd[1], &cmd[CTRL_HDR_LEN..]);
    match mailbox::decide(&f.policy(), f.queue_pairs(), class, code, data) {
        Decision::Ack(effect) => match f.apply_mailbox_effect(effect) {
            Ok(()) => {
                f.mailbox_granted.inc();
                tracing::info!(vf = f.id.0, class, cmd = code, ?effect, "mailbox command granted");
                VIRTIO_NET_OK
            }
            Err(reason) => refused(reason),
        },
        Decision::Refuse(reason) => refused(reason),
    }
}
