//! Measurement windows, percentiles and the median / min–max summary of repetitions.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

static T0: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the process-wide reference instant (embedded in payloads
/// to measure send -> delivery inside this one process).
pub fn now_us() -> u64 {
    T0.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Upper bound on recorded events per series, so memory stays bounded.
pub const MAX_EVENTS: usize = 20_000_000;

/// One completed operation: when it completed and how long it took.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub at_us: u64,
    pub lat_us: u64,
}

/// Open-loop pacing: send slots `1 / rate` apart, each claimed by whichever
/// worker is free. A latency counts from its slot, not from when a worker got
/// to it, so a system that stalls is charged for the wait (no coordinated
/// omission).
pub struct Pace {
    next_us: AtomicU64,
    interval_us: u64,
}

impl Pace {
    pub fn new(rate_per_s: f64) -> Arc<Pace> {
        let interval_us = (1e6 / rate_per_s.max(1.0)).round().max(1.0) as u64;
        Arc::new(Pace { next_us: AtomicU64::new(now_us()), interval_us })
    }

    /// Waits for the next free slot; returns its time in µs.
    pub async fn slot(&self) -> u64 {
        let at = self.next_us.fetch_add(self.interval_us, Ordering::Relaxed);
        let now = now_us();
        if at > now {
            tokio::time::sleep(Duration::from_micros(at - now)).await;
        }
        at
    }
}

/// A load phase: warm-up, then `reps` consecutive measurement windows.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub warmup: Duration,
    pub window: Duration,
    pub reps: usize,
}

impl Plan {
    pub fn total(&self) -> Duration {
        self.warmup + self.window * self.reps as u32
    }

    /// Window `i` as `[from, to)` in µs relative to `start_us`.
    pub fn bounds(&self, start_us: u64, i: usize) -> (u64, u64) {
        let from = start_us + self.warmup.as_micros() as u64 + i as u64 * self.window.as_micros() as u64;
        (from, from + self.window.as_micros() as u64)
    }

    /// Per window: (events/s, p50 ms, p99 ms).
    pub fn split(&self, start_us: u64, events: &[Event]) -> Vec<(f64, f64, f64)> {
        (0..self.reps)
            .map(|i| {
                let (from, to) = self.bounds(start_us, i);
                let mut lat: Vec<u64> =
                    events.iter().filter(|e| e.at_us >= from && e.at_us < to).map(|e| e.lat_us).collect();
                let rate = lat.len() as f64 / self.window.as_secs_f64();
                lat.sort_unstable();
                (rate, pct(&lat, 0.50), pct(&lat, 0.99))
            })
            .collect()
    }
}

/// Percentile of sorted µs values, in ms (NaN when empty).
pub fn pct(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Median and range of a figure over repetitions.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Stat {
    pub fn of(values: &[f64]) -> Option<Stat> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Stat { median, min: v[0], max: v[n - 1], n })
    }
}

/// Rate, p50 and p99 of one series over the windows of a plan.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Triple {
    pub rate: Option<Stat>,
    pub p50: Option<Stat>,
    pub p99: Option<Stat>,
}

pub fn summarize(plan: &Plan, start_us: u64, events: &[Event]) -> Triple {
    let w = plan.split(start_us, events);
    Triple {
        rate: Stat::of(&w.iter().map(|x| x.0).collect::<Vec<_>>()),
        p50: Stat::of(&w.iter().map(|x| x.1).collect::<Vec<_>>()),
        p99: Stat::of(&w.iter().map(|x| x.2).collect::<Vec<_>>()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_range() {
        let s = Stat::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert!(Stat::of(&[f64::NAN]).is_none());
    }

    #[tokio::test]
    async fn pace_hands_out_slots_one_interval_apart() {
        let pace = Pace::new(1000.0);
        let (a, b, c) = (pace.slot().await, pace.slot().await, pace.slot().await);
        assert_eq!((b - a, c - b), (1000, 1000));
    }

    #[test]
    fn windows_split_events() {
        let plan = Plan { warmup: Duration::from_secs(1), window: Duration::from_secs(1), reps: 2 };
        let ev: Vec<Event> = (0..30).map(|i| Event { at_us: i * 100_000, lat_us: 1000 + i }).collect();
        let w = plan.split(0, &ev);
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].0, 10.0);
        assert_eq!(w[1].0, 10.0);
    }
}
