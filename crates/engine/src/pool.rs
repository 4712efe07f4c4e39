//! The engine pool: threads, queue-to-engine placement, sleeping on
//! doorbells.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{error, info};
use vfnic_op::{DataPlaneHooks, Doorbell, Function};
use vfnic_types::{ErrorKind, VfId};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::fabric::Fabric;
use crate::forward::{process_tx, Scratch};

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
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { engines: 1, idle_spin: Duration::from_micros(200), cpus: Vec::new() }
    }
}

/// Counters of one engine.
#[derive(Debug, Default, Serialize, Clone)]
pub struct EngineStats {
    /// Engine index.
    pub id: usize,
    /// Functions whose queue pairs it serves.
    pub vfs: Vec<u16>,
    /// Chains processed.
    pub chains: u64,
    /// Times it went to sleep on the doorbells.
    pub sleeps: u64,
    /// Poll rounds that found work.
    pub busy_polls: u64,
    /// Poll rounds that found nothing.
    pub idle_polls: u64,
}

#[derive(Default)]
struct Counters {
    chains: AtomicU64,
    sleeps: AtomicU64,
    busy_polls: AtomicU64,
    idle_polls: AtomicU64,
}

struct Engine {
    id: usize,
    wake: Doorbell,
    generation: AtomicU64,
    functions: Mutex<Vec<Arc<Function>>>,
    stop: AtomicBool,
    counters: Counters,
}

impl Engine {
    fn poke(&self) {
        self.generation.fetch_add(1, Ordering::Release);
        self.wake.signal();
    }
}

struct Shared {
    engines: Vec<Arc<Engine>>,
    placement: Mutex<HashMap<VfId, usize>>,
}

impl DataPlaneHooks for Shared {
    fn queues_changed(&self, vf: VfId) {
        let placement = self.placement.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&i) = placement.get(&vf) {
            self.engines[i].poke();
        }
    }
}

/// The DMA engines.
pub struct EnginePool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl EnginePool {
    /// Starts `config.engines` engine threads over `fabric`.
    pub fn start(config: EngineConfig, fabric: Arc<Fabric>) -> std::io::Result<EnginePool> {
        let n = config.engines.max(1);
        let engines: Vec<Arc<Engine>> = (0..n)
            .map(|id| {
                Ok(Arc::new(Engine {
                    id,
                    wake: Doorbell::new()?,
                    generation: AtomicU64::new(0),
                    functions: Mutex::new(Vec::new()),
                    stop: AtomicBool::new(false),
                    counters: Counters::default(),
                }))
            })
            .collect::<std::io::Result<_>>()?;
        let mut threads = Vec::new();
        for e in &engines {
            let (e, fabric, config) = (e.clone(), fabric.clone(), config.clone());
            threads.push(
                std::thread::Builder::new().name(format!("engine{}", e.id)).spawn(move || run(e, fabric, config))?,
            );
        }
        info!(engines = n, "DMA engines started");
        Ok(EnginePool { shared: Arc::new(Shared { engines, placement: Mutex::new(HashMap::new()) }), threads })
    }

    /// Maps `func`'s queue pairs to the least busy engine (fewest
    /// functions) and attaches the function's data-plane hooks.
    pub fn add(&self, func: Arc<Function>) -> usize {
        let mut placement = self.shared.placement.lock().unwrap_or_else(|e| e.into_inner());
        let load = |e: &Engine| e.functions.lock().unwrap_or_else(|e| e.into_inner()).len();
        let best = self.shared.engines.iter().min_by_key(|e| load(e)).expect("at least one engine");
        best.functions.lock().unwrap_or_else(|e| e.into_inner()).push(func.clone());
        placement.insert(func.id, best.id);
        func.attach(self.shared.clone());
        best.poke();
        best.id
    }

    /// Unmaps a function from its engine.
    pub fn remove(&self, vf: VfId) {
        let mut placement = self.shared.placement.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = placement.remove(&vf) {
            let e = &self.shared.engines[i];
            e.functions.lock().unwrap_or_else(|e| e.into_inner()).retain(|f| f.id != vf);
            e.poke();
        }
    }

