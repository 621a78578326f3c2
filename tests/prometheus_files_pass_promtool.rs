//! The deployment files under `config/` are valid for the tools that read
//! them and agree with what driftd exports: the Prometheus configuration,
//! rules and rule unit tests pass `promtool`; the Alertmanager configuration
//! passes `amtool` and routes by severity; the Grafana dashboard is JSON that
//! queries only metrics driftd exports, in valid PromQL; the PrometheusRule
//! carries the same rules as `driftd-rules.yml`; the Kubernetes manifests are
//! hardened, probe the right routes, and their driftd.toml with their
//! environment passes `driftd check-config`.
//!
//! A missing `promtool` or `amtool` fails the test with the Debian package
//! to install (`prometheus`, `prometheus-alertmanager`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::require_binary;

/// Every series driftd exports (README "Metrics", and the alert metrics).
const METRICS: &[&str] = &[
    "driftd_feature_drift",
    "driftd_prediction_drift",
    "driftd_drift_state",
    "driftd_drift_threshold",
    "driftd_unseen_share",
    "driftd_window_samples",
    "driftd_events_total",
    "driftd_events_rejected_total",
    "driftd_events_skipped_total",
    "driftd_late_events_total",
    "driftd_kafka_consumer_lag",
    "driftd_kafka_assigned_partitions",
    "driftd_kafka_messages_total",
    "driftd_evaluation_duration_seconds",
    "driftd_verdict_transitions_total",
    "driftd_checkpoints_total",
    "driftd_checkpoint_last_success_timestamp_seconds",
    "driftd_baseline_info",
    "driftd_build_info",
    "driftd_alerts_sent_total",
    "driftd_alerts_dropped_total",
    "driftd_alerts_firing",
    "driftd_baseline_reloads_total",
    "driftd_records_total",
    "driftd_error_rate",
    "driftd_error_rate_reference",
    "driftd_requests_total",
    "driftd_errors_total",
    "driftd_model_first_seen_timestamp_seconds",
    "driftd_health_state",
    "driftd_latency_seconds",
    "driftd_latency_window_samples",
    "driftd_arm_divergence",
    "driftd_arm_window_predictions",
    "driftd_feedback_rate",
    "driftd_arm_feedback_p_value",
    "driftd_feedback_join_total",
    "driftd_feedback_join_waiting",
    "driftd_batch_stat",
    "driftd_batch_stat_shift",
    "driftd_batch_avg_confidence",
    "driftd_batches_total",
    "driftd_health_refused_total",
    "driftd_memory_refused_total",
    "driftd_memory_reserved_bytes",
    "driftd_memory_limit_bytes",
    "driftd_checkpoint_discarded_total",
    "driftd_quality_labelled_predictions",
    "driftd_quality_label_coverage_ratio",
    "driftd_quality_accuracy_ratio",
    "driftd_quality_recent_accuracy_ratio",
    "driftd_quality_precision_ratio",
    "driftd_quality_recall_ratio",
    "driftd_quality_mean_absolute_error",
    "driftd_quality_root_mean_squared_error",
    "driftd_quality_calibration_error_ratio",
    "driftd_quality_estimated_accuracy_ratio",
    "driftd_quality_reference_accuracy_ratio",
    "driftd_quality_estimate_calibrated",
    "driftd_quality_state",
    "driftd_label_join_total",
    "driftd_label_join_waiting",
    "driftd_label_join_sample_ratio",
];

/// Histograms: their series carry these suffixes.
const HISTOGRAMS: &[&str] = &["driftd_evaluation_duration_seconds"];

/// The alerts the brief of driftd-rules.yml promises.
const REQUIRED_ALERTS: &[&str] = &[
    "DriftdFeatureDriftFiring",
    "DriftdPredictionDrift",
    "DriftdDown",
    "DriftdNotConsuming",
    "DriftdConsumerLagHigh",
    "DriftdRejectedEventsHigh",
    "DriftdCheckpointStale",
    "DriftdAlertsDropped",
    "DriftdHealthCondition",
    "DriftdErrorSpikeAfterDeploy",
    "DriftdMemoryBudgetFull",
    "DriftdCheckpointDiscarded",
    "DriftdPositionPastEnd",
];

fn config_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(rel)
}

