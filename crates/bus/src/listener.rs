//! The per-VF socket: bind, accept one tenant at a time, serve it, clean up,
//! accept again.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{info, warn};
use vfnic_op::Function;

use crate::session::{Session, SessionEnd};
use crate::sys;

/// A VF's vhost-user socket and the thread serving it.
pub struct VfListener {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    current: Arc<Mutex<Option<UnixStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl VfListener {
    /// Binds `path` (replacing a stale socket file) and starts serving
    /// `func` on it.
    pub fn start(func: Arc<Function>, path: &Path) -> io::Result<VfListener> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let current = Arc::new(Mutex::new(None));
        let (s, c) = (stop.clone(), current.clone());
        let name = format!("vf{}-bus", func.id.0);
        let thread = std::thread::Builder::new().name(name).spawn(move || accept_loop(func, listener, s, c))?;
        Ok(VfListener { path: path.to_path_buf(), stop, current, thread: Some(thread) })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Drops the current tenant connection, if any (the socket stays).
    pub fn disconnect(&self) {
        if let Some(s) = self.current.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for VfListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.disconnect();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(
    func: Arc<Function>,
    listener: UnixListener,
    stop: Arc<AtomicBool>,
    current: Arc<Mutex<Option<UnixStream>>>,
) {
    let vf = func.id.0;
    while !stop.load(Ordering::Relaxed) {
        match sys::wait_readable(listener.as_raw_fd(), Duration::from_millis(200)) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                warn!(vf, error = %e, "poll on the VF socket failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(vf, error = %e, "accept failed");
                continue;
            }
        };
        *current.lock().unwrap_or_else(|e| e.into_inner()) = stream.try_clone().ok();
        info!(vf, "tenant connected");
        func.set_connected(true);
        let end = match Session::new(func.clone(), stream) {
            Ok(mut session) => session.run(&stop),
            Err(e) => SessionEnd::Framing(crate::session::FrameError::Io(e)),
        };
        match &end {
            SessionEnd::Disconnected | SessionEnd::Stopped => info!(vf, "tenant disconnected"),
            e => warn!(vf, error = %e, cause = ?std::error::Error::source(e), "tenant connection closed"),
        }
        *current.lock().unwrap_or_else(|e| e.into_inner()) = None;
        // Frees the tenant's memory mappings and doorbells.
        func.set_connected(false);
    }
}
