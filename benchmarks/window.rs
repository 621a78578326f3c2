//! Benchmark `window`: counting decoded events into a sliding window, and
//! expiring panes.
//!
//! Setup: one model (`GeneratorConfig::synthetic(42, 1, 20).inference_only()`,
//! 20 features, about 30% categorical, plus prediction and confidence). Its
//! baseline is built with [`BaselineBuilder`] from 20,000 generated lines
//! (default [`Binning`]: 10 numeric bins, top 50 categories), compiled into a
//! [`Layout`]. The window is the default spec: 10 minutes in 30 s panes (20
//! panes). The events are 256 lines of another stream of the same model
//! (`stream_seed = 7`), decoded once and made owned with `Event::into_owned`,
//! so decoding is not part of the measurement. A small set keeps the events
//! cache-resident, as a just-decoded event is in the engine.
//!
//! What it measures:
//!
//! * `window_insert/pane_every/N_events`: one [`Window::insert`] per
//!   iteration (so the time is ns per event), cycling through the events,
//!   event time advancing by a fixed step so that the head moves into a new
//!   pane every N events and the oldest pane expires (its row is subtracted
//!   from the totals) inside the measurement. The window is filled to steady
//!   state (all 20 panes populated) before measuring and kept across
//!   samples, so every pane change expires a populated row. N = 30,000 is 1 ms per event
//!   (1,000 events/s into 30 s panes); N = 1,000 makes expiry 30x more
//!   frequent, so the difference between the two is the amortized expiry.
//! * `window_advance/expire_one_full_pane`: [`Window::advance_to`] moving a
//!   window whose 20 panes all hold counts one pane ahead, which expires the
//!   oldest (full) pane: one row subtraction over the whole flat layout. The
//!   full window is restored from a saved state in untimed setup.
//! * `window_advance/expire_all_panes`: `advance_to` jumping a whole window
//!   length ahead (an idle model catching up): everything is cleared at once.
//!
//! Why: insertion runs once per event per window (model, and arm), so it
//! bounds events/s together with decoding; expiry is the only work that is
//! not O(1) per event and must stay cheap enough to hide.
//!
//! Run: `cargo bench --bench window` (add `-- --quick` while developing).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use driftd::engine::baseline::{BaselineBuilder, Binning, Layout};
use driftd::engine::decode::{DecodeConfig, Decoded, Decoder, Event};
use driftd::engine::window::{Window, WindowSpec, WindowState};
use driftd::lab::generate::{Generator, GeneratorConfig};

/// Reference lines for the baseline.
const REFERENCE_LINES: usize = 20_000;
/// Distinct pre-decoded events cycled through by the insert benchmark (a
/// power of two).
const EVENTS: usize = 256;
/// 2025-12-14T10:00:00Z, on a pane boundary.
const T0_MS: i64 = 1_765_706_400_000;
const PANE_MS: i64 = 30_000;

fn generator_config() -> GeneratorConfig {
    GeneratorConfig::synthetic(42, 1, 20).inference_only()
}

fn decode_owned(decoder: &Decoder, line: &str) -> Event<'static> {
    match decoder.decode(line.as_bytes()) {
        Decoded::Event(ev) => ev.into_owned(),
        other => panic!("not an event ({other:?}): {line}"),
    }
}

