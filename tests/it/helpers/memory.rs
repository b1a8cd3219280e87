//! What a running `oprun serve` holds in memory, read from `/proc`, and the bound
//! docs/configuration.md ("Bounds") promises for it.

/// Peak resident memory `oprun serve` may reach with default settings.
pub const MEMORY_BOUND_BYTES: u64 = 300_000_000;

/// A `/proc/<pid>/status` figure in bytes (`VmHWM` = peak resident set, `VmRSS` = now).
pub fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

/// `VmHWM` (peak resident set) of process `pid`, in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmHWM")
}
