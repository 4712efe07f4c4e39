//! The declarative configuration (TOML).
//!
//! ```toml
//! run_dir = "./run/vfnic"   # sockets live here
//! num_vfs = 4
//! engines = 1
//! engine_cpus = [1]        # optional pinning, engine i -> engine_cpus[i % len]
//! rebalance_interval_ms = 10000   # compare engine loads this often (0: never)
//! rebalance_threshold_pct = 50    # move queue pairs off engines busier than this
//! idle_spin_us = 200       # keep polling this long after the last frame, then sleep
//!
//! [[vf]]                     # optional per-VF overrides
//! id = 0
//! mac = "02:76:66:6e:00:00"
//! socket = "/tmp/vf0.sock"
//! mtu = 1500
//! link = "up"
//! rx_usecs = 50            # interrupt moderation (ethtool -C rx-usecs), 0 = off
//! rx_frames = 32           # ... or once this many frames are pending
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;
use vfnic_types::{LinkState, MacAddr, MAX_VFS};

/// Default run directory (relative to the working directory).
pub const DEFAULT_RUN_DIR: &str = "./run/vfnic";
/// Default number of VFs.
pub const DEFAULT_NUM_VFS: u16 = 4;
/// Default MTU.
pub const DEFAULT_MTU: u16 = 1500;
/// Default polling window after the last frame.
pub const DEFAULT_IDLE_SPIN_US: u64 = 200;
/// Default rebalance interval.
pub const DEFAULT_REBALANCE_INTERVAL_MS: u64 = 10_000;
/// Default load threshold for moving queue pairs.
pub const DEFAULT_REBALANCE_THRESHOLD_PCT: u32 = 50;
/// Most engines.
pub const MAX_ENGINES: usize = 64;

/// A configuration that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("Cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// TOML syntax or a value of the wrong type (the message names the line).
    #[error("{0}")]
    Parse(String),
    /// A value that parses but is not allowed.
    #[error("line {line}: {message}")]
    Invalid {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

fn default_engines() -> usize {
    std::thread::available_parallelism().map(|n| n.get().saturating_sub(1).clamp(1, 4)).unwrap_or(1)
}

/// One VF's overrides.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VfConfig {
    /// VF index.
    pub id: u16,
    /// MAC address (default: `MacAddr::for_vf(id)`).
    pub mac: Option<MacAddr>,
    /// Socket path (default: `RUN_DIR/vfN.sock`).
    pub socket: Option<PathBuf>,
    /// MTU (default 1500).
    pub mtu: Option<u16>,
    /// Administrative link state (default up).
    pub link: Option<LinkState>,
    /// Interrupt moderation time in microseconds (default 0: off).
    pub rx_usecs: Option<u32>,
    /// Interrupt moderation frame count (default 0: off).
    pub rx_frames: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    run_dir: Option<PathBuf>,
    num_vfs: Option<toml::Spanned<u16>>,
    engines: Option<toml::Spanned<usize>>,
    queue_pairs: Option<toml::Spanned<u16>>,
    #[serde(default)]
    engine_cpus: Vec<usize>,
    rebalance_interval_ms: Option<u64>,
    idle_spin_us: Option<u64>,
    rebalance_threshold_pct: Option<toml::Spanned<u32>>,
    #[serde(default)]
    vf: Vec<toml::Spanned<VfConfig>>,
}

/// The resolved configuration of one VF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfSettings {
    /// VF index.
    pub id: u16,
    /// MAC address.
    pub mac: MacAddr,
    /// Socket path.
    pub socket: PathBuf,
    /// MTU.
    pub mtu: u16,
    /// Link state.
    pub link: LinkState,
    /// Interrupt moderation time (microseconds, 0 = off).
    pub rx_usecs: u32,
    /// Interrupt moderation frame count (0 = off).
    pub rx_frames: u32,
}

/// The adapter's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where sockets live.
    pub run_dir: PathBuf,
    /// Number of DMA engines.
    pub engines: usize,
    /// Queue pairs per VF.
    pub queue_pairs: u16,
    /// CPUs to pin the engines to (empty: not pinned).
    pub engine_cpus: Vec<usize>,
    /// How often engine loads are compared (0: never rebalance).
    pub rebalance_interval_ms: u64,
    /// Load (percent) of the busiest engine above which queue pairs move.
    pub rebalance_threshold_pct: u32,
    /// How long an engine keeps polling after its last frame before it
    /// sleeps on the doorbells (NAPI-style adaptive polling).
    pub idle_spin_us: u64,
    /// Per-VF settings, by index.
    pub vfs: Vec<VfSettings>,
}

