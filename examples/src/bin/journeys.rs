//! The journey simulator's report: `cargo run --release -p trailmark-examples --bin journeys --
//! [--devices N] [--seed S] [--seeds K] [--ios-without-att] [--fit]`.
//!
//! Prints the figures of the default settings, per platform and per match type, the rule before
//! issue 25 on the same journeys, the precision/recall curve (overall and per platform) over
//! fingerprint thresholds and the reliability of the confidence (docs/attribution.md).

use trailmark_examples::journeys::{
    Event, Outcome, Population, Report, by_match_type, fit_calibration, reliability, run, run_before,
};
use trailmark_server::domain::attribution::AttributionConfig;

fn arg<T: std::str::FromStr>(name: &str) -> Option<T> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok())
}

fn main() {
    let first: u64 = arg("--seed").unwrap_or(1);
    let seeds: u64 = arg("--seeds").unwrap_or(1);
    let ios_all = std::env::args().any(|a| a == "--ios-without-att");
    let worlds: Vec<_> = (first..first + seeds)
        .map(|seed| {
            let pop = Population { devices: arg("--devices").unwrap_or(5_000), seed, ..Population::default() };
            let world = pop.generate();
            let clicks = world.events.iter().filter(|e| matches!(e, Event::Click(_))).count();
            println!(
                "journeys: devices={} seed={} clicks={} installs={} fingerprint_ios_without_att={ios_all}",
                pop.devices,
                seed,
                clicks,
                world.events.len() - clicks
            );
            world
        })
        .collect();
    let run_all = |cfg: &AttributionConfig| -> Vec<Outcome> { worlds.iter().flat_map(|w| run(w, cfg)).collect() };
    let base = AttributionConfig { fingerprint_ios_without_att: ios_all, ..AttributionConfig::default() };
    let out = run_all(&base);
    println!("default threshold {}:", base.fingerprint_threshold);
    println!("  all      {}", Report::of(&out, None, ios_all).line());
    println!("  iOS      {}", Report::of(&out, Some(true), ios_all).line());
    println!("  Android  {}", Report::of(&out, Some(false), ios_all).line());
    println!("per match type (answers, right, precision):");
    for (m, n, right) in by_match_type(&out) {
        if n > 0 {
            println!("  {:<13} {n:>6} {right:>6}  {:.3}", m.as_str(), right as f64 / n as f64);
        }
    }
    let before: Vec<Outcome> = worlds.iter().flat_map(run_before).collect();
    println!("before issue 25 (weighted sum, threshold 0.6, every platform fingerprinted):");
    println!("  all      {}", Report::of(&before, None, true).line());
    println!("  iOS      {}", Report::of(&before, Some(true), true).line());
    println!("  Android  {}", Report::of(&before, Some(false), true).line());
    println!("threshold curve (fingerprint precision / recall / organic false attribution; then iOS and Android):");
    for t in [0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95] {
        let cfg = AttributionConfig { fingerprint_threshold: t, ..base.clone() };
        let out = run_all(&cfg);
        let r = Report::of(&out, None, ios_all);
        let (i, a) = (Report::of(&out, Some(true), ios_all), Report::of(&out, Some(false), ios_all));
        println!(
            "  {t:.2}  precision={:.3} recall={:.3} matched={} organic_false={:.3} | iOS {:.3} {:.3} {:.3} | Android {:.3} {:.3} {:.3}",
            r.fp_precision(),
            r.fp_recall(),
            r.fp_matched,
            r.organic_false_rate(),
            i.fp_precision(),
            i.fp_recall(),
            i.organic_false_rate(),
            a.fp_precision(),
            a.fp_recall(),
            a.organic_false_rate()
        );
    }
    if std::env::args().any(|a| a == "--fit") {
        let (a, b) = fit_calibration(&out);
        println!("calibration fit: slope={a:.3} offset={b:.3}");
    }
    println!("reliability (best fingerprint candidate; confidence bin: candidates, right, rate):");
    for (lo, n, right) in reliability(&out) {
        if n > 0 {
            println!("  {lo:.1}-{:.1}  {n:>6}  {right:>6}  {:.3}", lo + 0.1, right as f64 / n as f64);
        }
    }
}
