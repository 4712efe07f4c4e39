//! The running physical function: VFs, their sockets, engines and switch
//! ports, and the administrator's run-time settings.
//!
//! Locks: the VF table (`Shared::vfs`) is held only for lookups, setting
//! changes (function settings, then the forwarding table) and inserts.
//! Nothing here locks a vring, joins a thread or calls the engine pool
//! while holding it: an engine answering a mailbox command holds its
//! control queue's lock when it calls [`Shared::set`] (lock order: vring,
//! VF table, settings, forwarding table).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use serde::Serialize;
use thiserror::Error;
use tracing::{info, warn};
use vfnic_bus::VfListener;
use vfnic_engine::fabric::port_of;
use vfnic_engine::pool::PoolStats;
use vfnic_engine::{EngineConfig, EnginePool, Fabric};
use vfnic_op::mailbox::{Effect, MailboxHandler};
use vfnic_op::{Function, FunctionSettings};
use vfnic_types::{LinkState, MacAddr, VfCountersSnapshot, VfId, MAX_VFS};

use crate::config::{check_settings, Config, VfSettings};

pub use crate::config::MAX_RX_USECS;

/// A control-plane operation that failed.
#[derive(Debug, Error)]
pub enum PfError {
    /// An uplink could not be started.
    #[error("Cannot start uplink {0}")]
    Uplink(String, #[source] vfnic_engine::uplink::UplinkError),
    /// No such uplink.
    #[error("Uplink {0} does not exist")]
    UnknownUplink(String),
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
    /// Administrative link state (`state`).
    pub state: LinkState,
    /// Port VLAN (0 = none).
    pub vlan: u16,
    /// Port VLAN priority.
    pub qos: u8,
    /// Spoof check.
    pub spoofchk: bool,
    /// Trusted VF.
    pub trust: bool,
    /// Promiscuous.
    pub promisc: bool,
    /// Maximum transmit rate, Mbit/s (0 = unlimited).
    pub max_tx_rate: u32,
    /// Guaranteed transmit rate, Mbit/s.
    pub min_tx_rate: u32,
    /// Share under contention.
    pub weight: u32,
    /// Link speed (receive capacity), Mbit/s (0 = the tenant's pace).
    pub speed: u32,
    /// Socket path.
    pub socket: PathBuf,
    /// A tenant is attached.
    pub connected: bool,
    /// The tenant gave a backend request channel (it hears config changes).
    pub backend_channel: bool,
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
    /// Mailbox commands granted (refusals: `errors.mailbox_refused`).
    pub mailbox_granted: u64,
    /// Counters.
    #[serde(flatten)]
    pub counters: VfCountersSnapshot,
    /// Traffic per queue pair (RSS spreads receive traffic over them).
    pub queues: Vec<QueueStatsView>,
}

/// One queue pair's traffic in `vfnic stats`.
#[derive(Debug, Clone, Serialize)]
pub struct QueueStatsView {
    /// Queue pair.
    pub qp: u16,
    /// Frames delivered on its RX queue.
    pub rx_packets: u64,
    /// Bytes delivered on its RX queue.
    pub rx_bytes: u64,
    /// Frames taken from its TX queue.
    pub tx_packets: u64,
    /// Bytes taken from its TX queue.
    pub tx_bytes: u64,
}

/// An entry of the switch's forwarding table.
#[derive(Debug, Clone, Serialize)]
pub struct FdbEntry {
    /// VLAN (0 = untagged).
    pub vlan: u16,
    /// Address.
    pub mac: MacAddr,
    /// Port (VF index).
    pub port: u16,
    /// Static (a VF's own MAC) or learned.
    pub r#static: bool,
}

/// What `vfnic pf show` prints.
#[derive(Debug, Clone, Serialize)]
pub struct PfInfo {
    /// Number of VFs.
    pub num_vfs: u16,
    /// Most VFs `set-vfs` accepts.
    pub max_vfs: u16,
    /// DMA engines.
    pub engines: usize,
    /// Queue pairs per VF.
    pub queue_pairs: u16,
    /// Where the sockets live.
    pub run_dir: PathBuf,
}

/// `vfnic vf qemu-args N`: the options a user pastes into QEMU.
#[derive(Debug, Clone, Serialize)]
pub struct QemuArgs {
    /// VF index.
    pub vf: u16,
    /// Notes to print as comment lines.
    pub comments: Vec<String>,
    /// The option groups: shared memory, chardev, netdev, device.
    pub options: Vec<String>,
    /// All of them on one line.
    pub args: String,
}

/// `vfnic vf dpdk-args N`: the EAL option for DPDK's virtio-user PMD.
#[derive(Debug, Clone, Serialize)]
pub struct DpdkArgs {
    /// VF index.
    pub vf: u16,
    /// The `--vdev` value.
    pub vdev: String,
    /// `--vdev VALUE`.
    pub args: String,
}

/// A change requested by `vfnic vf set`: the words of
/// `ip link set DEV vf N ...` (JSON keys with underscores).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
pub struct VfChange {
    /// New MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// Port VLAN (0 = none; clears `qos` unless one is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// Port VLAN priority (0-7; needs a VLAN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<u8>,
    /// Spoof check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spoofchk: Option<bool>,
    /// Trusted VF (off also turns promiscuous mode off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<bool>,
    /// Promiscuous (trusted VFs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promisc: Option<bool>,
    /// New administrative link state (`state`; `link` is accepted too).
    #[serde(default, alias = "link", skip_serializing_if = "Option::is_none")]
    pub state: Option<LinkState>,
    /// Maximum transmit rate, Mbit/s (0 = unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tx_rate: Option<u32>,
    /// Guaranteed transmit rate, Mbit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tx_rate: Option<u32>,
    /// Share under contention (1-1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Link speed (receive capacity), Mbit/s (0 = the tenant's pace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<u32>,
    /// New interrupt moderation time (microseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_usecs: Option<u32>,
    /// New interrupt moderation frame count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_frames: Option<u32>,
}

impl VfChange {
    /// Every setting of `s` (what a function-level reset applies).
    pub fn all_of(s: &VfSettings) -> VfChange {
        VfChange {
            mac: Some(s.mac),
            vlan: Some(s.vlan),
            qos: Some(s.qos),
            spoofchk: Some(s.spoofchk),
            trust: Some(s.trust),
            promisc: Some(s.promisc),
            state: Some(s.link),
            max_tx_rate: Some(s.max_tx_rate),
            min_tx_rate: Some(s.min_tx_rate),
            weight: Some(s.weight),
            speed: Some(s.speed),
            rx_usecs: Some(s.rx_usecs),
            rx_frames: Some(s.rx_frames),
        }
    }

