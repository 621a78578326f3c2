//! The command line: subcommands, their flags, and exit codes.
//!
//! This module owns argument parsing (clap) and the mapping from failures to
//! exit codes: 2 for usage errors (bad flags, unreadable input or baseline
//! files), 64 (EX_USAGE) for an invalid configuration, 1 for anything else.
//! Errors are printed once, here, with their cause chain.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::clock::now_ms;
use crate::config::{Config, ConfigError};
use crate::engine::decode::Decoder;
use crate::engine::window::WindowSpec;
use crate::engine::Engine;
use crate::lab::generate::{Generator, GeneratorConfig};
use crate::replay::{self, Input};

#[derive(Debug, Parser)]
#[command(
    name = "driftd",
    version,
    about = "Drift monitor for ML inference logs: Kafka in, Prometheus and Alertmanager out"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: Kafka in, /metrics and alerts out.
    Run(ConfigArgs),
    /// The whole daemon on an embedded Kafka with generated traffic that drifts.
    Demo(DemoArgs),
    /// Build, or inspect, per-model baselines from reference logs.
    #[command(subcommand)]
    Baseline(BaselineCommand),
    /// Run the engine over a log file in event time and print scores and verdicts.
    Replay(ReplayArgs),
    /// Write seed-shaped inference logs (sample data, benchmarks, tests).
    Generate(GenerateArgs),
    /// Validate a configuration file (and DRIFTD__* variables) without running.
    CheckConfig(ConfigArgs),
    /// Measure throughput, CPU, memory and latency on generated logs: parse
    /// floor, replay, and `driftd run` through an in-process Kafka.
    Bench(BenchArgs),
    /// The verdict-quality suite: false alarms per 24 h of stationary
    /// traffic at window sizes from 200 to 1M samples, and detection delay
    /// of injected drifts, for static and auto thresholds.
    Scenarios(ScenariosArgs),
    /// Run `driftd run` for a long time at a steady rate through an
    /// in-process Kafka, with broker, request and Alertmanager faults; exit 1
    /// if RSS, fds or series grow, a message is lost or the daemon panics.
    Soak(SoakArgs),
    /// Exit 0 if an HTTP URL answers 2xx (container health checks: the
    /// runtime image has no curl).
    Probe {
        /// e.g. http://127.0.0.1:9400/livez
        url: String,
        #[arg(long, value_parser = parse_duration, default_value = "3s")]
        timeout: Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum BaselineCommand {
    /// Build one baseline file per model from reference logs.
    Build(BuildArgs),
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// TOML configuration file (see config/driftd.toml).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address for /metrics and the API.
    #[arg(long, default_value = "127.0.0.1:9400")]
    pub listen: std::net::SocketAddr,
    /// Inference-log lines per second.
    #[arg(long, default_value_t = 2000)]
    pub rate: u32,
    /// When the drift starts, e.g. 20s.
    #[arg(long, value_parser = parse_duration, default_value = "20s")]
    pub drift_after: Duration,
    /// When fraud-v2, a worse version of fraud-v1 (8% more errors, 3x the
    /// inference latency), replaces it.
    #[arg(long, value_parser = parse_duration, default_value = "40s")]
    pub deploy_after: Duration,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Print state changes as lines instead of redrawing a table.
    #[arg(long)]
    pub no_table: bool,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Reference logs, one JSON object per line; `-` for stdin.
    #[arg(long, short)]
    pub input: String,
    /// Only build the baseline of this model.
    #[arg(long)]
    pub model: Option<String>,
    /// Directory to write one MODEL.json file per model into (created if missing).
    #[arg(long, short)]
    pub output: PathBuf,
    /// Configuration for the field mapping and binning.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Equal-frequency bins per numeric feature (2 to 64; overrides config).
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..=64))]
    pub bins: Option<u64>,
    /// Categories kept per categorical feature (overrides config).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10000))]
    pub top_k: Option<u64>,
    /// Never show a progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Threads decoding the input and simulating the thresholds' null
    /// laws (default: one per core). Any number builds the same baselines.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub threads: Option<u64>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Directory of baseline files (from `driftd baseline build`).
    #[arg(long, short)]
    pub baselines: PathBuf,
    /// Logs to replay, one JSON object per line; `-` for stdin.
    #[arg(long, short)]
    pub input: String,
    /// Configuration for field mapping, rules and windows.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Window length (overrides config), e.g. 10m.
    #[arg(long, value_parser = parse_duration)]
    pub window: Option<Duration>,
    /// Pane length (overrides config), e.g. 30s.
    #[arg(long, value_parser = parse_duration)]
    pub pane: Option<Duration>,
    /// Evaluation interval in event time (overrides config), e.g. 30s.
    #[arg(long, value_parser = parse_duration)]
    pub every: Option<Duration>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Also write the drift report as one self-contained HTML file (no
    /// network needed to open it): every model's distributions, baseline
    /// and window side by side, and the verdict transitions.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Threads decoding the input (default: one per core); the engine
    /// takes the lines in order, so any number gives the same report.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub threads: Option<u64>,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Output file; `-` for stdout.
    #[arg(long, short)]
    pub output: String,
    /// Lines to write.
    #[arg(long, default_value_t = 10_000)]
    pub lines: u64,
    /// Seed of the models (distributions, vocabularies).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Seed of the line stream (default: --seed). Same --seed with another
    /// --stream-seed gives fresh lines from the same models.
    #[arg(long)]
    pub stream_seed: Option<u64>,
    /// Models (fraud-v1, recsys-v3, then model-02 ...).
    #[arg(long, default_value_t = 2)]
    pub models: usize,
    /// Input features per model.
    #[arg(long, default_value_t = 8)]
    pub features: usize,
    /// Lines per second of event time.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Event time of the first line (RFC 3339).
    #[arg(long, default_value = "2025-12-14T10:00:00Z")]
    pub start: String,
    /// Inject the standard drifts after this fraction of the lines (0 to 1).
    #[arg(long)]
    pub drift_at: Option<f64>,
    /// Only inference records (no timing, feedback, error or malformed lines).
    #[arg(long)]
    pub inference_only: bool,
    /// Lean lines (~450 bytes with 20 features): no logging envelope, no
    /// input_hash, features named fNN.
    #[arg(long)]
    pub compact: bool,
    /// Replace fraud-v1 by fraud-v2 after this fraction of the lines (0 to
    /// 1): 8% more errors and 3x the inference latency.
    #[arg(long)]
    pub deploy_at: Option<f64>,
    /// Click rates of feedback per arm, `CONTROL,VARIANT` (e.g. 0.3,0.2).
    #[arg(long, value_parser = parse_pair)]
    pub click_rates: Option<(f64, f64)>,
    /// Share of lines that are batch statistics (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub batch_share: f64,
    /// Write ground-truth label lines ("Ground truth received") for this
    /// fraction of the inference records (0 to 1), --label-delay after them.
    /// Labels are drawn from a calibrated classifier: a record is right with
    /// the probability its confidence states. Label lines count towards
    /// --lines; labels due after the last line are not written.
    #[arg(long, value_name = "SHARE")]
    pub labels: Option<f64>,
    /// Mean delay of a label after its record, e.g. 6h (with --labels).
    #[arg(long, value_parser = parse_duration, default_value = "6h")]
    pub label_delay: Duration,
    /// The delay is uniform within --label-delay plus or minus this, e.g. 30m.
    #[arg(long, value_parser = parse_duration, default_value = "30m")]
    pub label_jitter: Duration,
    /// From this fraction of the lines on (0 to 1), every model's accuracy
    /// drops by --accuracy-drop (its confidences fall as much, so it stays
    /// calibrated), with a 1-sd shift of its first numeric feature.
    #[arg(long, value_name = "FRACTION")]
    pub accuracy_drop_at: Option<f64>,
    /// Accuracy lost from --accuracy-drop-at on, as a fraction, 0 to 0.49
    /// [default: 0.05].
    #[arg(long, value_name = "POINTS", requires = "accuracy_drop_at")]
    pub accuracy_drop: Option<f64>,
}

