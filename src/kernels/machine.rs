//! Facts about this machine that plans and memory checks may depend on (never the thread count
//! in use): its cores, the size of one core's L2 cache, the memory available now.

use std::sync::OnceLock;

/// The cores of this machine (what `--threads` defaults to), 1 if unknown. A plan may depend on
/// it (a property of the machine, like its cache sizes), never on the thread count in use.
pub fn machine_cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The size of one core's L2 cache in bytes (Linux sysfs; 1 MiB if unknown). Like
/// [`machine_cores`], a plan may depend on it.
pub fn l2_bytes() -> usize {
    static L2: OnceLock<usize> = OnceLock::new();
    *L2.get_or_init(|| {
        let size = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cache/index2/size").unwrap_or_default();
        let size = size.trim();
        let (digits, scale) = match size.strip_suffix('K') {
            Some(d) => (d, 1 << 10),
            None => size.strip_suffix('M').map_or((size, 1), |d| (d, 1 << 20)),
        };
        digits.parse::<usize>().ok().filter(|&n| n > 0).map_or(1 << 20, |n| n.saturating_mul(scale))
    })
}

/// Memory the machine can give this process now without swapping (MemAvailable from
/// /proc/meminfo), in bytes; `u64::MAX` where unknown. Checked before large allocations.
pub fn available_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemAvailable:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(u64::MAX, |kb| kb.saturating_mul(1024))
}
