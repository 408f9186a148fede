//! What a message costs, read from `/proc` while a workload runs: CPU time
//! (`/proc/PID/stat` utime + stime), bytes written to the disk
//! (`/proc/PID/io` `write_bytes`), resident memory (`/proc/PID/status`
//! `VmRSS`) per server process, and flush requests completed by the block
//! device that holds the data directories (`/proc/diskstats`, a
//! device-wide count: only one system runs at a time).
//!
//! A sampler reads every 100 ms; each measurement window is then cut at the
//! samples nearest its bounds and divided by the messages counted between
//! exactly those samples.

use crate::stats::{Event, Plan, Stat, now_us};
use serde::Serialize;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// `/proc/PID/stat` counts CPU time in USER_HZ ticks, 100 per second on Linux.
const TICK_US: u64 = 10_000;
const EVERY: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, Default)]
struct ProcReading {
    cpu_us: u64,
    write_bytes: u64,
    rss_bytes: u64,
}

#[derive(Clone, Debug)]
struct Sample {
    at_us: u64,
    procs: Vec<Option<ProcReading>>,
    flushes: Option<u64>,
}

/// A running sampler over a fixed set of processes.
pub struct Meter {
    names: Vec<String>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

/// The samples of one run, ready to be cut into windows.
pub struct Samples {
    names: Vec<String>,
    samples: Vec<Sample>,
}

/// Cost figures per measurement window (median and range over the windows).
#[derive(Clone, Debug, Serialize)]
pub struct Cost {
    /// CPU µs per message, all server processes together.
    pub cpu_us_per_msg: Option<Stat>,
    /// CPU µs per message of each server process.
    pub cpu_us_per_msg_by_process: Vec<(String, Option<Stat>)>,
    /// Bytes the server processes wrote to the disk, per message.
    pub disk_bytes_per_msg: Option<Stat>,
    /// Disk bytes written per payload byte (write amplification, all replicas).
    pub write_amplification: Option<Stat>,
    /// Flush requests completed per second by the device under the data directories.
    pub device_flushes_per_s: Option<Stat>,
    /// Resident memory at the end of each window, summed over the server processes.
    pub rss_mib_total: Option<Stat>,
    /// The largest resident memory of one process seen in the run.
    pub rss_mib_max_process: Option<f64>,
}

impl Meter {
    /// Starts sampling `procs` (name, PID); `data_dir` locates the block device.
    pub fn start(procs: Vec<(String, u32)>, data_dir: &Path) -> Meter {
        let device = device_of(data_dir);
        let names = procs.iter().map(|(n, _)| n.clone()).collect();
        let pids: Vec<u32> = procs.iter().map(|(_, p)| *p).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut out = Vec::new();
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Bounded: at most one hour of samples.
            for _ in 0..36_000 {
                tick.tick().await;
                out.push(Sample {
                    at_us: now_us(),
                    procs: pids.iter().map(|p| read_proc(*p)).collect(),
                    flushes: device.as_deref().and_then(read_flushes),
                });
                if flag.load(Ordering::Relaxed) {
                    break;
                }
            }
            out
        });
        Meter { names, stop, task }
    }

    pub async fn finish(self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.task.await.unwrap_or_default();
        Samples { names: self.names, samples }
    }
}

impl Samples {
    fn nearest(&self, t_us: u64) -> Option<&Sample> {
        self.samples.iter().min_by_key(|s| s.at_us.abs_diff(t_us))
    }

    /// Each window of `plan` cut at its nearest samples (`None` where the
    /// samples are missing or a process was not readable).
    pub fn windows(&self, plan: &Plan, start_us: u64, events: &[Event], payload: usize) -> Vec<Option<WindowCost>> {
        (0..plan.reps)
            .map(|i| {
                let (from, to) = plan.bounds(start_us, i);
                let (a, b) = (self.nearest(from)?, self.nearest(to)?);
                (b.at_us > a.at_us).then(|| window_cost(a, b, events, payload)).flatten()
            })
            .collect()
    }

    /// Cost per message over the windows of `plan`, counting `events` (one per
    /// message) and `payload` bytes per message.
    pub fn cost(&self, plan: &Plan, start_us: u64, events: &[Event], payload: usize) -> Cost {
        let w: Vec<WindowCost> = self.windows(plan, start_us, events, payload).into_iter().flatten().collect();
        let of = |f: fn(&WindowCost) -> f64| Stat::of(&w.iter().map(f).collect::<Vec<_>>());
        let by_proc = (0..self.names.len())
            .map(|k| Stat::of(&w.iter().map(|x| x.cpu_us_by_process[k]).collect::<Vec<_>>()))
            .collect::<Vec<_>>();
        let max_rss = self.samples.iter().flat_map(|s| s.procs.iter().flatten().map(|p| p.rss_bytes)).max();
        Cost {
            cpu_us_per_msg: of(|x| x.cpu_us_per_msg),
            cpu_us_per_msg_by_process: self.names.iter().cloned().zip(by_proc).collect(),
            disk_bytes_per_msg: of(|x| x.disk_bytes_per_msg),
            write_amplification: of(|x| x.write_amplification),
            device_flushes_per_s: of(|x| x.device_flushes_per_s),
            rss_mib_total: of(|x| x.rss_mib_total),
            rss_mib_max_process: max_rss.map(|b| b as f64 / (1 << 20) as f64),
        }
    }
}

