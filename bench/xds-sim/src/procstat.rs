//! CPU and RSS of the control plane (and of this simulator), sampled from
//! `/proc/PID/stat` and `/proc/PID/status` every 100 ms.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Clock ticks per second of `/proc/PID/stat` (USER_HZ; 100 on Linux).
const TICKS: f64 = 100.0;

#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Seconds since the simulator's epoch.
    pub t: f64,
    /// utime + stime, in ticks.
    pub control_ticks: u64,
    pub control_rss_kb: u64,
    pub sim_ticks: u64,
    pub sim_rss_kb: u64,
}

pub struct Sampler {
    pid: Option<u32>,
    epoch: Instant,
    samples: Arc<Mutex<Vec<Sample>>>,
}

fn ticks(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is 3.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn status_kb(pid: &str, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn sample(pid: Option<u32>, epoch: Instant) -> Sample {
    let p = pid.map(|p| p.to_string());
    Sample {
        t: epoch.elapsed().as_secs_f64(),
        control_ticks: p.as_deref().and_then(ticks).unwrap_or(0),
        control_rss_kb: p
            .as_deref()
            .and_then(|p| status_kb(p, "VmRSS:"))
            .unwrap_or(0),
        sim_ticks: ticks("self").unwrap_or(0),
        sim_rss_kb: status_kb("self", "VmRSS:").unwrap_or(0),
    }
}

impl Sampler {
    pub fn start(pid: Option<u32>, epoch: Instant) -> Sampler {
        let samples = Arc::new(Mutex::new(vec![sample(pid, epoch)]));
        let s = samples.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(100));
                let x = sample(pid, epoch);
                s.lock().unwrap_or_else(|e| e.into_inner()).push(x);
            }
        });
        Sampler {
            pid,
            epoch,
            samples,
        }
    }

    /// A sample now, marking a window's edge.
    pub fn mark(&self) -> Sample {
        let x = sample(self.pid, self.epoch);
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(x);
        x
    }

    /// CPU used (seconds, and cores on average) and peak RSS between two marks.
    pub fn window(&self, a: &Sample, b: &Sample) -> Value {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let peak = |f: fn(&Sample) -> u64| {
            samples
                .iter()
                .filter(|s| s.t >= a.t && s.t <= b.t)
                .map(f)
                .max()
                .unwrap_or(0)
        };
        let dt = (b.t - a.t).max(1e-9);
        let cpu = b.control_ticks.saturating_sub(a.control_ticks) as f64 / TICKS;
        let sim = b.sim_ticks.saturating_sub(a.sim_ticks) as f64 / TICKS;
        json!({
            "seconds": dt,
            "cpu_s": cpu,
            "cores": cpu / dt,
            "peak_rss_mb": peak(|s| s.control_rss_kb) as f64 / 1024.0,
            "end_rss_mb": b.control_rss_kb as f64 / 1024.0,
            "sim_cpu_s": sim,
            "sim_cores": sim / dt,
            "sim_peak_rss_mb": peak(|s| s.sim_rss_kb) as f64 / 1024.0,
        })
    }

    /// A short line for progress output.
    pub fn now_line(&self) -> String {
        let x = sample(self.pid, self.epoch);
        format!(
            "cpu {:.1}s rss {:.0} MB; sim cpu {:.1}s rss {:.0} MB",
            x.control_ticks as f64 / TICKS,
            x.control_rss_kb as f64 / 1024.0,
            x.sim_ticks as f64 / TICKS,
            x.sim_rss_kb as f64 / 1024.0
        )
    }

    /// The control plane's VmHWM and VmRSS now.
    pub fn status(&self) -> Value {
        let p = self.pid.map(|p| p.to_string());
        let kb = |k| p.as_deref().and_then(|p| status_kb(p, k)).unwrap_or(0) as f64 / 1024.0;
        json!({"vm_hwm_mb": kb("VmHWM:"), "vm_rss_mb": kb("VmRSS:")})
    }

    /// Every sample, downsampled to at most ~2,000 points.
    pub fn series(&self) -> Value {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let step = (samples.len() / 2000).max(1);
        Value::Array(
            samples
                .iter()
                .step_by(step)
                .map(|s| {
                    json!([
                        (s.t * 1000.0).round() / 1000.0,
                        s.control_ticks,
                        s.control_rss_kb,
                        s.sim_ticks,
                        s.sim_rss_kb
                    ])
                })
                .collect(),
        )
    }
}