fn read(rel: &str) -> String {
    let p = config_path(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

fn promtool() -> PathBuf {
    require_binary("promtool", "prometheus")
}

fn amtool() -> PathBuf {
    require_binary("amtool", "prometheus-alertmanager")
}

/// Runs `bin args`, fails the test with its output unless it succeeds, and
/// returns stdout followed by stderr.
fn run(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "`{} {}` failed ({}):\n{text}",
        bin.display(),
        args.join(" "),
        out.status
    );
    text
}

fn path_arg(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The `driftd_[a-z_]+` tokens of a text, as a regular expression finds them.
fn metric_tokens(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("driftd_") {
        let tail = &rest[i + "driftd_".len()..];
        let n = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        if n == 0 {
            rest = tail;
            continue;
        }
        let end = i + "driftd_".len() + n;
        out.push(&rest[i..end]);
        rest = &rest[end..];
    }
    out
}

fn is_exported(token: &str) -> bool {
    METRICS.contains(&token)
        || HISTOGRAMS.iter().any(|h| {
            token
                .strip_prefix(h)
                .is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))
        })
}

/// The values of `key:` lines (`- alert: X`, `record: Y`), in file order.
fn yaml_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.trim_start().trim_start_matches("- "))
        .filter_map(|l| l.strip_prefix(key))
        .filter_map(|l| l.strip_prefix(':'))
        .map(|v| v.trim().trim_matches('"').trim_matches('\'').to_owned())
        .collect()
}

fn sorted_unique(names: Vec<String>, what: &str) -> BTreeSet<String> {
    let set: BTreeSet<String> = names.iter().cloned().collect();
    assert_eq!(set.len(), names.len(), "duplicate {what} in {names:?}");
    set
}

/// The block under `spec:` of a single-document manifest, indented two
/// spaces less: the PrometheusRule's rule file.
fn spec_block(manifest: &str) -> String {
    let mut lines = manifest.lines().skip_while(|l| *l != "spec:");
    assert_eq!(lines.next(), Some("spec:"), "no top-level `spec:`");
    let mut out = String::new();
    for l in lines {
        if l.trim().is_empty() {
            out.push('\n');
            continue;
        }
        let body = l
            .strip_prefix("  ")
            .unwrap_or_else(|| panic!("line outside spec after `spec:`: {l:?}"));
        out.push_str(body);
        out.push('\n');
    }
    out
}

#[test]
fn prometheus_config_passes_promtool_check_config() {
    let out = run(
        &promtool(),
        &[
            "check",
            "config",
            path_arg(&config_path("prometheus/prometheus.yml")),
        ],
    );
    assert!(out.contains("SUCCESS"), "{out}");
    // The scrape job the rules select, and the rule file, are there.
    let text = read("prometheus/prometheus.yml");
    assert!(text.contains("job_name: driftd\n"), "{text}");
    assert!(text.contains("localhost:9400"), "{text}");
    assert!(text.contains("- driftd-rules.yml"), "{text}");
}

#[test]
fn rules_pass_promtool_check_rules_and_use_exported_metrics() {
    let out = run(
        &promtool(),
        &[
            "check",
            "rules",
            path_arg(&config_path("prometheus/driftd-rules.yml")),
        ],
    );
    assert!(out.contains("SUCCESS"), "{out}");

    let text = read("prometheus/driftd-rules.yml");
    let alerts = sorted_unique(yaml_values(&text, "alert"), "alert names");
    for a in REQUIRED_ALERTS {
        assert!(alerts.contains(*a), "driftd-rules.yml lacks alert {a}");
    }
    // A misspelt metric would make a rule silently never fire. Recording
    // rule names (level:metric:operation) are the only other driftd_ tokens.
    let unknown: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("- record:"))
        .flat_map(metric_tokens)
        .filter(|t| !is_exported(t))
        .collect();
    assert!(
        unknown.is_empty(),
        "driftd-rules.yml mentions series driftd does not export: {unknown:?}"
    );
    // Every alert has a severity and the three annotations.
    let blocks: Vec<&str> = text.split("- alert:").skip(1).collect();
    assert_eq!(blocks.len(), alerts.len());
    for b in blocks {
        let name = b.lines().next().unwrap_or_default().trim();
        for key in [
            "severity:",
            "summary:",
            "description:",
            "runbook:",
            "$labels",
            "$value",
        ] {
            assert!(b.contains(key), "alert {name} has no {key}");
        }
    }
}