    /// The settings `old` becomes with this change (not yet checked).
    pub fn applied_to(&self, old: &FunctionSettings) -> FunctionSettings {
        let mut s = old.clone();
        if let Some(m) = self.mac {
            s.mac = m;
        }
        if let Some(v) = self.vlan {
            s.vlan = v;
            if v == 0 && self.qos.is_none() {
                s.qos = 0;
            }
        }
        if let Some(q) = self.qos {
            s.qos = q;
        }
        if let Some(on) = self.spoofchk {
            s.spoofchk = on;
        }
        if let Some(on) = self.trust {
            s.trust = on;
            // ip-link: an untrusted VF cannot stay promiscuous.
            if !on && self.promisc.is_none() {
                s.promisc = false;
            }
        }
        if let Some(on) = self.promisc {
            s.promisc = on;
        }
        if let Some(l) = self.state {
            s.link = l;
        }
        if let Some(r) = self.max_tx_rate {
            s.max_tx_rate = r;
        }
        if let Some(r) = self.min_tx_rate {
            s.min_tx_rate = r;
        }
        if let Some(w) = self.weight {
            s.weight = w;
        }
        if let Some(r) = self.speed {
            s.speed = r;
        }
        if let Some(u) = self.rx_usecs {
            s.rx_usecs = u;
        }
        if let Some(n) = self.rx_frames {
            s.rx_frames = n;
        }
        s
    }
}

/// Who asked for a settings change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The administrator (CLI, API, reset): the tenant is told.
    Admin,
    /// The tenant itself, through the mailbox.
    Mailbox,
}

/// What the API threads and the engines' mailbox calls share.
struct Shared {
    config: Config,
    fabric: Arc<Fabric>,
    vfs: Mutex<BTreeMap<u16, Vf>>,
}