/// Which threshold modes `driftd scenarios` runs.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ScenarioMode {
    Static,
    Auto,
    Both,
}

#[derive(Debug, Args)]
pub struct ScenariosArgs {
    /// The reduced set CI runs (windows of 200 and 1,000 samples for a few
    /// hours, four drifts in one stream stopped once decided): a few
    /// seconds in release builds.
    #[arg(long)]
    pub quick: bool,
    /// Threshold mode(s) to run.
    #[arg(long, value_enum, default_value = "both")]
    pub mode: ScenarioMode,
    /// Print the report as JSON instead of markdown tables.
    #[arg(long)]
    pub json: bool,
    /// Seed of the model, the reference sample and the streams.
    #[arg(long, default_value_t = crate::lab::scenario::DEFAULT_SEED)]
    pub seed: u64,
    /// Worker threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Models in the generated stream.
    #[arg(long, default_value_t = 4)]
    pub models: usize,
    /// Input features per model.
    #[arg(long, default_value_t = 20)]
    pub features: usize,
    /// Share of categorical features (0 to 1).
    #[arg(long, default_value_t = crate::lab::generate::DEFAULT_CATEGORICAL_SHARE)]
    pub categorical_share: f64,
    /// Lines to generate and measure.
    #[arg(long, default_value_t = 1_000_000)]
    pub lines: usize,
    /// The seed's full logging envelope (~840 bytes with 20 features)
    /// instead of the lean shape (~450).
    #[arg(long)]
    pub seed_shape: bool,
    /// Skip the in-process replay measurement.
    #[arg(long)]
    pub no_replay: bool,
    /// Skip the daemon measurements (drain, steady, /metrics).
    #[arg(long)]
    pub no_daemon: bool,
    /// The daemon's evaluation interval.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub every: Duration,
    /// After the drain, run at --rate for this long: event-to-API latency
    /// and the RSS curve.
    #[arg(long, value_parser = parse_duration)]
    pub steady: Option<Duration>,
    /// Lines per second in the steady phase.
    #[arg(long, default_value_t = 50_000)]
    pub rate: u64,
    /// /metrics scrapes to time.
    #[arg(long, default_value_t = 20)]
    pub scrapes: usize,
    /// Also write the report as JSON to this file (`-` for stdout).
    #[arg(long)]
    pub json: Option<String>,
    /// A librdkafka property for the daemon under test, `KEY=VALUE`
    /// (repeatable; tuning experiments).
    #[arg(long = "kafka-property", value_parser = parse_kv)]
    pub kafka_properties: Vec<(String, String)>,
    /// Lines without an experiment arm (no per-arm windows).
    #[arg(long)]
    pub no_arms: bool,
    /// Measure only the label join: --label-rate predictions per second,
    /// each labelled --label-delay later, for this many hours of event
    /// time (default settings, 24 h TTL): its sample rate, what waits, RSS.
    #[arg(long)]
    pub label_join_hours: Option<u64>,
    /// Predictions per second of --label-join-hours.
    #[arg(long, default_value_t = 1000)]
    pub label_rate: u64,
    /// How late the labels of --label-join-hours come.
    #[arg(long, value_parser = parse_duration, default_value = "6h")]
    pub label_delay: Duration,
}

