//! State shared by every engine: the switch and the port table.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use vfnic_op::Function;
use vfnic_switch::{Fdb, Key, PortId};

use crate::uplink::{is_uplink_port, Uplink};

/// The switch's forwarding table and the functions behind its ports.
pub struct Fabric {
    /// Forwarding database (written through [`Fabric::fdb`], which keeps
    /// `fdb_generation` equal to its generation).
    fdb: RwLock<Fdb>,
    /// The table's generation, readable without its lock: an engine whose
    /// copy of a decision ([`Fdb::generation`]) still stands needs no lock.
    fdb_generation: AtomicU64,
    /// The function on each VF port. Replaced whole when a port is
    /// attached or detached, so an engine keeps the table it read
    /// ([`PortCache`]) until `ports_generation` moves.
    ports: RwLock<PortTable>,
    ports_generation: AtomicU64,
    /// The static entry each VF port is bound to (its VLAN and MAC).
    bound: Mutex<HashMap<PortId, Key>>,
    /// The uplinks (switch ports from `uplink::UPLINK_PORT_BASE` up).
    uplinks: RwLock<Vec<Arc<Uplink>>>,
    epoch: Instant,
}

impl Default for Fabric {
    fn default() -> Self {
        let fdb = Fdb::default();
        Fabric {
            fdb_generation: AtomicU64::new(fdb.generation()),
            fdb: RwLock::new(fdb),
            ports: RwLock::new(PortTable::default()),
            ports_generation: AtomicU64::new(0),
            bound: Mutex::new(HashMap::new()),
            uplinks: RwLock::new(Vec::new()),
            epoch: Instant::now(),
        }
    }
}

/// Write access to the forwarding table; when it ends, the table's
/// generation is published for [`Fabric::fdb_generation`].
pub struct FdbWrite<'a> {
    fdb: RwLockWriteGuard<'a, Fdb>,
    generation: &'a AtomicU64,
}

impl std::ops::Deref for FdbWrite<'_> {
    type Target = Fdb;

    fn deref(&self) -> &Fdb {
        &self.fdb
    }
}

impl std::ops::DerefMut for FdbWrite<'_> {
    fn deref_mut(&mut self) -> &mut Fdb {
        &mut self.fdb
    }
}

impl Drop for FdbWrite<'_> {
    fn drop(&mut self) {
        // Still under the write lock (fields drop after this).
        self.generation.store(self.fdb.generation(), Ordering::Release);
    }
}

/// The function behind each VF port (indexed by port number).
pub type PortTable = Arc<[Option<Arc<Function>>]>;

/// An engine's copy of the port table, read again only when the table
/// changed: a burst takes it with no lock and no atomic read-modify-write
/// (reading the port table under its lock took two per burst, on a line
/// every engine writes).
#[derive(Default)]
pub struct PortCache {
    generation: u64,
    table: Option<PortTable>,
}

impl PortCache {
    /// The current port table, for the length of a burst; hand it back
    /// with [`PortCache::put`].
    #[inline]
    pub fn take(&mut self, fabric: &Fabric) -> PortTable {
        self.get(fabric);
        self.table.take().expect("get keeps a table")
    }

    /// The current port table, borrowed (for a burst that keeps `self`
    /// borrowed meanwhile: no move of the table out and back).
    #[inline]
    pub fn get(&mut self, fabric: &Fabric) -> &PortTable {
        // The generation is read before the table: a table newer than the
        // generation kept is only read again next time.
        let generation = fabric.ports_generation.load(Ordering::Acquire);
        if self.table.is_none() || self.generation != generation {
            self.generation = generation;
            self.table = Some(fabric.ports());
        }
        self.table.as_ref().expect("set just above")
    }

    /// Keeps `table` (from [`PortCache::take`]) for the next burst.
    #[inline]
    pub fn put(&mut self, table: PortTable) {
        self.table = Some(table);
    }

    /// The table kept from the last burst, if any (possibly out of date:
    /// for hints only).
    pub fn peek(&self) -> Option<&PortTable> {
        self.table.as_ref()
    }

    /// Lets go of the table (and so of the functions detached since).
    pub fn release(&mut self) {
        self.table = None;
    }
}

