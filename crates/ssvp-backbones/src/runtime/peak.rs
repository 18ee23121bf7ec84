//! The machine's f32 multiply-add peak, measured: the yardstick of `ssvp bench`'s "share of
//! peak" column.
//!
//! Why measured rather than computed from a spec sheet: clocks under an all-core vector load,
//! the number of FMA pipes, and whether 512-bit vectors run at full or half rate differ between
//! chips that report the same flags, and a virtual machine may not run at its nominal clock.
//! A kernel of independent FMA chains that never touches memory is what a matmul's inner loop
//! can reach at best, on this machine, now.

use std::time::{Duration, Instant};

/// One measurement of the probe.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct FmaPeak {
    /// Floating-point operations per second of all threads together, in GFLOP/s (one FMA counts
    /// two).
    pub gflops: f64,
    /// Threads that ran the probe at once.
    pub threads: usize,
    /// The instruction set of the kernel that gave the peak (`avx512f`, `avx2+fma` or
    /// `portable`).
    pub kernel: &'static str,
}

/// Independent accumulators per thread: enough to cover the FMA latency (4 cycles) times two
/// pipes with room to spare, so the probe is bound by throughput alone.
const CHAINS: usize = 12;

/// Measures the f32 FMA peak of `threads` threads running at once for about `duration`
/// (repeated three times; the best counts).
pub fn measure_fma_peak(threads: usize, duration: Duration) -> FmaPeak {
    let threads = threads.max(1);
    let mut best = FmaPeak {
        gflops: 0.0,
        threads,
        kernel: "portable",
    };
    for (kernel, run) in kernels() {
        // Calibrate the iteration count on one short run, then time all threads together.
        let probe = 1 << 14;
        let t0 = Instant::now();
        std::hint::black_box(run(probe));
        let per_iter = t0.elapsed().as_secs_f64().max(1e-9) / probe as f64;
        let iters = ((duration.as_secs_f64() / per_iter) as u64).max(probe);
        for _ in 0..3 {
            let t0 = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| std::hint::black_box(run(iters)));
                }
            });
            let secs = t0.elapsed().as_secs_f64();
            let flops = flops_per_iter(kernel) * iters as f64 * threads as f64;
            let gflops = flops / secs / 1e9;
            if gflops > best.gflops {
                best = FmaPeak {
                    gflops,
                    threads,
                    kernel,
                };
            }
        }
    }
    best
}

/// FLOPs of one iteration of a kernel: `CHAINS` FMAs of the kernel's vector width.
fn flops_per_iter(kernel: &str) -> f64 {
    let lanes = match kernel {
        "avx512f" => 16.0,
        "avx2+fma" => 8.0,
        _ => PORTABLE_LANES as f64,
    };
    2.0 * lanes * CHAINS as f64
}

type Kernel = fn(u64) -> f32;

/// The kernels this CPU can run, widest first.
fn kernels() -> Vec<(&'static str, Kernel)> {
    #[allow(unused_mut)]
    let mut found: Vec<(&'static str, Kernel)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            found.push(("avx512f", x86::run_avx512));
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            found.push(("avx2+fma", x86::run_avx2));
        }
    }
    if found.is_empty() {
        found.push(("portable", run_portable));
    }
    found
}

const PORTABLE_LANES: usize = 8;

/// `CHAINS` chains of 8-lane `a = a * m + c` the compiler may vectorise (no FMA guaranteed):
/// for CPUs other than x86-64, where the probe gives a lower bound.
fn run_portable(iters: u64) -> f32 {
    let m = std::hint::black_box(0.999_999_f32);
    let c = std::hint::black_box(1e-7_f32);
    let mut acc = [[1.0f32; PORTABLE_LANES]; CHAINS];
    for _ in 0..iters {
        for chain in acc.iter_mut() {
            for v in chain.iter_mut() {
                *v = v.mul_add(m, c);
            }
        }
    }
    acc.iter().flatten().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::CHAINS;
    use std::arch::x86_64::*;

    pub(super) fn run_avx2(iters: u64) -> f32 {
        // SAFETY: chosen only where `avx2` and `fma` were detected at run time.
        unsafe { avx2(iters) }
    }

    pub(super) fn run_avx512(iters: u64) -> f32 {
        // SAFETY: chosen only where `avx512f` was detected at run time.
        unsafe { avx512(iters) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2(iters: u64) -> f32 {
        let m = _mm256_set1_ps(std::hint::black_box(0.999_999));
        let c = _mm256_set1_ps(std::hint::black_box(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm256_fmadd_ps(*a, m, c);
            }
        }
        let mut out = [0f32; 8];
        let mut sum = _mm256_setzero_ps();
        for a in acc {
            sum = _mm256_add_ps(sum, a);
        }
        _mm256_storeu_ps(out.as_mut_ptr(), sum);
        out.iter().sum()
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn avx512(iters: u64) -> f32 {
        let m = _mm512_set1_ps(std::hint::black_box(0.999_999));
        let c = _mm512_set1_ps(std::hint::black_box(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(*a, m, c);
            }
        }
        let mut sum = _mm512_setzero_ps();
        for a in acc {
            sum = _mm512_add_ps(sum, a);
        }
        _mm512_reduce_add_ps(sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_measures_a_positive_finite_rate_for_every_kernel() {
        for (kernel, run) in kernels() {
            let v = run(1000);
            assert!(v.is_finite(), "{kernel}: {v}");
        }
        let peak = measure_fma_peak(1, Duration::from_millis(5));
        assert!(peak.gflops.is_finite() && peak.gflops > 0.0, "{peak:?}");
        assert_eq!(peak.threads, 1);
    }
}
