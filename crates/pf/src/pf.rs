//! The running physical function: VFs, their sockets, engines and switch
//! ports, and the administrator's run-time settings.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use thiserror::Error;
use tracing::info;
use vfnic_bus::VfListener;
use vfnic_engine::fabric::port_of;
use vfnic_engine::pool::PoolStats;
use vfnic_engine::{EngineConfig, EnginePool, Fabric};
use vfnic_op::{Function, FunctionSettings};
use vfnic_types::{LinkState, MacAddr, VfCountersSnapshot, VfId};

use crate::config::{Config, VfSettings};

/// Longest interrupt hold: one second (a latency no network stack wants,
/// but ethtool accepts long holds too).
pub const MAX_RX_USECS: u32 = 1_000_000;

/// A control-plane operation that failed.
#[derive(Debug, Error)]
pub enum PfError {
    /// A VF socket could not be created.
    #[error("Cannot listen on {0}")]
    Listen(PathBuf, #[source] std::io::Error),
    /// The engine threads could not be started.
    #[error("Cannot start the DMA engines")]
    Engines(#[source] std::io::Error),
    /// No such VF.
    #[error("VF {0} does not exist")]
    UnknownVf(u16),
    /// A setting the PF refuses.
    #[error("{0}")]
    Invalid(String),
}

struct Vf {
    func: Arc<Function>,
    listener: VfListener,
}

/// What `vfnic vf show` prints.
#[derive(Debug, Clone, Serialize)]
pub struct VfInfo {
    /// VF index.
    pub id: u16,
    /// MAC address.
    pub mac: MacAddr,
    /// MTU.
    pub mtu: u16,
    /// Administrative link state.
    pub link: LinkState,
    /// Socket path.
    pub socket: PathBuf,
    /// A tenant is attached.
    pub connected: bool,
    /// Features the tenant acknowledged (hex).
    pub features: String,
    /// Virtio device status byte.
    pub status: u8,
    /// A queue is faulted (needs a reset or reconnect).
    pub faulted: bool,
    /// Queue pairs.
    pub queue_pairs: u16,
    /// Engine serving each queue pair.
    pub engines: Vec<usize>,
    /// Interrupt moderation: hold RX interrupts up to this long.
    pub rx_usecs: u32,
    /// Interrupt moderation: or until this many frames are pending.
    pub rx_frames: u32,
}

/// One VF's line in `vfnic stats`.
#[derive(Debug, Clone, Serialize)]
pub struct VfStats {
    /// VF index.
    pub id: u16,
    /// MAC address.
    pub mac: MacAddr,
    /// A tenant is attached.
    pub connected: bool,
    /// Administrative link state.
    pub link: LinkState,
    /// Counters.
    #[serde(flatten)]
    pub counters: VfCountersSnapshot,
}

/// An entry of the switch's forwarding table.
#[derive(Debug, Clone, Serialize)]
pub struct FdbEntry {
    /// Address.
    pub mac: MacAddr,
    /// Port (VF index).
    pub port: u16,
    /// Static (a VF's own MAC) or learned.
    pub r#static: bool,
}

/// A change requested by `vfnic vf set`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
pub struct VfChange {
    /// New MAC address.
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// New administrative link state.
    #[serde(default)]
    pub link: Option<LinkState>,
    /// New interrupt moderation time (microseconds).
    #[serde(default)]
    pub rx_usecs: Option<u32>,
    /// New interrupt moderation frame count.
    #[serde(default)]
    pub rx_frames: Option<u32>,
}

/// The adapter.
pub struct Pf {
    config: Config,
    fabric: Arc<Fabric>,
    vfs: Mutex<BTreeMap<u16, Vf>>,
    // Dropped last: listeners stop before the engines.
    engines: EnginePool,
}

impl Pf {
    /// Builds the adapter from `config` and starts serving every VF socket.
    pub fn start(config: Config) -> Result<Pf, PfError> {
        let fabric = Arc::new(Fabric::default());
        let engines = EnginePool::start(
            EngineConfig {
                engines: config.engines,
                cpus: config.engine_cpus.clone(),
                rebalance_interval: std::time::Duration::from_millis(config.rebalance_interval_ms),
                rebalance_threshold_pct: config.rebalance_threshold_pct,
                idle_spin: std::time::Duration::from_micros(config.idle_spin_us),
            },
            fabric.clone(),
        )
        .map_err(PfError::Engines)?;
        let pf = Pf { config: config.clone(), fabric, vfs: Mutex::new(BTreeMap::new()), engines };
        for s in &config.vfs {
            pf.add_vf(s)?;
        }
        info!(vfs = config.vfs.len(), engines = config.engines, run_dir = %config.run_dir.display(), "physical function up");
        Ok(pf)
    }

    /// The configuration it started from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn vfs(&self) -> std::sync::MutexGuard<'_, BTreeMap<u16, Vf>> {
        self.vfs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add_vf(&self, s: &VfSettings) -> Result<(), PfError> {
        let func = Arc::new(Function::new(
            VfId(s.id),
            FunctionSettings {
                mtu: s.mtu,
                link: s.link,
                rx_usecs: s.rx_usecs,
                rx_frames: s.rx_frames,
                ..FunctionSettings::new(s.mac, s.socket.clone())
            },
            self.config.queue_pairs,
        ));
        self.fabric.attach(func.clone());
        let engines = self.engines.add(func.clone());
        let listener = VfListener::start(func.clone(), &s.socket).map_err(|e| PfError::Listen(s.socket.clone(), e))?;
        info!(vf = s.id, mac = %s.mac, socket = %s.socket.display(), ?engines, "VF ready");
        self.vfs().insert(s.id, Vf { func, listener });
        Ok(())
    }

    fn info(&self, v: &Vf) -> VfInfo {
        let s = v.func.settings();
        VfInfo {
            id: v.func.id.0,
            mac: s.mac,
            mtu: s.mtu,
            link: s.link,
            socket: v.listener.path().to_path_buf(),
            connected: v.func.connected(),
            features: format!("{:#x}", v.func.acked_features()),
            status: v.func.status(),
            faulted: v.func.faulted(),
            queue_pairs: v.func.queue_pairs(),
            engines: self.engines.engines_of(v.func.id),
            rx_usecs: s.rx_usecs,
            rx_frames: s.rx_frames,
        }
    }

    /// Every VF.
    pub fn vf_list(&self) -> Vec<VfInfo> {
        self.vfs().values().map(|v| self.info(v)).collect()
    }

    /// One VF.
    pub fn vf_show(&self, id: u16) -> Result<VfInfo, PfError> {
        self.vfs().get(&id).map(|v| self.info(v)).ok_or(PfError::UnknownVf(id))
    }

    /// Applies `change` to VF `id`; all or nothing.
    pub fn vf_set(&self, id: u16, change: &VfChange) -> Result<VfInfo, PfError> {
        let vfs = self.vfs();
        let v = vfs.get(&id).ok_or(PfError::UnknownVf(id))?;
        if let Some(mac) = change.mac {
            if !mac.is_unicast() {
                return Err(PfError::Invalid(format!("mac {mac} is not a unicast address")));
            }
            if let Some(other) = vfs.values().find(|o| o.func.id.0 != id && o.func.settings().mac == mac) {
                return Err(PfError::Invalid(format!("mac {mac} is already VF {}'s", other.func.id.0)));
            }
        }
        if change.rx_usecs.is_some_and(|u| u > MAX_RX_USECS) {
            return Err(PfError::Invalid(format!("rx-usecs must be at most {MAX_RX_USECS}")));
        }
        let old = v.func.settings();
        v.func.update_settings(|s| {
            if let Some(mac) = change.mac {
                s.mac = mac;
            }
            if let Some(link) = change.link {
                s.link = link;
            }
            if let Some(u) = change.rx_usecs {
                s.rx_usecs = u;
            }
            if let Some(n) = change.rx_frames {
                s.rx_frames = n;
            }
        });
        if let Some(mac) = change.mac {
            self.fabric.rebind_mac(port_of(&v.func), old.mac, mac);
        }
        info!(vf = id, ?change, "VF settings changed");
        Ok(self.info(v))
    }

    /// Closes every VF socket (tenants are disconnected, socket files
    /// removed). The daemon calls this on shutdown.
    pub fn shutdown(&self) {
        let vfs = std::mem::take(&mut *self.vfs());
        drop(vfs);
    }

    /// Counters of every VF.
    pub fn stats(&self) -> Vec<VfStats> {
        self.vfs()
            .values()
            .map(|v| {
                let s = v.func.settings();
                VfStats {
                    id: v.func.id.0,
                    mac: s.mac,
                    connected: v.func.connected(),
                    link: s.link,
                    counters: v.func.counters.snapshot(),
                }
            })
            .collect()
    }

    /// Counters of every engine.
    pub fn engines(&self) -> PoolStats {
        self.engines.stats()
    }

    /// Moves queue pair `qp` of VF `vf` to `engine`.
    pub fn engine_move(&self, vf: u16, qp: u16, engine: usize) -> Result<PoolStats, PfError> {
        if !self.vfs().contains_key(&vf) {
            return Err(PfError::UnknownVf(vf));
        }
        self.engines.pin(VfId(vf), qp, engine).map_err(PfError::Invalid)?;
        Ok(self.engines.stats())
    }

    /// The switch's forwarding table.
    pub fn fdb(&self) -> Vec<FdbEntry> {
        let fdb = self.fabric.fdb.read().unwrap_or_else(|e| e.into_inner());
        fdb.entries().into_iter().map(|(mac, port, s)| FdbEntry { mac, port: port.0, r#static: s }).collect()
    }
}
