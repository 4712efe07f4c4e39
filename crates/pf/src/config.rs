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
//! [[vf]]                     # optional per-VF overrides (ip-link vocabulary)
//! id = 0
//! mac = "02:76:66:6e:00:00"
//! socket = "/tmp/vf0.sock"
//! mtu = 1500
//! state = "auto"           # auto | enable | disable (`link = "up"|"down"` is accepted too)
//! vlan = 10                # port VLAN, 1-4094 (0 = none)
//! qos = 3                  # 802.1p priority of the port VLAN tag, 0-7 (needs vlan)
//! spoofchk = "on"          # on | off (or true | false); default on
//! trust = "off"            # trusted VF: may use promiscuous mode and other MACs
//! promisc = "off"          # a copy of all traffic of its VLAN (trusted VFs only)
//! max_tx_rate = 1000       # Mbit/s, 0 = unlimited
//! min_tx_rate = 100        # Mbit/s guaranteed under contention (<= max_tx_rate)
//! weight = 10              # share of what is left, 1-1000 (default 1)
//! speed = 10000            # link speed, Mbit/s: what the VF receives at most,
//!                          # shared among its senders (0 = the tenant's pace)
//! rx_usecs = 50            # interrupt moderation (ethtool -C rx-usecs), 0 = off
//! rx_frames = 32           # ... or once this many frames are pending
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;
use vfnic_op::FunctionSettings;
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
/// Highest port VLAN id (`vlan`; 0 = none).
pub const MAX_VLAN: u16 = 4094;
/// Highest 802.1p priority (`qos`).
pub const MAX_QOS: u8 = 7;
/// Highest `weight`.
pub const MAX_WEIGHT: u32 = 1000;
/// Longest interrupt hold (`rx_usecs`): one second.
pub const MAX_RX_USECS: u32 = 1_000_000;

/// An ip-link style switch: `on`/`off` in the CLI; `"on"`, `"off"`,
/// `true` or `false` in the configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "OnOffRaw")]
pub struct OnOff(pub bool);

#[derive(Deserialize)]
#[serde(untagged)]
enum OnOffRaw {
    Bool(bool),
    Word(String),
}

impl TryFrom<OnOffRaw> for OnOff {
    type Error = String;

    fn try_from(v: OnOffRaw) -> Result<Self, Self::Error> {
        match v {
            OnOffRaw::Bool(b) => Ok(OnOff(b)),
            OnOffRaw::Word(w) => w.parse(),
        }
    }
}

impl std::str::FromStr for OnOff {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "on" | "true" => Ok(OnOff(true)),
            "off" | "false" => Ok(OnOff(false)),
            other => Err(format!("expected on or off, not `{other}`")),
        }
    }
}

/// Checks a VF's settings as a whole: each value in range, and the
/// combinations ip-link refuses. The message names the setting.
pub fn check_settings(s: &FunctionSettings) -> Result<(), String> {
    if !s.mac.is_unicast() {
        return Err(format!("mac {} is not a unicast address", s.mac));
    }
    if !(68..=9000).contains(&s.mtu) {
        return Err(format!("mtu {} is out of range (68 to 9000)", s.mtu));
    }
    if s.vlan > MAX_VLAN {
        return Err(format!("vlan {} is out of range (0 to {MAX_VLAN}, 0 = none)", s.vlan));
    }
    if s.qos > MAX_QOS {
        return Err(format!("qos {} is out of range (0 to {MAX_QOS})", s.qos));
    }
    if s.qos != 0 && s.vlan == 0 {
        return Err(format!("qos {} needs a vlan (it is the priority of the port VLAN tag)", s.qos));
    }
    if s.promisc && !s.trust {
        return Err("promisc on needs a trusted VF (set trust on first, or in the same command)".into());
    }
    if s.max_tx_rate != 0 && s.min_tx_rate > s.max_tx_rate {
        return Err(format!("min_tx_rate {} is above max_tx_rate {}", s.min_tx_rate, s.max_tx_rate));
    }
    if !(1..=MAX_WEIGHT).contains(&s.weight) {
        return Err(format!("weight {} is out of range (1 to {MAX_WEIGHT})", s.weight));
    }
    if s.rx_usecs > MAX_RX_USECS {
        return Err(format!("rx_usecs {} is above {MAX_RX_USECS} (1 s)", s.rx_usecs));
    }
    Ok(())
}

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
    /// Administrative link state, old spelling (`up`/`down`; default auto).
    pub link: Option<LinkState>,
    /// Administrative link state (`auto`, `enable`, `disable`).
    pub state: Option<LinkState>,
    /// Port VLAN (0 = none).
    pub vlan: Option<u16>,
    /// Port VLAN priority.
    pub qos: Option<u8>,
    /// Spoof check (default on).
    pub spoofchk: Option<OnOff>,
    /// Trusted VF (default off).
    pub trust: Option<OnOff>,
    /// Promiscuous (trusted VFs only; default off).
    pub promisc: Option<OnOff>,
    /// Maximum transmit rate, Mbit/s (0 = unlimited).
    pub max_tx_rate: Option<u32>,
    /// Guaranteed transmit rate, Mbit/s.
    pub min_tx_rate: Option<u32>,
    /// Share under contention (1-1000, default 1).
    pub weight: Option<u32>,
    /// Link speed, Mbit/s (0 = the tenant's pace).
    pub speed: Option<u32>,
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
    #[serde(default)]
    uplink: Vec<toml::Spanned<crate::uplink_config::UplinkConfig>>,
}