impl Default for Config {
    fn default() -> Self {
        Config::parse("").expect("the embedded default is valid")
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_path_buf(), e))?;
        Config::parse(&text)
    }

    /// Parses and checks configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            let msg = e.message().trim_end().to_string();
            ConfigError::Parse(match line {
                Some(l) => format!("line {l}: {msg}"),
                None => msg,
            })
        })?;
        let invalid = |span: std::ops::Range<usize>, message: String| ConfigError::Invalid {
            line: line_of(text, span.start),
            message,
        };
        let run_dir = raw.run_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR));
        let num_vfs = match raw.num_vfs {
            Some(n) if *n.get_ref() == 0 || *n.get_ref() > MAX_VFS => {
                return Err(invalid(n.span(), format!("num_vfs = {} is out of range (1 to {MAX_VFS})", n.get_ref())))
            }
            Some(n) => n.into_inner(),
            None => DEFAULT_NUM_VFS,
        };
        let engines = match raw.engines {
            Some(n) if *n.get_ref() == 0 || *n.get_ref() > MAX_ENGINES => {
                return Err(invalid(
                    n.span(),
                    format!("engines = {} is out of range (1 to {MAX_ENGINES})", n.get_ref()),
                ))
            }
            Some(n) => n.into_inner(),
            None => default_engines(),
        };
        let queue_pairs = match raw.queue_pairs {
            Some(n) if *n.get_ref() == 0 || *n.get_ref() > 16 => {
                return Err(invalid(n.span(), format!("queue_pairs = {} is out of range (1 to 16)", n.get_ref())))
            }
            Some(n) => n.into_inner(),
            None => 1,
        };
        let mut vfs: Vec<VfSettings> = (0..num_vfs)
            .map(|id| VfSettings {
                id,
                mac: MacAddr::for_vf(id),
                socket: run_dir.join(format!("vf{id}.sock")),
                mtu: DEFAULT_MTU,
                link: LinkState::Auto,
                rx_usecs: 0,
                rx_frames: 0,
            })
            .collect();
        let mut seen = HashSet::new();
        for entry in &raw.vf {
            let span = entry.span();
            let v = entry.get_ref();
            if v.id >= num_vfs {
                return Err(invalid(
                    span,
                    format!("[[vf]] id = {} but num_vfs = {num_vfs} (ids are 0 to {})", v.id, num_vfs - 1),
                ));
            }
            if !seen.insert(v.id) {
                return Err(invalid(span, format!("[[vf]] id = {} appears twice", v.id)));
            }
            let s = &mut vfs[v.id as usize];
            if let Some(mac) = v.mac {
                if !mac.is_unicast() {
                    return Err(invalid(span, format!("vf {}: mac {mac} is not a unicast address", v.id)));
                }
                s.mac = mac;
            }
            if let Some(mtu) = v.mtu {
                if !(68..=9000).contains(&mtu) {
                    return Err(invalid(span, format!("vf {}: mtu {mtu} is out of range (68 to 9000)", v.id)));
                }
                s.mtu = mtu;
            }
            if let Some(p) = &v.socket {
                s.socket = p.clone();
            }
            if let Some(l) = v.link {
                s.link = l;
            }
            if let Some(u) = v.rx_usecs {
                if u > 1_000_000 {
                    return Err(invalid(span, format!("vf {}: rx_usecs {u} is above 1000000 (1 s)", v.id)));
                }
                s.rx_usecs = u;
            }
            if let Some(n) = v.rx_frames {
                s.rx_frames = n;
            }
        }
        let mut macs = HashSet::new();
        let mut sockets = HashSet::new();
        for s in &vfs {
            let span = raw.vf.iter().find(|e| e.get_ref().id == s.id).map(|e| e.span()).unwrap_or(0..0);
            if !macs.insert(s.mac) {
                return Err(invalid(span, format!("vf {}: mac {} is used by another VF", s.id, s.mac)));
            }
            if !sockets.insert(s.socket.clone()) {
                return Err(invalid(span, format!("vf {}: socket {} is used by another VF", s.id, s.socket.display())));
            }
        }
        let rebalance_threshold_pct = match raw.rebalance_threshold_pct {
            Some(n) if *n.get_ref() > 100 => {
                return Err(invalid(n.span(), format!("rebalance_threshold_pct = {} is above 100", n.get_ref())))
            }
            Some(n) => n.into_inner(),
            None => DEFAULT_REBALANCE_THRESHOLD_PCT,
        };
        Ok(Config {
            run_dir,
            engines,
            queue_pairs,
            engine_cpus: raw.engine_cpus,
            rebalance_interval_ms: raw.rebalance_interval_ms.unwrap_or(DEFAULT_REBALANCE_INTERVAL_MS),
            rebalance_threshold_pct,
            idle_spin_us: raw.idle_spin_us.unwrap_or(DEFAULT_IDLE_SPIN_US),
            vfs,
        })
    }

    /// Settings of a VF added at run time.
    pub fn vf_default(&self, id: u16) -> VfSettings {
        VfSettings {
            id,
            mac: MacAddr::for_vf(id),
            socket: self.run_dir.join(format!("vf{id}.sock")),
            mtu: DEFAULT_MTU,
            link: LinkState::Auto,
            rx_usecs: 0,
            rx_frames: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default() {
        let c = Config::default();
        assert_eq!(c.vfs.len(), 4);
        assert_eq!(c.vfs[2].mac.to_string(), "02:76:66:6e:00:02");
        assert_eq!(c.vfs[3].socket, PathBuf::from("./run/vfnic/vf3.sock"));
        assert!(c.engines >= 1);
    }

    #[test]
    fn overrides() {
        let c = Config::parse(
            "run_dir = \"/tmp/x\"\nnum_vfs = 2\nengines = 2\n[[vf]]\nid = 1\nmac = \"02:00:00:00:00:07\"\nmtu = 9000\nlink = \"down\"\n",
        )
        .unwrap();
        assert_eq!(c.engines, 2);
        assert_eq!(c.vfs[1].mac.to_string(), "02:00:00:00:00:07");
        assert_eq!(c.vfs[1].mtu, 9000);
        assert_eq!(c.vfs[1].link, LinkState::Disable);
        assert_eq!(c.vfs[0].socket, PathBuf::from("/tmp/x/vf0.sock"));
    }

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_line() {
        assert!(
            err("num_vfs = 4\nengines = 0\n").starts_with("line 2: engines = 0"),
            "{}",
            err("num_vfs = 4\nengines = 0\n")
        );
        let e = err("num_vfs = 2\n\n[[vf]]\nid = 0\nmac = \"zz:00:00:00:00:00\"\n");
        assert!(e.starts_with("line 5") && e.contains("invalid MAC"), "{e}");
        let e = err("num_vfs = 2\n[[vf]]\nid = 5\n");
        assert!(e.starts_with("line 2") && e.contains("id = 5"), "{e}");
        let e = err("num_vfs = 2\nbogus = 1\n");
        assert!(e.starts_with("line 2") && e.contains("bogus"), "{e}");
        let e = err("num_vfs = \"four\"\n");
        assert!(e.starts_with("line 1"), "{e}");
        let e = err("[[vf]]\nid = 0\nmac = \"02:76:66:6e:00:01\"\n");
        assert!(e.contains("used by another VF"), "{e}");
        let e = err("[[vf]]\nid = 1\nmac = \"ff:ff:ff:ff:ff:ff\"\n");
        assert!(e.contains("not a unicast"), "{e}");
        let e = err("[[vf]]\nid = 1\nmtu = 20\n");
        assert!(e.contains("mtu 20"), "{e}");
        let e = err("num_vfs = 300\n");
        assert!(e.contains("out of range"), "{e}");
        let e = err("[[vf]]\nid = 1\n[[vf]]\nid = 1\n");
        assert!(e.starts_with("line 3") && e.contains("twice"), "{e}");
        let e = err("num_vfs = 4\nengines = 2\nqueue_pairs = 99\n");
        assert!(e.starts_with("line 3"), "{e}");
    }
}