#[test]
fn rule_unit_tests_pass_promtool_test_rules() {
    let test_file = config_path("prometheus/driftd-rules.test.yml");
    let out = run(&promtool(), &["test", "rules", path_arg(&test_file)]);
    assert!(out.contains("SUCCESS"), "{out}");

    // The tests cover at least four alerts both ways, and recording rules.
    let text = read("prometheus/driftd-rules.test.yml");
    let mut firing: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    let mut current: Option<String> = None;
    for l in text.lines() {
        let t = l.trim();
        if let Some(name) = t.strip_prefix("alertname:") {
            current = Some(name.trim().to_owned());
        } else if let Some(rest) = t.strip_prefix("exp_alerts:") {
            let name = current.take().expect("exp_alerts after an alertname");
            let e = firing.entry(name).or_default();
            if rest.trim() == "[]" {
                e.1 = true;
            } else {
                e.0 = true;
            }
        }
    }
    let both: Vec<&String> = firing
        .iter()
        .filter(|(_, (fires, silent))| *fires && *silent)
        .map(|(n, _)| n)
        .collect();
    assert!(
        both.len() >= 4,
        "want >= 4 alerts tested firing and not firing, got {both:?}"
    );
    let records = yaml_values(&read("prometheus/driftd-rules.yml"), "record");
    let tested = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- expr:"))
        .filter(|e| records.iter().any(|r| e.contains(r.as_str())))
        .count();
    assert!(
        tested >= 1,
        "no promql_expr_test exercises a recording rule"
    );
}

#[test]
fn alertmanager_config_passes_amtool_and_routes_by_severity() {
    let amtool = amtool();
    let file = config_path("alertmanager/alertmanager.yml");
    let out = run(&amtool, &["check-config", path_arg(&file)]);
    assert!(out.contains("SUCCESS"), "{out}");

    let config_flag = format!("--config.file={}", path_arg(&file));
    // amtool exits non-zero when the receivers differ from --verify.receivers.
    for (labels, receivers) in [
        (
            &["alertname=FeatureDrift", "severity=critical", "model=m"][..],
            "pager,chat",
        ),
        (
            &["alertname=DriftdDown", "severity=critical"][..],
            "pager,chat",
        ),
        (
            &["alertname=FeatureDrift", "severity=warning", "model=m"][..],
            "chat",
        ),
        (&["alertname=Watchdog"][..], "chat"),
    ] {
        let verify = format!("--verify.receivers={receivers}");
        let mut args = vec![
            "config",
            "routes",
            "test",
            config_flag.as_str(),
            verify.as_str(),
        ];
        args.extend_from_slice(labels);
        run(&amtool, &args);
    }

    // The grouping and inhibition the routing promises.
    let text = read("alertmanager/alertmanager.yml");
    assert!(
        text.contains("group_by: [alertname, model, feature]"),
        "{text}"
    );
    assert!(text.contains("equal: [model, feature, metric]"), "{text}");
}

/// Every panel of the dashboard, rows' nested panels included.
fn all_panels(panels: &[serde_json::Value], out: &mut Vec<serde_json::Value>) {
    for p in panels {
        out.push(p.clone());
        if let Some(inner) = p["panels"].as_array() {
            all_panels(inner, out);
        }
    }
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read("grafana/driftd-dashboard.json"))
        .unwrap_or_else(|e| panic!("driftd-dashboard.json is not JSON: {e}"))
}

/// (panel title, expr) of every query of the dashboard.
fn dashboard_exprs(d: &serde_json::Value) -> Vec<(String, String)> {
    let mut panels = Vec::new();
    all_panels(d["panels"].as_array().expect("panels"), &mut panels);
    let mut out = Vec::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or("?").to_owned();
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title:?} has a target without expr"));
            out.push((title.clone(), expr.to_owned()));
        }
    }
    out
}

