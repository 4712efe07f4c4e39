//! `vfnic`: the daemon (`vfnic run`) and its command-line client.
//!
//! Module map of the binary: `main.rs` parses arguments and runs either the
//! daemon (wiring stages ①–④ through [`vfnic_pf::Pf`]) or one API call; the
//! printers for people live in `print.rs`.
#![forbid(unsafe_code)]

mod print;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::Value;
use vfnic_pf::api::{self, Request};
use vfnic_pf::pf::VfChange;
use vfnic_pf::Config;
use vfnic_types::{LinkState, MacAddr};

/// vfnic: a software SR-IOV network adapter. Each virtual function is a
/// virtio-net device served over vhost-user.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Run directory holding the VF sockets and the API socket
    /// (default: the config's run_dir, else ./run/vfnic).
    #[arg(long, global = true)]
    run_dir: Option<PathBuf>,
    /// API socket path (default: RUN_DIR/vfnic.sock).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum UplinkCmd {
    /// List the uplinks with their counters.
    List,
    /// Show one uplink: settings, remote endpoints, link states, counters.
    Show {
        /// Uplink name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the adapter daemon in the foreground.
    Run {
        /// TOML configuration (default: embedded, 4 VFs).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override the number of DMA engines.
        #[arg(long)]
        engines: Option<usize>,
        /// Pin the engines to these CPUs (comma-separated; engine i gets
        /// the (i mod n)-th).
        #[arg(long, value_delimiter = ',')]
        engine_cpus: Vec<usize>,
    },
    /// Virtual functions.
    Vf {
        #[command(subcommand)]
        cmd: VfCmd,
    },
    /// Per-VF counters.
    Stats,
    /// DMA engines, their load and the queue pairs they serve.
    Engines {
        #[command(subcommand)]
        cmd: Option<EngineCmd>,
    },
    /// The embedded switch's forwarding table.
    Fdb,
    /// Uplinks (TAP, AF_PACKET, VXLAN): state and counters.
    Uplink {
        #[command(subcommand)]
        cmd: UplinkCmd,
    },
    /// The physical function.
    Pf {
        #[command(subcommand)]
        cmd: PfCmd,
    },
}

#[derive(Subcommand, Debug)]
enum PfCmd {
    /// Number of VFs, engines, run directory.
    Show,
    /// Set the number of VFs at run time (1 to 256): `vfnic pf set-vfs 8`.
    /// Removed VFs' tenants are disconnected; added VFs get their
    /// configured (or default) settings.
    SetVfs {
        /// New number of VFs.
        num_vfs: u16,
    },
}

#[derive(Subcommand, Debug)]
enum EngineCmd {
    /// Move a VF's queue pair to an engine: `vfnic engines move 1 0 1`.
    Move {
        /// VF index.
        vf: u16,
        /// Queue pair.
        qp: u16,
        /// Target engine.
        engine: usize,
    },
}

#[derive(Subcommand, Debug)]
enum VfCmd {
    /// List the VFs.
    List,
    /// Show one VF.
    Show {
        /// VF index.
        vf: u16,
    },
    /// Change VF settings, ip-link style, several at once, all or nothing:
    /// `vfnic vf set 1 max_tx_rate 1000 spoofchk on vlan 10 qos 3`.
    Set {
        /// VF index.
        vf: u16,
        /// Setting/value pairs: `mac ADDR`, `vlan 0-4094` (0 = none),
        /// `qos 0-7` (with a vlan), `spoofchk on|off`, `trust on|off`,
        /// `promisc on|off` (trusted VFs only), `state auto|enable|disable`
        /// (`link up|down` too), `max_tx_rate MBPS` (`rate` too),
        /// `min_tx_rate MBPS`, `weight 1-1000`, `speed MBPS` (link speed:
        /// the most the VF receives, shared among its senders; 0 = its
        /// tenant's pace), `rx-usecs N`, `rx-frames N` (interrupt
        /// moderation, as ethtool -C).
        #[arg(num_args = 2.., required = true, allow_hyphen_values = true)]
        settings: Vec<String>,
    },
    /// Function-level reset: back to the configured settings, queues
    /// dropped (the tenant is disconnected and may attach again).
    Reset {
        /// VF index.
        vf: u16,
    },
    /// Print the QEMU options that attach a guest to the VF.
    QemuArgs {
        /// VF index.
        vf: u16,
    },
    /// Print the DPDK `--vdev` option that attaches a virtio-user port to the VF.
    DpdkArgs {
        /// VF index.
        vf: u16,
    },
}

/// Every word `vfnic vf set` knows, for the error message.
const SETTINGS: &str = "mac, vlan, qos, spoofchk, trust, promisc, state, link, max_tx_rate, min_tx_rate, weight, \
                        speed, rx-usecs, rx-frames";

