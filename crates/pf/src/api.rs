//! The runtime control API: one JSON object per line over a Unix socket.
//!
//! Requests: `{"cmd":"vf_set","vf":1,"state":"disable","max_tx_rate":1000}`
//! (keys are ip-link's words with underscores: `mac`, `vlan`, `qos`,
//! `spoofchk`, `trust`, `promisc` (booleans), `state` (or `link`),
//! `max_tx_rate`, `min_tx_rate`, `weight`, `speed`, `rx_usecs`, `rx_frames`),
//! `{"cmd":"vf_reset","vf":1}`, `{"cmd":"vf_qemu_args","vf":1}`,
//! `{"cmd":"vf_dpdk_args","vf":1}`, `{"cmd":"pf_show"}`,
//! `{"cmd":"pf_set_vfs","num_vfs":8}`, `{"cmd":"vf_list"}`,
//! `{"cmd":"vf_show","vf":1}`, `{"cmd":"stats"}`, `{"cmd":"engines"}`,
//! `{"cmd":"fdb"}`.
//! Response: `{"ok":true,"result":...}` or `{"ok":false,"error":"..."}`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use thiserror::Error;
use tracing::warn;

use crate::pf::{Pf, VfChange};

/// Longest request line accepted.
const MAX_LINE: u64 = 64 * 1024;

/// A control request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Every VF.
    VfList,
    /// One VF.
    VfShow {
        /// VF index.
        vf: u16,
    },
    /// Change a VF's settings.
    VfSet {
        /// VF index.
        vf: u16,
        /// The changes.
        #[serde(flatten)]
        change: VfChange,
    },
    /// Function-level reset: back to the configured settings, queues
    /// dropped (the tenant is disconnected and may attach again).
    VfReset {
        /// VF index.
        vf: u16,
    },
    /// The QEMU options that attach a guest to a VF.
    VfQemuArgs {
        /// VF index.
        vf: u16,
    },
    /// The DPDK `--vdev` option that attaches a virtio-user port to a VF.
    VfDpdkArgs {
        /// VF index.
        vf: u16,
    },
    /// The PF: number of VFs, engines, run directory.
    PfShow,
    /// Set the number of VFs (sockets created or removed at run time).
    PfSetVfs {
        /// New number of VFs (1 to 256).
        num_vfs: u16,
    },
    /// Counters of every VF.
    Stats,
    /// Engines and their queues.
    Engines,
    /// Move a queue pair to an engine.
    EngineMove {
        /// VF index.
        vf: u16,
        /// Queue pair.
        qp: u16,
        /// Target engine.
        engine: usize,
    },
    /// The switch's forwarding table.
    Fdb,
    /// Every uplink: state and counters.
    UplinkList,
    /// One uplink.
    UplinkShow {
        /// Uplink name.
        name: String,
    },
}

fn handle(pf: &Pf, req: Request) -> Result<Value, String> {
    let v = match req {
        Request::VfList => json!(pf.vf_list()),
        Request::VfShow { vf } => json!(pf.vf_show(vf).map_err(|e| e.to_string())?),
        Request::VfSet { vf, change } => json!(pf.vf_set(vf, &change).map_err(|e| e.to_string())?),
        Request::VfReset { vf } => json!(pf.vf_reset(vf).map_err(|e| e.to_string())?),
        Request::VfQemuArgs { vf } => json!(pf.qemu_args(vf).map_err(|e| e.to_string())?),
        Request::VfDpdkArgs { vf } => json!(pf.dpdk_args(vf).map_err(|e| e.to_string())?),
        Request::PfShow => json!(pf.pf_show()),
        Request::PfSetVfs { num_vfs } => json!(pf.set_vfs(num_vfs).map_err(|e| e.to_string())?),
        Request::Stats => json!({ "vfs": pf.stats(), "uplinks": pf.uplink_list() }),
        Request::UplinkList => json!(pf.uplink_list()),
        Request::UplinkShow { name } => json!(pf.uplink_show(&name).map_err(|e| e.to_string())?),
        Request::Engines => json!(pf.engines()),
        Request::EngineMove { vf, qp, engine } => json!(pf.engine_move(vf, qp, engine).map_err(|e| e.to_string())?),
        Request::Fdb => json!(pf.fdb()),
    };
    Ok(v)
}

