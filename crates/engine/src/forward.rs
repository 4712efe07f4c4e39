//! One burst of one TX queue: walk each chain, ask the switch, deliver.

use std::sync::Arc;

use vfnic_dma::chain::Access;
use vfnic_dma::copy::Cursor;
use vfnic_dma::{Chain, RingError};
use vfnic_op::{features, Function};
use vfnic_switch::Forward;
use vfnic_types::{DropReason, ErrorKind, MacAddr};

use crate::deliver::{deliver, fault_queue, Frame, RxScratch};
use crate::fabric::{port_of, Fabric};

/// Most chains taken from one TX queue before the engine moves on.
pub const BURST: u16 = 64;
/// Ethernet header length.
const ETH_HLEN: u64 = 14;
/// Room for a VLAN tag on top of the MTU.
const VLAN_HLEN: u64 = 4;

/// Per-engine reusable state: a burst allocates nothing.
#[derive(Default)]
pub struct Scratch {
    tx: Chain,
    rx: RxScratch,
    /// Ports whose RX queue got frames in this burst (interrupt at the end).
    dirty: Vec<u16>,
}

fn ring_fault_kind(e: RingError) -> ErrorKind {
    match e {
        RingError::AvailIndex(_) => ErrorKind::AvailIndexInvalid,
        RingError::HeadIndex(_) => ErrorKind::DescIndexInvalid,
        RingError::Size(_) | RingError::Addr(_) => ErrorKind::RingAddrInvalid,
    }
}

/// Moves up to [`BURST`] frames from `f`'s TX queue `qp`. Returns how many
/// chains were consumed (0 = nothing to do).
pub fn process_tx(f: &Function, qp: u16, fabric: &Fabric, scratch: &mut Scratch) -> usize {
    let tx = f.tx(qp);
    let mut s = tx.lock();
    if !s.ready() {
        return 0;
    }
    let acked = f.acked_features();
    let hdr_len = features::net_hdr_len(acked) as u64;
    let indirect = s.indirect;
    let ports = fabric.ports();
    let ingress = port_of(f);
    let link_up = f.link_up();
    let max_frame = f.mtu() as u64 + ETH_HLEN + VLAN_HLEN;
    let now_ms = fabric.now_ms();
    let ring = s.ring.as_mut().expect("ready() checked the ring");
    let pending = match ring.pending() {
        Ok(n) => n.min(BURST),
        Err(e) => {
            fault_queue(f, &mut s, ring_fault_kind(e), tx.index);
            return 0;
        }
    };
    let mut done = 0usize;
    let mut fault = None;
    let mut tx_bytes = 0u64;
    let mut tx_packets = 0u64;
    for _ in 0..pending {
        let head = match ring.pop_head() {
            Ok(h) => h,
            Err(e) => {
                fault = Some(ring_fault_kind(e));
                break;
            }
        };
        done += 1;
        let chain = &mut scratch.tx;
        if let Err(e) = chain.walk(ring, head, Access::DeviceReads, indirect) {
            ring.push_used(head, 0);
            f.counters.drop_frames(DropReason::TxBadDescriptor, 1);
            fault = Some(e.kind());
            break;
        }
        ring.push_used(head, 0);
        if chain.len() < hdr_len + ETH_HLEN {
            f.counters.drop_frames(DropReason::TxRunt, 1);
            continue;
        }
        let len = chain.len() - hdr_len;
        if len > max_frame {
            f.counters.drop_frames(DropReason::TxOversize, 1);
            continue;
        }
        if !link_up {
            f.counters.drop_frames(DropReason::TxLinkDown, 1);
            continue;
        }
        let mut eth = [0u8; 12];
        let mut cur = Cursor::new(chain);
        cur.skip(hdr_len);
        cur.gather(&mut eth);
        let dst = MacAddr::from_slice(&eth[..6]).expect("6 bytes");
        let src = MacAddr::from_slice(&eth[6..]).expect("6 bytes");
        tx_packets += 1;
        tx_bytes += len;
        let decision = {
            let fdb = fabric.fdb.read().unwrap_or_else(|e| e.into_inner());
            let learned = fdb.is_learned(src, ingress, now_ms);
            let d = fdb.forward(ingress, dst);
            drop(fdb);
            if !learned {
                fabric.fdb().learn(src, ingress, now_ms);
            }
            d
        };
        let frame = Frame { chain, offset: hdr_len, len };
        match decision {
            Forward::Unicast(p) => match ports.get(p.0 as usize).and_then(Option::as_ref) {
                Some(dest) => send_one(dest, frame, &mut scratch.rx, &mut scratch.dirty),
                None => f.counters.drop_frames(DropReason::RxNotReady, 1),
            },
            Forward::Flood => {
                for dest in ports.iter().flatten().filter(|d| d.id != f.id && d.connected()) {
                    send_one(dest, frame, &mut scratch.rx, &mut scratch.dirty);
                }
            }
            Forward::Hairpin => f.counters.drop_frames(DropReason::TxHairpin, 1),
        }
    }
    f.counters.tx_packets.add(tx_packets);
    f.counters.tx_bytes.add(tx_bytes);
    ring.publish_used();
    if done > 0 && ring.needs_interrupt() {
        if let Some(call) = &s.call {
            call.signal();
            f.counters.interrupts.inc();
        }
    }
    if let Some(kind) = fault {
        fault_queue(f, &mut s, kind, tx.index);
    }
    drop(s);
    interrupt_receivers(&ports, &mut scratch.dirty);
    done
}

fn send_one(dest: &Arc<Function>, frame: Frame<'_>, rx: &mut RxScratch, dirty: &mut Vec<u16>) {
    match deliver(dest, frame, rx) {
        Ok(()) => {
            if !dirty.contains(&dest.id.0) {
                dirty.push(dest.id.0);
            }
        }
        Err(reason) => dest.counters.drop_frames(reason, 1),
    }
}

/// One interrupt per receiver per burst, if its driver wants one.
fn interrupt_receivers(ports: &[Option<Arc<Function>>], dirty: &mut Vec<u16>) {
    for port in dirty.drain(..) {
        let Some(dest) = ports.get(port as usize).and_then(Option::as_ref) else { continue };
        let mut s = dest.rx(0).lock();
        let Some(ring) = s.ring.as_mut() else { continue };
        if ring.needs_interrupt() {
            if let Some(call) = &s.call {
                call.signal();
                dest.counters.interrupts.inc();
            }
        }
    }
}