#[test]
fn grafana_dashboard_queries_only_exported_metrics() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion {}",
        d["schemaVersion"]
    );

    // Datasource: the DS_PROMETHEUS variable, on every panel and query.
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable {name}"))
    };
    assert_eq!(var("DS_PROMETHEUS")["type"], "datasource");
    assert_eq!(var("DS_PROMETHEUS")["query"], "prometheus");
    for name in ["model", "arm"] {
        let q = var(name)["definition"].as_str().unwrap_or_default();
        assert!(
            q.starts_with("label_values(") && q.contains(name),
            "variable {name}: {q}"
        );
    }
    let mut panels = Vec::new();
    all_panels(d["panels"].as_array().expect("panels"), &mut panels);
    let mut ids = BTreeSet::new();
    for p in &panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id"
        );
        assert!(
            p["gridPos"]["w"].is_u64(),
            "panel {} has no gridPos",
            p["title"]
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${DS_PROMETHEUS}",
            "panel {}",
            p["title"]
        );
        for t in p["targets"].as_array().into_iter().flatten() {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{t}");
        }
    }

    let exprs = dashboard_exprs(&d);
    let mut used = BTreeSet::new();
    for (title, expr) in &exprs {
        for tok in metric_tokens(expr) {
            assert!(
                is_exported(tok),
                "panel {title:?} queries {tok}, which driftd does not export: {expr}"
            );
            used.insert(tok.to_owned());
        }
    }
    // The panels the dashboard promises.
    for m in [
        "driftd_feature_drift",
        "driftd_drift_state",
        "driftd_window_samples",
        "driftd_events_total",
        "driftd_events_rejected_total",
        "driftd_kafka_consumer_lag",
        "driftd_alerts_sent_total",
        "driftd_alerts_dropped_total",
        "driftd_evaluation_duration_seconds_bucket",
        "driftd_memory_reserved_bytes",
        "driftd_memory_limit_bytes",
        "driftd_memory_refused_total",
        "driftd_checkpoint_discarded_total",
    ] {
        assert!(used.contains(m), "no panel queries {m}");
    }
    assert!(
        exprs
            .iter()
            .any(|(_, e)| e.contains("driftd_feature_drift") && e.contains("metric=\"psi\"")),
        "no panel plots the PSI per feature"
    );
    assert!(
        exprs
            .iter()
            .any(|(_, e)| e.starts_with("histogram_quantile(0.99")),
        "no p99 of the evaluation duration"
    );
}

#[test]
fn grafana_dashboard_queries_are_valid_promql() {
    // Grafana's variables replaced by what they expand to, each query made a
    // recording rule, and the lot checked by promtool's PromQL parser.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, expr)) in dashboard_exprs(&dashboard()).iter().enumerate() {
        let e = expr
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m")
            .replace("$__range", "1h")
            .replace("$model", ".*")
            .replace("$arm", ".*");
        assert!(
            !e.contains('$'),
            "panel {title:?}: unknown variable in {expr}"
        );
        rules.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-queries.yml");
    std::fs::write(&file, rules).unwrap();
    run(&promtool(), &["check", "rules", path_arg(&file)]);
}

#[test]
fn prometheusrule_carries_the_same_rules() {
    let rules_text = read("prometheus/driftd-rules.yml");
    let manifest = read("kubernetes/prometheusrule.yaml");
    assert!(manifest.contains("kind: PrometheusRule"), "{manifest}");

    let want = sorted_unique(yaml_values(&rules_text, "alert"), "alerts");
    let got = sorted_unique(yaml_values(&manifest, "alert"), "alerts");
    assert_eq!(
        got, want,
        "prometheusrule.yaml and driftd-rules.yml disagree on alert names"
    );
    let want = sorted_unique(yaml_values(&rules_text, "record"), "records");
    let got = sorted_unique(yaml_values(&manifest, "record"), "records");
    assert_eq!(
        got, want,
        "prometheusrule.yaml and driftd-rules.yml disagree on recording rules"
    );

    // The spec is a valid rule file, and passes the same unit tests.
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("driftd-rules.yml");
    std::fs::write(&rules, spec_block(&manifest)).unwrap();
    run(&promtool(), &["check", "rules", path_arg(&rules)]);
    let tests = dir.path().join("driftd-rules.test.yml");
    std::fs::copy(config_path("prometheus/driftd-rules.test.yml"), &tests).unwrap();
    run(&promtool(), &["test", "rules", path_arg(&tests)]);
}

/// The lines of the block that starts at the first line whose trimmed text
/// is `header`, up to the next line indented as little as the header.
fn block<'a>(text: &'a str, header: &str) -> Vec<&'a str> {
    let mut lines = text.lines().skip_while(|l| l.trim() != header);
    let Some(first) = lines.next() else {
        return Vec::new();
    };
    let indent = first.len() - first.trim_start().len();
    lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
        .collect()
}

