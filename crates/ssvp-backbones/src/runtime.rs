//! Process-wide settings for running tensor work on the CPU.

/// Makes the C allocator keep freed memory for reuse instead of handing it back to the kernel;
/// returns whether the settings took effect (glibc on Linux only; elsewhere nothing changes).
///
/// Why: candle allocates a fresh buffer for every op's output. glibc serves buffers above its
/// mmap threshold (128 KiB, adapting upwards) with `mmap` and returns them with `munmap` on free,
/// and trims the top of its heap, so the next op's buffer is faulted in and zeroed by the kernel
/// page by page again. In the SSVP head's training step at ViT-L sizes that was about a fifth of
/// the time (`perf`: `exc_page_fault`, `clear_page_erms`, TLB shootdowns). Raising the mmap
/// threshold to its maximum (32 MiB) and disabling trimming keeps those pages mapped: a batch-2
/// step went from 7.1 s to 5.9 s, at the cost of the process keeping its peak heap until it
/// exits. Call it once, first thing in `main`, before threads start allocating.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc's largest allowed mmap threshold (HEAP_MAX_SIZE / 2 on 64-bit).
        const MMAP_THRESHOLD: libc::c_int = 32 << 20;
        // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) == 1
                && libc::mallopt(libc::M_TOP_PAD, 64 << 20) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