/// One window's cost (NaN where it cannot be computed: no messages, no payload
/// size, no device counters).
#[derive(Clone, Debug, Serialize)]
pub struct WindowCost {
    pub cpu_us_per_msg: f64,
    pub cpu_us_by_process: Vec<f64>,
    pub disk_bytes_per_msg: f64,
    pub write_amplification: f64,
    pub device_flushes_per_s: f64,
    pub rss_mib_total: f64,
}

fn window_cost(a: &Sample, b: &Sample, events: &[Event], payload: usize) -> Option<WindowCost> {
    let msgs = events.iter().filter(|e| e.at_us >= a.at_us && e.at_us < b.at_us).count() as f64;
    let secs = (b.at_us - a.at_us) as f64 / 1e6;
    let deltas: Vec<(f64, f64)> = a
        .procs
        .iter()
        .zip(&b.procs)
        .map(|(x, y)| {
            let (x, y) = ((*x)?, (*y)?);
            Some((y.cpu_us.saturating_sub(x.cpu_us) as f64, y.write_bytes.saturating_sub(x.write_bytes) as f64))
        })
        .collect::<Option<_>>()?;
    let (cpu, disk) = deltas.iter().fold((0.0, 0.0), |s, x| (s.0 + x.0, s.1 + x.1));
    let per = |v: f64| if msgs > 0.0 { v / msgs } else { f64::NAN };
    let flushes = match (a.flushes, b.flushes) {
        (Some(x), Some(y)) => y.saturating_sub(x) as f64 / secs,
        _ => f64::NAN,
    };
    Some(WindowCost {
        cpu_us_per_msg: per(cpu),
        cpu_us_by_process: deltas.iter().map(|d| per(d.0)).collect(),
        disk_bytes_per_msg: per(disk),
        write_amplification: if payload > 0 { per(disk) / payload as f64 } else { f64::NAN },
        device_flushes_per_s: flushes,
        rss_mib_total: b.procs.iter().flatten().map(|p| p.rss_bytes).sum::<u64>() as f64 / (1 << 20) as f64,
    })
}

/// Bytes process `pid` has caused to be written to storage so far.
pub fn written_bytes(pid: u32) -> Option<u64> {
    field(&std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?, "write_bytes:")
}

fn read_proc(pid: u32) -> Option<ProcReading> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let cpu_us = parse_stat_cpu_ticks(&stat)? * TICK_US;
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let write_bytes = field(&io, "write_bytes:")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_bytes = field(&status, "VmRSS:")? * 1024;
    Some(ProcReading { cpu_us, write_bytes, rss_bytes })
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line; the command
/// name in field 2 may hold spaces, so count from its closing parenthesis.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, index 11 here.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The first number after `key` on its line.
fn field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_ascii_whitespace().next()?.parse().ok()
}

/// The `/proc/diskstats` name of the block device holding `path`, if it is
/// listed there (it is not for overlay or tmpfs directories).
fn device_of(path: &Path) -> Option<String> {
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff), (dev & 0xff) | ((dev >> 12) & !0xff));
    let stats = std::fs::read_to_string("/proc/diskstats").ok()?;
    stats.lines().find_map(|l| {
        let f: Vec<&str> = l.split_ascii_whitespace().collect();
        (f.len() >= 20 && f[0].parse() == Ok(major) && f[1].parse() == Ok(minor)).then(|| f[2].to_string())
    })
}

/// Flush requests completed by `device` (field 19 of its diskstats line, Linux >= 5.5).
fn read_flushes(device: &str) -> Option<u64> {
    let stats = std::fs::read_to_string("/proc/diskstats").ok()?;
    stats.lines().find_map(|l| {
        let f: Vec<&str> = l.split_ascii_whitespace().collect();
        (f.len() >= 20 && f[2] == device).then(|| f[18].parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_with_spaces_in_the_name() {
        let line = "4242 (tokio runtime) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 1 1 1";
        assert_eq!(parse_stat_cpu_ticks(line), Some(325));
    }

    #[test]
    fn own_process_is_readable() {
        let r = read_proc(std::process::id()).expect("own /proc entry");
        assert!(r.rss_bytes > 0);
    }

    #[test]
    fn windows_divide_by_the_messages_between_their_samples() {
        let reading = |cpu, wb| Some(ProcReading { cpu_us: cpu, write_bytes: wb, rss_bytes: 1 << 20 });
        let samples = Samples {
            names: vec!["a".into()],
            samples: vec![
                Sample { at_us: 1_000_000, procs: vec![reading(0, 0)], flushes: Some(10) },
                Sample { at_us: 2_000_000, procs: vec![reading(500_000, 1_000_000)], flushes: Some(20) },
            ],
        };
        let plan = Plan { warmup: Duration::from_secs(1), window: Duration::from_secs(1), reps: 1 };
        let events: Vec<Event> = (0..1000).map(|i| Event { at_us: 1_000_000 + i * 1000, lat_us: 1 }).collect();
        let c = samples.cost(&plan, 0, &events, 500);
        assert_eq!(c.cpu_us_per_msg.unwrap().median, 500.0);
        assert_eq!(c.disk_bytes_per_msg.unwrap().median, 1000.0);
        assert_eq!(c.write_amplification.unwrap().median, 2.0);
        assert_eq!(c.device_flushes_per_s.unwrap().median, 10.0);
    }
}