/// Answers one request line.
pub fn answer(pf: &Pf, line: &str) -> Value {
    match serde_json::from_str::<Request>(line) {
        Ok(req) => match handle(pf, req) {
            Ok(result) => json!({ "ok": true, "result": result }),
            Err(error) => json!({ "ok": false, "error": error }),
        },
        Err(e) => json!({ "ok": false, "error": format!("bad request: {e}") }),
    }
}

/// The API socket; removed when dropped.
pub struct ApiServer {
    path: PathBuf,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves the API on `path` from a background thread.
pub fn serve(pf: Arc<Pf>, path: &Path) -> io::Result<ApiServer> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::thread::Builder::new().name("api".into()).spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let pf = pf.clone();
            let _ = std::thread::Builder::new().name("api-conn".into()).spawn(move || {
                if let Err(e) = serve_conn(&pf, conn) {
                    warn!(error = %e, "API connection failed");
                }
            });
        }
    })?;
    Ok(ApiServer { path: path.to_path_buf() })
}

fn serve_conn(pf: &Pf, conn: UnixStream) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut out = conn.try_clone()?;
    let mut reader = BufReader::new(conn.take(MAX_LINE));
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if !line.ends_with('\n') {
            let resp = json!({ "ok": false, "error": "request line too long" });
            return writeln!(out, "{resp}");
        }
        let resp = answer(pf, line.trim());
        writeln!(out, "{resp}")?;
        // Each request line gets a fresh budget.
        reader.get_mut().set_limit(MAX_LINE);
    }
}

/// A failed API call.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The daemon's socket cannot be reached.
    #[error("Cannot reach the vfnic daemon at {0} (is `vfnic run` running?)")]
    Connect(PathBuf, #[source] io::Error),
    /// The exchange failed.
    #[error("API exchange failed")]
    Io(#[from] io::Error),
    /// The daemon answered with an error.
    #[error("{0}")]
    Daemon(String),
    /// The answer was not JSON.
    #[error("Bad answer from the daemon")]
    Json(#[from] serde_json::Error),
}

/// Sends one request to the daemon at `socket` and returns its result.
pub fn call(socket: &Path, req: &Request) -> Result<Value, ClientError> {
    let mut s = UnixStream::connect(socket).map_err(|e| ClientError::Connect(socket.to_path_buf(), e))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    writeln!(s, "{}", serde_json::to_string(req)?)?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    let v: Value = serde_json::from_str(&line)?;
    if v["ok"] == json!(true) {
        Ok(v["result"].clone())
    } else {
        Err(ClientError::Daemon(v["error"].as_str().unwrap_or("unknown error").to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format() {
        let r: Request =
            serde_json::from_str(r#"{"cmd":"vf_set","vf":1,"link":"down","mac":"02:00:00:00:00:09"}"#).unwrap();
        let Request::VfSet { vf, change } = r else { panic!() };
        assert_eq!(vf, 1);
        assert_eq!(change.state, Some(vfnic_types::LinkState::Disable));
        let r: Request = serde_json::from_str(r#"{"cmd":"vf_set","vf":1,"state":"enable","vlan":10,"qos":3}"#).unwrap();
        let Request::VfSet { change, .. } = r else { panic!() };
        assert_eq!((change.vlan, change.qos), (Some(10), Some(3)));
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"vf_set","vf":1,"vlan":70000}"#).is_err());
        assert_eq!(
            serde_json::to_string(&Request::PfSetVfs { num_vfs: 8 }).unwrap(),
            r#"{"cmd":"pf_set_vfs","num_vfs":8}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"vf_set","vf":1,"mac":"nope"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).is_err());
        assert_eq!(serde_json::to_string(&Request::Stats).unwrap(), r#"{"cmd":"stats"}"#);
    }
}