#[derive(Debug, Args)]
pub struct SoakArgs {
    /// How long faults are injected (after a warm-up: the window, a twelfth
    /// of this between 20 s and 5 min, filled once).
    #[arg(long, value_parser = parse_duration, default_value = "30m")]
    pub duration: Duration,
    /// Lines per second.
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// One fault starts this often, in turn: all brokers down, Fetch and
    /// OffsetCommit errors, Alertmanager killed.
    #[arg(long, value_parser = parse_duration, default_value = "3m")]
    pub fault_every: Duration,
    /// Models in the generated stream.
    #[arg(long, default_value_t = 4)]
    pub models: usize,
    /// Input features per model.
    #[arg(long, default_value_t = 20)]
    pub features: usize,
    /// The daemon's window length (default: a twelfth of --duration, 20 s
    /// to 5 min); its panes follow from window.max_panes. A window of
    /// event time (at most 2M lines) is backfilled before the warm-up.
    #[arg(long, value_parser = parse_duration)]
    pub window: Option<Duration>,
    /// The daemon's limits.max_memory, e.g. 512MiB (default: the daemon's).
    #[arg(long)]
    pub max_memory: Option<String>,
    /// Partitions of the topic (default: enough for two minutes of backlog).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=256))]
    pub partitions: Option<i32>,
    /// The Alertmanager binary (default: prometheus-alertmanager or
    /// alertmanager on PATH; without one the Alertmanager fault is skipped).
    #[arg(long)]
    pub alertmanager: Option<PathBuf>,
    /// The faults to cycle through, in order (comma-separated: broker,
    /// requests, alertmanager).
    #[arg(long, value_delimiter = ',', value_parser = crate::lab::soak::FaultKind::parse,
          default_value = "broker,requests,alertmanager")]
    pub faults: Vec<crate::lab::soak::FaultKind>,
    /// Print the report as JSON on stdout (the table goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Keep the daemon's and Alertmanager's logs even when every check
    /// passes (they are always kept when one fails).
    #[arg(long)]
    pub keep_logs: bool,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .ok_or_else(|| format!("{s:?}: write KEY=VALUE, e.g. fetch.wait.max.ms=50"))
}

