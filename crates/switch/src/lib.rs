//! Stage ④ of the adapter: the embedded switch (a VEB, as the legacy eSwitch
//! of an SR-IOV NIC).
//!
//! Sans-IO and deterministic: the caller passes the time in milliseconds and
//! owns all threads. The data path asks [`Fdb::forward`] where a frame goes
//! and tells [`Fdb::learn`] which source address it saw on which port.
//!
//! * Entries are keyed by (VLAN, MAC): each VLAN is its own broadcast
//!   domain (VLAN 0 = untagged).
//! * Each VF's own MAC is a *static* entry: learning never moves it.
//! * Other unicast sources are learned (bounded table, aged out).
//! * Broadcast, multicast and unknown unicast are flooded to every other port;
//!   nothing is ever sent back to the port it came from.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use vfnic_types::MacAddr;

/// A switch port: a VF today, an uplink later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u16);

/// Where a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// To exactly this port.
    Unicast(PortId),
    /// To every port but the ingress one.
    Flood,
    /// Nowhere: the destination is the ingress port itself.
    Hairpin,
}

/// Outcome of [`Fdb::learn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learn {
    /// Already known on this port (refreshed).
    Known,
    /// New entry or an entry that moved from another port.
    Learned,
    /// Not learned: group/zero address, a static address of another port,
    /// or a full table.
    Ignored,
}

#[derive(Debug, Clone, Copy)]
struct Learned {
    port: PortId,
    last_seen_ms: u64,
}

/// Default ageing time of learned entries (IEEE 802.1D default: 300 s).
pub const DEFAULT_AGEING_MS: u64 = 300_000;
/// Default bound of the learned table; a tenant spraying source addresses
/// cannot grow the daemon beyond it.
pub const DEFAULT_MAX_LEARNED: usize = 4096;

/// A forwarding-table key: VLAN (0 = untagged) and address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    /// VLAN id (0 = untagged).
    pub vlan: u16,
    /// Address.
    pub mac: MacAddr,
}

impl std::hash::Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.mac.to_u64() | (self.vlan as u64) << 48);
    }
}

/// Hasher for MAC keys: one multiply of the 48-bit address (Fibonacci
/// hashing). MAC addresses are not secret and the table is bounded, so
/// SipHash's flood resistance buys nothing on this per-frame path.
#[derive(Default, Clone, Copy)]
pub struct MacHasher(u64);

impl Hasher for MacHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ *b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Source of table generations, unique in the process.
fn next_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

type MacMap<V> = HashMap<Key, V, BuildHasherDefault<MacHasher>>;

/// The forwarding database.
#[derive(Debug, Clone)]
pub struct Fdb {
    statics: MacMap<PortId>,
    learned: MacMap<Learned>,
    max_learned: usize,
    ageing_ms: u64,
    /// Bumped whenever where some address goes changes (not when a known
    /// address is merely seen again): a copy of a decision taken at one
    /// generation holds until the next.
    generation: u64,
}

impl Default for Fdb {
    fn default() -> Self {
        Fdb::new(DEFAULT_MAX_LEARNED, DEFAULT_AGEING_MS)
    }
}

impl Fdb {
    /// An empty table holding at most `max_learned` learned entries, each
    /// forgotten `ageing_ms` after it was last seen.
    pub fn new(max_learned: usize, ageing_ms: u64) -> Self {
        Fdb {
            statics: MacMap::default(),
            learned: MacMap::default(),
            max_learned,
            ageing_ms,
            generation: next_generation(),
        }
    }

    /// The table's generation: equal generations, equal decisions (every
    /// change of where an address goes, or of what is known, moves it on;
    /// generations are unique across tables, so a table built anew is
    /// never mistaken for the one it replaced).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// How long a learned address is kept after it was last seen.
    pub fn ageing_ms(&self) -> u64 {
        self.ageing_ms
    }

    fn bump(&mut self) {
        self.generation = next_generation();
    }

