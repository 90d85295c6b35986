//! A mergeable latency histogram with ~2% resolution: bucket i holds values
//! in [1.02^i, 1.02^(i+1)) microseconds. Workers send their buckets to the
//! coordinator, which adds them up.

use serde::{Deserialize, Serialize};

const GROWTH: f64 = 1.02;
const BUCKETS: usize = 1200; // 1.02^1200 µs ≈ 20 000 s

#[derive(Clone, Serialize, Deserialize)]
pub struct Histogram {
    pub counts: Vec<u64>,
    pub max_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self { counts: vec![0; BUCKETS], max_us: 0 }
    }
}

impl Histogram {
    pub fn record(&mut self, us: u64) {
        let i = if us <= 1 { 0 } else { ((us as f64).ln() / GROWTH.ln()) as usize };
        self.counts[i.min(BUCKETS - 1)] += 1;
        self.max_us = self.max_us.max(us);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.max_us = self.max_us.max(other.max_us);
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The value below which `q` of the samples fall (upper bucket bound).
    pub fn quantile(&self, q: f64) -> u64 {
        let total = self.total();
        if total == 0 {
            return 0;
        }
        let target = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return (GROWTH.powi(i as i32 + 1) as u64).min(self.max_us);
            }
        }
        self.max_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_two_percent() {
        let mut h = Histogram::default();
        for us in 1..=10_000 {
            h.record(us);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 5000.0).abs() / 5000.0 < 0.03, "{p50}");
        assert_eq!(h.quantile(1.0), 10_000);
        let mut other = Histogram::default();
        other.record(50_000);
        h.merge(&other);
        assert_eq!(h.total(), 10_001);
        assert_eq!(h.max_us, 50_000);
    }
}
