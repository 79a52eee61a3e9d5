//! Command-line interface: the commands and flags, the runtime the binary starts, and the
//! dispatch of each subcommand to its step. The command and flag names are a contract
//! (README.md, docs/CONFIG.md): scripts and operators rely on them. The `spool`, `verify` and
//! `probe --dlt645` subcommands live in files of their own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use crate::app;
use crate::config::{self, Area};

mod probe;
mod spool;
mod verify;

/// smeltwatch: Modbus acquisition, energy and emission metrics, and durable MQTT delivery for
/// aluminium and copper smelters.
#[derive(Debug, Parser)]
#[command(name = "smeltwatch", version, about, max_term_width = 100)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Async worker threads [default: one less than the CPUs available, at least 1].
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines: coloured only on a terminal (and not with `NO_COLOR` set), with a
    /// syslog priority prefix and no timestamp under systemd's journal (`JOURNAL_STREAM`).
    Text,
    /// One JSON object per line (for journald and log shippers).
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: poll the configured sources and deliver to the uplinks.
    Run {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// Override the first MQTT uplink's broker (mqtt://host:port).
        #[arg(long)]
        broker: Option<String>,
        /// Stop after this long (for scripted runs); runs until SIGINT/SIGTERM otherwise.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
    },
    /// Run the built-in plant simulator, an embedded broker and the agent, with a live summary.
    Demo {
        /// Stop after this long; runs until Ctrl-C otherwise.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Port of the embedded MQTT broker (default 1883, or a free port when 1883 is taken).
        #[arg(long)]
        mqtt_port: Option<u16>,
        /// Port of the HTTP endpoint and dashboard (default 9187, or a free port when taken).
        #[arg(long)]
        http_port: Option<u16>,
    },
    /// Run the plant simulator of a configuration file (its `[simulator]` section) alone.
    Simulate {
        /// Configuration file with a `[simulator]` section.
        #[arg(short, long)]
        config: PathBuf,
        /// Stop after this long; runs until Ctrl-C otherwise.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
    },
    /// Validate a configuration file and print the read plan; exit 1 with located errors.
    Check {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Commissioning: read registers from a live device and print them decoded in every type and
    /// byte order; with `--dlt645`, read a DL/T 645 meter's address and data identifiers through
    /// a transparent serial server.
    Probe {
        /// Modbus TCP endpoint, or with `--dlt645` the serial server (host:port).
        #[arg(long)]
        tcp: SocketAddr,
        /// Unit id.
        #[arg(long, default_value_t = 1)]
        unit: u8,
        /// First register, 0-based protocol address (datasheet 40001 = holding 0).
        #[arg(long, required_unless_present = "dlt645")]
        address: Option<u16>,
        /// Probe a DL/T 645 meter instead of a Modbus device.
        #[arg(long)]
        dlt645: bool,
        /// DL/T 645 edition: 2007 or 1997.
        #[arg(long, default_value_t = 2007, requires = "dlt645")]
        edition: u16,
        /// DL/T 645 meter address (up to 12 digits); without it the address is read by the
        /// address read (2007, the meter alone on the line).
        #[arg(long, requires = "dlt645")]
        meter: Option<String>,
        /// DL/T 645 data identifiers to read, `DI` or `DI:format` (`00010000`, `02010100:XXX.X`);
        /// repeat or separate with commas. Default: energy, voltage, current, power, power factor.
        #[arg(long, value_delimiter = ',', requires = "dlt645")]
        di: Vec<String>,
        /// Number of registers (1–125).
        #[arg(long, default_value_t = 8)]
        count: u16,
        /// Register area.
        #[arg(long, value_enum, default_value_t = ProbeArea::Holding)]
        area: ProbeArea,
        /// Reply timeout.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
        timeout: Duration,
    },
    /// Operators' live view of what smeltwatch publishes on a broker: KPIs, cells by voltage with
    /// anode effects, stacks against their limits, uplinks, recent events (JSON, protobuf and
    /// Sparkplug B).
    Tail(crate::tail::TailArgs),
    /// Create the site's Ed25519 key pair for signed, hash-chained regulated records.
    Keygen {
        /// Directory for `site.key` (mode 0600) and `site.pub`.
        #[arg(long)]
        out: PathBuf,
    },
    /// Regulators: check the signatures, the hash chain and the sequence of a captured feed (a
    /// file, or live from a broker).
    Verify(VerifyArgs),
    /// Inspect what is waiting in the spools (safe while the agent runs).
    Spool {
        /// What to do.
        #[command(subcommand)]
        action: SpoolCommand,
    },
}