    /// Binds `mac` in VLAN 0 to `port` for good (see [`Fdb::set_static_vlan`]).
    pub fn set_static(&mut self, mac: MacAddr, port: PortId) {
        self.set_static_vlan(0, mac, port);
    }

    /// Binds (`vlan`, `mac`) to `port` for good (a VF's own address).
    /// Replaces any static or learned entry for it.
    pub fn set_static_vlan(&mut self, vlan: u16, mac: MacAddr, port: PortId) {
        let k = Key { vlan, mac };
        self.learned.remove(&k);
        self.statics.insert(k, port);
        self.bump();
    }

    /// Removes the static entry of `mac` in VLAN 0, if any.
    pub fn remove_static(&mut self, mac: MacAddr) {
        self.remove_static_vlan(0, mac);
    }

    /// Removes the static entry of (`vlan`, `mac`), if any.
    pub fn remove_static_vlan(&mut self, vlan: u16, mac: MacAddr) {
        self.statics.remove(&Key { vlan, mac });
        self.bump();
    }

    /// Forgets every learned entry behind `port` (the tenant went away).
    pub fn flush_port(&mut self, port: PortId) {
        self.learned.retain(|_, e| e.port != port);
        self.bump();
    }

    /// Looks up the port of a unicast address in VLAN 0.
    pub fn lookup(&self, mac: MacAddr) -> Option<PortId> {
        self.lookup_vlan(0, mac)
    }

    /// Looks up the port of a unicast address in `vlan`.
    #[inline]
    pub fn lookup_vlan(&self, vlan: u16, mac: MacAddr) -> Option<PortId> {
        let k = Key { vlan, mac };
        self.statics.get(&k).copied().or_else(|| self.learned.get(&k).map(|e| e.port))
    }

    /// Decides where a frame from `ingress` to `dst` goes, in VLAN 0.
    pub fn forward(&self, ingress: PortId, dst: MacAddr) -> Forward {
        self.forward_vlan(ingress, 0, dst)
    }

    /// Decides where a frame from `ingress` to `dst` in `vlan` goes.
    #[inline]
    pub fn forward_vlan(&self, ingress: PortId, vlan: u16, dst: MacAddr) -> Forward {
        if dst.is_multicast() {
            return Forward::Flood;
        }
        match self.lookup_vlan(vlan, dst) {
            Some(p) if p == ingress => Forward::Hairpin,
            Some(p) => Forward::Unicast(p),
            None => Forward::Flood,
        }
    }

    /// [`Fdb::is_learned_vlan`] in VLAN 0.
    pub fn is_learned(&self, src: MacAddr, port: PortId, now_ms: u64) -> bool {
        self.is_learned_vlan(0, src, port, now_ms)
    }

    /// True when [`Fdb::learn_vlan`] would change nothing: lets the data
    /// path check under a read lock and take the write lock only on a change.
    pub fn is_learned_vlan(&self, vlan: u16, src: MacAddr, port: PortId, now_ms: u64) -> bool {
        if !src.is_unicast() {
            return true;
        }
        let k = Key { vlan, mac: src };
        match self.statics.get(&k) {
            Some(_) => true,
            None => self
                .learned
                .get(&k)
                .is_some_and(|e| e.port == port && now_ms.saturating_sub(e.last_seen_ms) < self.ageing_ms / 2),
        }
    }

    /// [`Fdb::learn_vlan`] in VLAN 0.
    pub fn learn(&mut self, src: MacAddr, port: PortId, now_ms: u64) -> Learn {
        self.learn_vlan(0, src, port, now_ms)
    }

