//! Seeded synthetic sensor series with injected anomalies, and the scoring of a detector
//! on them: how the anomaly detector's precision and recall in docs/BENCHMARKS.md are
//! measured (`cargo test -p drover --lib analytics::synthetic -- --nocapture` prints
//! them), and what the simulator's sensors send (`examples/fleet --mode sensors`).
//!
//! A series is a slow daily-like wave plus Gaussian noise, with spikes and dips (one
//! point, 6 to 12 noise deviations away) and level shifts (the level moves by 8 to 15
//! deviations and stays) at random places. The random source is ChaCha8 from a fixed
//! seed, whose output the rand_chacha crate keeps stable across versions and platforms.

use super::anomaly::{Detector, Params};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

/// What was injected at a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    Spike,
    Dip,
    LevelShift,
}

/// A series and where its anomalies are.
#[derive(Debug, Clone)]
pub struct Series {
    pub values: Vec<f64>,
    /// (index, what) in order.
    pub anomalies: Vec<(usize, Injected)>,
}

/// How a series is made.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub len: usize,
    pub base: f64,
    /// The wave's amplitude; its period is `period` points.
    pub amplitude: f64,
    pub period: f64,
    /// The noise's standard deviation.
    pub noise: f64,
    /// Chance per point of a spike or dip, and of a level shift.
    pub spike_rate: f64,
    pub shift_rate: f64,
}

impl Default for Shape {
    fn default() -> Self {
        Shape { len: 2000, base: 21.0, amplitude: 2.0, period: 288.0, noise: 0.25, spike_rate: 0.01, shift_rate: 0.002 }
    }
}

/// The seeded random source.
pub struct Rng(ChaCha8Rng);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(ChaCha8Rng::seed_from_u64(seed))
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Gap kept after an anomaly before the next (so that each can be told apart), and at the
/// start (the detector's warm-up).
const QUIET: usize = 40;

/// A series of `shape` from `seed`.
pub fn series(seed: u64, shape: &Shape) -> Series {
    let mut rng = Rng::new(seed);
    let mut level = shape.base;
    let mut values = Vec::with_capacity(shape.len);
    let mut anomalies = Vec::new();
    let mut quiet_until = QUIET;
    for i in 0..shape.len {
        let wave = shape.amplitude * (std::f64::consts::TAU * i as f64 / shape.period).sin();
        let mut v = level + wave + shape.noise * rng.normal();
        if i >= quiet_until {
            let r = rng.uniform();
            let size = shape.noise * (6.0 + 6.0 * rng.uniform());
            if r < shape.shift_rate {
                let up = rng.uniform() < 0.5;
                let by = shape.noise * (8.0 + 7.0 * rng.uniform());
                level += if up { by } else { -by };
                v += if up { by } else { -by };
                anomalies.push((i, Injected::LevelShift));
                quiet_until = i + QUIET;
            } else if r < shape.shift_rate + shape.spike_rate {
                let kind = if rng.uniform() < 0.5 { Injected::Spike } else { Injected::Dip };
                v += if kind == Injected::Spike { size } else { -size };
                anomalies.push((i, kind));
                quiet_until = i + QUIET;
            }
        }
        values.push(v);
    }
    Series { values, anomalies }
}

/// A detector's score on series.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Score {
    /// Anomalies injected, and found.
    pub injected: usize,
    pub found: usize,
    /// Alerts raised (runs of anomalous verdicts), and those that matched nothing injected.
    pub alerts: usize,
    pub false_alerts: usize,
}

impl Score {
    pub fn precision(&self) -> f64 {
        if self.alerts == 0 { 1.0 } else { (self.alerts - self.false_alerts) as f64 / self.alerts as f64 }
    }

    pub fn recall(&self) -> f64 {
        if self.injected == 0 { 1.0 } else { self.found as f64 / self.injected as f64 }
    }

    fn add(&mut self, o: Score) {
        self.injected += o.injected;
        self.found += o.found;
        self.alerts += o.alerts;
        self.false_alerts += o.false_alerts;
    }
}

/// An alert is counted as finding an injected anomaly when it opens at its point or
/// within this many points after it.
pub const TOLERANCE: usize = 2;

/// Score the detector with `params` on one series, as alerts would be raised: a run of
/// anomalous verdicts is one alert (an open alert is not opened again).
pub fn score(s: &Series, params: &Params) -> Score {
    let mut d = Detector::default();
    let mut open = false;
    let mut found = vec![false; s.anomalies.len()];
    let mut score = Score { injected: s.anomalies.len(), ..Default::default() };
    for (i, &x) in s.values.iter().enumerate() {
        let anomalous = d.step(x, params).is_anomaly();
        if anomalous && !open {
            score.alerts += 1;
            match s.anomalies.iter().position(|(at, _)| i >= *at && i <= at + TOLERANCE) {
                Some(k) => found[k] = true,
                None => score.false_alerts += 1,
            }
        }
        open = anomalous;
    }
    score.found = found.iter().filter(|f| **f).count();
    score
}

/// Score `params` over `n` series from seeds `seed..seed + n`.
pub fn score_many(seed: u64, n: u64, shape: &Shape, params: &Params) -> Score {
    let mut total = Score::default();
    for s in seed..seed + n {
        total.add(score(&series(s, shape), params));
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_deterministic_and_injects_what_it_says() {
        let a = series(7, &Shape::default());
        let b = series(7, &Shape::default());
        assert_eq!(a.values, b.values);
        assert_eq!(a.anomalies, b.anomalies);
        assert!(a.anomalies.len() >= 10, "{:?}", a.anomalies);
        assert_ne!(series(8, &Shape::default()).values, a.values);
    }

    /// The figures in docs/BENCHMARKS.md: precision and recall on 50 seeded series of
    /// 2,000 points, at the default settings and around them. The default must stay at
    /// or above 0.9 on both.
    #[test]
    fn detector_precision_and_recall_on_seeded_series() {
        let shape = Shape::default();
        println!("| sensitivity | window | injected | found | alerts | false | precision | recall |");
        println!("|---|---|---|---|---|---|---|---|");
        for (sensitivity, window) in [(3.0, 30), (4.0, 30), (5.0, 30), (4.0, 10), (4.0, 100)] {
            let p = Params { sensitivity, window, ..Params::default() };
            let s = score_many(1, 50, &shape, &p);
            println!(
                "| {sensitivity} | {window} | {} | {} | {} | {} | {:.3} | {:.3} |",
                s.injected,
                s.found,
                s.alerts,
                s.false_alerts,
                s.precision(),
                s.recall()
            );
        }
        let s = score_many(1, 50, &shape, &Params::default());
        assert!(s.precision() >= 0.9 && s.recall() >= 0.9, "{s:?}: precision {} recall {}", s.precision(), s.recall());
    }
}