fn number<T: std::str::FromStr>(key: &str, value: &str, what: &str) -> Result<T> {
    value.parse().map_err(|_| anyhow::anyhow!("{key} must be {what}, not `{value}`"))
}

fn on_off(key: &str, value: &str) -> Result<bool> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        other => bail!("{key} must be `on` or `off`, not `{other}`"),
    }
}

/// Parses ip-link style `KEY VALUE ...` words into one change. Every word
/// is checked here for form (the daemon checks ranges and combinations);
/// a setting given twice is an error.
fn parse_settings(words: &[String]) -> Result<VfChange> {
    let mut change = VfChange::default();
    let mut seen = std::collections::HashSet::new();
    let mut it = words.iter();
    while let Some(key) = it.next() {
        let Some(value) = it.next() else { bail!("`{key}` needs a value") };
        let canonical = match key.as_str() {
            "link" => "state",
            "rate" => "max_tx_rate",
            "rx_usecs" => "rx-usecs",
            "rx_frames" => "rx-frames",
            k => k,
        };
        match canonical {
            "mac" => change.mac = Some(value.parse::<MacAddr>().map_err(|e| anyhow::anyhow!("mac: {e}"))?),
            "vlan" => change.vlan = Some(number(key, value, "a VLAN id (0 to 4094, 0 = none)")?),
            "qos" => change.qos = Some(number(key, value, "a priority (0 to 7)")?),
            "spoofchk" => change.spoofchk = Some(on_off(key, value)?),
            "trust" => change.trust = Some(on_off(key, value)?),
            "promisc" => change.promisc = Some(on_off(key, value)?),
            "state" if key == "link" => {
                change.state = Some(match value.as_str() {
                    "up" => LinkState::Auto,
                    "down" => LinkState::Disable,
                    other => bail!("link must be `up` or `down`, not `{other}`"),
                })
            }
            "state" => change.state = Some(value.parse::<LinkState>().map_err(|e| anyhow::anyhow!("{e}"))?),
            "max_tx_rate" => change.max_tx_rate = Some(number(key, value, "a rate in Mbit/s (0 = unlimited)")?),
            "min_tx_rate" => change.min_tx_rate = Some(number(key, value, "a rate in Mbit/s")?),
            "weight" => change.weight = Some(number(key, value, "a number (1 to 1000)")?),
            "speed" => change.speed = Some(number(key, value, "a link speed in Mbit/s (0 = the tenant's pace)")?),
            "rx-usecs" => change.rx_usecs = Some(number(key, value, "a number of microseconds")?),
            "rx-frames" => change.rx_frames = Some(number(key, value, "a number of frames")?),
            other => bail!("unknown VF setting `{other}` (known: {SETTINGS})"),
        }
        if !seen.insert(canonical) {
            bail!("`{key}` is given twice");
        }
    }
    Ok(change)
}

fn run_daemon(cli: &Cli, config: Option<&Path>, engines: Option<usize>, engine_cpus: &[usize]) -> Result<()> {
    let mut cfg = match config {
        Some(p) => Config::load(p).with_context(|| format!("Invalid configuration {}", p.display()))?,
        None => Config::default(),
    };
    if let Some(dir) = &cli.run_dir {
        let old = cfg.run_dir.clone();
        for v in &mut cfg.vfs {
            if let Ok(rest) = v.socket.strip_prefix(&old) {
                v.socket = dir.join(rest);
            }
        }
        cfg.run_dir = dir.clone();
    }
    if let Some(n) = engines {
        if n == 0 || n > vfnic_pf::config::MAX_ENGINES {
            bail!("--engines {n} is out of range (1 to {})", vfnic_pf::config::MAX_ENGINES);
        }
        cfg.engines = n;
    }
    if !engine_cpus.is_empty() {
        cfg.engine_cpus = engine_cpus.to_vec();
    }
    let api_path = cli.socket.clone().unwrap_or_else(|| cfg.run_dir.join("vfnic.sock"));
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])
        .context("Cannot install signal handlers")?;
    let pf = std::sync::Arc::new(vfnic_pf::Pf::start(cfg).context("Cannot start the adapter")?);
    let server =
        api::serve(pf.clone(), &api_path).with_context(|| format!("Cannot serve the API on {}", api_path.display()))?;
    tracing::info!(api = %api_path.display(), "vfnic ready");
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "shutting down");
    }
    drop(server);
    pf.shutdown();
    Ok(())
}

fn api_socket(cli: &Cli) -> PathBuf {
    cli.socket.clone().unwrap_or_else(|| {
        cli.run_dir.clone().unwrap_or_else(|| PathBuf::from(vfnic_pf::config::DEFAULT_RUN_DIR)).join("vfnic.sock")
    })
}

