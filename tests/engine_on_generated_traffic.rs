//! The engine on the lab's generated traffic, through its public API: the
//! engine itself may not use the lab (see `architecture`), so tests that
//! need both live here.

use std::collections::HashMap;

use driftd::engine::baseline::{Baseline, BaselineBuilder, Binning};
use driftd::engine::decode::{DecodeConfig, Decoded, Decoder};
use driftd::engine::detect::State;
use driftd::engine::{Engine, EngineConfig};
use driftd::lab::generate::{Generator, GeneratorConfig};

/// End to end on generated data: baselines from the generator's traffic,
/// then ten times as much of the same traffic later, fire nothing. (The
/// name promises a shifted feature too; the test never had one.)
#[test]
fn shifted_feature_fires_and_stable_ones_do_not() {
    let mut g = Generator::new(GeneratorConfig::default());
    let d = Decoder::new(DecodeConfig::default());
    let mut builders: HashMap<String, BaselineBuilder> = HashMap::new();
    let mut buf = String::new();
    for i in 0..20_000i64 {
        g.next_line(1_700_000_000_000 + i * 10, &mut buf);
        if let Decoded::Event(ev) = d.decode(buf.as_bytes()) {
            builders
                .entry(ev.model.to_string())
                .or_insert_with(|| BaselineBuilder::new(&ev.model))
                .add(&ev);
        }
    }
    let bases: Vec<Baseline> = builders
        .into_values()
        .map(|b| b.finish(&Binning::default(), "t", 0).unwrap())
        .collect();
    let mut e = Engine::new(EngineConfig::default(), bases);
    // Same distribution, later: nothing fires.
    let mut g2 = g;
    let start = 1_800_000_000_000i64;
    let mut fired = Vec::new();
    for i in 0..200_000i64 {
        let t = start + i * 10;
        g2.next_line(t, &mut buf);
        e.ingest(buf.as_bytes(), t);
        if i % 3000 == 2999 {
            fired.extend(e.evaluate(t).into_iter().filter(|t| t.to == State::Firing));
        }
    }
    assert!(fired.is_empty(), "false alarms: {fired:?}");
}
