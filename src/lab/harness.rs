//! What the lab's tools share to run driftd under test.
//!
//! This module owns the pieces `driftd demo`, `driftd bench` and `driftd
//! soak` each need and none of them should own: a scratch directory removed
//! when done, the synthetic traffic the bench and the soak send (and the
//! baselines of its models), the config file of a daemon under test, the
//! daemon as a child process (`driftd run`) watched through its HTTP API,
//! and what /proc says about a process. The tools depend on it, not on one
//! another.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::engine::baseline::{Baseline, BaselineBuilder, Binning};
use crate::engine::decode::{Decoded, Decoder};
use crate::lab::generate::{Generator, GeneratorConfig};

/// A scratch directory removed when dropped.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Scratch {
    /// `<tmp>/driftd-<what>-<pid>`, created.
    pub(crate) fn new(what: &str) -> std::io::Result<Scratch> {
        let p = std::env::temp_dir().join(format!("driftd-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(Scratch(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// The traffic.

/// The synthetic traffic of the bench and the soak: inference records only,
/// of `models` models with `features` features each (seed 42).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Traffic {
    pub(crate) models: usize,
    pub(crate) features: usize,
    pub(crate) categorical_share: f64,
    /// The lean line shape instead of the seed's logging envelope.
    pub(crate) compact: bool,
    /// Lines carry an experiment arm.
    pub(crate) arms: bool,
}

impl Traffic {
    pub(crate) fn generator_config(&self) -> GeneratorConfig {
        let mut g = GeneratorConfig::synthetic(42, self.models, self.features)
            .with_categorical_share(self.categorical_share)
            .inference_only();
        g.compact = self.compact;
        g.arms = self.arms;
        g
    }

    /// Baselines of the models from a reference stream of their own (stream
    /// seed 7) in the hour before `now`, sorted by model name: 2,000 lines
    /// a model, at least 20,000 in all.
    pub(crate) fn baselines(&self, now: i64) -> anyhow::Result<Vec<Baseline>> {
        self.baselines_from(now, self.reference_lines(usize::MAX))
    }

    /// Lines of the reference stream: 2,000 a model, at least 20,000, and
    /// at most `cap` (a thousand models' reference would otherwise be 2M
    /// lines, and their builders hold every value until they finish).
    pub(crate) fn reference_lines(&self, cap: usize) -> usize {
        (self.models * 2_000).max(20_000).min(cap)
    }

    /// Baselines from the first `lines` lines of the reference stream.
    pub(crate) fn baselines_from(&self, now: i64, lines: usize) -> anyhow::Result<Vec<Baseline>> {
        let mut g = Generator::new(GeneratorConfig {
            stream_seed: Some(7),
            ..self.generator_config()
        });
        let d = Decoder::new(Default::default());
        let mut builders: BTreeMap<String, BaselineBuilder> = BTreeMap::new();
        let mut buf = String::new();
        for i in 0..lines {
            g.next_line(now - 3_600_000 + i as i64, &mut buf);
            if let Decoded::Event(e) = d.decode(buf.as_bytes()) {
                builders
                    .entry(e.model.to_string())
                    .or_insert_with(|| BaselineBuilder::new(&e.model))
                    .add(&e);
            }
        }
        builders
            .into_values()
            .map(|b| {
                b.finish(&Binning::default(), "bench", now)
                    .map_err(Into::into)
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// The daemon under test.

/// The config file of a daemon under test: Kafka, window, evaluation,
/// baselines, checkpoints, HTTP and logging as the tools run it; anything
/// else (alerts, shutdown, librdkafka properties) in `extra`, TOML appended
/// as it is.
pub(crate) struct DaemonConfig<'a> {
    pub(crate) brokers: &'a str,
    pub(crate) topic: &'a str,
    pub(crate) group_id: &'a str,
    /// The daemon's default when `None`.
    pub(crate) commit_interval: Option<Duration>,
    pub(crate) window: Duration,
    pub(crate) pane: Duration,
    pub(crate) every: Duration,
    pub(crate) baselines_dir: &'a Path,
    pub(crate) state_dir: &'a Path,
    pub(crate) port: u16,
    pub(crate) extra: &'a str,
}

impl DaemonConfig<'_> {
    /// The TOML text.
    pub(crate) fn render(&self) -> String {
        let d = |d: Duration| humantime::format_duration(d).to_string();
        let commit = self.commit_interval.map_or(String::new(), |c| {
            format!("commit_interval = \"{}\"\n", d(c))
        });
        let mut text = format!(
            r#"[kafka]
brokers = "{brokers}"
topics = ["{topic}"]
group_id = "{group_id}"
{commit}rewind_on_start = false

[window]
length = "{window}"
pane = "{pane}"
max_future = "1h"

[evaluation]
every = "{every}"

[baselines]
dir = "{baselines}"
watch = false

[checkpoint]
dir = "{state}"

[http]
listen = "127.0.0.1:{port}"

[log]
format = "text"
level = "warn"
"#,
            brokers = self.brokers,
            topic = self.topic,
            group_id = self.group_id,
            window = d(self.window),
            pane = d(self.pane),
            every = d(self.every),
            baselines = self.baselines_dir.display(),
            state = self.state_dir.display(),
            port = self.port,
        );
        text.push_str(self.extra);
        text
    }

    /// Writes the file at `path`.
    pub(crate) fn write(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, self.render())
            .with_context(|| format!("writing the daemon's config {}", path.display()))
    }
}

/// A blocking HTTP client (the tools are synchronous; reqwest is not).
pub(crate) struct BlockingHttp {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl BlockingHttp {
    pub(crate) fn new(timeout: Duration) -> anyhow::Result<BlockingHttp> {
        Ok(BlockingHttp {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            client: reqwest::Client::builder().timeout(timeout).build()?,
        })
    }

    /// (status, body) of a GET.
    pub(crate) fn get(&self, url: &str) -> anyhow::Result<(u16, String)> {
        self.rt.block_on(async {
            let r = self.client.get(url).send().await?;
            let status = r.status().as_u16();
            Ok((status, r.text().await?))
        })
    }
}

/// The daemon under test: `driftd run` in a child process, killed on drop.
pub(crate) struct ChildDaemon {
    pub(crate) child: Child,
    base: String,
    log_path: PathBuf,
    http: BlockingHttp,
}

impl Drop for ChildDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChildDaemon {
    /// Starts `driftd run --config <config>` (this executable) whose HTTP
    /// API listens on `port`; its stderr goes to `log_path`.
    pub(crate) fn start(
        config: &Path,
        port: u16,
        log_path: PathBuf,
        stdout: Stdio,
    ) -> anyhow::Result<ChildDaemon> {
        let exe = std::env::current_exe().context("locating the driftd binary")?;
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(exe)
            .args(["run", "--config"])
            .arg(config)
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .context("starting `driftd run`")?;
        Ok(ChildDaemon {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log_path,
            http: BlockingHttp::new(Duration::from_secs(30))?,
        })
    }

    /// Waits (up to 2 minutes) until the daemon owns partitions.
    pub(crate) fn wait_joined(&mut self) -> anyhow::Result<()> {
        let joined = Instant::now();
        loop {
            self.alive().with_context(|| self.log())?;
            if let Ok(s) = self.status() {
                if s["assigned_partitions"].as_i64().unwrap_or(0) > 0 {
                    return Ok(());
                }
            }
            if joined.elapsed() > Duration::from_secs(120) {
                bail!("the daemon did not join within 2 minutes:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub(crate) fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        self.http.get(&self.url(path))
    }

    /// The address of one of its HTTP paths.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) fn status(&self) -> anyhow::Result<serde_json::Value> {
        let (code, body) = self.get("/api/v1/status")?;
        if code != 200 {
            bail!("/api/v1/status answered {code}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds the daemon has used.
    pub(crate) fn cpu(&self) -> f64 {
        cpu_seconds(&format!("/proc/{}", self.pid()))
    }

    pub(crate) fn alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the daemon exited ({status}); see its log above");
        }
        Ok(())
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

// ---------------------------------------------------------------------------
// What /proc says (Linux; zeros elsewhere).

/// The machine, as `/proc/cpuinfo` names it.
pub(crate) fn machine() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned())
}

/// User + system CPU seconds of the process or thread at `path`
/// (`/proc/<pid>`, `/proc/thread-self`).
pub(crate) fn cpu_seconds(path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("{path}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) in parentheses;
    // utime and stime are the 14th and 15th of the whole line.
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// (RSS MiB, peak RSS MiB) of a process.
pub(crate) fn proc_mem(pid: u32) -> (f64, f64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
}

/// Open file descriptors of a process.
pub(crate) fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bench's file as it was written before the soak shared it.
    #[test]
    fn the_config_parses_and_says_what_it_was_given() {
        let c = DaemonConfig {
            brokers: "127.0.0.1:9092",
            topic: "bench",
            group_id: "driftd-bench-drain",
            commit_interval: None,
            window: Duration::from_secs(600),
            pane: Duration::from_secs(30),
            every: Duration::from_millis(100),
            baselines_dir: Path::new("/tmp/b"),
            state_dir: Path::new("/tmp/s"),
            port: 9400,
            extra: "",
        };
        let text = c.render();
        assert!(text.contains("length = \"10m\"\npane = \"30s\""), "{text}");
        assert!(text.contains("every = \"100ms\""), "{text}");
        assert!(!text.contains("commit_interval"), "{text}");
        let cfg = crate::config::Config::from_toml(&text, "test").unwrap();
        assert_eq!(cfg.every, Duration::from_millis(100));
        let soak = DaemonConfig {
            commit_interval: Some(Duration::from_secs(1)),
            ..c
        };
        assert!(soak
            .render()
            .contains("group_id = \"driftd-bench-drain\"\ncommit_interval = \"1s\"\n"));
    }
}