impl Shared {
    fn vfs(&self) -> MutexGuard<'_, BTreeMap<u16, Vf>> {
        self.vfs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn func(&self, id: u16) -> Result<Arc<Function>, PfError> {
        self.vfs().get(&id).map(|v| v.func.clone()).ok_or(PfError::UnknownVf(id))
    }

    /// Applies `change` to VF `id`, all or nothing: every value is checked
    /// (alone, together, and the MAC against every other VF) before
    /// anything changes. The one place that moves a VF's static switch
    /// entry. Locks no vring (the mailbox calls it holding one).
    fn set(&self, id: u16, change: &VfChange, origin: Origin) -> Result<(), PfError> {
        let (func, old, new) = {
            let vfs = self.vfs();
            let v = vfs.get(&id).ok_or(PfError::UnknownVf(id))?;
            let old = v.func.settings();
            let new = change.applied_to(&old);
            check_settings(&new).map_err(PfError::Invalid)?;
            if new.mac != old.mac {
                if let Some(other) = vfs.values().find(|o| o.func.id.0 != id && o.func.settings().mac == new.mac) {
                    return Err(PfError::Invalid(format!("mac {} is already VF {}'s", new.mac, other.func.id.0)));
                }
            }
            v.func.update_settings(|s| *s = new.clone());
            if new.mac != old.mac || new.vlan != old.vlan {
                // Reads the function's new (VLAN, MAC).
                self.fabric.rebind_mac(port_of(&v.func), old.mac, new.mac);
            }
            (v.func.clone(), old, new)
        };
        info!(vf = id, ?origin, ?change, "VF settings changed");
        if origin == Origin::Admin && (new.mac != old.mac || new.link != old.link) {
            match func.notify_config_change() {
                Ok(true) => info!(vf = id, "config change sent to the front end"),
                Ok(false) => {}
                Err(e) => warn!(vf = id, error = %e, "config change notification failed; channel dropped"),
            }
        }
        Ok(())
    }
}

/// The PF's side of a VF's mailbox (weak: the VF table owns the functions).
struct PfMailbox(Weak<Shared>);

impl MailboxHandler for PfMailbox {
    fn apply(&self, vf: VfId, effect: Effect) -> Result<(), String> {
        let Some(shared) = self.0.upgrade() else { return Err("the PF is shutting down".into()) };
        let change = match effect {
            Effect::Promisc(on) => VfChange { promisc: Some(on), ..VfChange::default() },
            Effect::Mac(mac) => VfChange { mac: Some(mac), ..VfChange::default() },
            // Recorded by the tenant's driver only: the switch does not
            // filter by guest VLAN, and every queue pair stays served.
            Effect::None | Effect::VlanFilter { .. } | Effect::QueuePairs(_) => return Ok(()),
        };
        shared.set(vf.0, &change, Origin::Mailbox).map_err(|e| e.to_string())
    }
}

