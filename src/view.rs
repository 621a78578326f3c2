//! The drift views a person reads: an index of models and a page per model
//! with each distribution's baseline and window shares side by side, drawn
//! as server-rendered HTML and SVG.
//!
//! This module owns how drift looks. The daemon serves it (`GET /`, `GET
//! /model/<name>`) and `driftd replay --html` writes it into one file; both
//! draw through the same functions, so the page and the report cannot tell
//! different stories. Nothing here fetches anything: styles are inline, no
//! script is needed (the daemon's page refreshes itself with a meta tag),
//! and a report opens from disk with the network unplugged.
//!
//! What may appear is what the API already shows: model, feature and metric
//! names, scores, thresholds, shares, and bin labels (numeric edges, a
//! baseline's categories, `#k` for a hashed bucket). Every text is escaped.

use std::fmt::Write as _;

use crate::engine::detect::State;
use crate::engine::experiment::ExperimentReport;
use crate::engine::health::HealthReport;
use crate::engine::quality::QualityReport;
use crate::engine::time::rfc3339;
use crate::engine::{FeatureReport, ModelReport, MovedBin, VerdictReport, WindowReport};

/// Models per page of the index.
pub const PAGE_SIZE: usize = 50;

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a path segment or query value (a model name in a link;
/// RFC 3986 unreserved characters kept).
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse}td,th{padding:2px 8px;text-align:left;border-bottom:1px solid #ddd}\
.firing{color:#b00020;font-weight:bold}.pending{color:#b26a00;font-weight:bold}.ok{color:#2e7d32}\
section.dist{border:1px solid #ccc;border-radius:4px;padding:8px;margin:10px 0}\
section.dist[data-state=firing]{border-color:#b00020}section.dist[data-state=pending]{border-color:#b26a00}\
rect.baseline{fill:#9e9e9e}rect.window{fill:#1565c0}rect.window.moved{fill:#b00020;stroke:#b00020}\
span.spark{display:inline-block;vertical-align:top;margin:4px 24px 4px 0}svg.spark{display:block}\
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px}\
nav a{margin-right:8px}small{color:#666}";

/// The document around a body: title, inline style, and (for the daemon)
/// a refresh every `refresh_s` seconds.
pub fn document(title: &str, refresh_s: Option<u32>, body: &str) -> String {
    let refresh = refresh_s
        .map(|s| format!("<meta http-equiv=\"refresh\" content=\"{s}\">"))
        .unwrap_or_default();
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}\
<meta name=\"viewport\" content=\"width=device-width\"><title>{}</title><style>{STYLE}</style></head>\
<body>{body}</body></html>",
        esc(title)
    )
}

/// How bad a state is, for ordering: firing, pending, then the rest.
fn rank(s: State) -> u8 {
    match s {
        State::Firing => 0,
        State::Pending => 1,
        _ => 2,
    }
}

fn state_class(s: State) -> &'static str {
    match s {
        State::Firing => "firing",
        State::Pending => "pending",
        _ => "ok",
    }
}

/// A model's states: (firing, pending) distributions, over its window,
/// its latency window and its arms.
fn counts(m: &ModelReport) -> (usize, usize) {
    let windows = std::iter::once(&m.all)
        .chain(m.latency.iter())
        .chain(m.arms.iter().map(|(_, w)| w));
    let mut c = (0, 0);
    for w in windows {
        for f in w.distributions() {
            match f.state {
                State::Firing => c.0 += 1,
                State::Pending => c.1 += 1,
                _ => {}
            }
        }
    }
    c
}

/// Models in the order a person should read them: most firing first, then
/// most pending, then by name.
pub fn ordered<'a>(models: &'a [ModelReport], filter: Option<&str>) -> Vec<&'a ModelReport> {
    let mut v: Vec<(&ModelReport, (usize, usize))> = models
        .iter()
        .filter(|m| filter.is_none_or(|f| m.model.contains(f)))
        .map(|m| (m, counts(m)))
        .collect();
    v.sort_by(|(a, ca), (b, cb)| {
        cb.0.cmp(&ca.0)
            .then(cb.1.cmp(&ca.1))
            .then(a.model.cmp(&b.model))
    });
    v.into_iter().map(|(m, _)| m).collect()
}

