//! The engine pool: threads, queue-pair-to-engine placement by measured
//! load, rebalancing, and sleeping on doorbells.
//!
//! Each engine accounts its time in TSC cycles: *busy* (poll rounds that
//! moved frames), *idle* (rounds that found nothing, while it keeps polling)
//! and *asleep* (waiting on the doorbells). Each queue pair accounts the busy
//! cycles spent on it. A rebalancer compares engines' loads every interval
//! and moves a queue pair from the busiest to the least busy engine when
//! that narrows the gap (OVS `pmd-auto-lb` style). A move cannot lose or
//! reorder frames: a queue's ring indices live in its vring context, and a
//! burst holds the TX vring lock from the first chain taken to the last
//! frame delivered, so the next engine to poll it simply continues.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;
use tracing::{error, info};
use vfnic_dma::tsc;
use vfnic_op::{DataPlaneHooks, Doorbell, Function};
use vfnic_types::{ErrorKind, VfId};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::fabric::Fabric;
use crate::forward::{process_tx, Pass, Scratch};

/// DRR credit per unit of weight per turn (bytes): one MTU-sized frame, so a
/// turn moves whole frames and per-turn overhead stays small; weights stay
/// exact up to 2 with 64-byte frames inside one 64-frame burst (beyond, the
/// burst caps the turn) and at any weight for full-size frames.
use crate::forward::TURN_QUANTUM;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Number of engine threads.
    pub engines: usize,
    /// How long an engine keeps polling after its last work before it
    /// sleeps on the doorbells.
    pub idle_spin: Duration,
    /// CPUs to pin engine i to (`cpus[i % len]`); empty = let the
    /// scheduler place them.
    pub cpus: Vec<usize>,
    /// How often the rebalancer compares engine loads (zero: never).
    pub rebalance_interval: Duration,
    /// The busiest engine must be at least this loaded (percent) before a
    /// queue pair is moved off it.
    pub rebalance_threshold_pct: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            engines: 1,
            idle_spin: Duration::from_micros(200),
            cpus: Vec::new(),
            rebalance_interval: Duration::from_secs(10),
            rebalance_threshold_pct: 50,
        }
    }
}

/// One queue pair as `vfnic engines` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct QueueStats {
    /// VF index.
    pub vf: u16,
    /// Queue pair.
    pub qp: u16,
    /// Busy TSC cycles spent on it.
    pub busy_cycles: u64,
    /// Chains taken from it.
    pub chains: u64,
    /// Its share of its engine's time over the last interval (percent).
    pub load_pct: f64,
}

/// One engine as `vfnic engines` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct EngineStats {
    /// Engine index.
    pub id: usize,
    /// Queue pairs it serves.
    pub queues: Vec<QueueStats>,
    /// TSC cycles in poll rounds that moved frames.
    pub busy_cycles: u64,
    /// TSC cycles of the queue polls that moved frames: the part of
    /// `busy_cycles` spent on the bursts, without the rest of their rounds
    /// (the polls after the last such one that found nothing, interrupts
    /// fired, the mailbox looked at). Each is counted from the end of the
    /// previous poll that moved frames or of the previous round, so the
    /// empty polls before it in its round are in (a clock read per poll
    /// would cost the one-frame loop 2%). testpmd's `--record-core-cycles`
    /// counts only the bursts that received packets: this is the figure to
    /// set beside it, per packet (it counts a little more, never less).
    pub burst_cycles: u64,
    /// TSC cycles in poll rounds that found nothing.
    pub idle_cycles: u64,
    /// TSC cycles asleep on the doorbells.
    pub sleep_cycles: u64,
    /// Chains processed.
    pub chains: u64,
    /// Times it went to sleep on the doorbells.
    pub sleeps: u64,
    /// Busy share of its time over the last interval (percent).
    pub load_pct: f64,
    /// Queue pairs moved onto it by the rebalancer.
    pub moves_in: u64,
}

/// What `vfnic engines` returns.
#[derive(Debug, Clone, Serialize)]
pub struct PoolStats {
    /// TSC ticks per second (to turn cycles into time).
    pub tsc_hz: u64,
    /// Every engine.
    pub engines: Vec<EngineStats>,
    /// Queue-pair moves so far.
    pub moves: u64,
}

