//! One burst of one TX queue, with look-ahead: take a burst of chains, walk
//! them all, resolve every destination under one read of the forwarding
//! table, then deliver per destination in one group (one RX lock, one
//! publish, one interrupt per receiver per burst). Frames keep their order
//! per (sender queue, receiver).

use vfnic_dma::chain::Access;
use vfnic_dma::copy::Cursor;
use vfnic_dma::{Chain, PopError};
use vfnic_op::{features, Function};
use vfnic_switch::Forward;
use vfnic_types::{DropReason, ErrorKind, MacAddr};

use crate::deliver::{deliver_group, fault_queue, Frame, RxScratch};
use crate::fabric::{port_of, Fabric};

/// Most chains taken from one TX queue before the engine moves on.
pub const BURST: usize = 64;
/// Ethernet header length.
const ETH_HLEN: u64 = 14;
/// Room for a VLAN tag on top of the MTU.
const VLAN_HLEN: u64 = 4;

/// Where one frame of the burst goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dest {
    /// Dropped before the switch (counted).
    Nowhere,
    /// One port.
    Port(u16),
    /// Every connected port but the sender.
    Flood,
}

/// Per-engine reusable state: a burst allocates nothing.
pub struct Scratch {
    tx: Vec<Chain>,
    dest: Vec<(Dest, u64)>,
    learn: Vec<MacAddr>,
    ports: Vec<u16>,
    rx: RxScratch,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            tx: (0..BURST).map(|_| Chain::default()).collect(),
            dest: Vec::with_capacity(BURST),
            learn: Vec::with_capacity(BURST),
            ports: Vec::with_capacity(64),
            rx: RxScratch::default(),
        }
    }
}

impl Scratch {
    /// Held RX interrupts: fire those due; true while some are held.
    pub fn fire_due_interrupts(&mut self) -> bool {
        self.rx.fire_due(false) > 0
    }

    /// Lets go of every tenant memory table the chains still refer to; the
    /// engine calls it whenever its queues change.
    pub fn release(&mut self) {
        self.tx.iter_mut().for_each(Chain::release);
        self.rx.release();
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
    let indirect = s.indirect;
    let ring = s.ring.as_mut().expect("ready() checked the ring");

    // 1. Look ahead: take and walk the whole burst.
    let mut fault = None;
    let mut n = 0;
    while n < BURST {
        match ring.pop_chain(&mut scratch.tx[n], Access::DeviceReads, indirect) {
            Ok(true) => n += 1,
            Ok(false) => break,
            Err(e) => {
                if matches!(e, PopError::Chain(_)) {
                    f.counters.drop_frames(DropReason::TxBadDescriptor, 1);
                }
                fault = Some(e.kind());
                break;
            }
        }
    }
    if n == 0 && fault.is_none() {
        return 0;
    }

    // 2. Classify: drops before the switch, then one read of the table.
    let hdr_len = features::net_hdr_len(f.acked_features()) as u64;
    let max_frame = f.mtu() as u64 + ETH_HLEN + VLAN_HLEN;
    let link_up = f.link_up();
    let ingress = port_of(f);
    let now_ms = fabric.now_ms();
    let (mut tx_packets, mut tx_bytes) = (0u64, 0u64);
    scratch.dest.clear();
    scratch.learn.clear();
    {
        let mut last_src = None;
        let fdb = fabric.fdb.read().unwrap_or_else(|e| e.into_inner());
        for chain in &scratch.tx[..n] {
            let drop = if chain.len() < hdr_len + ETH_HLEN {
                Some(DropReason::TxRunt)
            } else if chain.len() - hdr_len > max_frame {
                Some(DropReason::TxOversize)
            } else if !link_up {
                Some(DropReason::TxLinkDown)
            } else {
                None
            };
            if let Some(r) = drop {
                f.counters.drop_frames(r, 1);
                scratch.dest.push((Dest::Nowhere, 0));
                continue;
            }
            let len = chain.len() - hdr_len;
            let mut eth = [0u8; 12];
            let mut cur = Cursor::new(chain);
            cur.skip(hdr_len);
            cur.gather(&mut eth);
            let dst = MacAddr::from_slice(&eth[..6]).expect("6 bytes");
            let src = MacAddr::from_slice(&eth[6..]).expect("6 bytes");
            // Frames of a burst mostly share their source: look it up once.
            if last_src != Some(src) {
                last_src = Some(src);
                if !fdb.is_learned(src, ingress, now_ms) && !scratch.learn.contains(&src) {
                    scratch.learn.push(src);
                }
            }
            tx_packets += 1;
            tx_bytes += len;
            let dest = match fdb.forward(ingress, dst) {
                Forward::Unicast(p) => Dest::Port(p.0),
                Forward::Flood => Dest::Flood,
                Forward::Hairpin => {
                    f.counters.drop_frames(DropReason::TxHairpin, 1);
                    Dest::Nowhere
                }
            };
            scratch.dest.push((dest, len));
        }
    }
    if !scratch.learn.is_empty() {
        let mut fdb = fabric.fdb();
        for src in &scratch.learn {
            fdb.learn(*src, ingress, now_ms);
        }
    }

    // 3. Deliver per destination, in order of first appearance. Nothing is
    // delivered from memory the tenant revoked under us.
    let ports = fabric.ports();
    scratch.ports.clear();
    if ring.mem().revoked() {
        scratch.dest.iter_mut().for_each(|d| d.0 = Dest::Nowhere);
    }
    for (d, _) in &scratch.dest {
        match *d {
            Dest::Port(p) if !scratch.ports.contains(&p) => scratch.ports.push(p),
            Dest::Flood => {
                for dest in ports.iter().flatten().filter(|d| d.id != f.id && d.connected()) {
                    if !scratch.ports.contains(&dest.id.0) {
                        scratch.ports.push(dest.id.0);
                    }
                }
            }
            _ => {}
        }
    }
    for &p in &scratch.ports {
        let Some(dest) = ports.get(p as usize).and_then(Option::as_ref) else {
            let lost = scratch.dest.iter().filter(|(d, _)| *d == Dest::Port(p)).count();
            f.counters.drop_frames(DropReason::RxNotReady, lost as u64);
            continue;
        };
        let frames = scratch.tx[..n].iter().zip(&scratch.dest).filter_map(|(chain, &(d, len))| {
            let to_p = d == Dest::Port(p) || (d == Dest::Flood && dest.connected());
            to_p.then_some(Frame::from_chain(chain, hdr_len, len))
        });
        deliver_group(dest, frames, &mut scratch.rx);
    }
    drop(ports);

    // 4. Complete the TX chains (length 0: the device writes nothing into
    // TX buffers), in order: one publish, at most one interrupt.
    f.counters.tx_packets.add(tx_packets);
    f.counters.tx_bytes.add(tx_bytes);
    for chain in &scratch.tx[..n] {
        ring.complete(chain, 0);
    }
    ring.publish_used();
    if ring.mem().revoked() {
        fault = Some(ErrorKind::MemoryRevoked);
    }
    if s.interrupt() {
        f.counters.interrupts.inc();
    }
    if let Some(kind) = fault {
        fault_queue(f, &mut s, kind, tx.index);
    }
    n.max(1)
}