/// Where an index row links: the daemon's page of the model, or an anchor
/// in a report file.
pub enum Links {
    Pages,
    Anchors,
}

impl Links {
    fn to(&self, model: &str) -> String {
        match self {
            Links::Pages => format!("/model/{}", urlencode(model)),
            Links::Anchors => format!("#model-{}", urlencode(model)),
        }
    }
}

/// The index: a row per model, what fires first, `PAGE_SIZE` a page, with
/// a filter on the name (the daemon's form; a report lists every model).
pub fn index(
    models: &[ModelReport],
    filter: Option<&str>,
    page: usize,
    links: &Links,
    out: &mut String,
) {
    let all = ordered(models, filter);
    let pages = all.len().div_ceil(PAGE_SIZE).max(1);
    let page = page.min(pages - 1);
    let shown: &[&ModelReport] = match links {
        Links::Pages => &all[page * PAGE_SIZE..all.len().min((page + 1) * PAGE_SIZE)],
        Links::Anchors => &all,
    };
    if let Links::Pages = links {
        let _ = write!(
            out,
            "<form method=\"get\" action=\"/\"><input name=\"q\" value=\"{}\" placeholder=\"model name contains\"> <button>filter</button></form>",
            esc(filter.unwrap_or(""))
        );
    }
    let _ = write!(
        out,
        "<p>{} models{}</p><table id=\"models\"><tr><th>model</th><th>state</th><th>firing</th><th>pending</th><th>events</th><th>baseline</th></tr>",
        all.len(),
        if filter.is_some() { " matching" } else { "" }
    );
    for m in shown {
        let (firing, pending) = counts(m);
        let state = if firing > 0 {
            State::Firing
        } else if pending > 0 {
            State::Pending
        } else {
            State::Ok
        };
        let _ = write!(
            out,
            "<tr class=\"model\" data-model=\"{name}\"><td><a href=\"{href}\">{name}</a></td><td class=\"{c}\">{c}</td><td>{firing}</td><td>{pending}</td><td>{}</td><td><small>{}</small></td></tr>",
            m.events,
            esc(&m.baseline_version),
            name = esc(&m.model),
            href = links.to(&m.model),
            c = state_class(state),
        );
    }
    out.push_str("</table>");
    if let (Links::Pages, true) = (links, pages > 1) {
        out.push_str("<nav>");
        let q = filter
            .map(|f| format!("&q={}", urlencode(f)))
            .unwrap_or_default();
        for p in 0..pages {
            if p == page {
                let _ = write!(out, "<b>{}</b> ", p + 1);
            } else {
                let _ = write!(out, "<a href=\"/?page={p}{q}\">{}</a>", p + 1);
            }
        }
        out.push_str("</nav>");
    }
}

/// What the model page shows beside its windows.
#[derive(Clone, Copy)]
pub struct Beside<'a> {
    pub health: Option<&'a HealthReport>,
    pub experiments: &'a ExperimentReport,
    /// Every (model, arm)'s quality; the model's are picked out.
    pub quality: &'a [QualityReport],
}

/// One model: its health and quality, then every window's distributions,
/// drifted first.
pub fn model(m: &ModelReport, beside: Beside<'_>, out: &mut String) {
    let (health, experiments) = (beside.health, beside.experiments);
    let _ = write!(
        out,
        "<article class=\"model\" id=\"model-{}\" data-model=\"{}\"><h2>{}</h2><p>baseline {} · {} events · window {}</p>",
        urlencode(&m.model),
        esc(&m.model),
        esc(&m.model),
        esc(&m.baseline_version),
        m.events,
        span(&m.all)
    );
    if let Some(h) = health {
        health_table(h, out);
    }
    arms_table(&m.model, experiments, out);
    quality_section(&m.model, beside.quality, out);
    window_section("", &m.all, out);
    if let Some(l) = &m.latency {
        window_section("latency", l, out);
    }
    for (arm, w) in &m.arms {
        window_section(&format!("arm {arm}"), w, out);
    }
    out.push_str("</article>");
}