/// Port number of a function.
pub fn port_of(f: &Function) -> PortId {
    PortId(f.id.0)
}

impl Fabric {
    /// Attaches `func` to its port and binds its MAC there.
    pub fn attach(&self, func: Arc<Function>) {
        let port = port_of(&func);
        self.bind(port, &func);
        self.edit_ports(|ports| {
            let i = port.0 as usize;
            if ports.len() <= i {
                ports.resize(i + 1, None);
            }
            ports[i] = Some(func);
        });
    }

    /// Replaces the port table with a copy changed by `edit`; returns what
    /// `edit` returned.
    fn edit_ports<R>(&self, edit: impl FnOnce(&mut Vec<Option<Arc<Function>>>) -> R) -> R {
        let mut ports = self.ports.write();
        let mut table = ports.to_vec();
        let r = edit(&mut table);
        *ports = table.into();
        // Under the lock, after the table: an engine that sees the new
        // generation reads a table at least this new.
        self.ports_generation.fetch_add(1, Ordering::Release);
        r
    }

    /// Detaches the function on `port` and forgets its addresses.
    pub fn detach(&self, port: PortId) {
        let old = self.edit_ports(|ports| ports.get_mut(port.0 as usize).and_then(Option::take));
        if old.is_some() {
            let key = self.bound.lock().unwrap_or_else(|e| e.into_inner()).remove(&port);
            let mut fdb = self.fdb();
            if let Some(k) = key {
                fdb.remove_static_vlan(k.vlan, k.mac);
            }
            fdb.flush_port(port);
        }
    }

    /// Binds the function's current (port VLAN, MAC) as its static entry,
    /// replacing the one it had.
    fn bind(&self, port: PortId, func: &Function) {
        let s = func.settings();
        let key = Key { vlan: s.vlan, mac: s.mac };
        let old = self.bound.lock().unwrap_or_else(|e| e.into_inner()).insert(port, key);
        let mut fdb = self.fdb();
        if let Some(k) = old.filter(|k| *k != key) {
            fdb.remove_static_vlan(k.vlan, k.mac);
        }
        fdb.set_static_vlan(key.vlan, key.mac, port);
        // Addresses learned behind this port may now be in another VLAN.
        fdb.flush_port(port);
    }

    /// Re-binds a function's static entry after the administrator changed
    /// its MAC or port VLAN. (`old`/`new` are kept for callers; the entry
    /// is taken from the function's current settings.)
    pub fn rebind_mac(&self, port: PortId, _old: vfnic_types::MacAddr, _new: vfnic_types::MacAddr) {
        self.refresh_static(port);
    }

    /// Re-binds the static entry of the function on `port` to its current
    /// (VLAN, MAC).
    pub fn refresh_static(&self, port: PortId) {
        let func = self.ports().get(port.0 as usize).cloned().flatten();
        if let Some(f) = func {
            self.bind(port, &f);
        }
    }

