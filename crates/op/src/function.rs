//! A virtual function: configuration space, queue pairs, counters.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use vfnic_qos::Share;
pub use vfnic_types::QueueCounters;
use vfnic_types::{Counter, LinkState, MacAddr, VfCounters, VfCountersSnapshot, VfId};

use crate::mailbox::{self, BackendChannel, Effect, MailboxHandler, NotifyError};
use crate::vring::Vring;

/// What the data plane wants to hear from the operation module.
pub trait DataPlaneHooks: Send + Sync {
    /// A queue of `vf` started, stopped or got a new doorbell: the engine
    /// serving it must look at it again.
    fn queues_changed(&self, vf: VfId);
}

/// Hooks that do nothing (tests, and functions not yet attached).
#[derive(Debug, Default)]
pub struct NoHooks;

impl DataPlaneHooks for NoHooks {
    fn queues_changed(&self, _vf: VfId) {}
}

/// Administrator-owned settings of a function: the vocabulary of
/// `ip link set DEV vf N ...` plus the vhost-user socket and moderation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionSettings {
    /// The VF's MAC address (what the switch forwards to).
    pub mac: MacAddr,
    /// Largest frame payload (IP packet) the VF may send or receive.
    pub mtu: u16,
    /// Administrative link state (`state auto|enable|disable`).
    pub link: LinkState,
    /// Port VLAN (`vlan`, 1-4094; 0 = none): the VF's frames are classified
    /// into it and delivered to it untagged.
    pub vlan: u16,
    /// 802.1p priority of the port VLAN tag (`qos`, 0-7).
    pub qos: u8,
    /// Drop frames whose source MAC is not the VF's (`spoofchk`).
    pub spoofchk: bool,
    /// Trusted VF (`trust`): may use promiscuous mode, other MACs and tags.
    pub trust: bool,
    /// Receive a copy of all traffic of its VLAN (`promisc`; trusted only).
    pub promisc: bool,
    /// Maximum transmit rate in Mbit/s (`max_tx_rate`; 0 = unlimited).
    pub max_tx_rate: u32,
    /// Guaranteed transmit rate in Mbit/s under contention (`min_tx_rate`).
    pub min_tx_rate: u32,
    /// Share of what is left under contention (`weight`, >= 1).
    pub weight: u32,
    /// Link speed in Mbit/s (`speed`, as `ethtool -s DEV speed N`; 0 = as
    /// fast as the tenant drains): the capacity of the VF's receive side,
    /// which its senders share by the egress arbiter.
    pub speed: u32,
    /// Path of the vhost-user socket.
    pub socket: PathBuf,
    /// Interrupt moderation (ethtool `rx-usecs`): hold an RX interrupt at
    /// most this long to coalesce frames; 0 = interrupt at once.
    pub rx_usecs: u32,
    /// Interrupt moderation (ethtool `rx-frames`): raise the interrupt once
    /// this many frames are pending, whatever `rx_usecs` says; 0 = no count.
    pub rx_frames: u32,
}

impl FunctionSettings {
    /// Defaults for VF `mac` on `socket`: link auto, no VLAN, spoof check
    /// on (as on SR-IOV NICs), untrusted, no rate limits, weight 1.
    pub fn new(mac: MacAddr, socket: PathBuf) -> FunctionSettings {
        FunctionSettings {
            mac,
            mtu: 1500,
            link: LinkState::Auto,
            vlan: 0,
            qos: 0,
            spoofchk: true,
            trust: false,
            promisc: false,
            max_tx_rate: 0,
            min_tx_rate: 0,
            weight: 1,
            speed: 0,
            socket,
            rx_usecs: 0,
            rx_frames: 0,
        }
    }
}

/// The part of the settings the data path applies per frame, copied out
/// once per burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The VF's MAC.
    pub mac: MacAddr,
    /// Port VLAN (0 = none).
    pub vlan: u16,
    /// Port VLAN priority.
    pub qos: u8,
    /// Spoof check on.
    pub spoofchk: bool,
    /// Trusted.
    pub trust: bool,
    /// Promiscuous (only honoured when trusted).
    pub promisc: bool,
    /// Traffic passes (state is not disable).
    pub enabled: bool,
    /// Maximum transmit rate, Mbit/s (0 = unlimited).
    pub max_tx_rate: u32,
    /// Guaranteed transmit rate under contention, Mbit/s (0 = none).
    pub min_tx_rate: u32,
    /// DRR weight of what is left (>= 1).
    pub weight: u32,
    /// Receive capacity, Mbit/s (0 = none but the tenant's own pace).
    pub speed: u32,
}

