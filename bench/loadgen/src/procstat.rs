//! CPU time of processes from /proc/PID/stat (utime + stime, all threads).

use std::time::Duration;

/// Clock ticks per second (USER_HZ), from the aux vector; 100 if unreadable.
pub fn clk_tck() -> u64 {
    const AT_CLKTCK: u64 = 17;
    if let Ok(raw) = std::fs::read("/proc/self/auxv") {
        for pair in raw.chunks_exact(16) {
            let key = u64::from_ne_bytes(pair[..8].try_into().unwrap_or([0; 8]));
            let val = u64::from_ne_bytes(pair[8..].try_into().unwrap_or([0; 8]));
            if key == AT_CLKTCK && val > 0 {
                return val;
            }
        }
    }
    100
}

/// utime + stime of a process (all its threads), or None if it is gone.
pub fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // fields after the ")" closing the command name start at field 3 (state)
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let tck = clk_tck();
    Some(Duration::from_micros((utime + stime) * 1_000_000 / tck))
}

/// Per-CPU (busy, total) clock ticks since boot, from /proc/stat.
pub fn cpu_ticks() -> Vec<(usize, u64, u64)> {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    stat.lines()
        .filter_map(|l| {
            let mut f = l.split_ascii_whitespace();
            let cpu: usize = f.next()?.strip_prefix("cpu")?.parse().ok()?;
            let v: Vec<u64> = f.take(8).filter_map(|x| x.parse().ok()).collect();
            let total: u64 = v.iter().sum();
            // idle + iowait
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            Some((cpu, total - idle, total))
        })
        .collect()
}
