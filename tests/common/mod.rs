//! Test harness: a real `vfnic` daemon process in a private run directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vfnic_pf::api::{self, Request};
use vfnic_user::{Options, VirtioNet};

/// A running daemon; killed and cleaned up on drop.
pub struct Daemon {
    child: Child,
    pub dir: PathBuf,
    pub log: PathBuf,
}

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Daemon {
    /// Starts `vfnic run` with `config` (TOML text, without run_dir).
    pub fn start(config: &str) -> Daemon {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vfnic-it-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("vfnic.toml");
        std::fs::write(&cfg, format!("run_dir = {:?}\n{config}", dir.display().to_string())).unwrap();
        let log = dir.join("vfnic.log");
        let child = Command::new(env!("CARGO_BIN_EXE_vfnic"))
            .args(["run", "--config"])
            .arg(&cfg)
            .env("VFNIC_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn vfnic");
        let d = Daemon { child, dir, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !d.api_path().exists() {
            assert!(Instant::now() < deadline, "daemon did not start:\n{}", d.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    pub fn sock(&self, vf: u16) -> PathBuf {
        self.dir.join(format!("vf{vf}.sock"))
    }

    pub fn api_path(&self) -> PathBuf {
        self.dir.join("vfnic.sock")
    }

    pub fn api(&self, req: Request) -> Value {
        api::call(&self.api_path(), &req).unwrap_or_else(|e| panic!("API call failed: {e}\n{}", self.log_text()))
    }

    /// Counters of one VF.
    pub fn stats(&self, vf: u16) -> Value {
        let all = self.api(Request::Stats);
        all["vfs"].as_array().unwrap().iter().find(|v| v["id"] == vf).cloned().expect("vf in stats")
    }

    pub fn counter(&self, vf: u16, path: &[&str]) -> u64 {
        let mut v = self.stats(vf);
        for p in path {
            v = v[*p].clone();
        }
        v.as_u64().unwrap_or_else(|| panic!("counter {path:?} missing"))
    }

    /// The daemon's process id (to inspect its fds and mappings).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How the daemon process ended, if it did (a signal such as SIGBUS shows here).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// The daemon process is still alive.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `f` holds or panics after `secs`.
    pub fn wait_for(&self, what: &str, secs: u64, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// An Ethernet frame `dst <- src` with an IPv4 ethertype and `len` bytes.
pub fn frame(dst: [u8; 6], src: [u8; 6], len: usize, fill: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    f.resize(len.max(14), fill);
    f
}

pub fn vf_mac(vf: u16) -> [u8; 6] {
    vfnic_types::MacAddr::for_vf(vf).0
}

pub fn wait_path(p: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.exists() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Attaches the project's own virtio-user front end to VF `vf` with `opts`
/// (the daemon's log in the panic message if it cannot).
pub fn attach_with(d: &Daemon, vf: u16, opts: Options) -> VirtioNet {
    VirtioNet::connect(d.sock(vf), opts).unwrap_or_else(|e| panic!("connect vf{vf}: {e}\n{}", d.log_text()))
}

/// [`attach_with`] the default options.
pub fn attach(d: &Daemon, vf: u16) -> VirtioNet {
    attach_with(d, vf, Options::default())
}

/// For tests that measure rates or timings: one at a time within a test
/// binary (they would measure each other).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