impl Policy {
    /// The data-path view of `s`.
    pub fn of(s: &FunctionSettings) -> Policy {
        Policy {
            mac: s.mac,
            vlan: s.vlan,
            qos: s.qos,
            spoofchk: s.spoofchk,
            trust: s.trust,
            promisc: s.promisc && s.trust,
            enabled: s.link.passes_traffic(),
            max_tx_rate: s.max_tx_rate,
            min_tx_rate: s.min_tx_rate,
            weight: s.weight.max(1),
            speed: s.speed,
        }
    }
}

/// Functions whose policy is promiscuous, process-wide. The data path
/// looks for mirror receivers only while there are some.
static PROMISCUOUS: AtomicUsize = AtomicUsize::new(0);

/// True while some function's policy is promiscuous (a trusted VF with
/// `promisc` on): only then may a unicast frame have receivers besides
/// its destination.
#[inline]
pub fn any_promiscuous() -> bool {
    PROMISCUOUS.load(Ordering::Relaxed) > 0
}

/// Source of policy versions: unique across all functions, so a cached copy
/// is never mistaken for another function's.
fn next_policy_version() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// An engine's copies of functions' policies (indexed by VF), refreshed
/// when a function's settings change. Reading a policy through it costs one
/// plain atomic load instead of an `ArcSwap` guard (locked instructions
/// that would wait for the engine's stores to guest memory to drain).
#[derive(Debug, Default)]
pub struct PolicyCache {
    /// (version, policy) per VF; version 0 (never issued) = nothing cached.
    slots: Vec<(u64, Policy)>,
}

impl PolicyCache {
    /// `f`'s current policy.
    #[inline(always)]
    pub fn get(&mut self, f: &Function) -> Policy {
        // Acquire: the policy stored before this version is visible below.
        let v = f.policy_version.load(Ordering::Acquire);
        match self.slots.get(f.id.0 as usize) {
            Some((cv, p)) if *cv == v => *p,
            _ => self.refresh(f, v),
        }
    }

    #[cold]
    fn refresh(&mut self, f: &Function, v: u64) -> Policy {
        let i = f.id.0 as usize;
        let p = f.policy();
        if i >= self.slots.len() {
            self.slots.resize(i + 1, (0, p));
        }
        self.slots[i] = (v, p);
        p
    }
}

/// Work done on one queue pair's TX queue, for load-based placement.
#[derive(Debug, Default)]
pub struct QueueLoad {
    /// TSC cycles spent in bursts that moved frames.
    pub busy_cycles: std::sync::atomic::AtomicU64,
    /// Chains (frames) taken.
    pub chains: std::sync::atomic::AtomicU64,
}

/// `VIRTIO_CONFIG_S_NEEDS_RESET`.
pub const STATUS_NEEDS_RESET: u8 = 0x40;
/// `VIRTIO_NET_S_LINK_UP`.
const NET_S_LINK_UP: u16 = 1;

/// A virtual function.
pub struct Function {
    /// Its index on the physical function.
    pub id: VfId,
    /// Its counters.
    pub counters: VfCounters,
    /// Mailbox (control-queue) commands granted; refusals count as
    /// `ErrorKind::MailboxRefused`.
    pub mailbox_granted: Counter,
    settings: RwLock<FunctionSettings>,
    /// The data-path view of the settings, swapped on every change so the
    /// engines read it without a lock.
    policy: arc_swap::ArcSwap<Policy>,
    /// Version of `policy` (unique across functions; see [`PolicyCache`]).
    policy_version: AtomicU64,
    /// `min_tx_rate != 0`, for the engines' guarantee turn.
    guarantee: AtomicBool,
    /// Egress arbiter of this function as a receiver.
    share: parking_lot::Mutex<Share>,
    /// Until when (ns) the VF's own `max_tx_rate` shaper holds its
    /// transmit queues (receivers' arbiters do not wait for it meanwhile).
    tx_held_until_ns: AtomicU64,
    mtu: AtomicU16,
    link_up: AtomicBool,
    /// `rx_usecs` in the high 32 bits, `rx_frames` in the low 32.
    moderation: AtomicU64,
    vrings: Vec<Vring>,
    loads: Vec<QueueLoad>,
    queue_counters: Vec<QueueCounters>,
    queue_pairs: u16,
    connected: AtomicBool,
    acked_features: AtomicU64,
    status: AtomicU8,
    hooks: OnceLock<Arc<dyn DataPlaneHooks>>,
    mailbox: OnceLock<Arc<dyn MailboxHandler>>,
    backend: Mutex<Option<BackendChannel>>,
}

