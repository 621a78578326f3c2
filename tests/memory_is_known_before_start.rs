//! Memory is a promise made before start. `check-config` states what a
//! configuration may hold, term by term, and refuses one over
//! `limits.max_memory`; a long window gets longer panes, not more of them;
//! at run time the engine keeps within its budget, refusing (and counting)
//! what would pass it; and model ids without a baseline cost counters only.

use std::fmt::Write as _;

use crate::common::*;
use driftd::engine::baseline::Layout;
use driftd::engine::window::WindowSpec;
use driftd::engine::{Engine, EngineConfig, Outcome};

const DAY_MS: i64 = 24 * 3_600_000;
const NOW: i64 = 1_700_000_000_000;

/// A copy of the shipped config with its baselines, and `edit` applied.
fn shipped_config(dir: &std::path::Path, edit: impl Fn(String) -> String) -> std::path::PathBuf {
    let text = std::fs::read_to_string(root().join("config/driftd.toml")).unwrap();
    let baselines = samples().join("baselines");
    let text = text.replace(
        "dir = \"baselines\"",
        &format!("dir = \"{}\"", baselines.display()),
    );
    let path = dir.join("driftd.toml");
    std::fs::write(&path, edit(text)).unwrap();
    path
}

#[test]
fn check_config_states_the_memory_of_the_shipped_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = shipped_config(dir.path(), |t| t);
    let o = driftd(&["check-config", "--config", path_str(&path)]);
    let out = stdout(&o);
    assert!(o.status.success(), "{}{}", out, stderr(&o));
    assert!(out.contains("memory at most"), "{out}");
    for term in [
        "process",
        "kafka prefetch",
        "baselines",
        "drift windows",
        "arm windows",
        "health",
        "feedback join",
    ] {
        assert!(out.contains(term), "no {term:?} term in:\n{out}");
    }
    // The shipped baselines are counted, with their bins.
    let n = std::fs::read_dir(samples().join("baselines"))
        .unwrap()
        .count();
    assert!(out.contains(&format!("{n} baselines")), "{out}");
    assert!(out.contains("room for"), "{out}");
    assert!(
        !out.contains("window:"),
        "a 10-minute window is not adjusted:\n{out}"
    );
}

#[test]
fn a_day_window_gets_longer_panes_and_check_config_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = shipped_config(dir.path(), |t| {
        t.replace("length = \"10m\"", "length = \"1day\"")
    });
    let o = driftd(&["check-config", "--config", path_str(&path)]);
    let out = stdout(&o);
    assert!(o.status.success(), "{}{}", out, stderr(&o));
    assert!(
        out.contains("window: 1day in 60 panes of 24m (window.pane 30s would make 2880 panes; window.max_panes is 60)"),
        "{out}"
    );
    assert!(out.contains("× 60 panes"), "{out}");
}

#[test]
fn a_configuration_over_its_memory_limit_is_refused_naming_the_largest_terms() {
    let dir = tempfile::tempdir().unwrap();
    let path = shipped_config(dir.path(), |t| {
        let t2 = t.replace("max_memory = \"96MiB\"", "max_memory = \"32MiB\"");
        assert_ne!(t, t2, "the shipped config states limits.max_memory");
        t2
    });
    let o = driftd(&["check-config", "--config", path_str(&path)]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(64), "{}{err}", stdout(&o));
    assert!(err.contains("limits.max_memory"), "{err}");
    assert!(err.contains("but limits.max_memory is 32.0 MiB"), "{err}");
    // The largest terms are named, with what makes them.
    assert!(err.contains("process 20.0 MiB"), "{err}");
    assert!(err.contains("feedback join"), "{err}");
    assert!(err.contains("Raise limits.max_memory"), "{err}");
}

/// Baselines for `n` models of the default generator's shape.
/// Also returns one model's windows and health at their worst, and what
/// the 200 baselines themselves hold (counted against the budget too).
fn day_engine(max_memory: Option<usize>) -> (Engine, usize, usize) {
    let base = baselines(5_000);
    let per_arm = base.iter().any(|b| !b.features.is_empty());
    assert!(per_arm);
    let cfg = EngineConfig {
        window: WindowSpec::Time {
            length_ms: DAY_MS,
            pane_ms: 30_000,
        },
        max_memory,
        ..EngineConfig::default()
    };
    // Every model gets the first baseline's shape, under its own name.
    let template = &base[0];
    let models: Vec<_> = (0..200)
        .map(|i| {
            let mut b = template.clone();
            b.model = format!("m-{i:03}");
            b
        })
        .collect();
    let one = {
        let mut c = cfg.clone();
        c.align();
        let l = Layout::new(models[0].clone());
        c.model_bytes(&l) + c.health_bytes()
    };
    let held: usize = models
        .iter()
        .map(|b| Layout::new(b.clone()).heap_bytes())
        .sum();
    (Engine::new(cfg, models), one, held)
}

fn line(model: &str, t_ms: i64, x: usize) -> String {
    let mut s = String::new();
    write!(
        s,
        r#"{{"model_id":"{model}","timestamp":{},"prediction":"cat","confidence":0.8,"input_features":{{"f00":{}}}}}"#,
        t_ms / 1000,
        x % 97
    )
    .unwrap();
    s
}

