//! This process's memory as the kernel reports it (Linux /proc/self/status): for stats and the bench.

/// Peak resident memory of this process so far (VmHWM), bytes.
pub fn peak_rss() -> Option<u64> {
    read_status("VmHWM:")
}

/// Current resident memory (VmRSS), bytes.
pub fn current_rss() -> Option<u64> {
    read_status("VmRSS:")
}

fn read_status(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