/// The layout of a baseline built from the reference lines, and the
/// pre-decoded live events.
fn setup() -> (Arc<Layout>, Vec<Event<'static>>) {
    let decoder = Decoder::new(DecodeConfig::default());
    let mut line = String::with_capacity(2048);

    let mut g = Generator::new(generator_config());
    let model = g.model_names()[0].clone();
    let mut builder = BaselineBuilder::new(&model);
    for i in 0..REFERENCE_LINES {
        g.next_line(T0_MS - 86_400_000 + i as i64, &mut line);
        builder.add(&decode_owned(&decoder, &line));
    }
    let baseline = builder
        .finish(&Binning::default(), "bench-reference", T0_MS)
        .expect("baseline");
    let layout = Arc::new(Layout::new(baseline));

    let mut g = Generator::new(GeneratorConfig {
        stream_seed: Some(7),
        ..generator_config()
    });
    let events: Vec<Event<'static>> = (0..EVENTS)
        .map(|i| {
            g.next_line(T0_MS + i as i64, &mut line);
            decode_owned(&decoder, &line)
        })
        .collect();
    assert!(events.iter().all(|e| e.features.len() == 20));
    eprintln!(
        "window layout: {} distributions ({} features), {} bins; {} panes",
        layout.slots.len(),
        layout.feature_count,
        layout.total_bins,
        WindowSpec::default().panes()
    );
    (layout, events)
}

fn bench_insert(c: &mut Criterion, layout: &Arc<Layout>, events: &[Event<'static>]) {
    let mut group = c.benchmark_group("window_insert");
    group.throughput(Throughput::Elements(1));
    for events_per_pane in [30_000i64, 1_000] {
        let step_ms = PANE_MS / events_per_pane;
        // One window per case, kept across criterion's samples, and filled
        // first: every pane holds counts, so each pane change expires a
        // populated row, as in steady state.
        let mut w = Window::new(layout.clone(), WindowSpec::default());
        let mut t = T0_MS;
        let mut i = 0usize;
        for _ in 0..events_per_pane * WindowSpec::default().panes() as i64 {
            t += step_ms;
            w.insert(&events[i & (EVENTS - 1)], t);
            i = i.wrapping_add(1);
        }
        group.bench_with_input(
            BenchmarkId::new("pane_every", format!("{events_per_pane}_events")),
            &step_ms,
            |b, &step_ms| {
                b.iter(|| {
                    let ev = &events[i & (EVENTS - 1)];
                    i = i.wrapping_add(1);
                    t += step_ms;
                    black_box(w.insert(black_box(ev), t))
                })
            },
        );
        // Sanity: nothing late, nothing unknown.
        assert_eq!(w.counters.late, 0);
        assert_eq!(w.counters.unknown_features, 0);
    }
    group.finish();
}

/// A window whose 20 panes all hold counts, as a saved state.
fn full_window_state(layout: &Arc<Layout>, events: &[Event<'static>]) -> WindowState {
    let spec = WindowSpec::default();
    let mut w = Window::new(layout.clone(), spec);
    let per_pane = 500i64;
    let panes = spec.panes() as i64;
    for k in 0..panes * per_pane {
        let t = T0_MS + k * (PANE_MS / per_pane);
        w.insert(&events[k as usize & (EVENTS - 1)], t);
    }
    let st = w.state();
    assert_eq!(st.panes.len(), spec.panes(), "every pane holds counts");
    st
}

fn bench_advance(c: &mut Criterion, layout: &Arc<Layout>, events: &[Event<'static>]) {
    let spec = WindowSpec::default();
    let state = full_window_state(layout, events);
    let head = state.head.expect("a head");
    let fresh = || {
        let mut w = Window::new(layout.clone(), spec);
        w.restore(&state).expect("restore");
        w
    };
    // One pane ahead expires exactly the oldest pane.
    {
        let mut w = fresh();
        let before = w.samples();
        w.advance_to((head + 1) * PANE_MS);
        assert!(w.samples() < before, "a pane expired");
    }

    let mut group = c.benchmark_group("window_advance");
    group.bench_function("expire_one_full_pane", |b| {
        b.iter_batched_ref(
            fresh,
            |w| w.advance_to(black_box((head + 1) * PANE_MS)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("expire_all_panes", |b| {
        b.iter_batched_ref(
            fresh,
            |w| w.advance_to(black_box((head + spec.panes() as i64) * PANE_MS)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn bench_window(c: &mut Criterion) {
    let (layout, events) = setup();
    bench_insert(c, &layout, &events);
    bench_advance(c, &layout, &events);
}

criterion_group!(benches, bench_window);
criterion_main!(benches);