#[test]
fn the_engine_keeps_within_its_budget_and_counts_what_it_refuses() {
    // Room for the baselines, and 50 models' windows and health at their
    // worst.
    let (_, one, baselines) = day_engine(None);
    let (mut e, ..) = day_engine(Some(baselines + 50 * one + one / 2));
    assert_eq!(e.memory().0, baselines, "the loaded baselines are reserved");
    assert_eq!(e.config().window.panes(), 60, "a day in 60 panes");
    for hour in 0..24 {
        for m in 0..200 {
            let t = NOW + hour * 3_600_000;
            e.ingest(line(&format!("m-{m:03}"), t, m as usize).as_bytes(), t);
        }
    }
    let (used, limit) = e.memory();
    assert!(used <= limit.unwrap(), "{used} > {limit:?}");
    // 50 models fit at their worst with their health; once health no longer
    // fits, a few more get windows alone (a window is the smaller part);
    // the rest are refused and counted.
    let tracked = e.models().count();
    assert!((50..200).contains(&tracked), "{tracked} models tracked");
    assert!(e.health.models().count() <= 50);
    assert!(e.stats.memory_refused > 0);
    // What the windows really hold stays under what was reserved for them.
    let held: usize = e.models().map(|m| m.all.window.heap_bytes()).sum();
    assert!(held <= used, "{held} > {used}");
    // A model forgotten gives its room back to the next one.
    let before = e.memory().0;
    e.expire_idle(NOW + 30 * DAY_MS, 3_600_000);
    assert_eq!(e.models().count(), 0);
    assert!(e.memory().0 < before);
    let t = NOW + 30 * DAY_MS;
    assert_eq!(
        e.ingest(line("m-199", t, 1).as_bytes(), t),
        Outcome::Counted
    );
}

#[test]
fn model_ids_without_a_baseline_cost_counters_only() {
    let (mut e, ..) = day_engine(Some(64 << 20));
    let used = e.memory().0;
    // 20,000 junk model ids, each with an error, a timing line and a
    // prediction with a request id: no window, no health state, no
    // feedback counts.
    for i in 0..20_000 {
        let t = NOW + i;
        let m = format!("junk-{i:05}");
        let lines = [
            format!(
                r#"{{"model_id":"{m}","level":"ERROR","error_type":"X","timestamp":{}}}"#,
                t / 1000
            ),
            format!(
                r#"{{"model_id":"{m}","message":"Inference timing metrics","inference_ms":12.5,"timestamp":{}}}"#,
                t / 1000
            ),
            format!(
                r#"{{"model_id":"{m}","request_id":"r{i}","prediction":"cat","timestamp":{}}}"#,
                t / 1000
            ),
        ];
        for l in &lines {
            e.ingest(l.as_bytes(), t);
        }
    }
    assert_eq!(e.models().count(), 0);
    assert_eq!(e.health.models().count(), 0);
    assert_eq!(e.memory().0, used, "nothing reserved for them");
    assert_eq!(e.stats.no_baseline, 20_000);
    // A new version of a model that has a baseline is tracked for its
    // health: its deploy is judged before it has a baseline of its own.
    let t = NOW + 30_000;
    let mut named = e.config().clone();
    named.max_memory = Some(64 << 20);
    let mut b = baselines(2_000).remove(0);
    b.model = "fraud-v1".into();
    let mut e = Engine::new(named, vec![b]);
    let v2 = r#"{"model_id":"fraud-v2","level":"ERROR","error_type":"X","timestamp":1700000030}"#;
    e.ingest(v2.as_bytes(), t);
    assert!(e.health.model("fraud-v2").is_some());
}

/// The bytes glibc's malloc has handed out and not taken back (its own
/// count, not ours), for the test below.
fn malloc_in_use() -> usize {
    // SAFETY: mallinfo2 reads the allocator's counters; no arguments.
    unsafe { libc::mallinfo2() }.uordblks
}

/// A baseline's place in the plan is what it really takes: the bins,
/// counts, names and null fits of the shipped baselines, as `Layout`
/// holds them, from a tenth under to a quarter over what malloc reports
/// retained. (Measured
/// by malloc itself, so it runs alone: other tests' threads allocate.)
#[test]
fn the_plan_counts_a_loaded_baseline_as_malloc_does() {
    if !in_a_process_of_its_own(&format!(
        "{}::the_plan_counts_a_loaded_baseline_as_malloc_does",
        test_module(module_path!())
    )) {
        return;
    }
    let dir = samples().join("baselines");
    let mut texts = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        texts.push(std::fs::read_to_string(e.unwrap().path()).unwrap());
    }
    assert!(!texts.is_empty());
    // Once unmeasured: the first parse also sets up what lives for the
    // process (thread-locals, lazily made tables).
    drop(Layout::new(serde_json::from_str(&texts[0]).unwrap()));
    let before = malloc_in_use();
    let layouts: Vec<Layout> = texts
        .iter()
        .map(|t| Layout::new(serde_json::from_str(t).expect("a shipped baseline")))
        .collect();
    let held = malloc_in_use() - before;
    let counted: usize = layouts.iter().map(Layout::heap_bytes).sum();
    let fits = layouts
        .iter()
        .flat_map(|l| &l.baseline.features)
        .filter(|f| f.null.is_some())
        .count();
    eprintln!(
        "{} baselines, {fits} fits: malloc holds {held} B, the plan counts {counted} B",
        layouts.len()
    );
    assert!(fits > 0, "the shipped baselines carry their null fits");
    // Counting high is the safe side of a promise, within reason.
    let ratio = counted as f64 / held as f64;
    assert!(
        (0.9..=1.25).contains(&ratio),
        "the plan counts {counted} B for baselines malloc holds in {held} B ({ratio:.2}x)"
    );
    drop(layouts);
}