fn parse_pair(s: &str) -> Result<(f64, f64), String> {
    let (a, b) = s
        .split_once(',')
        .ok_or_else(|| format!("{s:?}: write two numbers, e.g. 0.3,0.2"))?;
    let num = |x: &str| {
        x.trim()
            .parse::<f64>()
            .map_err(|e| format!("{x:?} is not a number: {e}"))
    };
    Ok((num(a)?, num(b)?))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}; write e.g. 30s, 10m, 1h"))
}

/// How a command failed, which decides the exit code.
#[derive(Debug)]
pub enum Failure {
    Usage(anyhow::Error),
    Config(ConfigError),
    Runtime(anyhow::Error),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Config(e)
    }
}

impl Failure {
    pub fn code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Config(_) => 64,
            Failure::Runtime(_) => 1,
        }
    }

    pub fn print(&self) {
        let mut err = std::io::stderr().lock();
        match self {
            Failure::Config(e) => {
                let _ = writeln!(err, "error: {e}");
            }
            Failure::Usage(e) | Failure::Runtime(e) => {
                let _ = writeln!(err, "error: {e}");
                for cause in e.chain().skip(1) {
                    let _ = writeln!(err, "  caused by: {cause}");
                }
            }
        }
    }
}

/// Parses arguments, runs the command, and returns the exit code.
pub fn main() -> ExitCode {
    crate::daemon::app::tune_allocator();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            f.print();
            ExitCode::from(f.code())
        }
    }
}

pub fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Run(a) => run_daemon(a),
        Command::Demo(a) => demo(a),
        Command::Bench(a) => bench(a).map_err(Failure::Runtime),
        Command::Soak(a) => soak(a),
        Command::Baseline(BaselineCommand::Build(a)) => baseline_build(a),
        Command::Replay(a) => replay_cmd(a),
        Command::Generate(a) => generate(a).map_err(Failure::Runtime),
        Command::Scenarios(a) => scenarios(a).map_err(Failure::Runtime),
        Command::Probe { url, timeout } => probe(&url, timeout),
        Command::CheckConfig(a) => {
            let cfg = Config::load(a.config.as_deref())?;
            let found = preflight(&cfg)?;
            println!("{}: ok", cfg.source);
            for note in &cfg.notes {
                println!("{note}");
            }
            print!("{}", found.memory);
            Ok(())
        }
    }
}

fn progress_bar(size: Option<u64>, quiet: bool) -> indicatif::ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = match size {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} {bytes}/{total_bytes} {bytes_per_sec} [{wide_bar}] {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    pb.set_style(style);
    pb
}