/// `smeltwatch verify` arguments.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The site's public key file (`site.pub`).
    #[arg(long)]
    pub key: PathBuf,
    /// A capture file: JSON lines (ledger records or captured JSON payloads) or
    /// length-delimited protobuf envelopes.
    #[arg(long, required_unless_present = "broker", conflicts_with = "broker")]
    pub file: Option<PathBuf>,
    /// Capture from this broker instead: `mqtt://host:port`, `mqtts://host:port` or `host:port`.
    #[arg(long, requires = "topic")]
    pub broker: Option<String>,
    /// Topic filter to subscribe to (repeat for several, e.g. the emissions, the potline
    /// metrics and the config_change events of a site).
    #[arg(long, value_name = "TOPIC")]
    pub topic: Vec<String>,
    /// With --broker: stop capturing after this long.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// With --broker: stop after this many signed records.
    #[arg(long)]
    pub count: Option<usize>,
    /// With --broker: user name.
    #[arg(long)]
    pub username: Option<String>,
    /// With --broker: file holding the password (first line).
    #[arg(long, requires = "username")]
    pub password_file: Option<PathBuf>,
    /// With an mqtts:// broker: CA certificates (PEM) the broker's certificate must chain to.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// The head recorded earlier, `SEQ:HASH` (as a previous verification's `Head:` line prints
    /// it): the capture must reach this seq with this hash, or the verdict fails (records cut off
    /// at the end, an old chain replayed, or another chain).
    #[arg(long, value_name = "SEQ:HASH", value_parser = crate::ledger::Anchor::parse)]
    pub expect_head: Option<crate::ledger::Anchor>,
    /// The capture starts right after this record, `SEQ:HASH` (or `SEQ`): records up to it were
    /// verified before. Without it the capture must start at seq 1, or the verdict fails.
    #[arg(long, value_name = "SEQ:HASH", value_parser = crate::ledger::Anchor::parse)]
    pub after: Option<crate::ledger::Anchor>,
}

/// `smeltwatch spool …` actions.
#[derive(Debug, Subcommand)]
pub enum SpoolCommand {
    /// Per uplink: records waiting, bytes, oldest record, drops by stream.
    Stats {
        /// Configuration file (names the uplinks and the state directory).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Print the records waiting in an uplink's spool as JSON lines (oldest first): id, stream,
    /// seq, topic, created, attempts and the record as JSON (`{"undecodable": why}` for a body
    /// that cannot be decoded).
    Export {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// Uplink name (default: the first uplink).
        #[arg(long)]
        uplink: Option<String>,
    },
    /// Print the records an uplink set aside because its broker would not take them, as JSON
    /// lines (oldest first): id, stream, seq, topic, created, attempts, reason, dead_at, requeue
    /// and the record as JSON.
    DeadLetters {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// Uplink name (default: the first uplink).
        #[arg(long)]
        uplink: Option<String>,
    },
    /// Send dead letters again: flags them, and the agent moves them back into the queue on its
    /// next connection or within seconds while connected (at its next start if it is stopped).
    Requeue {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// Uplink name (default: the first uplink).
        #[arg(long)]
        uplink: Option<String>,
        /// Id of a dead letter (as `spool dead-letters` prints it); repeatable.
        #[arg(
            long = "id",
            value_name = "ID",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        ids: Vec<i64>,
        /// Every dead letter of the uplink.
        #[arg(long)]
        all: bool,
    },
}

/// Register areas `probe` can read.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProbeArea {
    /// Holding registers (FC 3).
    Holding,
    /// Input registers (FC 4).
    Input,
}

impl From<ProbeArea> for Area {
    fn from(a: ProbeArea) -> Area {
        match a {
            ProbeArea::Holding => Area::Holding,
            ProbeArea::Input => Area::Input,
        }
    }
}

/// One less than the CPUs this process may use (cgroup quotas and affinity count), at least 1.
///
/// The async work of a gateway fits in a fraction of one core (at 100,000 points/s the whole
/// agent used about 0.13 cores), and each spool runs SQLite on a thread of its own, outside
/// the workers. On a 2-core gateway one worker cost 11 to 17 % less CPU per point than two,
/// at the same latency (`docs/PERFORMANCE.md`): with two, every hand-over between tasks tended
/// to wake the other worker. The core left over serves the spool threads, the broker a
/// gateway often runs beside the agent, and the system.
fn default_worker_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().saturating_sub(1))
        .unwrap_or(1)
        .max(1)
}

/// The runtime of `workers` async worker threads.
///
/// One worker is tokio's current-thread scheduler: the tasks run on the calling thread, and a
/// task woken by another one goes on a local queue instead of through the work-stealing
/// scheduler's atomics and idle-worker bookkeeping, which a lone worker pays for nothing: 4-6 %
/// less CPU per point at 20 devices × 100 registers (docs/PERFORMANCE.md, "one worker on the
/// multi-threaded scheduler"). Nothing in the agent blocks a worker waiting for another task,
/// which a single thread would turn into a deadlock.
///
/// Idle blocking threads are kept for [`BLOCKING_KEEP_ALIVE`]. While replies from devices are
/// awaited, a worker about to sleep first gathers them for a moment
/// ([`crate::acquisition::wakes`]).
fn build_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder
        .on_thread_park(crate::acquisition::wakes::before_park)
        .on_thread_unpark(crate::acquisition::wakes::after_unpark)
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .enable_all()
        .build()
}

