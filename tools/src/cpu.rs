//! CPU time of this process, from `/proc/self/stat` (utime + stime, in the kernel's
//! fixed user-visible tick of 1/100 s).

use std::time::Duration;

/// Ticks per second of `/proc/<pid>/stat` (USER_HZ, fixed at 100 on Linux).
const USER_HZ: u64 = 100;

/// User + system CPU time consumed by this process so far, if readable.
pub(crate) fn process_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may contain spaces; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) … utime is field 14 of the line, index 11 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 1000 / USER_HZ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_with_work() {
        // Works until the kernel has counted a tick of it (a stalled machine may
        // take long to give one), with a bound that fails clearly.
        let before = process_cpu_time().expect("readable /proc/self/stat");
        let start = std::time::Instant::now();
        let mut x = 1u64;
        let after = loop {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            let now = process_cpu_time().unwrap();
            if now > before {
                break now;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "no CPU time counted in 60 s of work");
        };
        assert!(after - before >= Duration::from_millis(1000 / USER_HZ), "{before:?} -> {after:?}: whole ticks");
    }
}