#[test]
fn kubernetes_sidecars_are_hardened_and_probed() {
    for file in ["sidecar-native.yaml", "sidecar-classic.yaml"] {
        let text = read(&format!("kubernetes/{file}"));
        for want in [
            "readOnlyRootFilesystem: true",
            "runAsNonRoot: true",
            "runAsUser: 10001",
            "allowPrivilegeEscalation: false",
            "drop: [\"ALL\"]",
            "type: RuntimeDefault",
            "path: /livez",
            "path: /readyz",
            "startupProbe:",
            "livenessProbe:",
            "readinessProbe:",
            "containerPort: 9400",
            "prometheus.io/scrape: \"true\"",
            "prometheus.io/port: \"9400\"",
            "terminationGracePeriodSeconds: 30",
            "name: DRIFTD__KAFKA__BROKERS",
            "secretKeyRef:",
            "mountPath: /etc/driftd",
            "mountPath: /var/lib/driftd/baselines",
            "mountPath: /var/lib/driftd/state",
            "cpu: 50m",
            "memory: 128Mi",
        ] {
            assert!(text.contains(want), "{file} lacks `{want}`");
        }
    }
    let native = read("kubernetes/sidecar-native.yaml");
    let init = block(&native, "initContainers:");
    assert!(
        init.iter().any(|l| l.trim() == "- name: driftd"),
        "sidecar-native.yaml: driftd is not an init container"
    );
    assert!(
        init.iter().any(|l| l.trim() == "restartPolicy: Always"),
        "sidecar-native.yaml: no `restartPolicy: Always` in initContainers"
    );
    let classic = read("kubernetes/sidecar-classic.yaml");
    assert!(
        block(&classic, "containers:")
            .iter()
            .any(|l| l.trim() == "- name: driftd"),
        "sidecar-classic.yaml: driftd is not a regular container"
    );

    let sm = read("kubernetes/servicemonitor.yaml");
    for want in [
        "kind: Service\n",
        "kind: ServiceMonitor",
        "- name: metrics",
        "port: 9400",
        "- port: metrics",
    ] {
        assert!(sm.contains(want), "servicemonitor.yaml lacks `{want}`");
    }
}

/// The ConfigMap's driftd.toml.
fn configmap_toml() -> String {
    let text = read("kubernetes/configmap.yaml");
    let lines = block(&text, "driftd.toml: |");
    assert!(!lines.is_empty(), "configmap.yaml has no driftd.toml");
    let indent = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap();
    lines
        .iter()
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The container environment of a Deployment: literal values with
/// Kubernetes' `$(VAR)` expansion, and a placeholder for values from a
/// Secret or the downward API.
fn container_env(manifest: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = manifest.lines().collect();
    let mut env: Vec<(String, String)> = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let Some(name) = l.trim().strip_prefix("- name: ") else {
            continue;
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            continue;
        }
        let next = lines[i + 1..]
            .iter()
            .map(|l| l.trim())
            .find(|l| !l.starts_with('#'))
            .unwrap_or_default();
        let value = match next.strip_prefix("value:") {
            Some(v) => {
                let mut v = v.trim().trim_matches('"').to_owned();
                for (k, val) in &env {
                    v = v.replace(&format!("$({k})"), val);
                }
                v
            }
            None => "placeholder-secret-0123456789abcdef".to_owned(),
        };
        env.push((name.to_owned(), value));
    }
    env
}

#[test]
fn kubernetes_driftd_toml_passes_check_config_with_the_deployment_env() {
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("driftd.toml");
    std::fs::write(&toml, configmap_toml()).unwrap();
    for file in ["sidecar-native.yaml", "sidecar-classic.yaml"] {
        let env = container_env(&read(&format!("kubernetes/{file}")));
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        for want in [
            "DRIFTD__KAFKA__BROKERS",
            "KAFKA_PASSWORD",
            "DRIFTD_ADMIN_TOKEN",
        ] {
            assert!(names.contains(&want), "{file}: no env {want} in {names:?}");
        }
        // Only the Deployment's environment: a DRIFTD__ variable of the
        // test run must not change the verdict.
        let out = Command::new(env!("CARGO_BIN_EXE_driftd"))
            .args(["check-config", "--config", path_arg(&toml)])
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("the driftd binary runs");
        assert!(
            out.status.success(),
            "driftd check-config on configmap.yaml's driftd.toml with {file}'s env ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