fn baseline_build(a: BuildArgs) -> Result<(), Failure> {
    let mut cfg = Config::load(a.config.as_deref())?;
    if let Some(b) = a.bins {
        cfg.engine.binning.numeric_bins = b as usize;
    }
    if let Some(k) = a.top_k {
        cfg.engine.binning.top_k = k as usize;
    }
    let input = Input::parse(&a.input);
    let (mut reader, size) = input.open().map_err(|e| Failure::Usage(e.into()))?;
    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("cannot create output directory {}", a.output.display()))
        .map_err(Failure::Usage)?;
    let pb = progress_bar(size, a.quiet);
    let decoder = Decoder::new(cfg.engine.decode.clone());
    let threads = a
        .threads
        .map_or_else(replay::default_threads, |t| t as usize);
    let built = replay::build_baselines(
        (&decoder, threads),
        &input,
        &mut reader,
        a.model.as_deref(),
        &cfg.engine.binning,
        now_ms(),
        |b| pb.set_position(b),
    )
    .map_err(|e| Failure::Usage(e.into()))?;
    pb.finish_and_clear();
    let mut built = built;
    replay::fit_nulls(&mut built.baselines, &cfg.engine.compare, threads);
    for b in &built.baselines {
        let path = b.save(&a.output).map_err(|e| Failure::Runtime(e.into()))?;
        eprintln!(
            "wrote {} (model {}, version {}, {} events, {} features)",
            path.display(),
            b.model,
            b.version,
            b.samples,
            b.features.len()
        );
    }
    for line in built.first_bad.describe(&input.name(), &built.stats) {
        eprintln!("warning: {line}");
    }
    Ok(())
}

fn replay_cmd(a: ReplayArgs) -> Result<(), Failure> {
    let mut cfg = Config::load(a.config.as_deref())?;
    if let WindowSpec::Time { length_ms, pane_ms } = &mut cfg.engine.window {
        if let Some(w) = a.window {
            *length_ms = w.as_millis() as i64;
        }
        if let Some(p) = a.pane {
            *pane_ms = p.as_millis() as i64;
        }
        if *pane_ms <= 0 || *pane_ms > *length_ms {
            return Err(Failure::Usage(anyhow::anyhow!(
                "--pane must be positive and no longer than --window"
            )));
        }
    }
    let every = a.every.unwrap_or(cfg.every).as_millis() as i64;
    if every <= 0 {
        return Err(Failure::Usage(anyhow::anyhow!("--every must be positive")));
    }
    if let Some(note) = crate::config::window_note(&cfg.engine) {
        eprintln!("{note}");
    }
    // Replay trusts event time: nothing is "in the future" of a file.
    cfg.engine.max_future_ms = None;
    let baselines = replay::load_baselines(&a.baselines).map_err(|errs| {
        let list: Vec<String> = errs.iter().map(|e| format!("  - {e}")).collect();
        Failure::Usage(anyhow::anyhow!(
            "{} problem{} with the baselines in {}:\n{}",
            errs.len(),
            if errs.len() == 1 { "" } else { "s" },
            a.baselines.display(),
            list.join("\n")
        ))
    })?;
    if baselines.is_empty() {
        return Err(Failure::Usage(anyhow::anyhow!(
            "no baseline files (*.json) in {}; build them with `driftd baseline build --input REFERENCE.jsonl --output {}`",
            a.baselines.display(),
            a.baselines.display()
        )));
    }
    let input = Input::parse(&a.input);
    let (mut reader, size) = input.open().map_err(|e| Failure::Usage(e.into()))?;
    let pb = progress_bar(size, false);
    let mut engine = Engine::new(cfg.engine.clone(), baselines);
    let threads = a
        .threads
        .map_or_else(replay::default_threads, |t| t as usize);
    let result = replay::replay(&mut engine, &input, &mut reader, every, threads, |b| {
        pb.set_position(b)
    })
    .map_err(|e| Failure::Runtime(e.into()))?;
    pb.finish_and_clear();
    let mut out = std::io::stdout().lock();
    let written = match a.format {
        Format::Table => replay::write_table(&result, engine.model_reports(), &mut out),
        Format::Json => replay::write_json(&result, engine.model_reports(), &mut out),
    };
    // A closed pipe (`| head`) is not an error worth a message.
    if let Err(e) = written {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(Failure::Runtime(e.into()));
        }
    }
    if let Some(path) = &a.html {
        let write = || -> std::io::Result<()> {
            let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
            replay::write_html(&result, &engine, &input.name(), &mut f)?;
            std::io::Write::flush(&mut f)
        };
        write().map_err(|e| {
            Failure::Runtime(anyhow::anyhow!(
                "cannot write the HTML report to {}: {e}",
                path.display()
            ))
        })?;
    }
    for line in result
        .first_bad
        .describe(&input.name(), &result.stats.decode)
    {
        eprintln!("warning: {line}");
    }
    Ok(())
}

