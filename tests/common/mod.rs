//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn samples() -> PathBuf {
    root().join("data/samples")
}

/// Runs the driftd binary built for this test run.
pub fn driftd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_driftd"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("the driftd binary runs")
}

/// `driftd generate --output OUT ARGS...`, which must succeed.
pub fn generate_to(out: &Path, args: &[&str]) {
    let mut all = vec!["generate", "--output", path_str(out)];
    all.extend_from_slice(args);
    let o = driftd(&all);
    assert!(o.status.success(), "driftd generate failed: {}", stderr(&o));
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

// ---------------------------------------------------------------------------
// Daemon tests: an in-process Kafka, scraping, waiting on conditions.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use driftd::engine::baseline::{Baseline, BaselineBuilder, Binning};
use driftd::engine::decode::{Decoded, Decoder};
use driftd::lab::generate::{Generator, GeneratorConfig};

pub const TOPIC: &str = "inference-logs";

/// librdkafka's in-process mock cluster: the real Kafka protocol on loopback.
pub struct Kafka {
    pub cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    pub partitions: i32,
}

impl Kafka {
    pub fn new(brokers: i32, partitions: i32) -> Kafka {
        let cluster = MockCluster::new(brokers).expect("mock cluster starts");
        cluster
            .create_topic(TOPIC, partitions, 1)
            .expect("topic created");
        Kafka {
            cluster,
            partitions,
        }
    }

    pub fn brokers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Sends lines round-robin over the partitions and waits until every one
    /// is acknowledged.
    pub fn produce(&self, lines: &[String]) {
        produce_to(&self.brokers(), self.partitions, lines);
    }

    /// Sum over partitions of the group's committed offsets.
    pub fn committed(&self, group: &str) -> i64 {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("group.id", group)
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition(TOPIC, p);
        }
        let got = c
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        got.elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            })
            .sum()
    }
}

/// Generated lines for `fraud-v1` and `recsys-v3`, and how many are
/// inference records per model and how many are rejected, by our own decoder.
pub struct Lines {
    pub lines: Vec<String>,
    pub events: BTreeMap<String, u64>,
    pub rejected: u64,
}

pub fn lines(cfg: GeneratorConfig, n: usize, start_ms: i64, step_ms: i64) -> Lines {
    let mut g = Generator::new(cfg);
    let d = Decoder::new(Default::default());
    let mut out = Lines {
        lines: Vec::with_capacity(n),
        events: BTreeMap::new(),
        rejected: 0,
    };
    let mut buf = String::new();
    for i in 0..n {
        g.next_line(start_ms + i as i64 * step_ms, &mut buf);
        match d.decode(buf.as_bytes()) {
            Decoded::Event(e) => *out.events.entry(e.model.to_string()).or_default() += 1,
            Decoded::Rejected(_) => out.rejected += 1,
            Decoded::Skipped(_) | Decoded::Record(_) => {}
        }
        out.lines.push(buf.clone());
    }
    out
}

/// Baselines of the default generator's models from `n` reference lines.
pub fn baselines(n: usize) -> Vec<Baseline> {
    let l = lines(GeneratorConfig::default(), n, 1_700_000_000_000, 100);
    let d = Decoder::new(Default::default());
    let mut builders: BTreeMap<String, BaselineBuilder> = BTreeMap::new();
    for line in &l.lines {
        if let Decoded::Event(e) = d.decode(line.as_bytes()) {
            builders
                .entry(e.model.to_string())
                .or_insert_with(|| BaselineBuilder::new(&e.model))
                .add(&e);
        }
    }
    builders
        .into_values()
        .map(|b| b.finish(&Binning::default(), "test", 0).unwrap())
        .collect()
}

pub fn now_ms() -> i64 {
    driftd::clock::now_ms()
}