fn span(w: &WindowReport) -> String {
    match (w.window_start_ms, w.window_end_ms) {
        (Some(a), Some(b)) => format!("{} to {}", rfc3339(a), rfc3339(b)),
        _ => "by count".into(),
    }
}

fn pct(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{:.2}%", 100.0 * v))
}

fn health_table(h: &HealthReport, out: &mut String) {
    let _ = write!(
        out,
        "<table class=\"health\"><tr><th>requests</th><th>errors</th><th>error rate</th><th>before</th></tr><tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
        h.requests,
        h.errors,
        pct(h.error_rate),
        pct(h.reference_error_rate)
    );
    if !h.latency.is_empty() {
        out.push_str("<table class=\"latency\"><tr><th>stage</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>samples</th></tr>");
        let ms = |v: Option<f64>| v.map_or("–".into(), |x| format!("{x:.1}"));
        for s in &h.latency {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&s.stage),
                ms(s.p50_ms),
                ms(s.p90_ms),
                ms(s.p99_ms),
                s.samples
            );
        }
        out.push_str("</table>");
    }
    if let Some(d) = &h.deploy {
        let _ = write!(
            out,
            "<p class=\"deploy\">deployed after {}</p>",
            esc(&d.previous)
        );
    }
}

/// Feedback per arm and each variant against the control.
fn arms_table(model: &str, x: &ExperimentReport, out: &mut String) {
    let arms: Vec<_> = x.arms.iter().filter(|a| a.model == model).collect();
    if arms.is_empty() {
        return;
    }
    out.push_str(
        "<table class=\"arms\"><tr><th>arm</th><th>predictions</th><th>feedback</th></tr>",
    );
    for a in arms {
        let rates: Vec<String> = a
            .feedback
            .iter()
            .map(|(action, n)| {
                let r = *n as f64 / a.predictions.max(1) as f64;
                format!("{} {:.2}%", esc(action), 100.0 * r)
            })
            .collect();
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(if a.arm.is_empty() { "(none)" } else { &a.arm }),
            a.predictions,
            rates.join(", ")
        );
    }
    out.push_str("</table>");
    let cmp: Vec<_> = x.comparisons.iter().filter(|c| c.model == model).collect();
    if cmp.is_empty() {
        return;
    }
    out.push_str("<table class=\"comparisons\"><tr><th>variant</th><th>control</th><th>feedback</th><th>variant rate</th><th>control rate</th><th>p-value</th><th>state</th></tr>");
    for c in cmp {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{s}\">{s}</td></tr>",
            esc(&c.variant),
            esc(&c.control),
            esc(&c.action),
            pct(c.variant_rate),
            pct(c.control_rate),
            c.p_value.map_or("–".into(), fmt),
            s = state_class(c.state),
        );
    }
    out.push_str("</table>");
}