fn generate(a: GenerateArgs) -> anyhow::Result<()> {
    let start = chrono::DateTime::parse_from_rfc3339(&a.start)
        .with_context(|| {
            format!(
                "--start {:?} is not RFC 3339, e.g. 2025-12-14T10:00:00Z",
                a.start
            )
        })?
        .timestamp_millis();
    anyhow::ensure!(
        a.rate > 0.0 && a.rate.is_finite(),
        "--rate must be a positive number of lines per second"
    );
    let step = 1000.0 / a.rate;
    let mut gcfg = GeneratorConfig::synthetic(a.seed, a.models, a.features);
    gcfg.stream_seed = a.stream_seed;
    if a.inference_only {
        gcfg = gcfg.inference_only();
    }
    gcfg.compact = a.compact;
    if let Some(f) = a.drift_at {
        anyhow::ensure!(
            (0.0..=1.0).contains(&f),
            "--drift-at is a fraction of the lines, 0 to 1"
        );
        let at = start + (a.lines as f64 * f * step) as i64;
        gcfg.drifts = crate::lab::generate::standard_drifts(at);
    }
    if let Some(f) = a.deploy_at {
        anyhow::ensure!(
            (0.0..=1.0).contains(&f),
            "--deploy-at is a fraction of the lines, 0 to 1"
        );
        let at = start + (a.lines as f64 * f * step) as i64;
        gcfg = gcfg.with_deploy(
            crate::lab::generate::DeploySpec::new("fraud-v1", "fraud-v2", at)
                .with_extra_error_share(0.08)
                .with_latency_factor(3.0),
        );
    }
    if let Some((c, v)) = a.click_rates {
        gcfg = gcfg.with_click_rates(c, v);
    }
    gcfg.batch_share = a.batch_share;
    if let Some(share) = a.labels {
        anyhow::ensure!(
            (0.0..=1.0).contains(&share),
            "--labels is a fraction of the inference records, 0 to 1"
        );
        let ms = |d: Duration, flag: &str| {
            i64::try_from(d.as_millis()).map_err(|_| {
                anyhow::anyhow!("{flag} {} is too long", humantime::format_duration(d))
            })
        };
        gcfg = gcfg.with_labels(crate::lab::generate::LabelSpec::new(
            share,
            ms(a.label_delay, "--label-delay")?,
            ms(a.label_jitter, "--label-jitter")?,
        ));
    }
    if let Some(f) = a.accuracy_drop_at {
        anyhow::ensure!(
            (0.0..=1.0).contains(&f),
            "--accuracy-drop-at is a fraction of the lines, 0 to 1"
        );
        let drop = a.accuracy_drop.unwrap_or(0.05);
        anyhow::ensure!(
            (0.0..=0.49).contains(&drop),
            "--accuracy-drop is a fraction of accuracy, 0 to 0.49 (e.g. 0.05 for 5 points)"
        );
        let at = start + (a.lines as f64 * f * step) as i64;
        let drops: Vec<_> = gcfg
            .models
            .iter()
            .map(|m| {
                let shifted = m
                    .first_numeric_feature()
                    .map(crate::lab::generate::FeatureRef::Index);
                crate::lab::generate::DriftSpec::accuracy_drop(
                    shifted.into_iter().collect(),
                    1.0,
                    drop,
                    at,
                )
                .for_model(m.name.clone())
            })
            .collect();
        gcfg.drifts.extend(drops);
    }
    let mut g = Generator::try_new(gcfg).map_err(|e| anyhow::anyhow!("{}", e.0))?;
    let mut out: Box<dyn Write> = if a.output == "-" {
        Box::new(std::io::BufWriter::new(std::io::stdout().lock()))
    } else {
        let f = std::fs::File::create(&a.output)
            .with_context(|| format!("cannot create {}", a.output))?;
        Box::new(std::io::BufWriter::with_capacity(1 << 20, f))
    };
    let mut buf = String::with_capacity(1024);
    for i in 0..a.lines {
        let t = start + (i as f64 * step) as i64;
        g.next_line(t, &mut buf);
        buf.push('\n');
        if let Err(e) = out.write_all(buf.as_bytes()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(e).context("writing generated lines");
        }
    }
    out.flush().context("writing generated lines")?;
    Ok(())
}

