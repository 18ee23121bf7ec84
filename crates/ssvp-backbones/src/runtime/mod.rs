//! Process-wide settings for running tensor work, and what the machine can do.

mod cpu;
mod device;
mod peak;

pub use cpu::{cpu_info, memory_info, CpuFeatures, CpuInfo, MemoryInfo};
pub use device::{device_name, parse_device, CUDA_BUILT};
pub use peak::{measure_fma_peak, FmaPeak};

/// Makes the C allocator keep freed memory for reuse instead of handing it back to the kernel;
/// returns whether the settings took effect (glibc on Linux only; elsewhere nothing changes).
///
/// Why: candle allocates a fresh buffer for every op's output. glibc serves buffers above its
/// mmap threshold (128 KiB, adapting upwards) with `mmap` and returns them with `munmap` on free,
/// and trims the top of its heap, so the next op's buffer is faulted in and zeroed by the kernel
/// page by page again. In the SSVP head's training step at ViT-L sizes that was about a fifth of
/// the time (`perf`: `exc_page_fault`, `clear_page_erms`, TLB shootdowns). Serving every
/// allocation from the heap (no `mmap`, whose threshold cannot be raised above 32 MiB, the size
/// of one `[8, 1369, 768]` activation) and never trimming it keeps those pages mapped: a batch-2
/// step went from 7.1 s to 5.9 s and a batch-8 step from 35 s to 21 s, at the cost of the
/// process keeping its peak heap until it exits. Call it once, first thing in `main`, before
/// threads start allocating.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) == 1
                && libc::mallopt(libc::M_TOP_PAD, 64 << 20) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// The process's peak resident memory so far in MiB (`VmHWM` of `/proc/self/status`), for
/// benchmarks' memory columns; `None` where the kernel does not report it.
pub fn peak_resident_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