/// The resolved configuration of one VF: its index and the function
/// settings it starts with (read and written through `Deref`, so `s.mac`,
/// `s.vlan`, ... are the function settings' own fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfSettings {
    /// VF index.
    pub id: u16,
    /// Everything else.
    pub settings: FunctionSettings,
}

impl std::ops::Deref for VfSettings {
    type Target = FunctionSettings;

    fn deref(&self) -> &FunctionSettings {
        &self.settings
    }
}

impl std::ops::DerefMut for VfSettings {
    fn deref_mut(&mut self) -> &mut FunctionSettings {
        &mut self.settings
    }
}

impl VfSettings {
    /// Defaults of VF `id` with sockets in `run_dir`: the stable MAC, link
    /// auto, no VLAN, spoof check on, untrusted, no rate limits, weight 1.
    pub fn default_for(id: u16, run_dir: &Path) -> VfSettings {
        let settings = FunctionSettings::new(MacAddr::for_vf(id), run_dir.join(format!("vf{id}.sock")));
        VfSettings { id, settings }
    }

    /// The function settings these configure.
    pub fn function_settings(&self) -> FunctionSettings {
        self.settings.clone()
    }
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
    /// Uplinks (`[[uplink]]` tables, see [`crate::uplink_config`]).
    pub uplinks: Vec<vfnic_port::PortSpec>,
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
        let mut vfs: Vec<VfSettings> = (0..num_vfs).map(|id| VfSettings::default_for(id, &run_dir)).collect();
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
            if let Some(u) = v.rx_usecs {
                if u > 1_000_000 {
                    return Err(invalid(span, format!("vf {}: rx_usecs {u} is above 1000000 (1 s)", v.id)));
                }
                s.rx_usecs = u;
            }
            if let Some(n) = v.rx_frames {
                s.rx_frames = n;
            }
            match (v.link, v.state) {
                (Some(_), Some(_)) => {
                    return Err(invalid(span, format!("vf {}: give `state` or `link`, not both", v.id)))
                }
                (Some(l), None) | (None, Some(l)) => s.link = l,
                (None, None) => {}
            }
            if let Some(x) = v.vlan {
                s.vlan = x;
                // A port VLAN of 0 clears its priority unless one is given.
                if x == 0 && v.qos.is_none() {
                    s.qos = 0;
                }
            }
            if let Some(x) = v.qos {
                s.qos = x;
            }
            if let Some(x) = v.spoofchk {
                s.spoofchk = x.0;
            }
            if let Some(x) = v.trust {
                s.trust = x.0;
            }
            if let Some(x) = v.promisc {
                s.promisc = x.0;
            }
            if let Some(x) = v.max_tx_rate {
                s.max_tx_rate = x;
            }
            if let Some(x) = v.min_tx_rate {
                s.min_tx_rate = x;
            }
            if let Some(x) = v.weight {
                s.weight = x;
            }
            if let Some(x) = v.speed {
                s.speed = x;
            }
            check_settings(&s.function_settings()).map_err(|e| invalid(span.clone(), format!("vf {}: {e}", v.id)))?;
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
        let tables: Vec<_> = raw.uplink.iter().map(|t| t.get_ref().clone()).collect();
        let uplinks = crate::uplink_config::resolve_all(&tables)
            .map_err(|(i, message)| invalid(raw.uplink.get(i).map(|t| t.span()).unwrap_or(0..0), message))?;
        Ok(Config {
            uplinks,
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
        VfSettings::default_for(id, &self.run_dir)
    }

    /// What VF `id` is configured to be: its `[[vf]]` settings (with
    /// defaults) if the file has it, else [`Config::vf_default`]. A
    /// function-level reset returns the VF to this.
    pub fn vf_configured(&self, id: u16) -> VfSettings {
        self.vfs.iter().find(|v| v.id == id).cloned().unwrap_or_else(|| self.vf_default(id))
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

    #[test]
    fn policy_keys() {
        let c = Config::parse(
            "num_vfs = 3\n[[vf]]\nid = 1\nvlan = 10\nqos = 3\nspoofchk = \"off\"\ntrust = true\npromisc = \"on\"\n\
             state = \"enable\"\nmax_tx_rate = 1000\nmin_tx_rate = 100\nweight = 10\n",
        )
        .unwrap();
        let v = &c.vfs[1];
        assert_eq!((v.vlan, v.qos, v.spoofchk, v.trust, v.promisc), (10, 3, false, true, true));
        assert_eq!((v.link, v.max_tx_rate, v.min_tx_rate, v.weight), (LinkState::Enable, 1000, 100, 10));
        // Defaults: spoof check on, untrusted, weight 1.
        let d = &c.vfs[0];
        assert_eq!((d.vlan, d.qos, d.spoofchk, d.trust, d.promisc, d.weight), (0, 0, true, false, false, 1));
        assert_eq!(c.vf_configured(1), c.vfs[1]);
        assert_eq!(c.vf_configured(7), c.vf_default(7));
        let c = Config::parse("[[vf]]\nid = 0\nlink = \"down\"\n").unwrap();
        assert_eq!(c.vfs[0].link, LinkState::Disable);
    }

    #[test]
    fn policy_errors_name_the_line_and_the_setting() {
        let e = err("num_vfs = 2\n\n[[vf]]\nid = 1\nvlan = 5000\n");
        assert!(e.starts_with("line 3") && e.contains("vlan 5000"), "{e}");
        let e = err("[[vf]]\nid = 1\nvlan = 70000\n");
        assert!(e.starts_with("line 3"), "{e}");
        let e = err("[[vf]]\nid = 1\nqos = 3\n");
        assert!(e.starts_with("line 1") && e.contains("qos 3 needs a vlan"), "{e}");
        let e = err("[[vf]]\nid = 1\nvlan = 2\nqos = 8\n");
        assert!(e.contains("qos 8"), "{e}");
        let e = err("[[vf]]\nid = 1\npromisc = \"on\"\n");
        assert!(e.contains("promisc on needs a trusted VF"), "{e}");
        let e = err("num_vfs = 2\n[[vf]]\nid = 1\nspoofchk = \"maybe\"\n");
        assert!(e.starts_with("line 4") && e.contains("maybe"), "{e}");
        let e = err("[[vf]]\nid = 1\nmax_tx_rate = 100\nmin_tx_rate = 200\n");
        assert!(e.contains("min_tx_rate 200 is above max_tx_rate 100"), "{e}");
        assert!(Config::parse("[[vf]]\nid = 1\nmin_tx_rate = 200\n").is_ok(), "no maximum: any minimum");
        let e = err("[[vf]]\nid = 1\nweight = 0\n");
        assert!(e.contains("weight 0"), "{e}");
        let e = err("[[vf]]\nid = 1\nweight = 1001\n");
        assert!(e.contains("weight 1001"), "{e}");
        let e = err("[[vf]]\nid = 1\nmax_tx_rate = \"fast\"\n");
        assert!(e.starts_with("line 3"), "{e}");
        let e = err("[[vf]]\nid = 1\nstate = \"sideways\"\n");
        assert!(e.starts_with("line 3"), "{e}");
        let e = err("[[vf]]\nid = 1\nstate = \"enable\"\nlink = \"up\"\n");
        assert!(e.contains("not both"), "{e}");
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