/// The problems only the daemon can find (librdkafka's view of the
/// properties, the baseline files), as config problems: exit 64.
fn preflight(cfg: &Config) -> Result<crate::daemon::app::Preflight, Failure> {
    let found = crate::daemon::app::preflight(cfg);
    let problems: Vec<crate::config::Problem> = found
        .problems
        .iter()
        .map(|(key, message)| crate::config::Problem {
            key: key.clone(),
            message: message.clone(),
        })
        .collect();
    if problems.is_empty() {
        return Ok(found);
    }
    Err(Failure::Config(ConfigError::Invalid {
        source_name: cfg.source.clone(),
        problems,
    }))
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .map_err(Failure::Runtime)
}

fn run_daemon(a: ConfigArgs) -> Result<(), Failure> {
    let cfg = Config::load(a.config.as_deref())?;
    cfg.require_kafka()?;
    preflight(&cfg)?;
    crate::daemon::logging::init(&cfg.log);
    tracing::info!(config = %cfg.source, version = env!("CARGO_PKG_VERSION"), "driftd starting");
    runtime()?
        .block_on(async move {
            let cancel = tokio_util::sync::CancellationToken::new();
            let daemon = crate::daemon::app::start(cfg, cancel.clone()).await?;
            crate::daemon::app::handle_signals(cancel, daemon.control.clone())?;
            daemon.wait().await
        })
        .map_err(Failure::Runtime)
}

fn bench(a: BenchArgs) -> anyhow::Result<()> {
    if let Some(hours) = a.label_join_hours {
        anyhow::ensure!(
            hours > 0 && (1..=1_000_000).contains(&a.label_rate),
            "--label-join-hours must be at least 1 and --label-rate 1 to 1,000,000"
        );
        let delay = a.label_delay.as_millis() as i64;
        let r = crate::lab::label_join::run(a.label_rate, hours, delay);
        print!("{}", crate::lab::label_join::render(&r));
        return Ok(());
    }
    anyhow::ensure!(a.lines > 0, "--lines must be at least 1");
    anyhow::ensure!(
        a.models > 0 && a.features > 0,
        "--models and --features must be at least 1"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&a.categorical_share),
        "--categorical-share is a fraction, 0 to 1"
    );
    let o = crate::lab::bench::BenchOptions {
        models: a.models,
        features: a.features,
        categorical_share: a.categorical_share,
        lines: a.lines,
        compact: !a.seed_shape,
        replay: !a.no_replay,
        daemon: !a.no_daemon,
        every: a.every,
        steady: a.steady,
        rate: a.rate,
        scrapes: a.scrapes,
        kafka_properties: a.kafka_properties,
        arms: !a.no_arms,
    };
    let r = crate::lab::bench::run(&o)?;
    print!("{}", crate::lab::bench::render(&r, &o));
    match a.json.as_deref() {
        Some("-") => crate::lab::bench::write_json(&r, &mut std::io::stdout().lock())?,
        Some(path) => {
            let mut f =
                std::fs::File::create(path).with_context(|| format!("cannot create {path}"))?;
            crate::lab::bench::write_json(&r, &mut f)?;
        }
        None => {}
    }
    Ok(())
}

