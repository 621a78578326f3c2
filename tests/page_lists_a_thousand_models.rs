//! The daemon's page stays usable at 1000 models: in a real browser, the
//! index shows what fires first, 50 models a page with links to every
//! page, and the filter narrows the list, all server-rendered.

use std::time::Duration;

use driftd::engine::baseline::{BaselineBuilder, Binning};
use driftd::engine::decode::{DecodeConfig, Decoded, Decoder};

use crate::common::*;

const MODELS: usize = 1000;
/// Models that get drifted traffic; they must lead the first page.
const DRIFTED: [usize; 3] = [7, 407, 907];

fn name(i: usize) -> String {
    format!("m{i:04}")
}

/// One line of model `i`; `drifted` moves `x` far past the baseline's bins.
fn line(i: usize, k: usize, t_ms: i64, drifted: bool) -> String {
    let x = if drifted {
        50.0 + (k % 10) as f64
    } else {
        (k % 10) as f64
    };
    let plan = ["gold", "silver", "bronze"][k % 3];
    format!(
        r#"{{"timestamp": {t_ms}, "model_id": "{}", "prediction": "a", "input_features": {{"x": {x}, "plan": "{plan}"}}}}"#,
        name(i)
    )
}

fn rows(dom: &str) -> Vec<String> {
    elements(dom, "tr")
        .into_iter()
        .filter_map(|a| a.get("data-model").cloned())
        .collect()
}

#[test]
fn the_index_pages_and_filters_a_thousand_models_firing_first() {
    let kafka = Kafka::new(1, 2);
    let dir = tempfile::tempdir().unwrap();

    // One reference, saved under every model's name.
    let d = Decoder::new(DecodeConfig::default());
    let mut b = BaselineBuilder::new(&name(0));
    for k in 0..2000 {
        let l = line(0, k, 1_700_000_000_000, false);
        let Decoded::Event(e) = d.decode(l.as_bytes()) else {
            panic!("a reference line is an event");
        };
        b.add(&e);
    }
    let base = b.finish(&Binning::default(), "test", 0).unwrap();
    let all: Vec<_> = (0..MODELS)
        .map(|i| {
            let mut m = base.clone();
            m.model = name(i);
            m
        })
        .collect();
    write_baselines(dir.path(), &all);

    let toml = config_toml(&kafka.brokers(), dir.path(), "thousand", "127.0.0.1:0")
        + "\n[limits]\nmax_memory = \"2GiB\"\n";
    let cfg = driftd::config::Config::from_toml(&toml, "test").unwrap_or_else(|e| panic!("{e}"));
    let daemon = Running::start(cfg);
    let addr = daemon.addr.clone();

    // Every model a line; three of them 400 drifted lines.
    let t = now_ms();
    let mut live: Vec<String> = (0..MODELS).map(|i| line(i, i, t, false)).collect();
    for i in DRIFTED {
        live.extend((0..400).map(|k| line(i, k, t + k as i64, true)));
    }
    produce_consumed(&kafka, &addr, &live, Duration::from_secs(60));
    let want: Vec<String> = DRIFTED.iter().map(|i| name(*i)).collect();
    eventually(Duration::from_secs(60), "three models firing", || {
        let (_, body) = http_get(&format!("http://{addr}/api/v1/drift"));
        let doc: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let firing: Vec<String> = doc["models"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| {
                m["features"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|f| f["state"] == "firing")
            })
            .filter_map(|m| m["model"].as_str().map(str::to_owned))
            .collect();
        match firing.len() == DRIFTED.len() {
            true => Ok(()),
            false => Err(format!(
                "firing: {firing:?}; {}",
                body.find("\"models\"")
                    .map(|i| &body[i..(i + 1500).min(body.len())])
                    .unwrap_or("no models")
            )),
        }
    });

    // The first page: the firing models first, 50 rows, a link to each of
    // the 20 pages.
    let first = chromium(&format!("http://{addr}/"), "index-1000-models");
    for bad in ["Uncaught", "Failed to load resource", "net::ERR_"] {
        assert!(
            !first.log.contains(bad),
            "{bad} on the index:\n{}",
            first.log
        );
    }
    let r = rows(&first.dom);
    assert_eq!(r.len(), 50, "{r:?}");
    assert_eq!(r[..3], want[..], "firing first: {:?}", &r[..5]);
    let pages: Vec<String> = elements(&first.dom, "a")
        .into_iter()
        .filter_map(|a| a.get("href").cloned())
        .filter(|h| h.starts_with("/?page="))
        .collect();
    assert_eq!(pages.len(), 19, "links to the 19 other pages: {pages:?}");
    assert!(first.dom.contains(&format!("{MODELS} models")), "the count");

    // Every model on exactly one page (the same server-rendered HTML the
    // browser drew above, fetched directly: twenty browsers add nothing).
    let mut seen = r.clone();
    for p in 1..20 {
        let (status, html) = http_get(&format!("http://{addr}/?page={p}"));
        assert_eq!(status, 200);
        let r = rows(&html);
        assert_eq!(r.len(), 50, "page {p}");
        seen.extend(r);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), MODELS, "every model once");

    // The filter: `m09` matches m0900..m0999; the firing one leads.
    let filtered = chromium(&format!("http://{addr}/?q=m09"), "index-1000-models-filter");
    let r = rows(&filtered.dom);
    assert_eq!(r.len(), 50);
    assert_eq!(r[0], name(907));
    assert!(r.iter().all(|m| m.starts_with("m09")), "{r:?}");
    assert!(
        filtered.dom.contains("100 models matching"),
        "{}",
        filtered.dom
    );
    // The page is bounded: 50 rows whatever the number of models.
    assert!(first.dom.len() < 64 << 10, "{} bytes", first.dom.len());

    daemon.stop();
}