/// Realized accuracy (from labels), the estimate (from confidences) with
/// its interval, and the reference, per arm: a table and, per row, a scale
/// that puts the three side by side.
fn quality_section(model: &str, all: &[QualityReport], out: &mut String) {
    let rows: Vec<&QualityReport> = all.iter().filter(|q| q.model == model).collect();
    if rows.is_empty() {
        return;
    }
    out.push_str("<section class=\"quality\"><h3>quality</h3><table class=\"quality\"><tr><th>arm</th><th>labelled</th><th>accuracy</th><th>newest labelled</th><th>estimated</th><th>reference</th><th></th><th>ECE</th><th>MAE / RMSE</th><th>AccuracyDrop</th><th>EstimatedAccuracyDrop</th></tr>");
    for q in &rows {
        let arm = q.arm.as_deref().unwrap_or("(model)");
        let est = q.estimate.map_or("–".into(), |e| {
            format!(
                "{} [{}, {}]{}",
                pct(Some(e.accuracy)),
                pct(Some(e.lower)),
                pct(Some(e.upper)),
                if e.calibrated {
                    ""
                } else {
                    " <small>uncalibrated</small>"
                }
            )
        });
        let reference = q.reference.map_or("–".into(), |r| {
            format!(
                "{} realized · {} estimated",
                pct(r.accuracy),
                pct(r.estimated)
            )
        });
        let ece = format!(
            "{} (ref {})",
            q.ece.map_or("–".into(), fmt),
            q.reference.and_then(|r| r.ece).map_or("–".into(), fmt)
        );
        let err = match (q.mae, q.rmse) {
            (Some(a), Some(b)) => format!("{} / {}", fmt(a), fmt(b)),
            _ => "–".into(),
        };
        let _ = write!(
            out,
            "<tr data-arm=\"{}\"><td>{}</td><td>{} of {}</td><td class=\"accuracy\">{}</td><td>{}</td><td class=\"estimate\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{a}\">{a}</td><td class=\"{e}\">{e}</td></tr>",
            esc(q.arm.as_deref().unwrap_or("")),
            esc(arm),
            q.labelled,
            q.predictions,
            pct(q.accuracy),
            q.recent.map_or("–".into(), |r| format!("{} of {}", pct(Some(r.accuracy)), r.labelled)),
            est,
            reference,
            quality_scale(q),
            ece,
            err,
            a = state_class(q.accuracy_drop),
            e = state_class(q.estimated_accuracy_drop),
        );
    }
    out.push_str("</table>");
    for q in rows.iter().filter(|q| !q.classes.is_empty()) {
        let _ = write!(
            out,
            "<table class=\"classes\"><caption>per class{}</caption><tr><th>class</th><th>support</th><th>precision</th><th>recall</th></tr>",
            q.arm.as_deref().map(|a| format!(", arm {}", esc(a))).unwrap_or_default()
        );
        for c in &q.classes {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&c.class),
                c.support,
                pct(c.precision),
                pct(c.recall)
            );
        }
        out.push_str("</table>");
    }
    out.push_str("</section>");
}