    /// Per-engine counters.
    pub fn stats(&self) -> Vec<EngineStats> {
        self.shared
            .engines
            .iter()
            .map(|e| EngineStats {
                id: e.id,
                vfs: e.functions.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|f| f.id.0).collect(),
                chains: e.counters.chains.load(Ordering::Relaxed),
                sleeps: e.counters.sleeps.load(Ordering::Relaxed),
                busy_polls: e.counters.busy_polls.load(Ordering::Relaxed),
                idle_polls: e.counters.idle_polls.load(Ordering::Relaxed),
            })
            .collect()
    }
}

impl Drop for EnginePool {
    fn drop(&mut self) {
        for e in &self.shared.engines {
            e.stop.store(true, Ordering::Relaxed);
            e.wake.signal();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
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
    fn build(engine: &Engine, functions: &[Arc<Function>]) -> std::io::Result<Doorbells> {
        let epoll = Epoll::new()?;
        let add = |fd: i32, token: u64| epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token));
        add(engine.wake.as_raw_fd(), WAKE_TOKEN)?;
        let mut kicks = Vec::new();
        let mut polling_only = false;
        for f in functions {
            for qp in 0..f.queue_pairs() {
                let s = f.tx(qp).lock();
                match &s.kick {
                    Some(k) => {
                        let k = k.try_clone()?;
                        add(k.as_raw_fd(), kicks.len() as u64)?;
                        kicks.push((k, f.clone()));
                    }
                    None if s.ready() => polling_only = true,
                    None => {}
                }
            }
        }
        Ok(Doorbells { epoll, kicks, polling_only })
    }
}

fn set_notifications(functions: &[Arc<Function>], enable: bool) -> bool {
    let mut pending = false;
    for f in functions {
        for qp in 0..f.queue_pairs() {
            let mut s = f.tx(qp).lock();
            if !s.ready() {
                continue;
            }
            if let Some(ring) = s.ring.as_mut() {
                ring.set_notification(enable);
                pending |= ring.pending().map(|n| n > 0).unwrap_or(true);
            }
        }
    }
    pending
}

fn run(engine: Arc<Engine>, fabric: Arc<Fabric>, config: EngineConfig) {
    if !config.cpus.is_empty() {
        let cpu = config.cpus[engine.id % config.cpus.len()];
        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
            error!(engine = engine.id, cpu, "cannot pin the engine; it floats");
        } else {
            info!(engine = engine.id, cpu, "engine pinned");
        }
    }
    let mut scratch = Scratch::default();
    let mut functions: Vec<Arc<Function>> = Vec::new();
    let mut seen = u64::MAX;
    let mut bells: Option<Doorbells> = None;
    let mut events = vec![EpollEvent::default(); 64];
    let mut last_work = Instant::now();
    while !engine.stop.load(Ordering::Relaxed) {
        let g = engine.generation.load(Ordering::Acquire);
        if g != seen || bells.is_none() {
            seen = g;
            scratch.release();
            functions = engine.functions.lock().unwrap_or_else(|e| e.into_inner()).clone();
            bells = match Doorbells::build(&engine, &functions) {
                Ok(b) => Some(b),
                Err(e) => {
                    error!(engine = engine.id, error = %e, "cannot watch doorbells; polling");
                    None
                }
            };
        }
        let mut work = 0;
        for f in &functions {
            for qp in 0..f.queue_pairs() {
                work += poll_queue(f, qp, &fabric, &mut scratch);
            }
        }
        if work > 0 {
            engine.counters.chains.fetch_add(work as u64, Ordering::Relaxed);
            engine.counters.busy_polls.fetch_add(1, Ordering::Relaxed);
            last_work = Instant::now();
            continue;
        }
        engine.counters.idle_polls.fetch_add(1, Ordering::Relaxed);
        if last_work.elapsed() < config.idle_spin {
            std::hint::spin_loop();
            continue;
        }
        // Idle: ask for kicks, re-check, then sleep on the doorbells.
        if set_notifications(&functions, true) {
            set_notifications(&functions, false);
            continue;
        }
        engine.counters.sleeps.fetch_add(1, Ordering::Relaxed);
        match &bells {
            Some(b) => {
                let timeout = if b.polling_only { 1 } else { 1000 };
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
        set_notifications(&functions, false);
        last_work = Instant::now();
    }
}

/// One burst of one queue, with a panic caught and turned into a fault of
/// that function's queue (never the daemon).
fn poll_queue(f: &Arc<Function>, qp: u16, fabric: &Fabric, scratch: &mut Scratch) -> usize {
    match catch_unwind(AssertUnwindSafe(|| process_tx(f, qp, fabric, scratch))) {
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
