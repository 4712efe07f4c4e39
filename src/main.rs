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
    /// Change VF settings, ip-link style: `vfnic vf set 1 mac 02:00:00:00:00:01 link down`.
    Set {
        /// VF index.
        vf: u16,
        /// Setting/value pairs: `mac ADDR`, `link up|down`, `rx-usecs N`,
        /// `rx-frames N` (interrupt moderation, as ethtool -C).
        #[arg(num_args = 2.., required = true)]
        settings: Vec<String>,
    },
}

fn parse_settings(words: &[String]) -> Result<VfChange> {
    let mut change = VfChange::default();
    let mut it = words.iter();
    while let Some(key) = it.next() {
        let Some(value) = it.next() else { bail!("`{key}` needs a value") };
        match key.as_str() {
            "mac" => change.mac = Some(value.parse::<MacAddr>()?),
            "link" => {
                change.link = Some(match value.as_str() {
                    "up" => LinkState::Auto,
                    "down" => LinkState::Disable,
                    other => bail!("link must be `up` or `down`, not `{other}`"),
                })
            }
            "rx-usecs" => {
                change.rx_usecs = Some(
                    value
                        .parse()
                        .map_err(|_| anyhow::anyhow!("rx-usecs must be a number of microseconds, not `{value}`"))?,
                )
            }
            "rx-frames" => {
                change.rx_frames = Some(
                    value
                        .parse()
                        .map_err(|_| anyhow::anyhow!("rx-frames must be a number of frames, not `{value}`"))?,
                )
            }
            other => bail!("unknown VF setting `{other}` (known: mac, link, rx-usecs, rx-frames)"),
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
        Cmd::Stats => (client(cli, Request::Stats)?, print::stats as _),
        Cmd::Engines { cmd: None } => (client(cli, Request::Engines)?, print::engines as _),
        Cmd::Engines { cmd: Some(EngineCmd::Move { vf, qp, engine }) } => {
            (client(cli, Request::EngineMove { vf: *vf, qp: *qp, engine: *engine })?, print::engines as _)
        }
        Cmd::Fdb => (client(cli, Request::Fdb)?, print::fdb as _),
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
        assert_eq!(c.link, Some(LinkState::Disable));
        assert!(parse_settings(&words("link sideways")).is_err());
        assert!(parse_settings(&words("mac")).is_err());
        assert!(parse_settings(&words("speed 10")).is_err());
        assert!(parse_settings(&words("mac 02:00")).is_err());
    }
}