    /// Write access to the forwarding table.
    pub fn fdb(&self) -> FdbWrite<'_> {
        FdbWrite { fdb: self.fdb.write(), generation: &self.fdb_generation }
    }

    /// Read access to the forwarding table.
    pub fn fdb_read(&self) -> RwLockReadGuard<'_, Fdb> {
        self.fdb.read()
    }

    /// The forwarding table's generation ([`Fdb::generation`]), read
    /// without its lock (a table changed under way may already show its
    /// next one: a decision taken before is still one of the old table).
    #[inline]
    pub fn fdb_generation(&self) -> u64 {
        self.fdb_generation.load(Ordering::Acquire)
    }

    /// The port table as it is now (engines keep theirs in a
    /// [`PortCache`]).
    pub fn ports(&self) -> PortTable {
        self.ports.read().clone()
    }

    /// Milliseconds since the fabric was made (the switch's clock).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Nanoseconds on the engines' clock (the TSC: no system call), for
    /// QoS and the switch's ageing.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        vfnic_dma::tsc::ns()
    }

    /// Attaches an uplink to the switch (its port number is `uplink.id`).
    pub fn add_uplink(&self, uplink: Arc<Uplink>) {
        let mut u = self.uplinks.write();
        u.retain(|x| x.id != uplink.id);
        u.push(uplink);
    }

    /// Detaches the uplink on `port` and forgets the addresses behind it.
    pub fn remove_uplink(&self, port: PortId) {
        self.uplinks.write().retain(|x| x.id != port);
        self.fdb().flush_port(port);
    }

    /// The uplinks, for the length of a send.
    pub fn uplinks(&self) -> RwLockReadGuard<'_, Vec<Arc<Uplink>>> {
        self.uplinks.read()
    }

    /// The uplink on switch port `port`.
    pub fn uplink(&self, port: PortId) -> Option<Arc<Uplink>> {
        self.uplinks().iter().find(|u| u.id == port).cloned()
    }

    /// Whether any uplink is attached (a flood then also goes out of them).
    pub fn has_uplinks(&self) -> bool {
        !self.uplinks().is_empty()
    }

    /// The uplink port behind which `mac` (in `vlan`, 0 = untagged) was
    /// learned, if it lives behind an uplink; `None` for a local VF's or an
    /// unknown address.
    pub fn uplink_port_for(&self, mac: vfnic_types::MacAddr, vlan: u16) -> Option<PortId> {
        self.uplink_lookup(mac, vlan).filter(|p| is_uplink_port(*p))
    }

    /// The port of `mac` in `vlan`, VF or uplink.
    pub(crate) fn uplink_lookup(&self, mac: vfnic_types::MacAddr, vlan: u16) -> Option<PortId> {
        self.fdb_read().lookup_vlan(vlan, mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfnic_op::FunctionSettings;
    use vfnic_types::{MacAddr, VfId};

    fn vf(i: u16) -> Arc<Function> {
        Arc::new(Function::new(VfId(i), FunctionSettings::new(MacAddr::for_vf(i), format!("vf{i}").into()), 1))
    }

    #[test]
    fn published_generation_follows_every_write_of_the_table() {
        let fabric = Fabric::default();
        assert_eq!(fabric.fdb_generation(), fabric.fdb_read().generation());
        let before = fabric.fdb_generation();
        fabric.attach(vf(1));
        let after = fabric.fdb_generation();
        assert_ne!(after, before, "binding the VF's address changes a decision");
        assert_eq!(after, fabric.fdb_read().generation());
        // A write through the guard, even replacing the whole table.
        *fabric.fdb() = Fdb::default();
        assert_eq!(fabric.fdb_generation(), fabric.fdb_read().generation());
        assert_ne!(fabric.fdb_generation(), after);
    }

    #[test]
    fn an_engine_copy_of_the_port_table_follows_attach_and_detach() {
        let fabric = Fabric::default();
        let mut cache = PortCache::default();
        let t = cache.take(&fabric);
        assert!(t.is_empty());
        cache.put(t);
        fabric.attach(vf(2));
        let t = cache.take(&fabric);
        assert_eq!(t.len(), 3);
        assert_eq!(t[2].as_ref().map(|f| f.id), Some(VfId(2)));
        cache.put(t);
        // Unchanged: the same table, not read again.
        let t = cache.take(&fabric);
        assert!(Arc::ptr_eq(&t, &fabric.ports()));
        cache.put(t);
        fabric.detach(PortId(2));
        let t = cache.take(&fabric);
        assert!(t[2].is_none(), "a detached VF is gone from the next burst's table");
        cache.put(t);
        // Released (an engine going to sleep): the function is not kept.
        let f = vf(4);
        fabric.attach(f.clone());
        let t = cache.take(&fabric);
        cache.put(t);
        fabric.detach(PortId(4));
        cache.release();
        assert_eq!(Arc::strong_count(&f), 1);
        // Borrowed (`get`) as taken: read again when the table changed only.
        fabric.attach(vf(5));
        assert_eq!(cache.get(&fabric)[5].as_ref().map(|f| f.id), Some(VfId(5)));
        let kept = cache.get(&fabric).clone();
        assert!(Arc::ptr_eq(&kept, cache.get(&fabric)), "unchanged: not read again");
        fabric.detach(PortId(5));
        assert!(cache.get(&fabric)[5].is_none());
    }
}