    /// Records that `src` was seen in `vlan` on `port` at `now_ms`.
    pub fn learn_vlan(&mut self, vlan: u16, src: MacAddr, port: PortId, now_ms: u64) -> Learn {
        let k = Key { vlan, mac: src };
        if !src.is_unicast() || self.statics.contains_key(&k) {
            return Learn::Ignored;
        }
        if let Some(e) = self.learned.get_mut(&k) {
            let moved = e.port != port;
            *e = Learned { port, last_seen_ms: now_ms };
            if moved {
                self.bump();
                return Learn::Learned;
            }
            return Learn::Known;
        }
        if self.learned.len() >= self.max_learned {
            self.age(now_ms);
            if self.learned.len() >= self.max_learned {
                return Learn::Ignored;
            }
        }
        self.learned.insert(k, Learned { port, last_seen_ms: now_ms });
        self.bump();
        Learn::Learned
    }

    /// Drops learned entries not seen for the ageing time.
    pub fn age(&mut self, now_ms: u64) {
        let ageing = self.ageing_ms;
        let before = self.learned.len();
        self.learned.retain(|_, e| now_ms.saturating_sub(e.last_seen_ms) < ageing);
        if self.learned.len() != before {
            self.bump();
        }
    }

    /// Number of learned (non-static) entries.
    pub fn learned_len(&self) -> usize {
        self.learned.len()
    }

