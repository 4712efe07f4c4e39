//! State shared by every engine: the switch and the port table.

use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Instant;

use vfnic_op::Function;
use vfnic_switch::{Fdb, PortId};

/// The switch's forwarding table and the functions behind its ports.
pub struct Fabric {
    /// Forwarding database.
    pub fdb: RwLock<Fdb>,
    ports: RwLock<Vec<Option<Arc<Function>>>>,
    epoch: Instant,
}

impl Default for Fabric {
    fn default() -> Self {
        Fabric { fdb: RwLock::new(Fdb::default()), ports: RwLock::new(Vec::new()), epoch: Instant::now() }
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
        self.fdb().set_static(func.settings().mac, port);
        let mut ports = self.ports.write().unwrap_or_else(|e| e.into_inner());
        let i = port.0 as usize;
        if ports.len() <= i {
            ports.resize(i + 1, None);
        }
        ports[i] = Some(func);
    }

    /// Detaches the function on `port` and forgets its addresses.
    pub fn detach(&self, port: PortId) {
        let old = {
            let mut ports = self.ports.write().unwrap_or_else(|e| e.into_inner());
            ports.get_mut(port.0 as usize).and_then(Option::take)
        };
        if let Some(f) = old {
            let mut fdb = self.fdb();
            fdb.remove_static(f.settings().mac);
            fdb.flush_port(port);
        }
    }

    /// Moves a function's static MAC entry (administrator changed it).
    pub fn rebind_mac(&self, port: PortId, old: vfnic_types::MacAddr, new: vfnic_types::MacAddr) {
        let mut fdb = self.fdb();
        fdb.remove_static(old);
        fdb.set_static(new, port);
    }

    /// Write access to the forwarding table.
    pub fn fdb(&self) -> std::sync::RwLockWriteGuard<'_, Fdb> {
        self.fdb.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The port table, for the length of a burst.
    pub fn ports(&self) -> RwLockReadGuard<'_, Vec<Option<Arc<Function>>>> {
        self.ports.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Milliseconds since the fabric was made (the switch's clock).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}