#[derive(Default)]
struct Counters {
    busy_cycles: AtomicU64,
    burst_cycles: AtomicU64,
    idle_cycles: AtomicU64,
    sleep_cycles: AtomicU64,
    chains: AtomicU64,
    sleeps: AtomicU64,
    moves_in: AtomicU64,
    /// Load over the last rebalance interval, in 1/100 percent.
    load_bp: AtomicU64,
}

/// A queue pair an engine serves.
#[derive(Clone)]
struct QueueRef {
    func: Arc<Function>,
    qp: u16,
}

impl QueueRef {
    fn key(&self) -> (VfId, u16) {
        (self.func.id, self.qp)
    }
}

struct Engine {
    id: usize,
    wake: Doorbell,
    generation: AtomicU64,
    queues: Mutex<Vec<QueueRef>>,
    stop: AtomicBool,
    counters: Counters,
}

impl Engine {
    fn poke(&self) {
        self.generation.fetch_add(1, Ordering::Release);
        self.wake.signal();
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, Vec<QueueRef>> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Shared {
    engines: Vec<Arc<Engine>>,
    placement: Mutex<HashMap<(VfId, u16), usize>>,
    moves: AtomicU64,
    /// Per queue: busy cycles at the last rebalance (for interval deltas).
    last_queue_busy: Mutex<HashMap<(VfId, u16), u64>>,
    /// Load share of each queue over the last interval, in 1/100 percent.
    queue_load_bp: Mutex<HashMap<(VfId, u16), u64>>,
    stop: Mutex<bool>,
    stop_cv: Condvar,
}

impl DataPlaneHooks for Shared {
    fn queues_changed(&self, vf: VfId) {
        let placement = self.placement.lock().unwrap_or_else(|e| e.into_inner());
        let mut poked = Vec::new();
        for (&(v, _), &i) in placement.iter() {
            if v == vf && !poked.contains(&i) {
                self.engines[i].poke();
                poked.push(i);
            }
        }
    }
}

impl Shared {
    fn load_bp(&self, i: usize) -> u64 {
        self.engines[i].counters.load_bp.load(Ordering::Relaxed)
    }

    /// The least busy engine: lowest recent load, then fewest queue pairs.
    fn least_busy(&self) -> usize {
        (0..self.engines.len())
            .min_by_key(|&i| (self.load_bp(i), self.engines[i].queues().len()))
            .expect("at least one engine")
    }

    fn place(&self, q: QueueRef, engine: usize) {
        self.placement.lock().unwrap_or_else(|e| e.into_inner()).insert(q.key(), engine);
        self.engines[engine].queues().push(q);
        self.engines[engine].poke();
    }

    /// Moves queue `key` from engine `from` to engine `to`.
    fn migrate(&self, key: (VfId, u16), from: usize, to: usize) {
        let q = {
            let mut qs = self.engines[from].queues();
            let Some(pos) = qs.iter().position(|q| q.key() == key) else { return };
            qs.remove(pos)
        };
        self.engines[from].poke();
        self.place(q, to);
        self.moves.fetch_add(1, Ordering::Relaxed);
        self.engines[to].counters.moves_in.fetch_add(1, Ordering::Relaxed);
        info!(vf = key.0 .0, qp = key.1, from, to, "queue pair moved to a less busy engine");
    }
}

/// The DMA engines.
pub struct EnginePool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl EnginePool {
    /// Starts `config.engines` engine threads over `fabric`, and the
    /// rebalancer when there are several.
    pub fn start(config: EngineConfig, fabric: Arc<Fabric>) -> std::io::Result<EnginePool> {
        let n = config.engines.max(1);
        let engines: Vec<Arc<Engine>> = (0..n)
            .map(|id| {
                Ok(Arc::new(Engine {
                    id,
                    wake: Doorbell::new()?,
                    generation: AtomicU64::new(0),
                    queues: Mutex::new(Vec::new()),
                    stop: AtomicBool::new(false),
                    counters: Counters::default(),
                }))
            })
            .collect::<std::io::Result<_>>()?;
        let shared = Arc::new(Shared {
            engines,
            placement: Mutex::new(HashMap::new()),
            moves: AtomicU64::new(0),
            last_queue_busy: Mutex::new(HashMap::new()),
            queue_load_bp: Mutex::new(HashMap::new()),
            stop: Mutex::new(false),
            stop_cv: Condvar::new(),
        });
        tsc::hz();
        let mut threads = Vec::new();
        for e in &shared.engines {
            let (e, fabric, config) = (e.clone(), fabric.clone(), config.clone());
            threads.push(
                std::thread::Builder::new().name(format!("engine{}", e.id)).spawn(move || run(e, fabric, config))?,
            );
        }
        if !config.rebalance_interval.is_zero() {
            let (s, c) = (shared.clone(), config.clone());
            threads.push(std::thread::Builder::new().name("rebalancer".into()).spawn(move || rebalancer(s, c))?);
        }
        info!(engines = n, "DMA engines started");
        Ok(EnginePool { shared, threads })
    }

    /// Maps each of `func`'s queue pairs to the least busy engine and
    /// attaches the function's data-plane hooks. Returns the engines used.
    pub fn add(&self, func: Arc<Function>) -> Vec<usize> {
        func.attach(self.shared.clone());
        (0..func.queue_pairs())
            .map(|qp| {
                let e = self.shared.least_busy();
                self.shared.place(QueueRef { func: func.clone(), qp }, e);
                e
            })
            .collect()
    }

    /// Unmaps every queue pair of a function.
    pub fn remove(&self, vf: VfId) {
        let mut placement = self.shared.placement.lock().unwrap_or_else(|e| e.into_inner());
        placement.retain(|&(v, _), _| v != vf);
        for e in &self.shared.engines {
            e.queues().retain(|q| q.func.id != vf);
            e.poke();
        }
    }

    /// Moves a queue pair to `engine` (administrator's choice).
    pub fn pin(&self, vf: VfId, qp: u16, engine: usize) -> Result<(), String> {
        if engine >= self.shared.engines.len() {
            return Err(format!("engine {engine} does not exist (0 to {})", self.shared.engines.len() - 1));
        }
        let from = self.shared.placement.lock().unwrap_or_else(|e| e.into_inner()).get(&(vf, qp)).copied();
        match from {
            None => Err(format!("VF {} has no queue pair {qp}", vf.0)),
            Some(f) if f == engine => Ok(()),
            Some(f) => {
                self.shared.migrate((vf, qp), f, engine);
                Ok(())
            }
        }
    }

    /// The engine serving each queue pair of `vf`.
    pub fn engines_of(&self, vf: VfId) -> Vec<usize> {
        let placement = self.shared.placement.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = placement.iter().filter(|((f, _), _)| *f == vf).map(|((_, q), e)| (*q, *e)).collect();
        v.sort();
        v.into_iter().map(|(_, e)| e).collect()
    }

    /// Counters of every engine and queue pair.
    pub fn stats(&self) -> PoolStats {
        let loads = self.shared.queue_load_bp.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let engines = self
            .shared
            .engines
            .iter()
            .map(|e| {
                let c = &e.counters;
                EngineStats {
                    id: e.id,
                    queues: e
                        .queues()
                        .iter()
                        .map(|q| {
                            let l = q.func.load(q.qp);
                            QueueStats {
                                vf: q.func.id.0,
                                qp: q.qp,
                                busy_cycles: l.busy_cycles.load(Ordering::Relaxed),
                                chains: l.chains.load(Ordering::Relaxed),
                                load_pct: loads.get(&q.key()).copied().unwrap_or(0) as f64 / 100.0,
                            }
                        })
                        .collect(),
                    busy_cycles: c.busy_cycles.load(Ordering::Relaxed),
                    burst_cycles: c.burst_cycles.load(Ordering::Relaxed),
                    idle_cycles: c.idle_cycles.load(Ordering::Relaxed),
                    sleep_cycles: c.sleep_cycles.load(Ordering::Relaxed),
                    chains: c.chains.load(Ordering::Relaxed),
                    sleeps: c.sleeps.load(Ordering::Relaxed),
                    load_pct: c.load_bp.load(Ordering::Relaxed) as f64 / 100.0,
                    moves_in: c.moves_in.load(Ordering::Relaxed),
                }
            })
            .collect();
        PoolStats { tsc_hz: tsc::hz(), engines, moves: self.shared.moves.load(Ordering::Relaxed) }
    }
}

impl Drop for EnginePool {
    fn drop(&mut self) {
        *self.shared.stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.shared.stop_cv.notify_all();
        for e in &self.shared.engines {
            e.stop.store(true, Ordering::Relaxed);
            e.wake.signal();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Every interval: measure loads, and move one queue pair from the busiest
/// engine to the least busy one if that narrows the gap.
fn rebalancer(shared: Arc<Shared>, config: EngineConfig) {
    let n = shared.engines.len();
    let mut last_total: Vec<u64> = vec![0; n];
    let mut last_busy: Vec<u64> = vec![0; n];
    loop {
        {
            let stop = shared.stop.lock().unwrap_or_else(|e| e.into_inner());
            let (stop, _) =
                shared.stop_cv.wait_timeout(stop, config.rebalance_interval).unwrap_or_else(|e| e.into_inner());
            if *stop {
                return;
            }
        }
        // Engine loads over the interval.
        let mut elapsed = vec![0u64; n];
        for (i, e) in shared.engines.iter().enumerate() {
            let c = &e.counters;
            let busy = c.busy_cycles.load(Ordering::Relaxed);
            let total = busy + c.idle_cycles.load(Ordering::Relaxed) + c.sleep_cycles.load(Ordering::Relaxed);
            let (db, dt) = (busy - last_busy[i], total - last_total[i]);
            (last_busy[i], last_total[i], elapsed[i]) = (busy, total, dt);
            c.load_bp.store((db * 10_000).checked_div(dt).unwrap_or(0), Ordering::Relaxed);
        }
        // Queue loads over the interval, as a share of their engine's time.
        let mut qload: Vec<((VfId, u16), usize, u64)> = Vec::new();
        {
            let mut last = shared.last_queue_busy.lock().unwrap_or_else(|e| e.into_inner());
            let mut shares = shared.queue_load_bp.lock().unwrap_or_else(|e| e.into_inner());
            shares.clear();
            for (i, e) in shared.engines.iter().enumerate() {
                for q in e.queues().iter() {
                    let busy = q.func.load(q.qp).busy_cycles.load(Ordering::Relaxed);
                    let prev = last.insert(q.key(), busy).unwrap_or(busy);
                    let bp = (busy.saturating_sub(prev) * 10_000).checked_div(elapsed[i]).unwrap_or(0);
                    shares.insert(q.key(), bp);
                    qload.push((q.key(), i, bp));
                }
            }
        }
        tracing::debug!(loads = ?(0..n).map(|i| shared.load_bp(i)).collect::<Vec<_>>(), queues = ?qload, "engine loads (1/100 %)");
        if n < 2 {
            continue;
        }
        let busiest = (0..n).max_by_key(|&i| shared.load_bp(i)).expect("n >= 2");
        let idlest = (0..n).min_by_key(|&i| shared.load_bp(i)).expect("n >= 2");
        let (hi, lo) = (shared.load_bp(busiest), shared.load_bp(idlest));
        if busiest == idlest || hi < config.rebalance_threshold_pct as u64 * 100 {
            continue;
        }
        // The queue whose move best evens the two engines, if any improves
        // on the current maximum by at least a quarter of the gap.
        let candidates = qload.iter().filter(|(_, e, bp)| *e == busiest && *bp > 0);
        if qload.iter().filter(|(_, e, _)| *e == busiest).count() < 2 {
            continue;
        }
        let best = candidates.min_by_key(|(_, _, bp)| hi.saturating_sub(*bp).max(lo + bp));
        if let Some(&(key, _, bp)) = best {
            let new_max = hi.saturating_sub(bp).max(lo + bp);
            if new_max + (hi - lo) / 4 <= hi {
                shared.migrate(key, busiest, idlest);
            }
        }
    }
}

/// What an engine sleeps on: its wake-up fd and a clone of every doorbell.
struct Doorbells {
    epoll: Epoll,
    kicks: Vec<(Doorbell, Arc<Function>)>,
    /// A started queue has no doorbell (polling mode): never sleep long.
    polling_only: bool,
}

const WAKE_TOKEN: u64 = u64::MAX;

impl Doorbells {
    fn build(engine: &Engine, queues: &[QueueRef]) -> std::io::Result<Doorbells> {
        let epoll = Epoll::new()?;
        let add = |fd: i32, token: u64| epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token));
        add(engine.wake.as_raw_fd(), WAKE_TOKEN)?;
        let mut kicks = Vec::new();
        let mut polling_only = false;
        for q in queues {
            // The TX queue's doorbell, and (once per VF) the control queue's.
            let vrings = std::iter::once(q.func.tx(q.qp)).chain((q.qp == 0).then(|| q.func.ctrl()));
            for vr in vrings {
                let s = vr.lock();
                match &s.kick {
                    Some(k) => {
                        let k = k.try_clone()?;
                        add(k.as_raw_fd(), kicks.len() as u64)?;
                        kicks.push((k, q.func.clone()));
                    }
                    None if s.ready() => polling_only = true,
                    None => {}
                }
            }
        }
        Ok(Doorbells { epoll, kicks, polling_only })
    }
}

/// What the engine's queues hold when it wants to sleep.
#[derive(Default)]
struct Pending {
    /// Some queue has chains it may take now.
    now: bool,
    /// The earliest time (ns) a queue held only by its max_tx_rate shaper
    /// may send again.
    shaped_until_ns: Option<u64>,
}

/// Adds `n` to a counter only this engine thread writes (its own counters,
/// and the load of the queues it serves: while a queue moves, two engines
/// may both count it for a moment, and a lost update of a load figure is
/// harmless). A plain load and store: no locked instruction, so the loop
/// does not wait for its stores to guest memory to drain.
#[inline]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

fn set_notifications(queues: &[QueueRef], enable: bool, now_ns: u64) -> Pending {
    let mut p = Pending::default();
    for q in queues {
        let mut s = q.func.tx(q.qp).lock();
        if !s.ready() {
            continue;
        }
        let held_until = s.qos.throttled_until_ns;
        if let Some(ring) = s.ring.as_mut() {
            ring.set_notification(enable);
            if ring.any_pending().unwrap_or(true) {
                if held_until > now_ns {
                    p.shaped_until_ns = Some(p.shaped_until_ns.map_or(held_until, |t| t.min(held_until)));
                } else {
                    p.now = true;
                }
            }
        }
    }
    p
}

fn run(engine: Arc<Engine>, fabric: Arc<Fabric>, config: EngineConfig) {
    if !config.cpus.is_empty() {
        let cpu = config.cpus[engine.id % config.cpus.len()];
        if core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
            info!(engine = engine.id, cpu, "engine pinned");
        } else {
            error!(engine = engine.id, cpu, "cannot pin the engine; it floats");
        }
    }
    let c = &engine.counters;
    let mut scratch = Scratch::default();
    let mut queues: Vec<QueueRef> = Vec::new();
    let mut seen = u64::MAX;
    let mut bells: Option<Doorbells> = None;
    let mut events = vec![EpollEvent::default(); 64];
    // Times on the TSC: no clock call per poll round.
    let idle_spin = tsc::ticks(config.idle_spin);
    let mut last_work = tsc::now();
    let mut rounds = 0u64;
    let mut t_prev = tsc::now();
    let mut ab = crate::ab::AbClock::new(engine.id);
    while !engine.stop.load(Ordering::Relaxed) {
        ab.tick();
        let g = engine.generation.load(Ordering::Acquire);
        if g != seen || bells.is_none() {
            seen = g;
            // The pokes that led here are handled: clear them so the next
            // sleep is not cut short by a stale wake-up.
            engine.wake.drain();
            scratch.release();
            queues = engine.queues().clone();
            bells = match Doorbells::build(&engine, &queues) {
                Ok(b) => Some(b),
                Err(e) => {
                    error!(engine = engine.id, error = %e, "cannot watch doorbells; polling");
                    None
                }
            };
        }
        let mut work = 0;
        // Transmit arbitration among this engine's queues: guarantees
        // (min_tx_rate) first, then deficit round robin by weight.
        let turns = [Pass::Guaranteed, Pass::Shared { quantum: TURN_QUANTUM }];
        // Each round starts at the next queue: when a congested receiver
        // frees up, the RX buffers it posted meanwhile do not always go to
        // the same sender (the first one served).
        let first = rounds as usize % queues.len().max(1);
        let order = queues[first..].iter().chain(&queues[..first]);
        for q in turns.iter().flat_map(|p| order.clone().map(move |q| (q, *p))) {
            let (q, pass) = q;
            if pass == Pass::Guaranteed && !q.func.has_guarantee() {
                // Its guarantee turn is empty (not a call into the burst).
                continue;
            }
            let n = poll_queue(&q.func, q.qp, &fabric, &mut scratch, pass);
            if n > 0 {
                // From the last time taken (the end of the previous poll
                // that moved frames or of the previous round), so without a
                // clock read per poll: the polls before it in this round
                // that found nothing are counted in.
                let t = tsc::now();
                bump(&c.burst_cycles, t.wrapping_sub(t_prev));
                let l = q.func.load(q.qp);
                bump(&l.busy_cycles, t.wrapping_sub(t_prev));
                bump(&l.chains, n as u64);
                bump(&c.busy_cycles, t.wrapping_sub(t_prev));
                t_prev = t;
                work += n;
            }
        }
        // The VF-to-PF mailbox: outside every fabric and vring lock (the PF
        // may take the VF table and the switch to apply a granted request).
        // Commands are rare: look every 256 rounds and after each wake-up.
        rounds += 1;
        if rounds % 256 == 0 {
            for q in queues.iter().filter(|q| q.qp == 0) {
                work += crate::mailbox::process_ctrl(&q.func);
            }
        }
        let t = tsc::now();
        ab.count(work);
        if work > 0 {
            scratch.fire_due_interrupts();
            bump(&c.chains, work as u64);
            last_work = t;
            bump(&c.busy_cycles, t.wrapping_sub(t_prev));
            t_prev = t;
            continue;
        }
        bump(&c.idle_cycles, t.wrapping_sub(t_prev));
        t_prev = t;
        // Moderated interrupts held back: fire those due, and keep polling
        // (never sleep) while any is held.
        if scratch.fire_due_interrupts() {
            std::hint::spin_loop();
            continue;
        }
        if t.wrapping_sub(last_work) < idle_spin {
            std::hint::spin_loop();
            continue;
        }
        // Idle: ask for kicks, re-check, then sleep on the doorbells (or,
        // if queues are held only by their shapers, until the first may
        // send again).
        let now_ns = tsc::ns();
        let pending = set_notifications(&queues, true, now_ns);
        if pending.now {
            set_notifications(&queues, false, now_ns);
            continue;
        }
        // Nothing of a tenant's (memory, a detached function) is kept alive
        // by an engine asleep.
        scratch.release();
        c.sleeps.fetch_add(1, Ordering::Relaxed);
        match &bells {
            Some(b) => {
                let shaped_ms = pending.shaped_until_ns.map(|t| t.saturating_sub(now_ns).div_ceil(1_000_000) as i32);
                let timeout = match (b.polling_only, shaped_ms) {
                    (true, _) => 1,
                    (false, Some(ms)) => ms.clamp(1, 1000),
                    (false, None) => 1000,
                };
                let n = b.epoll.wait(timeout, &mut events).unwrap_or(0);
                for ev in &events[..n] {
                    match ev.data() {
                        WAKE_TOKEN => {
                            engine.wake.drain();
                        }
                        i => {
                            if let Some((k, f)) = b.kicks.get(i as usize) {
                                if k.drain() {
                                    f.counters.kicks.inc();
                                }
                            }
                        }
                    }
                }
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
        set_notifications(&queues, false, tsc::ns());
        let t = tsc::now();
        c.sleep_cycles.fetch_add(t.wrapping_sub(t_prev), Ordering::Relaxed);
        t_prev = t;
        last_work = t;
        // Woken: a doorbell may have been the control queue's.
        rounds = 255;
    }
}

/// One burst of one queue, with a panic caught and turned into a fault of
/// that function's queue (never the daemon).
fn poll_queue(f: &Arc<Function>, qp: u16, fabric: &Fabric, scratch: &mut Scratch, pass: Pass) -> usize {
    match catch_unwind(AssertUnwindSafe(|| process_tx(f, qp, fabric, scratch, pass))) {
        Ok(n) => n,
        Err(_) => {
            error!(vf = f.id.0, queue = qp, "engine panic while serving the queue; queue faulted");
            f.counters.error(ErrorKind::QueueFaulted);
            f.tx(qp).lock().fault();
            f.set_needs_reset();
            *scratch = Scratch::default();
            0
        }
    }
}