/// The adapter.
pub struct Pf {
    shared: Arc<Shared>,
    /// Serialises changes of the VF set (set-vfs, reset) against each other.
    admin: Mutex<()>,
    /// Running uplinks (their pump threads stop when dropped).
    uplinks: Mutex<Vec<vfnic_engine::uplink::UplinkHandle>>,
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
        let shared = Arc::new(Shared { config: config.clone(), fabric, vfs: Mutex::new(BTreeMap::new()) });
        let pf = Pf { shared, admin: Mutex::new(()), uplinks: Mutex::new(Vec::new()), engines };
        for s in &config.vfs {
            pf.add_vf(s)?;
        }
        for (i, spec) in config.uplinks.iter().enumerate() {
            let h = vfnic_engine::uplink::start(&pf.shared.fabric, i as u16, spec)
                .map_err(|e| PfError::Uplink(spec.name.clone(), e))?;
            pf.uplinks.lock().unwrap_or_else(|e| e.into_inner()).push(h);
        }
        info!(vfs = config.vfs.len(), engines = config.engines, run_dir = %config.run_dir.display(), "physical function up");
        Ok(pf)
    }

    /// The configuration it started from.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    fn admin(&self) -> MutexGuard<'_, ()> {
        self.admin.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add_vf(&self, s: &VfSettings) -> Result<(), PfError> {
        let func = Arc::new(Function::new(VfId(s.id), s.function_settings(), self.shared.config.queue_pairs));
        func.set_mailbox_handler(Arc::new(PfMailbox(Arc::downgrade(&self.shared))));
        self.shared.fabric.attach(func.clone());
        let engines = self.engines.add(func.clone());
        let listener = match VfListener::start(func.clone(), &s.socket) {
            Ok(l) => l,
            Err(e) => {
                self.engines.remove(func.id);
                self.shared.fabric.detach(port_of(&func));
                return Err(PfError::Listen(s.socket.clone(), e));
            }
        };
        info!(vf = s.id, mac = %s.mac, socket = %s.socket.display(), ?engines, "VF ready");
        self.shared.vfs().insert(s.id, Vf { func, listener });
        Ok(())
    }

    /// Takes VF `id` off the switch and the engines, then closes its socket
    /// (its tenant, if any, is disconnected).
    fn remove_vf(&self, v: Vf) {
        let id = v.func.id;
        self.shared.fabric.detach(port_of(&v.func));
        self.engines.remove(id);
        drop(v);
        info!(vf = id.0, "VF removed");
    }

    /// The function of VF `id` (for the engines' mailbox work and tests).
    pub fn function(&self, id: u16) -> Option<Arc<Function>> {
        self.shared.func(id).ok()
    }

    /// Answers the pending mailbox (control-queue) commands of VF `id`;
    /// returns how many.
    pub fn process_mailbox(&self, id: u16) -> Result<usize, PfError> {
        let f = self.shared.func(id)?;
        Ok(vfnic_engine::mailbox::process_ctrl(&f))
    }

    fn info(&self, func: &Function, socket: PathBuf) -> VfInfo {
        let s = func.settings();
        VfInfo {
            id: func.id.0,
            mac: s.mac,
            mtu: s.mtu,
            state: s.link,
            vlan: s.vlan,
            qos: s.qos,
            spoofchk: s.spoofchk,
            trust: s.trust,
            promisc: s.promisc,
            max_tx_rate: s.max_tx_rate,
            min_tx_rate: s.min_tx_rate,
            weight: s.weight,
            speed: s.speed,
            socket,
            connected: func.connected(),
            backend_channel: func.has_backend_channel(),
            features: format!("{:#x}", func.acked_features()),
            status: func.status(),
            faulted: func.faulted(),
            queue_pairs: func.queue_pairs(),
            engines: self.engines.engines_of(func.id),
            rx_usecs: s.rx_usecs,
            rx_frames: s.rx_frames,
        }
    }

    /// The functions and socket paths, copied out of the table (so nothing
    /// below runs under its lock).
    fn listing(&self) -> Vec<(Arc<Function>, PathBuf)> {
        self.shared.vfs().values().map(|v| (v.func.clone(), v.listener.path().to_path_buf())).collect()
    }

    fn entry(&self, id: u16) -> Result<(Arc<Function>, PathBuf), PfError> {
        let vfs = self.shared.vfs();
        let v = vfs.get(&id).ok_or(PfError::UnknownVf(id))?;
        Ok((v.func.clone(), v.listener.path().to_path_buf()))
    }

    /// Every VF.
    pub fn vf_list(&self) -> Vec<VfInfo> {
        self.listing().into_iter().map(|(f, p)| self.info(&f, p)).collect()
    }

    /// One VF.
    pub fn vf_show(&self, id: u16) -> Result<VfInfo, PfError> {
        let (f, p) = self.entry(id)?;
        Ok(self.info(&f, p))
    }

    /// Applies `change` to VF `id`; all or nothing. A change of MAC or
    /// link state is sent to the front end as a config change where it
    /// gave a backend request channel.
    pub fn vf_set(&self, id: u16, change: &VfChange) -> Result<VfInfo, PfError> {
        self.shared.set(id, change, Origin::Admin)?;
        self.vf_show(id)
    }

    /// Function-level reset: VF `id` goes back to its configured settings
    /// (the configuration file's, or the defaults; run-time changes are
    /// forgotten) and its tenant is disconnected, which drops its queues.
    /// The tenant may attach again.
    pub fn vf_reset(&self, id: u16) -> Result<VfInfo, PfError> {
        let _admin = self.admin();
        let configured = self.shared.config.vf_configured(id);
        self.shared.set(id, &VfChange::all_of(&configured), Origin::Admin)?;
        if let Some(v) = self.shared.vfs().get(&id) {
            v.listener.disconnect();
        }
        info!(vf = id, "function-level reset");
        self.vf_show(id)
    }

    /// Sets the number of VFs to `k` (1 to 256): VFs from `k` up are
    /// removed (tenants disconnected, switch ports and engine queues
    /// freed); missing VFs below `k` are created with their configured
    /// settings. Other VFs are not touched.
    pub fn set_vfs(&self, k: u16) -> Result<PfInfo, PfError> {
        if k == 0 || k > MAX_VFS {
            return Err(PfError::Invalid(format!("num_vfs {k} is out of range (1 to {MAX_VFS})")));
        }
        let _admin = self.admin();
        let removed: Vec<Vf> = {
            let mut vfs = self.shared.vfs();
            let gone: Vec<u16> = vfs.range(k..).map(|(id, _)| *id).collect();
            gone.iter().filter_map(|id| vfs.remove(id)).collect()
        };
        for v in removed {
            self.remove_vf(v);
        }
        let missing: Vec<u16> = {
            let vfs = self.shared.vfs();
            (0..k).filter(|id| !vfs.contains_key(id)).collect()
        };
        for id in missing {
            let s = self.shared.config.vf_configured(id);
            {
                let vfs = self.shared.vfs();
                if let Some(o) = vfs.values().find(|o| o.func.settings().mac == s.mac) {
                    return Err(PfError::Invalid(format!(
                        "cannot add VF {id}: its mac {} is VF {}'s now (change that VF's mac first)",
                        s.mac, o.func.id.0
                    )));
                }
                if let Some(o) = vfs.values().find(|o| o.listener.path() == s.socket) {
                    return Err(PfError::Invalid(format!(
                        "cannot add VF {id}: socket {} is VF {}'s",
                        s.socket.display(),
                        o.func.id.0
                    )));
                }
            }
            self.add_vf(&s)?;
        }
        info!(num_vfs = k, "number of VFs set");
        Ok(self.pf_show())
    }

    /// The PF's own settings.
    pub fn pf_show(&self) -> PfInfo {
        let c = &self.shared.config;
        PfInfo {
            num_vfs: self.shared.vfs().len() as u16,
            max_vfs: MAX_VFS,
            engines: c.engines,
            queue_pairs: c.queue_pairs,
            run_dir: absolute(&c.run_dir),
        }
    }

    /// The QEMU options that attach a guest to VF `id`.
    pub fn qemu_args(&self, id: u16) -> Result<QemuArgs, PfError> {
        let (f, sock) = self.entry(id)?;
        let mac = f.settings().mac;
        let q = f.queue_pairs();
        let (chr, net) = (format!("vfnic{id}"), format!("vfnic{id}net"));
        let mq = if q > 1 { format!(",queues={q}") } else { String::new() };
        let dev_mq = if q > 1 { ",mq=on" } else { "" };
        let options = vec![
            "-object memory-backend-memfd,id=vfnicmem,size=1G,share=on -machine memory-backend=vfnicmem".to_string(),
            format!("-chardev socket,id={chr},path={}", absolute(&sock).display()),
            format!("-netdev vhost-user,id={net},chardev={chr}{mq}"),
            format!("-device virtio-net-pci,netdev={net},mac={mac}{dev_mq},vectors=0"),
        ];
        Ok(QemuArgs {
            vf: id,
            comments: vec![
                "vhost-user needs the guest's memory shared with vfnic: size= must equal -m (one memory \
                 backend per guest, whatever the number of VFs)"
                    .into(),
                "vectors=0 is needed for QEMU 7.2 under TCG (no MSI-X irqfd); drop it with KVM".into(),
                format!("mac= must stay {mac}: QEMU gives the guest this MAC, vfnic forwards by it"),
            ],
            args: options.join(" "),
            options,
        })
    }

    /// The DPDK `--vdev` option that attaches a virtio-user port to VF `id`.
    pub fn dpdk_args(&self, id: u16) -> Result<DpdkArgs, PfError> {
        let (f, sock) = self.entry(id)?;
        let vdev = format!(
            "net_virtio_user{id},path={},mac={},queues={}",
            absolute(&sock).display(),
            f.settings().mac,
            f.queue_pairs()
        );
        Ok(DpdkArgs { vf: id, args: format!("--vdev {vdev}"), vdev })
    }

    /// Closes every VF socket (tenants are disconnected, socket files
    /// removed). The daemon calls this on shutdown.
    pub fn shutdown(&self) {
        drop(std::mem::take(&mut *self.uplinks.lock().unwrap_or_else(|e| e.into_inner())));
        let vfs = std::mem::take(&mut *self.shared.vfs());
        drop(vfs);
    }

    /// Counters of every VF.
    pub fn stats(&self) -> Vec<VfStats> {
        self.listing()
            .into_iter()
            .map(|(f, _)| {
                let s = f.settings();
                VfStats {
                    id: f.id.0,
                    mac: s.mac,
                    connected: f.connected(),
                    link: s.link,
                    mailbox_granted: f.mailbox_granted.get(),
                    counters: f.snapshot(),
                    queues: (0..f.queue_pairs())
                        .map(|qp| {
                            let c = f.queue_counters(qp);
                            QueueStatsView {
                                qp,
                                rx_packets: c.rx_packets.get(),
                                rx_bytes: c.rx_bytes.get(),
                                tx_packets: c.tx_packets.get(),
                                tx_bytes: c.tx_bytes.get(),
                            }
                        })
                        .collect(),
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
        self.shared.func(vf)?;
        self.engines.pin(VfId(vf), qp, engine).map_err(PfError::Invalid)?;
        Ok(self.engines.stats())
    }

    /// The switch's forwarding table.
    pub fn fdb(&self) -> Vec<FdbEntry> {
        let fdb = self.shared.fabric.fdb_read();
        fdb.entries()
            .into_iter()
            .map(|(k, port, s)| FdbEntry { vlan: k.vlan, mac: k.mac, port: port.0, r#static: s })
            .collect()
    }
}

/// `p` made absolute against the daemon's working directory (what a user
/// pastes must not depend on where they stand).
fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

impl Pf {
    /// Every uplink: state and counters (`vfnic uplink list`, `vfnic stats`).
    pub fn uplink_list(&self) -> Vec<vfnic_engine::uplink::UplinkInfo> {
        self.uplinks.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|h| h.uplink.info()).collect()
    }

    /// One uplink by name.
    pub fn uplink_show(&self, name: &str) -> Result<vfnic_engine::uplink::UplinkInfo, PfError> {
        self.uplink_list().into_iter().find(|u| u.name == name).ok_or_else(|| PfError::UnknownUplink(name.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> FunctionSettings {
        FunctionSettings::new(MacAddr::for_vf(1), "x".into())
    }

    #[test]
    fn change_rules() {
        let mut s = settings();
        s.trust = true;
        s.promisc = true;
        let c = VfChange { trust: Some(false), ..VfChange::default() };
        let n = c.applied_to(&s);
        assert!(!n.trust && !n.promisc, "trust off turns promisc off");
        let c = VfChange { trust: Some(false), promisc: Some(true), ..VfChange::default() };
        assert!(check_settings(&c.applied_to(&s)).unwrap_err().contains("promisc"));
        s.vlan = 10;
        s.qos = 3;
        let n = VfChange { vlan: Some(0), ..VfChange::default() }.applied_to(&s);
        assert_eq!((n.vlan, n.qos), (0, 0), "vlan 0 clears qos");
        let n = VfChange { vlan: Some(20), ..VfChange::default() }.applied_to(&s);
        assert_eq!((n.vlan, n.qos), (20, 3));
    }

    #[test]
    fn change_wire_format() {
        let c: VfChange = serde_json::from_str(r#"{"link":"down","max_tx_rate":1000,"spoofchk":false}"#).unwrap();
        assert_eq!(c.state, Some(LinkState::Disable));
        assert_eq!(c.max_tx_rate, Some(1000));
        assert_eq!(c.spoofchk, Some(false));
        let c: VfChange = serde_json::from_str(r#"{"state":"enable"}"#).unwrap();
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"state":"enable"}"#);
    }
}