impl Drop for Function {
    fn drop(&mut self) {
        if self.policy.load().promisc {
            PROMISCUOUS.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Function").field("id", &self.id).field("settings", &self.settings()).finish()
    }
}

impl Function {
    /// A function with `queue_pairs` queue pairs plus a control queue.
    pub fn new(id: VfId, settings: FunctionSettings, queue_pairs: u16) -> Function {
        let queue_pairs = queue_pairs.max(1);
        if Policy::of(&settings).promisc {
            PROMISCUOUS.fetch_add(1, Ordering::Relaxed);
        }
        Function {
            id,
            counters: VfCounters::default(),
            mailbox_granted: Counter::default(),
            mtu: AtomicU16::new(settings.mtu),
            link_up: AtomicBool::new(settings.link.passes_traffic()),
            moderation: AtomicU64::new(((settings.rx_usecs as u64) << 32) | settings.rx_frames as u64),
            policy: arc_swap::ArcSwap::from_pointee(Policy::of(&settings)),
            policy_version: AtomicU64::new(next_policy_version()),
            guarantee: AtomicBool::new(settings.min_tx_rate != 0),
            share: parking_lot::Mutex::new(Share::default()),
            tx_held_until_ns: AtomicU64::new(0),
            settings: RwLock::new(settings),
            vrings: (0..2 * queue_pairs + 1).map(|i| Vring::new(i, i % 2 == 0 && i < 2 * queue_pairs)).collect(),
            loads: (0..queue_pairs).map(|_| QueueLoad::default()).collect(),
            queue_counters: (0..queue_pairs).map(|_| QueueCounters::default()).collect(),
            queue_pairs,
            connected: AtomicBool::new(false),
            acked_features: AtomicU64::new(0),
            status: AtomicU8::new(0),
            hooks: OnceLock::new(),
            mailbox: OnceLock::new(),
            backend: Mutex::new(None),
        }
    }

    /// Attaches the data plane (once).
    pub fn attach(&self, hooks: Arc<dyn DataPlaneHooks>) {
        let _ = self.hooks.set(hooks);
    }

    /// Tells the data plane the queues changed.
    pub fn queues_changed(&self) {
        if let Some(h) = self.hooks.get() {
            h.queues_changed(self.id);
        }
    }

    /// A copy of the settings.
    pub fn settings(&self) -> FunctionSettings {
        self.settings.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Changes the settings with `f`.
    pub fn update_settings(&self, f: impl FnOnce(&mut FunctionSettings)) {
        let mut s = self.settings.write().unwrap_or_else(|e| e.into_inner());
        f(&mut s);
        self.mtu.store(s.mtu, Ordering::Relaxed);
        self.link_up.store(s.link.passes_traffic(), Ordering::Relaxed);
        self.moderation.store(((s.rx_usecs as u64) << 32) | s.rx_frames as u64, Ordering::Relaxed);
        let policy = Policy::of(&s);
        // Under the settings lock: the old policy is this function's last.
        match (self.policy.load().promisc, policy.promisc) {
            (false, true) => _ = PROMISCUOUS.fetch_add(1, Ordering::Relaxed),
            (true, false) => _ = PROMISCUOUS.fetch_sub(1, Ordering::Relaxed),
            _ => {}
        }
        self.policy.store(std::sync::Arc::new(policy));
        self.policy_version.store(next_policy_version(), Ordering::Release);
        self.guarantee.store(s.min_tx_rate != 0, Ordering::Relaxed);
    }

    /// The egress arbiter that shares this function among its senders.
    pub fn share(&self) -> parking_lot::MutexGuard<'_, Share> {
        self.share.lock()
    }