    /// Every entry as (key, port, is_static), sorted by VLAN and address.
    pub fn entries(&self) -> Vec<(Key, PortId, bool)> {
        let mut v: Vec<_> = self
            .statics
            .iter()
            .map(|(k, p)| (*k, *p, true))
            .chain(self.learned.iter().map(|(k, e)| (*k, e.port, false)))
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P0: PortId = PortId(0);
    const P1: PortId = PortId(1);
    const P2: PortId = PortId(2);

    fn vf_fdb() -> Fdb {
        let mut f = Fdb::default();
        f.set_static(MacAddr::for_vf(0), P0);
        f.set_static(MacAddr::for_vf(1), P1);
        f
    }

    #[test]
    fn unicast_to_static_mac() {
        let f = vf_fdb();
        assert_eq!(f.forward(P0, MacAddr::for_vf(1)), Forward::Unicast(P1));
        assert_eq!(f.forward(P1, MacAddr::for_vf(0)), Forward::Unicast(P0));
    }

    #[test]
    fn generation_moves_with_every_change_of_a_decision_only() {
        let mut f = vf_fdb();
        let m: MacAddr = "02:aa:00:00:00:01".parse().unwrap();
        let mut g = f.generation();
        let mut changed = |f: &Fdb, expect: bool, what: &str| {
            assert_eq!(f.generation() != g, expect, "{what}");
            g = f.generation();
        };
        f.learn(m, P2, 0);
        changed(&f, true, "learned");
        f.learn(m, P2, 10);
        let _ = (f.forward(P0, m), f.is_learned(m, P2, 10));
        changed(&f, false, "seen again, looked up");
        f.learn(m, P1, 20);
        changed(&f, true, "moved");
        f.age(30);
        changed(&f, false, "nothing aged out");
        f.age(20 + DEFAULT_AGEING_MS);
        changed(&f, true, "aged out");
        f.remove_static(MacAddr::for_vf(1));
        changed(&f, true, "static removed");
        f.set_static(MacAddr::for_vf(1), P1);
        changed(&f, true, "static set");
        f.flush_port(P2);
        changed(&f, true, "port flushed");
        // A table built anew never shares a generation with an old one.
        assert_ne!(Fdb::default().generation(), Fdb::default().generation());
    }

    #[test]
    fn never_back_to_sender() {
        let f = vf_fdb();
        assert_eq!(f.forward(P0, MacAddr::for_vf(0)), Forward::Hairpin);
    }

    #[test]
    fn group_and_unknown_flood() {
        let f = vf_fdb();
        assert_eq!(f.forward(P0, MacAddr::BROADCAST), Forward::Flood);
        assert_eq!(f.forward(P0, "33:33:00:00:00:01".parse().unwrap()), Forward::Flood);
        assert_eq!(f.forward(P0, "02:00:00:00:00:99".parse().unwrap()), Forward::Flood);
    }

    #[test]
    fn learns_moves_and_ages() {
        let mut f = vf_fdb();
        let m: MacAddr = "02:aa:00:00:00:01".parse().unwrap();
        assert_eq!(f.learn(m, P2, 0), Learn::Learned);
        assert_eq!(f.forward(P0, m), Forward::Unicast(P2));
        assert_eq!(f.learn(m, P2, 10), Learn::Known);
        assert_eq!(f.learn(m, P1, 20), Learn::Learned);
        assert_eq!(f.forward(P0, m), Forward::Unicast(P1));
        f.age(20 + DEFAULT_AGEING_MS);
        assert_eq!(f.forward(P0, m), Forward::Flood);
    }

    #[test]
    fn static_mac_cannot_be_stolen() {
        let mut f = vf_fdb();
        assert_eq!(f.learn(MacAddr::for_vf(0), P1, 0), Learn::Ignored);
        assert_eq!(f.forward(P2, MacAddr::for_vf(0)), Forward::Unicast(P0));
        assert_eq!(f.learn(MacAddr::BROADCAST, P1, 0), Learn::Ignored);
    }

    #[test]
    fn learned_table_is_bounded() {
        let mut f = Fdb::new(2, 1000);
        let mac = |i: u8| MacAddr([2, 0, 0, 0, 0, i]);
        assert_eq!(f.learn(mac(1), P0, 0), Learn::Learned);
        assert_eq!(f.learn(mac(2), P0, 0), Learn::Learned);
        assert_eq!(f.learn(mac(3), P0, 1), Learn::Ignored);
        // Once the old ones age out there is room again.
        assert_eq!(f.learn(mac(3), P0, 1000), Learn::Learned);
        assert_eq!(f.learned_len(), 1);
    }

    #[test]
    fn vlans_are_separate_domains() {
        let mut f = Fdb::default();
        let m = MacAddr::for_vf(5);
        f.set_static_vlan(10, m, P0);
        assert_eq!(f.forward_vlan(P1, 10, m), Forward::Unicast(P0));
        assert_eq!(f.forward_vlan(P1, 20, m), Forward::Flood, "same MAC, other VLAN: unknown");
        assert_eq!(f.forward(P1, m), Forward::Flood);
        assert_eq!(f.learn_vlan(20, m, P2, 0), Learn::Learned, "not the static entry of VLAN 10");
        assert_eq!(f.forward_vlan(P1, 20, m), Forward::Unicast(P2));
        assert_eq!(f.forward_vlan(P1, 10, m), Forward::Unicast(P0));
    }

    #[test]
    fn flush_port_forgets_only_that_port() {
        let mut f = vf_fdb();
        f.learn(MacAddr([2, 0, 0, 0, 0, 1]), P0, 0);
        f.learn(MacAddr([2, 0, 0, 0, 0, 2]), P2, 0);
        f.flush_port(P2);
        assert_eq!(f.learned_len(), 1);
        assert_eq!(f.entries().len(), 3);
    }

    proptest! {
        /// Whatever a tenant sends, a frame never goes back to its ingress
        /// port and static addresses never move.
        #[test]
        fn invariants_hold(ops in proptest::collection::vec((0u16..4, any::<[u8; 6]>(), any::<[u8; 6]>()), 1..200)) {
            let mut f = vf_fdb();
            for (i, (port, src, dst)) in ops.into_iter().enumerate() {
                let port = PortId(port);
                f.learn(MacAddr(src), port, i as u64);
                match f.forward(port, MacAddr(dst)) {
                    Forward::Unicast(p) => prop_assert_ne!(p, port),
                    Forward::Hairpin => prop_assert_eq!(f.lookup(MacAddr(dst)), Some(port)),
                    Forward::Flood => {}
                }
                prop_assert_eq!(f.lookup(MacAddr::for_vf(0)), Some(P0));
                prop_assert_eq!(f.lookup(MacAddr::for_vf(1)), Some(P1));
                prop_assert!(f.learned_len() <= DEFAULT_MAX_LEARNED);
            }
        }
    }
}
