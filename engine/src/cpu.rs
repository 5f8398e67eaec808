//! CPU time of this process and of one of its threads (a shard's): the
//! bench's `cpu_s`, and each shard's in a worker's dump. The process's comes
//! from `/proc/self/stat` (utime + stime of all its threads, in the kernel's
//! fixed user-visible tick of 1/100 s); a thread's from its scheduler
//! statistics, `/proc/self/task/<tid>/schedstat` (its time on a CPU in ns),
//! or, where the kernel keeps none, from its `stat` in ticks as well.

use std::time::Duration;

/// Ticks per second of `/proc/<pid>/stat` (USER_HZ, fixed at 100 on Linux).
const USER_HZ: u64 = 100;

/// User + system CPU time consumed by this process so far, if readable.
pub fn process_cpu_time() -> Option<Duration> {
    stat_cpu_time("/proc/self/stat")
}

/// CPU time consumed so far by thread `tid` of this process (as `gettid`
/// gave it), if it runs and the kernel tells it.
pub fn thread_cpu_time(tid: i32) -> Option<Duration> {
    schedstat_cpu_time(&format!("/proc/self/task/{tid}/schedstat"))
        .or_else(|| stat_cpu_time(&format!("/proc/self/task/{tid}/stat")))
}

/// The id of the calling thread, for [`thread_cpu_time`].
pub(crate) fn current_thread_id() -> i32 {
    rustix::thread::gettid().as_raw_nonzero().get()
}

/// The first of a `schedstat`'s three numbers: nanoseconds on a CPU.
fn schedstat_cpu_time(path: &str) -> Option<Duration> {
    let schedstat = std::fs::read_to_string(path).ok()?;
    Some(Duration::from_nanos(schedstat.split_whitespace().next()?.parse().ok()?))
}

fn stat_cpu_time(path: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may contain spaces; fields resume after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
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
    fn cpu_time_grows_with_work_in_the_process_and_in_the_thread_that_works() {
        // Works until the kernel has counted some of it in both (a stalled
        // machine may take long to give a tick), with a bound that fails
        // clearly. (Each is kept by the kernel on its own: neither bounds the
        // other.)
        let me = current_thread_id();
        let before = process_cpu_time().expect("readable /proc/self/stat");
        let mine_before = thread_cpu_time(me).expect("this thread's stat is readable");
        let start = std::time::Instant::now();
        let mut x = 1u64;
        let after = loop {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            let (now, mine) = (process_cpu_time().unwrap(), thread_cpu_time(me).unwrap());
            if now > before && mine > mine_before {
                break now;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "no CPU time counted in 60 s of work");
        };
        // The thread's grew by any amount (finer where the kernel keeps
        // schedstat); the process's by whole ticks.
        let tick = Duration::from_millis(1000 / USER_HZ);
        assert!(after - before >= tick, "the process's in whole ticks: {:?}", after - before);
        assert_eq!(thread_cpu_time(0), None, "no thread 0");
    }

    #[test]
    fn a_schedstat_gives_its_time_on_a_cpu_in_nanoseconds_and_a_bad_one_none() {
        let path = std::env::temp_dir().join(format!("shardflow-schedstat-{}", std::process::id()));
        let read = |text: &str| {
            std::fs::write(&path, text).expect("a temporary file");
            schedstat_cpu_time(path.to_str().expect("a UTF-8 path"))
        };
        assert_eq!(read("123456789 5000 6\n"), Some(Duration::from_nanos(123_456_789)));
        assert_eq!(read("x 5000 6\n"), None);
        assert_eq!(read(""), None);
        std::fs::remove_file(&path).expect("removed");
        assert_eq!(schedstat_cpu_time(path.to_str().unwrap()), None, "no file");
    }
}