    /// Its `max_tx_rate` shaper holds its transmit queues until `until_ns`.
    #[inline]
    pub fn hold_tx(&self, until_ns: u64) {
        self.tx_held_until_ns.store(until_ns, Ordering::Relaxed);
    }

    /// True while its shaper holds it (fast path read).
    #[inline]
    pub fn tx_held(&self, now_ns: u64) -> bool {
        now_ns < self.tx_held_until_ns.load(Ordering::Relaxed)
    }

    /// The VF has a `min_tx_rate` guarantee (fast path read).
    #[inline]
    pub fn has_guarantee(&self) -> bool {
        self.guarantee.load(Ordering::Relaxed)
    }

    /// Interrupt moderation: (`rx_usecs`, `rx_frames`), fast path read.
    #[inline]
    pub fn moderation(&self) -> (u32, u32) {
        let m = self.moderation.load(Ordering::Relaxed);
        ((m >> 32) as u32, m as u32)
    }

    /// The data-path policy, copied out (lock-free).
    #[inline]
    pub fn policy(&self) -> Policy {
        **self.policy.load()
    }

    /// Administrative link up (fast path read).
    #[inline]
    pub fn link_up(&self) -> bool {
        self.link_up.load(Ordering::Relaxed)
    }

    /// MTU (fast path read).
    #[inline]
    pub fn mtu(&self) -> u16 {
        self.mtu.load(Ordering::Relaxed)
    }

    /// Number of queue pairs.
    pub fn queue_pairs(&self) -> u16 {
        self.queue_pairs
    }

    /// Every virtqueue: RX0, TX0, RX1, TX1, ..., control.
    pub fn vrings(&self) -> &[Vring] {
        &self.vrings
    }

    /// A virtqueue by index.
    pub fn vring(&self, index: u32) -> Option<&Vring> {
        self.vrings.get(index as usize)
    }

    /// RX queue of queue pair `qp`.
    pub fn rx(&self, qp: u16) -> &Vring {
        &self.vrings[2 * qp as usize]
    }

    /// TX queue of queue pair `qp`.
    pub fn tx(&self, qp: u16) -> &Vring {
        &self.vrings[2 * qp as usize + 1]
    }

    /// Traffic counters of queue pair `qp`.
    pub fn queue_counters(&self, qp: u16) -> &QueueCounters {
        &self.queue_counters[qp as usize]
    }

    /// Its counters, traffic summed over its queue pairs.
    pub fn snapshot(&self) -> VfCountersSnapshot {
        self.counters.snapshot(&self.queue_counters)
    }

    /// virtio-net features this function offers: multiqueue only when it
    /// has several queue pairs.
    pub fn offered_features(&self) -> u64 {
        let mq =
            if self.queue_pairs > 1 { crate::features::bit(virtio_bindings::virtio_net::VIRTIO_NET_F_MQ) } else { 0 };
        crate::features::OFFERED | mq
    }

    /// Load accounting of queue pair `qp`.
    pub fn load(&self, qp: u16) -> &QueueLoad {
        &self.loads[qp as usize]
    }

    /// The control queue (VF-to-PF mailbox).
    pub fn ctrl(&self) -> &Vring {
        &self.vrings[2 * self.queue_pairs as usize]
    }

    /// A tenant is attached.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Marks a tenant attached or gone. On detach every queue is reset and
    /// the backend request channel forgotten.
    pub fn set_connected(&self, on: bool) {
        self.connected.store(on, Ordering::Relaxed);
        if on {
            self.counters.connects.inc();
        } else {
            self.set_backend_channel(None);
            self.reset_device();
        }
    }

    /// Attaches the PF's side of the mailbox (once).
    pub fn set_mailbox_handler(&self, handler: Arc<dyn MailboxHandler>) {
        let _ = self.mailbox.set(handler);
    }

