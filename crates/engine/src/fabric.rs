//! State shared by every engine: the switch and the port table.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use vfnic_op::Function;
use vfnic_switch::{Fdb, Key, PortId};

use crate::uplink::{is_uplink_port, Uplink};

/// The switch's forwarding table and the functions behind its ports.
pub struct Fabric {
    /// Forwarding database.
    pub fdb: RwLock<Fdb>,
    ports: RwLock<Vec<Option<Arc<Function>>>>,
    /// The static entry each VF port is bound to (its VLAN and MAC).
    bound: Mutex<HashMap<PortId, Key>>,
    /// The uplinks (switch ports from `uplink::UPLINK_PORT_BASE` up).
    uplinks: RwLock<Vec<Arc<Uplink>>>,
    epoch: Instant,
}

impl Default for Fabric {
    fn default() -> Self {
        Fabric {
            fdb: RwLock::new(Fdb::default()),
            ports: RwLock::new(Vec::new()),
            bound: Mutex::new(HashMap::new()),
            uplinks: RwLock::new(Vec::new()),
            epoch: Instant::now(),
        }
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
        let mut ports = self.ports.write();
        let i = port.0 as usize;
        if ports.len() <= i {
            ports.resize(i + 1, None);
        }
        ports[i] = Some(func);
    }

    /// Detaches the function on `port` and forgets its addresses.
    pub fn detach(&self, port: PortId) {
        let old = {
            let mut ports = self.ports.write();
            ports.get_mut(port.0 as usize).and_then(Option::take)
        };
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
    pub fn fdb(&self) -> RwLockWriteGuard<'_, Fdb> {
        self.fdb.write()
    }

    /// The port table, for the length of a burst.
    pub fn ports(&self) -> RwLockReadGuard<'_, Vec<Option<Arc<Function>>>> {
        self.ports.read()
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
        self.fdb.read().lookup_vlan(vlan, mac)
    }
}