/// One sample of the exposition.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus text format (what we serve; no exemplars).
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (head, value) = line.rsplit_once(' ').expect("sample line has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().expect("numeric value"),
        };
        let (name, labels) = match head.split_once('{') {
            None => (head.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let mut labels = BTreeMap::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (k, v) = rest.split_once("=\"").expect("label=\"value\"");
                    let mut val = String::new();
                    let mut chars = v.char_indices();
                    let mut end = v.len();
                    while let Some((i, c)) = chars.next() {
                        match c {
                            '\\' => {
                                if let Some((_, e)) = chars.next() {
                                    val.push(match e {
                                        'n' => '\n',
                                        other => other,
                                    });
                                }
                            }
                            '"' => {
                                end = i;
                                break;
                            }
                            c => val.push(c),
                        }
                    }
                    labels.insert(k.to_owned(), val);
                    rest = v[end + 1..].trim_start_matches(',');
                }
                (name.to_owned(), labels)
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

pub fn http_get(url: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    match agent.get(url).call() {
        Ok(mut r) => {
            let status = r.status().as_u16();
            (status, r.body_mut().read_to_string().unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

pub fn scrape(addr: &str) -> Vec<Sample> {
    let (status, body) = http_get(&format!("http://{addr}/metrics"));
    assert_eq!(status, 200, "GET /metrics: {body}");
    parse_exposition(&body)
}

/// Sum of the samples of `name` whose labels include all of `want`.
pub fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// Polls `f` until it returns Some, or panics with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(t) = f() {
            return t;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A path to a Debian-packaged binary, or a failure that says what to install.
pub fn require_binary(name: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("this test needs `{name}`: install it with `apt-get install {package}` (.ci/run does)");
}

/// Runs `promtool check metrics` on an exposition; panics with its complaints.
pub fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    let promtool = require_binary("promtool", "prometheus");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A daemon configuration for tests: the mock cluster, fast evaluation,
/// one-second panes (frequent checkpoints), HTTP on a free port.
pub fn daemon_config(brokers: &str, dir: &Path, group: &str) -> driftd::config::Config {
    let toml = config_toml(brokers, dir, group, "127.0.0.1:0");
    driftd::config::Config::from_toml(&toml, "test").unwrap_or_else(|e| panic!("{e}"))
}

/// The same configuration as TOML, for tests that run the binary.
pub fn config_toml(brokers: &str, dir: &Path, group: &str, listen: &str) -> String {
    let baselines = dir.join("baselines");
    std::fs::create_dir_all(&baselines).unwrap();
    format!(
        r#"
[kafka]
brokers = "{brokers}"
topics = ["{TOPIC}"]
group_id = "{group}"
commit_interval = "500ms"

[window]
length = "10m"
pane = "1s"
max_future = "1h"

[evaluation]
every = "500ms"
min_samples = 200

[baselines]
dir = "{}"

[checkpoint]
dir = "{}"

[http]
listen = "{listen}"
admin_token = "test-admin-token-0123456789"

[log]
format = "json"
level = "info"

[shutdown]
grace = "10s"
"#,
        baselines.display(),
        dir.join("state").display()
    )
}

/// Writes baselines into `<dir>/baselines`.
pub fn write_baselines(dir: &Path, baselines: &[Baseline]) {
    let d = dir.join("baselines");
    std::fs::create_dir_all(&d).unwrap();
    for b in baselines {
        b.save(&d).unwrap();
    }
}

/// Total of a per-model counter or gauge over models (arm="" for windows).
pub fn events_total(samples: &[Sample]) -> f64 {
    value(samples, "driftd_events_total", &[])
}

// ---------------------------------------------------------------------------
// Tests that run the binary as a long-lived process, and the admin API.

/// A free TCP port on loopback (bound, then released for the daemon), never
/// one this process handed out before: the kernel can give a just-released
/// port to the next bind, so two tests of one binary starting together could
/// otherwise get the same port, one daemon failing to bind and its test
/// reading the other's /metrics.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local addr").port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// The exposition, or None while nothing answers /metrics with 200 (a
/// process still starting, or stopped).
pub fn try_scrape(addr: &str) -> Option<Vec<Sample>> {
    let (status, body) = http_get(&format!("http://{addr}/metrics"));
    (status == 200).then(|| parse_exposition(&body))
}

/// Successful checkpoint writes so far.
pub fn checkpoints_ok(samples: &[Sample]) -> f64 {
    value(samples, "driftd_checkpoints_total", &[("outcome", "ok")])
}

/// POSTs `body` (JSON text) with an optional bearer token; (status, body),
/// or (0, error) when nothing answered.
pub fn http_post(url: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut req = agent.post(url);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let r = match body {
        Some(b) => req.header("content-type", "application/json").send(b),
        None => req.send_empty(),
    };
    match r {
        Ok(mut r) => {
            let status = r.status().as_u16();
            (status, r.body_mut().read_to_string().unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// A driftd child process with stdout and stderr captured to files. It is
/// killed (SIGKILL) when dropped, so a failing test leaves nothing running;
/// on a panic the tail of its output is printed.
pub struct Proc {
    pub child: std::process::Child,
    pub name: String,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Proc {
    /// Starts the driftd binary with `args`; its output goes to
    /// `<logs>/<name>.stdout` and `<logs>/<name>.stderr`.
    pub fn spawn(args: &[&str], logs: &Path, name: &str) -> Proc {
        let stdout = logs.join(format!("{name}.stdout"));
        let stderr = logs.join(format!("{name}.stderr"));
        let child = Command::new(env!("CARGO_BIN_EXE_driftd"))
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("the driftd binary starts");
        Proc {
            child,
            name: name.to_owned(),
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything written so far, stdout then stderr.
    pub fn output(&self) -> String {
        let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        format!("{out}{err}")
    }

    /// Sends a signal by name (TERM, INT, HUP ...) with kill(1).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .expect("kill(1) runs")
            .success();
        assert!(ok, "kill -{sig} {} failed", self.pid());
    }

    /// The exit status, if the process ends within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
        if std::thread::panicking() {
            let out = self.output();
            // Verdict changes are many and rarely what went wrong.
            let lines: Vec<&str> = out
                .lines()
                .filter(|l| !l.contains("drift verdict changed"))
                .collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!(
                "--- last {} lines of {} output ({}, {}):\n{}",
                tail.len(),
                self.name,
                self.stdout.display(),
                self.stderr.display(),
                tail.join("\n")
            );
        }
    }
}

/// [`Kafka::produce`] from any thread (the mock cluster itself cannot be
/// shared between threads): lines round-robin over `partitions`, each
/// acknowledged before this returns (messages wait up to two minutes for a
/// broker).
pub fn produce_to(brokers: &str, partitions: i32, lines: &[String]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "2")
        .set("message.timeout.ms", "120000")
        .create()
        .expect("producer");
    send_round_robin(&p, partitions, lines);
    p.flush(Duration::from_secs(120))
        .expect("all messages acknowledged");
}

/// Queues lines round-robin over the partitions, waiting for room in the
/// producer's queue when it is full (no flush).
pub fn send_round_robin(p: &BaseProducer, partitions: i32, lines: &[String]) {
    for (i, l) in lines.iter().enumerate() {
        let mut rec = BaseRecord::<(), str>::to(TOPIC)
            .payload(l.as_str())
            .partition(i as i32 % partitions);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
    }
}

impl Proc {
    /// Starts any program (Prometheus, Alertmanager ...) the way
    /// [`Proc::spawn`] starts driftd: output to `<logs>/<name>.stdout` and
    /// `<logs>/<name>.stderr`, killed on drop, its tail printed on a panic.
    pub fn spawn_program(program: &Path, args: &[&str], logs: &Path, name: &str) -> Proc {
        let stdout = logs.join(format!("{name}.stdout"));
        let stderr = logs.join(format!("{name}.stderr"));
        let child = Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", program.display()));
        Proc {
            child,
            name: name.to_owned(),
            stdout,
            stderr,
        }
    }
}

/// Waits until `url` (a `/-/ready` endpoint, say) answers 200; panics with
/// the process' state if it exits first or the deadline passes.
pub fn wait_ready(proc: &mut Proc, url: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, body) = http_get(url);
        if status == 200 {
            return;
        }
        if let Some(st) = proc.child.try_wait().expect("try_wait") {
            panic!("{} exited with {st} before {url} was ready", proc.name);
        }
        if Instant::now() > deadline {
            panic!(
                "{} not ready after {timeout:?}: GET {url} gives {status} {body}",
                proc.name
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A daemon running in this process on its own runtime, while the test
/// thread plays producer and Prometheus.
pub struct Running {
    pub rt: tokio::runtime::Runtime,
    pub addr: String,
    pub cancel: tokio_util::sync::CancellationToken,
    daemon: Option<driftd::daemon::app::Daemon>,
}

impl Running {
    pub fn start(cfg: driftd::config::Config) -> Running {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let cancel = tokio_util::sync::CancellationToken::new();
        let daemon = rt
            .block_on(driftd::daemon::app::start(cfg, cancel.clone()))
            .unwrap_or_else(|e| panic!("daemon starts: {e:#}"));
        Running {
            addr: daemon.addr.to_string(),
            rt,
            cancel,
            daemon: Some(daemon),
        }
    }

    pub fn daemon(&self) -> &driftd::daemon::app::Daemon {
        self.daemon.as_ref().expect("running")
    }

    /// Cancels and waits for a clean shutdown.
    pub fn stop(mut self) {
        self.cancel.cancel();
        let d = self.daemon.take().expect("running");
        self.rt.block_on(d.wait()).expect("clean shutdown");
    }
}

/// A test that fails before [`Running::stop`] still ends: the daemon is
/// cancelled, so dropping the runtime (which waits for the consumer's
/// blocking task) does not hang.
impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Messages the daemon at `addr` consumed (`driftd_kafka_messages_total`).
pub fn consumed(addr: &str) -> u64 {
    value(&scrape(addr), "driftd_kafka_messages_total", &[]) as u64
}

/// Produces `lines` in chunks, each consumed by the daemon at `addr` (its
/// only source) before the next is sent. librdkafka's mock broker keeps
/// 5 MB per partition and deletes older segments, so tens of thousands of
/// lines sent at once are partly lost to a slower consumer; and every line
/// is then processed before this returns.
pub fn produce_consumed(kafka: &Kafka, addr: &str, lines: &[String], timeout: Duration) {
    let mut want = consumed(addr);
    for chunk in lines.chunks(4000) {
        kafka.produce(chunk);
        want += chunk.len() as u64;
        eventually(
            timeout,
            &format!("driftd consumed {want} messages"),
            || match consumed(addr) {
                n if n == want => Ok(()),
                n => Err(format!("{n} consumed")),
            },
        );
    }
}

/// A webhook receiver on the test's runtime that keeps every body as it came
/// over the wire. Returns its address and the bodies.
pub fn webhook_receiver(
    rt: &tokio::runtime::Runtime,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let bodies: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind the webhook receiver");
    let addr = listener.local_addr().expect("local addr");
    let store = bodies.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let store = store.clone();
            async move {
                store.lock().expect("not poisoned").push(body);
                "ok"
            }
        }),
    );
    rt.spawn(async move { axum::serve(listener, app).await });
    (addr, bodies)
}

/// `driftd_window_samples` of a model's whole window.
pub fn window_samples(samples: &[Sample], model: &str) -> u64 {
    value(
        samples,
        "driftd_window_samples",
        &[("model", model), ("arm", "")],
    ) as u64
}

// ---------------------------------------------------------------------------
// Waiting with a reason, and a real Alertmanager on loopback.

/// Like [`wait_for`], but the condition says why it is not met yet, and the
/// panic after `timeout` says it too.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(t) => return t,
            Err(why) if Instant::now() > deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last: {why}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The Alertmanager binary of Debian's `prometheus-alertmanager` package
/// (`prometheus-alertmanager`, or `alertmanager` as upstream names it), or a
/// failure that says what to install.
pub fn require_alertmanager() -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        for name in ["prometheus-alertmanager", "alertmanager"] {
            let p = Path::new(dir).join(name);
            if p.exists() {
                return p;
            }
        }
    }
    panic!(
        "this test needs Alertmanager (`prometheus-alertmanager` or `alertmanager`): install it with `apt-get install prometheus-alertmanager` (.ci/run does)"
    );
}

/// Writes `<dir>/alertmanager.yml`: one route, groups flushed after 1 s, a
/// receiver nobody listens on (failed notifications are fine: the tests
/// read Alertmanager's API).
pub fn write_alertmanager_config(dir: &Path) {
    std::fs::write(
        dir.join("alertmanager.yml"),
        r#"
route:
  receiver: nowhere
  group_by: [alertname, model, feature]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: nowhere
    webhook_configs:
      - url: http://127.0.0.1:1/
        send_resolved: true
"#,
    )
    .unwrap();
}

/// Starts Alertmanager with `<tmp>/alertmanager.yml` (see
/// [`write_alertmanager_config`]) and storage under `tmp`, on
/// `127.0.0.1:<port>` without gossip, and waits until it is ready.
pub fn start_alertmanager(bin: &Path, tmp: &Path, port: u16, name: &str) -> Proc {
    let config = tmp.join("alertmanager.yml");
    let storage = tmp.join("alertmanager-data");
    let args = [
        format!("--config.file={}", config.display()),
        format!("--storage.path={}", storage.display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
        // No gossip: a single instance, nothing listening on 9094.
        "--cluster.listen-address=".to_owned(),
        "--log.level=info".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = Proc::spawn_program(bin, &args, tmp, name);
    wait_ready(
        &mut p,
        &format!("http://127.0.0.1:{port}/-/ready"),
        Duration::from_secs(60),
    );
    p
}

/// `GET /api/v2/alerts` (its defaults: active, silenced, inhibited and
/// unprocessed alerts, i.e. every alert whose endsAt has not passed), or
/// None while Alertmanager does not answer.
pub fn am_alerts(am: &str) -> Option<Vec<serde_json::Value>> {
    let (status, body) = http_get(&format!("http://{am}/api/v2/alerts?active=true"));
    if status != 200 {
        return None;
    }
    let doc: serde_json::Value = serde_json::from_str(&body).expect("alerts JSON");
    Some(doc.as_array().expect("an array of alerts").clone())
}

// ---------------------------------------------------------------------------
// A driftd process that starts processes of its own (`driftd soak`).

impl Proc {
    /// [`Proc::spawn`] in a process group of its own, so that
    /// [`Proc::kill_group`] also ends what it started (its daemon, its
    /// Alertmanager) when it has to be stopped from outside.
    pub fn spawn_group(args: &[&str], logs: &Path, name: &str) -> Proc {
        use std::os::unix::process::CommandExt;
        let stdout = logs.join(format!("{name}.stdout"));
        let stderr = logs.join(format!("{name}.stderr"));
        let child = Command::new(env!("CARGO_BIN_EXE_driftd"))
            .args(args)
            .env_remove("RUST_LOG")
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("the driftd binary starts");
        Proc {
            child,
            name: name.to_owned(),
            stdout,
            stderr,
        }
    }

    /// SIGKILL to the whole process group of a [`Proc::spawn_group`], and reap.
    pub fn kill_group(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.pid())])
            .status();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Tests that measure the whole process.

/// Set in the child that [`in_a_process_of_its_own`] starts.
const ALONE: &str = "DRIFTD_TEST_ALONE";

/// A test's module path within this binary (`module_path!()` without the
/// crate name), as the harness names it.
pub fn test_module(module_path: &str) -> &str {
    module_path
        .split_once("::")
        .map_or(module_path, |(_, rest)| rest)
}

/// For a test that measures the whole process (its RSS), which the other
/// tests of this binary share: true when this process runs only `test` (its
/// full path, `file::name`), so the caller goes on; otherwise runs this
/// binary again with only `test`, passes its output on, asserts that it ran
/// and passed, and returns false.
pub fn in_a_process_of_its_own(test: &str) -> bool {
    if std::env::var_os(ALONE).is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ALONE, "1")
        .output()
        .expect("the test binary runs again");
    let (stdout, stderr) = (stdout(&out), stderr(&out));
    eprintln!("--- {test} in a process of its own:\n{stdout}{stderr}");
    assert!(out.status.success(), "{test} failed in its own process");
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "{test} did not run in its own process: is its name right?"
    );
    false
}

/// What headless Chromium made of a page: its DOM after load, and what it
/// logged (console messages and failed loads included).
pub struct Rendered {
    pub dom: String,
    pub log: String,
}

/// Loads `url` in Debian's headless Chromium with every network request
/// other than loopback made to fail, saves a screenshot to
/// `target/test-artifacts/<shot>.png`, and returns the rendered DOM.
pub fn chromium(url: &str, shot: &str) -> Rendered {
    let bin = require_binary("chromium", "chromium");
    let artifacts = root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let run = |extra: &[String]| {
        let mut cmd = std::process::Command::new(&bin);
        cmd.args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            // Nothing may be fetched from the network: names resolve to
            // nothing, and a proxy that refuses takes what is left.
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            "--proxy-server=127.0.0.1:9",
            "--proxy-bypass-list=127.0.0.1",
            "--window-size=1280,2400",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url);
        cmd.output().expect("chromium runs")
    };
    let dom = run(&["--dump-dom".into()]);
    assert!(
        dom.status.success(),
        "chromium --dump-dom {url}: {}",
        stderr(&dom)
    );
    let png = artifacts.join(format!("{shot}.png"));
    let shot_run = run(&[format!("--screenshot={}", png.display())]);
    assert!(shot_run.status.success(), "chromium --screenshot {url}");
    assert!(png.exists(), "a screenshot at {}", png.display());
    Rendered {
        dom: stdout(&dom),
        log: stderr(&dom),
    }
}

/// The attributes of every element `<tag ...>` in a DOM, in document order.
pub fn elements(dom: &str, tag: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let open = format!("<{tag} ");
    let mut out = Vec::new();
    let mut rest = dom;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let end = after.find('>').unwrap_or(after.len());
        let mut attrs = std::collections::BTreeMap::new();
        let mut a = &after[..end];
        while let Some(eq) = a.find("=\"") {
            let name = a[..eq].trim().rsplit(' ').next().unwrap_or("").to_owned();
            let v = &a[eq + 2..];
            let close = v.find('"').unwrap_or(v.len());
            attrs.insert(name, unescape(&v[..close]));
            a = &v[(close + 1).min(v.len())..];
        }
        out.push(attrs);
        rest = &after[end..];
    }
    out
}

/// An attribute's text with the entities an HTML serializer writes decoded.
pub fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}