    /// Applies a granted mailbox effect: through the PF when one is
    /// attached, else to this function's own settings.
    pub fn apply_mailbox_effect(&self, effect: Effect) -> Result<(), String> {
        match self.mailbox.get() {
            Some(h) => h.apply(self.id, effect),
            None => {
                self.update_settings(|s| mailbox::apply_to_settings(s, effect));
                Ok(())
            }
        }
    }

    /// Installs (or with `None` forgets) the backend request channel the
    /// front end gave with `SET_BACKEND_REQ_FD`.
    pub fn set_backend_channel(&self, channel: Option<BackendChannel>) {
        *self.backend.lock().unwrap_or_else(|e| e.into_inner()) = channel;
    }

    /// True if the front end gave a backend request channel.
    pub fn has_backend_channel(&self) -> bool {
        self.backend.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Tells the front end its configuration space changed
    /// (`CONFIG_CHANGE_MSG`), if it gave a backend request channel.
    /// `Ok(false)`: no channel. Blocks at most about
    /// [`mailbox::NOTIFY_TIMEOUT`] per direction; a channel that fails is
    /// dropped.
    pub fn notify_config_change(&self) -> Result<bool, NotifyError> {
        let mut ch = self.backend.lock().unwrap_or_else(|e| e.into_inner());
        let Some(c) = ch.as_mut() else { return Ok(false) };
        match c.config_change() {
            Ok(()) => Ok(true),
            Err(e) => {
                *ch = None;
                Err(e)
            }
        }
    }

    /// Device reset: queues back to unconfigured, features and status
    /// cleared. The tenant connection, if any, stays.
    pub fn reset_device(&self) {
        for v in &self.vrings {
            v.lock().reset();
        }
        self.acked_features.store(0, Ordering::Relaxed);
        self.status.store(0, Ordering::Relaxed);
        self.queues_changed();
    }

    /// Features the tenant acknowledged.
    pub fn acked_features(&self) -> u64 {
        self.acked_features.load(Ordering::Relaxed)
    }

    /// Records acknowledged features.
    pub fn set_acked_features(&self, f: u64) {
        self.acked_features.store(f, Ordering::Relaxed);
    }

    /// Virtio device status byte.
    pub fn status(&self) -> u8 {
        self.status.load(Ordering::Relaxed)
    }

    /// Sets the device status byte.
    pub fn set_status(&self, s: u8) {
        self.status.store(s, Ordering::Relaxed);
    }

    /// Flags the device as needing a reset (after a queue fault).
    pub fn set_needs_reset(&self) {
        self.status.fetch_or(STATUS_NEEDS_RESET, Ordering::Relaxed);
    }

    /// True if any queue is faulted.
    pub fn faulted(&self) -> bool {
        self.vrings.iter().any(|v| v.lock().faulted)
    }

    /// The virtio-net configuration space (`struct virtio_net_config`):
    /// mac, status, max_virtqueue_pairs, mtu.
    pub fn config_space(&self) -> [u8; 12] {
        let s = self.settings();
        let mut c = [0u8; 12];
        c[..6].copy_from_slice(&s.mac.0);
        let status = if s.link.passes_traffic() { NET_S_LINK_UP } else { 0 };
        c[6..8].copy_from_slice(&status.to_le_bytes());
        c[8..10].copy_from_slice(&self.queue_pairs.to_le_bytes());
        c[10..12].copy_from_slice(&s.mtu.to_le_bytes());
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f() -> Function {
        Function::new(VfId(3), FunctionSettings::new(MacAddr::for_vf(3), "x".into()), 2)
    }

    #[test]
    fn queue_layout() {
        let f = f();
        assert_eq!(f.vrings().len(), 5);
        assert_eq!(f.rx(1).index, 2);
        assert_eq!(f.tx(1).index, 3);
        assert_eq!(f.ctrl().index, 4);
    }

    #[test]
    fn config_space_and_link() {
        let f = f();
        let c = f.config_space();
        assert_eq!(&c[..6], &MacAddr::for_vf(3).0);
        assert_eq!(u16::from_le_bytes([c[6], c[7]]), 1);
        f.update_settings(|s| s.link = LinkState::Disable);
        assert!(!f.link_up());
        assert_eq!(u16::from_le_bytes([f.config_space()[6], 0]), 0);
    }
}