fn scenarios(a: ScenariosArgs) -> anyhow::Result<()> {
    use crate::lab::scenario::{self, Mode};
    let mut opts = scenario::SuiteOptions {
        quick: a.quick,
        modes: match a.mode {
            ScenarioMode::Static => vec![Mode::Static],
            ScenarioMode::Auto => vec![Mode::Auto],
            ScenarioMode::Both => vec![Mode::Static, Mode::Auto],
        },
        seed: a.seed,
        progress: Some(|line: &str| eprintln!("{line}")),
        ..scenario::SuiteOptions::default()
    };
    if let Some(t) = a.threads {
        anyhow::ensure!(t > 0, "--threads must be at least 1");
        opts.threads = t;
    }
    let report = scenario::run(&opts);
    let mut out = std::io::stdout().lock();
    let written = if a.json {
        serde_json::to_writer_pretty(&mut out, &report)
            .map_err(std::io::Error::other)
            .and_then(|_| out.write_all(b"\n"))
    } else {
        out.write_all(scenario::render_markdown(&report).as_bytes())
    };
    match written {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("writing the scenario report")
        }
        _ => Ok(()),
    }
}

fn soak(a: SoakArgs) -> Result<(), Failure> {
    let o = crate::lab::soak::SoakOptions {
        duration: a.duration,
        rate: a.rate,
        fault_every: a.fault_every,
        models: a.models,
        features: a.features,
        window: a.window,
        max_memory: a.max_memory,
        partitions: a.partitions,
        alertmanager: a.alertmanager,
        faults: a.faults,
        keep_logs: a.keep_logs,
    };
    let r = crate::lab::soak::run(&o).map_err(Failure::Runtime)?;
    let table = crate::lab::soak::render(&r);
    if a.json {
        eprint!("{table}");
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, &r).map_err(|e| Failure::Runtime(e.into()))?;
        let _ = writeln!(out);
    } else {
        print!("{table}");
    }
    let failed: Vec<String> = r
        .failed()
        .iter()
        .map(|c| format!("  - {}: {}", c.name, c.detail))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::Runtime(anyhow::anyhow!(
            "the soak failed {} check{}:\n{}",
            failed.len(),
            if failed.len() == 1 { "" } else { "s" },
            failed.join("\n")
        )))
    }
}

fn demo(a: DemoArgs) -> Result<(), Failure> {
    // The live table owns the terminal: only warnings are logged.
    crate::daemon::logging::init(&crate::daemon::logging::LogConfig {
        format: crate::daemon::logging::LogFormat::Text,
        level: "warn".into(),
    });
    let opts = crate::lab::demo::DemoOptions {
        listen: a.listen,
        rate: a.rate,
        drift_after: a.drift_after,
        deploy_after: a.deploy_after,
        duration: a.duration,
        live_table: !a.no_table && std::io::stdout().is_terminal(),
    };
    runtime()?
        .block_on(async move {
            let cancel = tokio_util::sync::CancellationToken::new();
            let c = cancel.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                c.cancel();
            });
            crate::lab::demo::run(opts, cancel).await
        })
        .map_err(Failure::Runtime)
}

/// A minimal HTTP/1.0 GET: enough for a health check against our own server.
fn probe(url: &str, timeout: Duration) -> Result<(), Failure> {
    use std::io::Read;
    use std::net::{TcpStream, ToSocketAddrs};
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        Failure::Usage(anyhow::anyhow!("probe takes an http:// URL, got {url:?}"))
    })?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let addr = host
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Failure::Usage(anyhow::anyhow!("cannot resolve {host:?}")))?;
    let run = || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
        let mut head = [0u8; 64];
        let n = s.read(&mut head)?;
        Ok(String::from_utf8_lossy(&head[..n]).into_owned())
    };
    let head = run().map_err(|e| Failure::Runtime(anyhow::anyhow!("{url}: {e}")))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status.starts_with('2') {
        Ok(())
    } else {
        Err(Failure::Runtime(anyhow::anyhow!(
            "{url} answered {status:?}"
        )))
    }
}