/// A 160×16 scale of accuracy: the reference as a line, the estimate's
/// interval as a bar with its point, the realized accuracy as a dot.
fn quality_scale(q: &QualityReport) -> String {
    let r = q.reference;
    let values: Vec<f64> = [
        r.and_then(|r| r.accuracy),
        r.and_then(|r| r.estimated),
        q.accuracy,
        q.estimate.map(|e| e.lower),
        q.estimate.map(|e| e.upper),
    ]
    .into_iter()
    .flatten()
    .collect();
    if values.is_empty() {
        return String::new();
    }
    let lo = values.iter().cloned().fold(1.0, f64::min) - 0.02;
    let hi = values.iter().cloned().fold(0.0, f64::max) + 0.02;
    let x = |v: f64| 4.0 + 152.0 * (v - lo) / (hi - lo).max(1e-9);
    let mut svg = format!(
        "<svg class=\"qscale\" width=\"160\" height=\"16\" viewBox=\"0 0 160 16\"><title>{} to {}</title>",
        pct(Some(lo.max(0.0))),
        pct(Some(hi.min(1.0)))
    );
    if let Some(e) = q.estimate {
        let _ = write!(
            svg,
            "<rect class=\"interval\" x=\"{:.1}\" y=\"5\" width=\"{:.1}\" height=\"6\" fill=\"#9ecae1\"/><line x1=\"{e:.1}\" x2=\"{e:.1}\" y1=\"3\" y2=\"13\" stroke=\"#08519c\" stroke-width=\"2\"/>",
            x(e.lower),
            (x(e.upper) - x(e.lower)).max(1.0),
            e = x(e.accuracy)
        );
    }
    if let Some(a) = r.and_then(|r| r.estimated.or(r.accuracy)) {
        let _ = write!(
            svg,
            "<line class=\"reference\" x1=\"{a:.1}\" x2=\"{a:.1}\" y1=\"0\" y2=\"16\" stroke=\"#333\" stroke-dasharray=\"2,2\"/>",
            a = x(a)
        );
    }
    if let Some(a) = q.accuracy {
        let _ = write!(
            svg,
            "<circle class=\"realized\" cx=\"{:.1}\" cy=\"8\" r=\"3.5\" fill=\"#d62728\"/>",
            x(a)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Each kept score over the last day as a line, with the thresholds in
/// force dashed: one sparkline per metric of the distribution's history.
fn sparklines(f: &FeatureReport, out: &mut String) {
    out.push_str("<div>");
    for (metric, p) in &f.score_history.0 {
        let rule = f.verdicts.iter().find(|v| v.metric == *metric);
        out.push_str("<span class=\"spark\">");
        sparkline(metric.name(), p, rule, out);
        out.push_str("</span>");
    }
    out.push_str("</div>");
}

fn sparkline(name: &str, p: &[(i64, f32)], rule: Option<&VerdictReport>, out: &mut String) {
    if p.len() < 2 {
        return;
    }
    let (w, h) = (240.0, 40.0);
    let top = p
        .iter()
        .map(|(_, v)| f64::from(*v))
        .chain(rule.map(|v| v.critical.max(v.warning)))
        .fold(1e-9, f64::max);
    let (t0, t1) = (p[0].0, p[p.len() - 1].0.max(p[0].0 + 1));
    let x = |t: i64| (t - t0) as f64 / (t1 - t0) as f64 * w;
    let y = |v: f64| h - (v / top).clamp(0.0, 1.0) * h;
    let pts: Vec<String> = p
        .iter()
        .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(f64::from(*v))))
        .collect();
    let _ = write!(
        out,
        "<svg class=\"spark\" data-metric=\"{name}\" data-points=\"{}\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{name} since {}\">",
        p.len(),
        rfc3339(t0)
    );
    if let Some(v) = rule {
        for (t, color) in [(v.warning, "#b26a00"), (v.critical, "#b00020")] {
            let _ = write!(
                out,
                "<line x1=\"0\" x2=\"{w}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"{color}\" stroke-dasharray=\"3,3\"/>",
                y = y(t)
            );
        }
    }
    let _ = write!(
        out,
        "<polyline fill=\"none\" stroke=\"#1565c0\" stroke-width=\"1.5\" points=\"{}\"/></svg><small>{name} since {}{}</small>",
        pts.join(" "),
        rfc3339(t0),
        if rule.is_some() { "<br>dashed: the warning and critical thresholds" } else { "" }
    );
}

/// A window's distributions, firing first, then pending, then by PSI.
fn window_section(title: &str, w: &WindowReport, out: &mut String) {
    let mut dists: Vec<&FeatureReport> = w.distributions().collect();
    if dists.is_empty() {
        return;
    }
    let psi = |f: &FeatureReport| f.metrics.get("psi").unwrap_or(0.0);
    dists.sort_by(|a, b| {
        rank(a.state)
            .cmp(&rank(b.state))
            .then(psi(b).total_cmp(&psi(a)))
            .then(a.name.cmp(&b.name))
    });
    if !title.is_empty() {
        let _ = write!(
            out,
            "<h3>{} <small>{} events</small></h3>",
            esc(title),
            w.samples
        );
    }
    for f in dists {
        distribution(title, f, out);
    }
}

const SCORES: [&str; 7] = [
    "psi",
    "js_distance",
    "hellinger",
    "wasserstein",
    "ks",
    "chi2_p",
    "unseen_share",
];

/// One distribution: state, scores with their thresholds, and the bars.
fn distribution(window: &str, f: &FeatureReport, out: &mut String) {
    let c = state_class(f.state);
    let _ = write!(
        out,
        "<section class=\"dist\" data-feature=\"{}\" data-state=\"{c}\"><h4>{} <small>{}</small> <span class=\"{c}\">{c}</span></h4><table class=\"scores\"><tr>",
        esc(&f.name),
        esc(&f.name),
        f.kind
    );
    for s in SCORES {
        let _ = write!(out, "<th>{s}</th>");
    }
    out.push_str("</tr><tr>");
    for s in SCORES {
        let v = f.metrics.get(s).map_or("–".into(), |x| format!("{x:.4}"));
        let rule = f.verdicts.iter().find(|v| v.metric.name() == s);
        let t = rule
            .map(|r| {
                format!(
                    " <small>warn {} crit {}</small>",
                    fmt(r.warning),
                    fmt(r.critical)
                )
            })
            .unwrap_or_default();
        let cls = rule.map_or("", |r| state_class(r.state));
        let _ = write!(out, "<td class=\"{cls}\" data-score=\"{s}\">{v}{t}</td>");
    }
    out.push_str("</tr></table>");
    sparklines(f, out);
    // The bins that moved, while the distribution is pending or firing: at
    // ok they are the noise of any two samples.
    let moved = if f.state == State::Ok {
        &[][..]
    } else {
        &f.moved[..]
    };
    if !moved.is_empty() {
        out.push_str("<p class=\"moved\">moved most: ");
        let parts: Vec<String> = moved
            .iter()
            .map(|m| {
                format!(
                    "<b>{}</b> {:.1}% → {:.1}%",
                    esc(&m.bin),
                    100.0 * m.baseline_share,
                    100.0 * m.window_share
                )
            })
            .collect();
        out.push_str(&parts.join("; "));
        out.push_str("</p>");
    }
    bars(window, f, moved, out);
    out.push_str("</section>");
}

fn fmt(x: f64) -> String {
    if x.abs() >= 0.01 || x == 0.0 {
        format!("{x:.3}")
    } else {
        format!("{x:.1e}")
    }
}

/// Chart geometry: bar area height and a bin's width, in px.
const CHART_H: f64 = 120.0;
const BIN_W: f64 = 28.0;

/// The baseline's share (grey) and the window's (blue; red where the bin
/// moved most) of every bin, side by side, on one scale. Each bar carries
/// its share in `data-share` and is `share / max × CHART_H` px high; its
/// distribution and window (`""`, `latency`, `arm A`) in `data-feature` and
/// `data-window`.
fn bars(window: &str, f: &FeatureReport, moved_bins: &[MovedBin], out: &mut String) {
    if f.bins.is_empty() {
        return;
    }
    let total = |v: &[u64]| v.iter().sum::<u64>().max(1) as f64;
    let (tb, tw) = (total(&f.baseline_counts), total(&f.window_counts));
    let share = |v: &[u64], i: usize, t: f64| v.get(i).map_or(0.0, |c| *c as f64 / t);
    let max = (0..f.bins.len())
        .map(|i| share(&f.baseline_counts, i, tb).max(share(&f.window_counts, i, tw)))
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let w = f.bins.len() as f64 * BIN_W + 10.0;
    let _ = write!(
        out,
        "<div class=\"legend\"><span style=\"background:#9e9e9e\"></span>baseline<span style=\"background:#1565c0\"></span>window<span style=\"background:#b00020\"></span>moved most</div>\
<svg class=\"bars\" width=\"{w}\" height=\"{}\" viewBox=\"0 0 {w} {}\" role=\"img\" aria-label=\"{} shares\">",
        CHART_H + 90.0,
        CHART_H + 90.0,
        esc(&f.name)
    );
    for (i, label) in f.bins.iter().enumerate() {
        let label = label
            .as_str()
            .map_or_else(|| label.to_string(), str::to_owned);
        let moved = moved_bins.iter().any(|m| m.bin == label);
        let x = 5.0 + i as f64 * BIN_W;
        for (j, (cls, s)) in [
            ("baseline", share(&f.baseline_counts, i, tb)),
            ("window", share(&f.window_counts, i, tw)),
        ]
        .into_iter()
        .enumerate()
        {
            let h = s / max * CHART_H;
            let extra = if moved && cls == "window" {
                " moved"
            } else {
                ""
            };
            let _ = write!(
                out,
                "<rect class=\"{cls}{extra}\" data-feature=\"{}\" data-window=\"{}\" data-bin=\"{}\" data-share=\"{s:.6}\" x=\"{:.1}\" y=\"{:.2}\" width=\"11\" height=\"{h:.2}\"><title>{} {cls} {:.2}%</title></rect>",
                esc(&f.name),
                esc(window),
                esc(&label),
                x + j as f64 * 12.0,
                CHART_H - h,
                esc(&label),
                100.0 * s
            );
        }
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" transform=\"rotate(60 {:.1} {:.1})\">{}</text>",
            x + 4.0,
            CHART_H + 12.0,
            x + 4.0,
            CHART_H + 12.0,
            esc(&truncate(&label, 16))
        );
    }
    out.push_str("</svg>");
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_links_are_encoded() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(Links::Pages.to("a b/c"), "/model/a%20b%2Fc");
        assert_eq!(Links::Anchors.to("m"), "#model-m");
        assert_eq!(truncate("abcdef", 4), "abc…");
    }

    fn model(name: &str, state: State) -> ModelReport {
        let f = FeatureReport {
            name: "x".into(),
            kind: "numeric",
            bins: Vec::new(),
            baseline_counts: Vec::new(),
            window_counts: Vec::new(),
            moved: Vec::new(),
            score_history: Default::default(),
            metrics: crate::engine::ScoreMap(None),
            verdicts: Vec::new(),
            state,
        };
        ModelReport {
            model: name.into(),
            baseline_version: "v".into(),
            events: 1,
            all: WindowReport {
                samples: 1,
                window_start_ms: None,
                window_end_ms: None,
                late_events: 0,
                invalid_values: 0,
                features: vec![f],
                prediction: None,
                confidence: None,
            },
            arms: Vec::new(),
            latency: None,
            arm_divergence: Vec::new(),
        }
    }

    fn rows(html: &str) -> Vec<&str> {
        html.split("data-model=\"")
            .skip(1)
            .map(|r| &r[..r.find('"').unwrap()])
            .collect()
    }

    /// A thousand models: what fires first, then what is pending, 50 a
    /// page, every model on exactly one page, and the filter narrows.
    #[test]
    fn the_index_pages_a_thousand_models_firing_first() {
        let models: Vec<ModelReport> = (0..1000)
            .map(|i| {
                let state = match i % 100 {
                    7 => State::Firing,
                    8 | 9 => State::Pending,
                    _ => State::Ok,
                };
                model(&format!("model-{i:04}"), state)
            })
            .collect();
        let mut seen = Vec::new();
        for page in 0..20 {
            let mut out = String::new();
            index(&models, None, page, &Links::Pages, &mut out);
            let r = rows(&out);
            assert_eq!(r.len(), PAGE_SIZE, "page {page}");
            if page == 0 {
                assert!(r[..10].iter().all(|m| m.ends_with("07")), "{r:?}");
                assert!(r[10..30]
                    .iter()
                    .all(|m| m.ends_with("08") || m.ends_with("09")));
                assert!(out.contains("href=\"/?page=19\""), "links to the last page");
            }
            seen.extend(r.iter().map(|m| m.to_string()));
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 1000);
        // Past the end: the last page.
        let mut out = String::new();
        index(&models, None, 99, &Links::Pages, &mut out);
        assert_eq!(rows(&out).len(), PAGE_SIZE);
        let mut out = String::new();
        index(&models, Some("model-01"), 0, &Links::Pages, &mut out);
        assert_eq!(rows(&out).len(), 50);
        assert!(out.contains("100 models matching"), "{out}");
        // A report lists every model, each an anchor.
        let mut out = String::new();
        index(&models, None, 0, &Links::Anchors, &mut out);
        assert_eq!(rows(&out).len(), 1000);
        assert!(out.contains("href=\"#model-model-0007\""));
    }
}
