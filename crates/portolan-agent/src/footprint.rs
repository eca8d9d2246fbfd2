//! The footprint guard: the agent watches its own CPU and memory and backs off before it
//! hurts the host it watches.
//!
//! After each scan the guard takes the agent's CPU time (all threads, from `getrusage`)
//! and resident memory (`VmRSS` of `/proc/self/status`) and moves between levels:
//!
//! | level | scan interval | process attribution |
//! |---|---|---|
//! | 0 | configured | yes |
//! | 1 | ×2 | yes |
//! | 2 | ×4 | yes |
//! | 3 | ×4 | only sockets already known keep their owners; new ones have none |
//!
//! Up one level after a scan over budget (CPU averaged over the recent scans, or memory);
//! down one level after [`CALM_SCANS`] scans in a row well under it (half the CPU budget,
//! 80% of the memory budget), so that it does not flap. The level, the CPU share and the
//! resident memory are exported as metrics.

use std::time::Duration;

use portolan_core::Inventory;

use crate::config::FootprintSection;

/// Scans in a row under budget before stepping down a level.
pub const CALM_SCANS: u32 = 6;
/// The highest level.
pub const MAX_LEVEL: u8 = 3;

/// What the guard decided for the next scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// 0 (normal) to [`MAX_LEVEL`].
    pub level: u8,
    /// The configured interval is multiplied by this.
    pub interval_factor: u32,
    /// Whether the scanner walks /proc to attribute sockets to processes.
    pub attribute_processes: bool,
}

impl Decision {
    fn at(level: u8) -> Decision {
        Decision {
            level,
            interval_factor: match level {
                0 => 1,
                1 => 2,
                _ => 4,
            },
            attribute_processes: level < MAX_LEVEL,
        }
    }
}

/// The guard's state between scans. Pure: the caller measures and passes the figures in.
#[derive(Debug, Clone)]
pub struct Guard {
    budget: FootprintSection,
    level: u8,
    calm: u32,
    /// CPU share of one core, smoothed over the recent scans.
    cpu_percent: Option<f64>,
    /// CPU seconds at the previous observation.
    last_cpu_seconds: Option<f64>,
}

impl Guard {
    /// A guard at level 0.
    pub fn new(budget: FootprintSection) -> Guard {
        Guard {
            budget,
            level: 0,
            calm: 0,
            cpu_percent: None,
            last_cpu_seconds: None,
        }
    }

    /// Takes one observation: the process's total CPU seconds so far, the wall time since
    /// the previous observation, and its resident bytes now.
    pub fn observe(&mut self, cpu_seconds: f64, elapsed: Duration, resident: u64) -> Decision {
        if let Some(last) = self.last_cpu_seconds
            && elapsed > Duration::ZERO
        {
            let share = 100.0 * (cpu_seconds - last).max(0.0) / elapsed.as_secs_f64();
            self.cpu_percent = Some(match self.cpu_percent {
                None => share,
                Some(previous) => 0.5 * previous + 0.5 * share,
            });
        }
        self.last_cpu_seconds = Some(cpu_seconds);
        let cpu = self.cpu_percent.unwrap_or(0.0);
        let over = cpu > self.budget.max_cpu_percent || resident > self.budget.max_memory;
        let calm = cpu < self.budget.max_cpu_percent / 2.0
            && (resident as f64) < 0.8 * self.budget.max_memory as f64;
        if over {
            self.level = (self.level + 1).min(MAX_LEVEL);
            self.calm = 0;
        } else if calm {
            self.calm += 1;
            if self.calm >= CALM_SCANS && self.level > 0 {
                self.level -= 1;
                self.calm = 0;
            }
        } else {
            self.calm = 0;
        }
        Decision::at(self.level)
    }

    /// The smoothed CPU share, in percent of one core (0 before two observations).
    pub fn cpu_percent(&self) -> f64 {
        self.cpu_percent.unwrap_or(0.0)
    }
}

/// With attribution off, a socket the previous inventory knew keeps its owners there, so
/// that backing off does not look like every owner vanished. Sockets new since then have
/// none (their attribution says so).
pub fn keep_known_owners(previous: &Inventory, current: &mut Inventory) {
    for (key, socket) in current.sockets.iter_mut() {
        if let Some(known) = previous.sockets.get(key) {
            socket.pids.clone_from(&known.pids);
            socket.attribution = known.attribution;
            for pid in &known.pids {
                if let Some(p) = previous.processes.get(pid) {
                    current.processes.entry(*pid).or_insert_with(|| p.clone());
                }
            }
        }
    }
}

/// The agent's CPU seconds so far (user + system, all threads).
pub fn cpu_seconds() -> Option<f64> {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).ok()?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Some(secs(usage.user_time()) + secs(usage.system_time()))
}

/// The agent's resident memory in bytes (`VmRSS`), `None` when unreadable.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget() -> FootprintSection {
        FootprintSection {
            max_cpu_percent: 5.0,
            max_memory: 100 << 20,
        }
    }

    const SCAN: Duration = Duration::from_secs(10);

    #[test]
    fn steps_up_while_over_budget_and_down_only_after_calm_scans() {
        let mut guard = Guard::new(budget());
        let mut cpu = 0.0;
        assert_eq!(guard.observe(cpu, SCAN, 10 << 20).level, 0);
        // 20% of a core: over the 5% budget every scan.
        let mut levels = Vec::new();
        for _ in 0..4 {
            cpu += 2.0;
            levels.push(guard.observe(cpu, SCAN, 10 << 20));
        }
        assert_eq!(
            levels.iter().map(|d| d.level).collect::<Vec<_>>(),
            [1, 2, 3, 3]
        );
        assert_eq!(levels[1].interval_factor, 4);
        assert!(levels[1].attribute_processes);
        assert!(!levels[2].attribute_processes);
        // Idle again: the smoothed share falls under half the budget after a few scans,
        // then one level down per CALM_SCANS scans.
        let mut seen = Vec::new();
        for _ in 0..40 {
            seen.push(guard.observe(cpu, SCAN, 10 << 20).level);
        }
        assert_eq!(seen.last(), Some(&0), "{seen:?}");
        let first_down = seen.iter().position(|&l| l < 3).unwrap_or(usize::MAX);
        assert!(
            first_down >= CALM_SCANS as usize - 1,
            "stepped down too soon: {seen:?}"
        );
    }

    #[test]
    fn memory_over_budget_backs_off_too() {
        let mut guard = Guard::new(budget());
        assert_eq!(guard.observe(0.0, SCAN, 200 << 20).level, 1);
        assert_eq!(guard.observe(0.0, SCAN, 200 << 20).level, 2);
        // Between 80% and 100% of the budget: neither up nor calm.
        for _ in 0..20 {
            assert_eq!(guard.observe(0.0, SCAN, 90 << 20).level, 2);
        }
    }

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tportolan-agent\nVmPeak:\t  100 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(12345 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        assert!(resident_bytes().is_some_and(|b| b > 0));
        assert!(cpu_seconds().is_some());
    }
}
