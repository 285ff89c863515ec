//! Spike and dip detection on one device's metric: a learned baseline, O(1) per point.
//!
//! The baseline is a level and a trend (Holt's double exponential smoothing, over about
//! `window` points: α = 2 / (window + 1), and the trend as fast), and the exponentially
//! weighted variance of the points around it. The trend matters: sensors follow days
//! and seasons, and a plain moving mean lags a slope by half its window, which counts as
//! spread and widens the band until real spikes fit in it (measured: recall 0.66
//! without the trend, docs/BENCHMARKS.md). A point is judged against the baseline's
//! forecast *before* it is learned from: more than `sensitivity` standard deviations (and more than `min_change`)
//! above it is a spike, below it a dip. So that one spike does not teach the baseline
//! that spikes are normal, an outlier is learned clipped to the edge of the band
//! (winsorised). A level shift (the metric moves and stays) would then be an anomaly for
//! ever; after `shift_after` outliers in a row on the same side the baseline restarts at
//! the new level instead. The first `warmup` points only teach it.
//!
//! Why not a rolling median and MAD: exact ones need the window's points (O(window) per
//! point and per detector in memory); the weighted moments need three numbers. The
//! detector's precision and recall on seeded synthetic series are in docs/BENCHMARKS.md
//! (`synthetic.rs` makes the series).

/// A detector's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Points the baseline averages over (its half-life is about a third of it).
    pub window: u32,
    /// Points learned before the first verdict.
    pub warmup: u32,
    /// Standard deviations from the baseline that make an anomaly.
    pub sensitivity: f64,
    /// The least deviation that is an anomaly, in the metric's unit (a metric that never
    /// moved has no deviation to scale by).
    pub min_change: f64,
    /// Outliers in a row on one side after which the baseline restarts at the new level.
    pub shift_after: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params { window: 30, warmup: 20, sensitivity: 4.0, min_change: 0.0, shift_after: 5 }
    }
}

/// What the detector made of a point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Still learning.
    Warmup,
    Normal,
    /// Above the baseline's band; `z` standard deviations from its mean.
    Spike {
        mean: f64,
        sd: f64,
        z: f64,
    },
    /// Below it.
    Dip {
        mean: f64,
        sd: f64,
        z: f64,
    },
}

impl Verdict {
    pub fn is_anomaly(&self) -> bool {
        matches!(self, Verdict::Spike { .. } | Verdict::Dip { .. })
    }
}

/// One metric's baseline.
#[derive(Debug, Clone, Default)]
pub struct Detector {
    seen: u32,
    level: f64,
    trend: f64,
    var: f64,
    /// Outliers in a row: positive above, negative below.
    run: i32,
}

impl Detector {
    /// Judge `x`, then learn from it.
    pub fn step(&mut self, x: f64, p: &Params) -> Verdict {
        if !x.is_finite() {
            return Verdict::Normal;
        }
        if self.seen == 0 {
            self.seen = 1;
            self.level = x;
            return Verdict::Warmup;
        }
        let forecast = self.level + self.trend;
        let sd = self.var.sqrt();
        let dev = x - forecast;
        let verdict = if self.seen < p.warmup {
            Verdict::Warmup
        } else if dev.abs() > p.sensitivity * sd && dev.abs() > p.min_change {
            let z = if sd > 0.0 { dev / sd } else { f64::INFINITY.copysign(dev) };
            if dev > 0.0 { Verdict::Spike { mean: forecast, sd, z } } else { Verdict::Dip { mean: forecast, sd, z } }
        } else {
            Verdict::Normal
        };
        let learn = if verdict.is_anomaly() {
            let side = if dev > 0.0 { 1 } else { -1 };
            self.run = if self.run.signum() == side { self.run + side } else { side };
            if self.run.unsigned_abs() >= p.shift_after {
                // The metric moved and stayed: start over at the new level, keeping the
                // spread learned (the noise has not changed).
                self.level = x;
                self.trend = 0.0;
                self.run = 0;
                self.seen += 1;
                return verdict;
            }
            forecast + dev.signum() * p.sensitivity.max(0.0) * sd
        } else {
            self.run = 0;
            x
        };
        // Until the window is full, nearer a plain running mean: the first points count
        // fully.
        let alpha = (2.0 / (f64::from(p.window) + 1.0)).max(1.0 / f64::from(self.seen + 1));
        let diff = learn - forecast;
        let level = forecast + alpha * diff;
        self.trend += alpha * (level - self.level - self.trend);
        self.level = level;
        self.var = (1.0 - alpha) * (self.var + alpha * diff * diff);
        self.seen = self.seen.saturating_add(1);
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spike_after_warmup_is_found_and_does_not_move_the_baseline() {
        let p = Params { window: 20, warmup: 10, sensitivity: 4.0, ..Default::default() };
        let mut d = Detector::default();
        let noise = [0.1, -0.2, 0.15, -0.05, 0.2, -0.1, 0.05, -0.15, 0.1, 0.0];
        for i in 0..40 {
            let v = d.step(20.0 + noise[i % 10], &p);
            assert!(!v.is_anomaly(), "point {i}: {v:?}");
        }
        assert!(matches!(d.step(30.0, &p), Verdict::Spike { .. }));
        assert!(!d.step(20.05, &p).is_anomaly(), "the spike did not widen the band much");
        assert!(matches!(d.step(10.0, &p), Verdict::Dip { .. }));
        assert!(!d.step(20.0, &p).is_anomaly());
    }

    #[test]
    fn warmup_gives_no_verdict_and_a_level_shift_is_learned() {
        let p = Params { window: 20, warmup: 10, sensitivity: 4.0, shift_after: 3, min_change: 0.0 };
        let mut d = Detector::default();
        assert_eq!(d.step(5.0, &p), Verdict::Warmup);
        assert_eq!(d.step(500.0, &p), Verdict::Warmup);
        let mut d = Detector::default();
        for i in 0..30 {
            d.step(10.0 + (i % 3) as f64 * 0.1, &p);
        }
        let verdicts: Vec<bool> = (0..10).map(|i| d.step(50.0 + (i % 3) as f64 * 0.1, &p).is_anomaly()).collect();
        assert_eq!(&verdicts[..3], [true, true, true]);
        assert!(verdicts[3..].iter().all(|a| !a), "{verdicts:?}");
    }

    #[test]
    fn min_change_keeps_a_flat_metric_quiet() {
        let p = Params { warmup: 5, min_change: 1.0, ..Default::default() };
        let mut d = Detector::default();
        for _ in 0..10 {
            d.step(100.0, &p);
        }
        assert_eq!(d.step(99.5, &p), Verdict::Normal);
        assert!(d.step(98.0, &p).is_anomaly());
    }
}