fn client(cli: &Cli, req: Request) -> Result<Value> {
    Ok(api::call(&api_socket(cli), &req)?)
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("VFNIC_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = real_main(&cli) {
        eprint!("vfnic: {e}");
        for cause in e.chain().skip(1) {
            eprint!(": {cause}");
        }
        eprintln!();
        std::process::exit(1);
    }
}

fn real_main(cli: &Cli) -> Result<()> {
    let out = match &cli.cmd {
        Cmd::Run { config, engines, engine_cpus } => return run_daemon(cli, config.as_deref(), *engines, engine_cpus),
        Cmd::Vf { cmd: VfCmd::List } => (client(cli, Request::VfList)?, print::vf_list as fn(&Value) -> String),
        Cmd::Vf { cmd: VfCmd::Show { vf } } => (client(cli, Request::VfShow { vf: *vf })?, print::vf_show as _),
        Cmd::Vf { cmd: VfCmd::Set { vf, settings } } => {
            let change = parse_settings(settings)?;
            (client(cli, Request::VfSet { vf: *vf, change })?, print::vf_show as _)
        }
        Cmd::Vf { cmd: VfCmd::Reset { vf } } => (client(cli, Request::VfReset { vf: *vf })?, print::vf_show as _),
        Cmd::Vf { cmd: VfCmd::QemuArgs { vf } } => {
            (client(cli, Request::VfQemuArgs { vf: *vf })?, print::qemu_args as _)
        }
        Cmd::Vf { cmd: VfCmd::DpdkArgs { vf } } => {
            (client(cli, Request::VfDpdkArgs { vf: *vf })?, print::dpdk_args as _)
        }
        Cmd::Pf { cmd: PfCmd::Show } => (client(cli, Request::PfShow)?, print::pf_show as _),
        Cmd::Pf { cmd: PfCmd::SetVfs { num_vfs } } => {
            (client(cli, Request::PfSetVfs { num_vfs: *num_vfs })?, print::pf_show as _)
        }
        Cmd::Stats => (client(cli, Request::Stats)?, print::stats as _),
        Cmd::Engines { cmd: None } => (client(cli, Request::Engines)?, print::engines as _),
        Cmd::Engines { cmd: Some(EngineCmd::Move { vf, qp, engine }) } => {
            (client(cli, Request::EngineMove { vf: *vf, qp: *qp, engine: *engine })?, print::engines as _)
        }
        Cmd::Fdb => (client(cli, Request::Fdb)?, print::fdb as _),
        Cmd::Uplink { cmd: UplinkCmd::List } => (client(cli, Request::UplinkList)?, print::uplink_list as _),
        Cmd::Uplink { cmd: UplinkCmd::Show { name } } => {
            (client(cli, Request::UplinkShow { name: name.clone() })?, print::uplink_show as _)
        }
    };
    let (value, human) = out;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", human(&value));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn ip_link_style_settings() {
        let c = parse_settings(&words("mac 02:00:00:00:00:05 link down")).unwrap();
        assert_eq!(c.mac, Some("02:00:00:00:00:05".parse().unwrap()));
        assert_eq!(c.state, Some(LinkState::Disable));
        assert!(parse_settings(&words("link sideways")).is_err());
        assert!(parse_settings(&words("mac")).is_err());
        assert!(parse_settings(&words("warp 10")).is_err());
        assert_eq!(parse_settings(&words("speed 10")).unwrap().speed, Some(10));
        assert!(parse_settings(&words("mac 02:00")).is_err());
        let c = parse_settings(&words(
            "max_tx_rate 1000 spoofchk on vlan 10 qos 3 trust on promisc on state enable min_tx_rate 10 weight 7",
        ))
        .unwrap();
        assert_eq!((c.max_tx_rate, c.min_tx_rate, c.weight), (Some(1000), Some(10), Some(7)));
        assert_eq!(
            (c.vlan, c.qos, c.spoofchk, c.trust, c.promisc),
            (Some(10), Some(3), Some(true), Some(true), Some(true))
        );
        assert_eq!(c.state, Some(LinkState::Enable));
        assert_eq!(parse_settings(&words("rate 5")).unwrap().max_tx_rate, Some(5));
        let e = |w: &str| parse_settings(&words(w)).unwrap_err().to_string();
        assert!(e("max_tx_rate fast").contains("max_tx_rate must be a rate"), "{}", e("max_tx_rate fast"));
        assert!(e("vlan 70000").contains("vlan must be a VLAN id"));
        assert!(e("spoofchk maybe").contains("spoofchk must be `on` or `off`"));
        assert!(e("state sideways").contains("auto, enable or disable"));
        assert!(e("vlan 1 vlan 2").contains("twice"));
        assert!(e("link up state enable").contains("twice"));
        assert!(e("colour red").contains("unknown VF setting `colour`"));
    }
}
