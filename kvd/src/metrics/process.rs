//! The process metrics every Prometheus client exports (`process_*`), read
//! from /proc/self at each scrape.

use std::path::Path;

/// The process's figures, read now.
#[derive(Debug, Default, PartialEq)]
pub struct Process {
    /// User and system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub resident_bytes: u64,
    /// Virtual memory size, bytes.
    pub virtual_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft limit of open file descriptors, when there is one.
    pub max_fds: Option<u64>,
    /// When the process started, seconds since the epoch.
    pub start_time_seconds: f64,
}

/// The fields of /proc/PID/stat that make the metrics.
#[derive(Debug, PartialEq)]
struct Stat {
    /// utime + stime, clock ticks.
    cpu_ticks: u64,
    /// Since boot, clock ticks.
    start_ticks: u64,
    vsize_bytes: u64,
    rss_pages: u64,
}

impl Process {
    /// The figures of this process, or `None` without /proc.
    pub fn read() -> Option<Process> {
        let proc = Path::new("/proc");
        let stat = parse_stat(&std::fs::read_to_string(proc.join("self/stat")).ok()?)?;
        let ticks = rustix::param::clock_ticks_per_second().max(1) as f64;
        let open_fds = std::fs::read_dir(proc.join("self/fd")).map(|d| d.count() as u64).unwrap_or(0);
        let max_fds = std::fs::read_to_string(proc.join("self/limits")).ok().and_then(|l| parse_max_fds(&l));
        Some(Process {
            cpu_seconds: stat.cpu_ticks as f64 / ticks,
            resident_bytes: stat.rss_pages.saturating_mul(rustix::param::page_size() as u64),
            virtual_bytes: stat.vsize_bytes,
            open_fds,
            max_fds,
            start_time_seconds: boot_time() + stat.start_ticks as f64 / ticks,
        })
    }
}

/// When the system booted, seconds since the epoch: the wall clock less the
/// time since boot. (Not /proc/stat's `btime`: the shipped unit's
/// `ProcSubset=pid` hides /proc/stat.)
fn boot_time() -> f64 {
    let secs = |t: rustix::time::Timespec| t.tv_sec as f64 + t.tv_nsec as f64 / 1e9;
    let now = secs(rustix::time::clock_gettime(rustix::time::ClockId::Realtime));
    let since_boot = secs(rustix::time::clock_gettime(rustix::time::ClockId::Boottime));
    now - since_boot
}

/// The fields of a /proc/PID/stat line (proc(5)).
fn parse_stat(text: &str) -> Option<Stat> {
    // NOTE: the command name, in parentheses, may hold spaces and
    // parentheses itself; the fields go on after the last `)`.
    let rest = &text[text.rfind(')')? + 1..];
    // Field 3 (state) is the first here.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
    Some(Stat {
        cpu_ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
        vsize_bytes: field(23)?,
        rss_pages: field(24)?,
    })
}

/// The soft limit of open files in /proc/PID/limits; `None` when unlimited.
fn parse_max_fds(text: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name_whatever_it_holds() {
        let line = "4242 (kv d) (x)) S 1 4242 4242 0 -1 4194560 1234 0 5 0 250 75 0 0 20 0 9 0 8800 \
                    1073741824 2560 18446744073709551615 1 1 0 0 0 0 0 4096 17664 0 0 0 17 1 0 0 0 0 0\n";
        let s = parse_stat(line).expect("parsed");
        assert_eq!(s, Stat { cpu_ticks: 325, start_ticks: 8800, vsize_bytes: 1 << 30, rss_pages: 2560 });
        assert_eq!(parse_stat("12 (short) S 1 2"), None, "too few fields");
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn the_boot_time_from_the_clocks_is_the_one_proc_stat_gives() {
        let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
        let btime: f64 = stat
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse().ok())
            .expect("btime in /proc/stat");
        assert!((boot_time() - btime).abs() < 2.0, "clocks say {}, /proc/stat {btime}", boot_time());
    }

    #[test]
    fn the_fd_limit_is_found_by_name() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n\
                      Max locked memory         8388608              8388608              bytes     \n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert_eq!(parse_max_fds(&limits.replace(" 1024 ", " unlimited ")), None);
        assert_eq!(parse_max_fds("Max cpu time  unlimited  unlimited  seconds\n"), None);
    }

    #[test]
    fn this_process_is_read_from_proc() {
        let p = Process::read().expect("/proc is there");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
        // The test binary started before now, and not before 2020.
        assert!(p.start_time_seconds <= now + 1.0 && p.start_time_seconds > 1.5e9, "{p:?}");
        assert!(p.resident_bytes > 0 && p.virtual_bytes >= p.resident_bytes, "{p:?}");
        assert!(p.open_fds >= 3 && p.max_fds.is_some_and(|m| m >= p.open_fds), "{p:?}");
    }
}