/// How long an idle thread of the blocking pool waits for work before it exits. The agent's
/// steady user of the pool is the completeness checkpoint, every
/// [`crate::completeness::CHECKPOINT_EVERY`] (10 s). With tokio's default keep-alive, also 10 s,
/// its thread exited just before each checkpoint and every checkpoint started a thread again.
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(60);
const _: () =
    assert!(BLOCKING_KEEP_ALIVE.as_secs() > crate::completeness::CHECKPOINT_EVERY.as_secs());

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let workers = cli
        .worker_threads
        .map(usize::from)
        .unwrap_or_else(default_worker_threads);
    let runtime = match build_runtime(workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    crate::logging::init(
        matches!(format, LogFormat::Json),
        crate::logging::text_style_of_process(),
    );
}

/// Runs one subcommand: each arm hands its arguments to the step that implements it.
async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            config,
            broker,
            duration,
        } => run_agent(config, broker, duration).await,
        Command::Demo {
            duration,
            mqtt_port,
            http_port,
        } => demo(duration, mqtt_port, http_port).await,
        Command::Simulate { config, duration } => simulate(&config, duration).await,
        Command::Check { config } => Ok(check(&config)),
        Command::Probe {
            tcp,
            unit,
            address,
            dlt645,
            edition,
            meter,
            di,
            count,
            area,
            timeout,
        } => {
            if dlt645 {
                print!(
                    "{}",
                    probe::probe_dlt645(tcp, edition, meter, &di, timeout).await?
                );
                return Ok(ExitCode::SUCCESS);
            }
            let address = address.expect("clap requires --address without --dlt645");
            let words =
                app::commands::probe(tcp, unit, area.into(), address, count, timeout).await?;
            print!("{}", crate::modbus::probe::render_probe(address, &words));
            Ok(ExitCode::SUCCESS)
        }
        Command::Spool { action } => spool::spool_command(action),
        Command::Tail(args) => {
            let opts = crate::tail::TailOptions::from_args(&args)?;
            let shutdown = app::shutdown_on_signal(args.duration);
            crate::tail::run(opts, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen { out } => keygen(&out),
        Command::Verify(args) => {
            let report = verify::verify_command(args).await?;
            print!("{report}");
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// `run`: the agent on a configuration file, reloadable, until a signal or `--duration`.
async fn run_agent(
    config: PathBuf,
    broker: Option<String>,
    duration: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let reload = app::ReloadSource {
        path: config,
        broker,
    };
    let cfg = reload.load()?;
    let shutdown = app::shutdown_on_signal(duration);
    let opts = app::RunOptions {
        reload: Some(reload),
        ..app::RunOptions::default()
    };
    app::run(cfg, opts, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// `demo`: the simulator, an embedded broker and the agent together.
async fn demo(
    duration: Option<Duration>,
    mqtt_port: Option<u16>,
    http_port: Option<u16>,
) -> anyhow::Result<ExitCode> {
    let shutdown = app::shutdown_on_signal(duration);
    app::demo::run(
        app::demo::DemoOptions {
            mqtt_port,
            http_port,
        },
        shutdown,
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// `simulate`: the `[simulator]` section of a configuration file, alone.
async fn simulate(config: &Path, duration: Option<Duration>) -> anyhow::Result<ExitCode> {
    let cfg = load_or_report(config)?;
    let sim = cfg
        .simulator
        .clone()
        .with_context(|| format!("{}: no [simulator] section to run", config.display()))?;
    let shutdown = app::shutdown_on_signal(duration);
    crate::simulator::run(&sim, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// `check`: validates a configuration and prints its read plan; failure on a located error.
fn check(config: &Path) -> ExitCode {
    match config::load(config) {
        Ok(cfg) => {
            if let Some(calc) = &cfg.calc
                && let Err(e) = crate::calc::Pipeline::new(calc)
            {
                eprintln!("{}: [calc]: {e}", config.display());
                return ExitCode::FAILURE;
            }
            print!("{}", app::commands::check_report(&cfg));
            if let Some(calc) = &cfg.calc {
                print!("{}", crate::derived::calc_inputs_report(calc));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `keygen`: creates the site's key pair and prints where each half goes.
fn keygen(out: &Path) -> anyhow::Result<ExitCode> {
    let pair = crate::ledger::keygen(out)?;
    println!(
        "secret key  {} (keep it on the gateway, mode 0600)",
        pair.secret.display()
    );
    println!(
        "public key  {} (hand it to the regulator)",
        pair.public.display()
    );
    println!("            {}", pair.public_hex);
    Ok(ExitCode::SUCCESS)
}

/// Load a configuration, turning a validation failure into a plain multi-line error.
fn load_or_report(path: &Path) -> anyhow::Result<config::Config> {
    config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use tokio::runtime::RuntimeFlavor;

    use super::build_runtime;

    #[test]
    fn one_worker_is_the_current_thread_scheduler_and_more_are_the_multi_threaded_one() {
        let one = build_runtime(1).expect("a runtime");
        assert_eq!(one.handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        // Tasks spawned on it run while the main future is blocked on, as the agent's are.
        let got = one.block_on(async {
            let task = tokio::spawn(async { 42 });
            task.await.expect("the task completes")
        });
        assert_eq!(got, 42);
        let two = build_runtime(2).expect("a runtime");
        assert_eq!(two.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(two.metrics().num_workers(), 2);
    }
}
