//! What the CPU and memory of this machine are (`ssvp doctor`): the model name, the vector and
//! matrix extensions the kernels can use, the threads tensor work runs on, and the memory.
//!
//! Extensions are read from the CPU itself (`cpuid`, and `is_x86_feature_detected!`, which also
//! asks whether the operating system saves the wide registers); on Linux the AMX flags must
//! also be in `/proc/cpuinfo`, where the kernel lists them only when it enables AMX's tile
//! state for programs.

use serde::Serialize;

/// The vector and matrix extensions that matter to the tensor kernels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CpuFeatures {
    /// 256-bit integer and float vectors.
    pub avx2: bool,
    /// Fused multiply-add on 256-bit vectors.
    pub fma: bool,
    /// 512-bit vectors (the gemm crate's AVX-512 kernels run where this is set).
    pub avx512f: bool,
    /// bf16 dot products on 512-bit vectors.
    pub avx512_bf16: bool,
    /// AMX tiles (the tile registers and their loads).
    pub amx_tile: bool,
    /// AMX bf16 tile multiplies.
    pub amx_bf16: bool,
}

impl CpuFeatures {
    /// Each extension's usual name and whether the CPU has it, in a fixed order.
    pub fn list(&self) -> [(&'static str, bool); 6] {
        [
            ("AVX2", self.avx2),
            ("FMA", self.fma),
            ("AVX-512F", self.avx512f),
            ("AVX512-BF16", self.avx512_bf16),
            ("AMX-TILE", self.amx_tile),
            ("AMX-BF16", self.amx_bf16),
        ]
    }

    /// The extensions of the CPU running this, as usable by programs.
    pub fn detect() -> Self {
        detect_features(linux_cpuinfo_flags().as_deref())
    }
}

/// The CPU of this machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CpuInfo {
    /// The model name (`/proc/cpuinfo`'s `model name`, else the CPU's brand string, else
    /// `unknown`).
    pub model: String,
    /// The instruction set architecture (`x86_64`, `aarch64`, ...).
    pub arch: &'static str,
    /// Logical CPUs this process may run on.
    pub logical_cpus: usize,
    /// Threads the tensor work runs on (rayon's global pool; `RAYON_NUM_THREADS` sets it).
    pub threads: usize,
    /// The extensions.
    pub features: CpuFeatures,
}

/// The CPU running this process.
pub fn cpu_info() -> CpuInfo {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok();
    let model = cpuinfo
        .as_deref()
        .and_then(cpuinfo_model)
        .or_else(brand_string)
        .unwrap_or_else(|| "unknown".to_string());
    CpuInfo {
        model,
        arch: std::env::consts::ARCH,
        logical_cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        threads: rayon::current_num_threads(),
        features: CpuFeatures::detect(),
    }
}

/// The machine's memory, in MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MemoryInfo {
    /// All of it (`MemTotal`).
    pub total_mib: u64,
    /// What can be had without swapping (`MemAvailable`), when the kernel says.
    pub available_mib: Option<u64>,
}

/// The memory of this machine (`/proc/meminfo`; `None` where there is none).
pub fn memory_info() -> Option<MemoryInfo> {
    parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// Reads `MemTotal` and `MemAvailable` (kB) from the text of `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> Option<MemoryInfo> {
    let field = |key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        let kib: u64 = line[key.len()..]
            .trim_start_matches(':')
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some(kib / 1024)
    };
    Some(MemoryInfo {
        total_mib: field("MemTotal")?,
        available_mib: field("MemAvailable"),
    })
}

/// The first `model name` of the text of `/proc/cpuinfo` (x86), or its `Model`/`CPU part`
/// line on ARM boards that have no model name.
pub fn cpuinfo_model(text: &str) -> Option<String> {
    ["model name", "Model", "Hardware"].iter().find_map(|key| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == *key && !v.trim().is_empty()).then(|| collapse_spaces(v.trim()))
        })
    })
}

/// The first `flags` line of the text of `/proc/cpuinfo`, split.
pub fn cpuinfo_flags(text: &str) -> Option<Vec<String>> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "flags").then(|| v.split_whitespace().map(str::to_string).collect())
    })
}

fn linux_cpuinfo_flags() -> Option<Vec<String>> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    cpuinfo_flags(&std::fs::read_to_string("/proc/cpuinfo").ok()?)
}

fn collapse_spaces(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The extensions from the CPU, narrowed by the kernel's `flags` where given (Linux).
fn detect_features(kernel_flags: Option<&[String]>) -> CpuFeatures {
    let raw = cpu_features();
    match kernel_flags {
        Some(flags) => {
            let has = |f: &str| flags.iter().any(|x| x == f);
            CpuFeatures {
                amx_tile: raw.amx_tile && has("amx_tile"),
                amx_bf16: raw.amx_bf16 && has("amx_bf16"),
                ..raw
            }
        }
        None => raw,
    }
}

#[cfg(target_arch = "x86_64")]
fn cpu_features() -> CpuFeatures {
    use std::arch::x86_64::__cpuid_count;
    let avx512f = std::arch::is_x86_feature_detected!("avx512f");
    // SAFETY: cpuid exists on every x86_64 CPU; leaf 0 says whether leaf 7 does, and leaf 7's
    // EAX how many sub-leaves it has.
    #[allow(unused_unsafe)]
    let (leaf7, leaf7_1) = unsafe {
        let leaf7 = (__cpuid_count(0, 0).eax >= 7).then(|| __cpuid_count(7, 0));
        let leaf7_1 = leaf7.filter(|l| l.eax >= 1).map(|_| __cpuid_count(7, 1));
        (leaf7, leaf7_1)
    };
    let bit = |reg: Option<u32>, n: u32| reg.is_some_and(|r| r & (1 << n) != 0);
    CpuFeatures {
        avx2: std::arch::is_x86_feature_detected!("avx2"),
        fma: std::arch::is_x86_feature_detected!("fma"),
        avx512f,
        // CPUID.(7,1):EAX[5]; usable only where AVX-512 state is enabled.
        avx512_bf16: avx512f && bit(leaf7_1.map(|l| l.eax), 5),
        // CPUID.(7,0):EDX[24] AMX-TILE, EDX[22] AMX-BF16.
        amx_tile: bit(leaf7.map(|l| l.edx), 24),
        amx_bf16: bit(leaf7.map(|l| l.edx), 22),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_features() -> CpuFeatures {
    CpuFeatures::default()
}

#[cfg(target_arch = "x86_64")]
fn brand_string() -> Option<String> {
    use std::arch::x86_64::__cpuid;
    // SAFETY: leaf 0x8000_0000 says whether the brand leaves exist.
    #[allow(unused_unsafe)]
    let bytes = unsafe {
        if __cpuid(0x8000_0000).eax < 0x8000_0004 {
            return None;
        }
        let mut bytes = Vec::with_capacity(48);
        for leaf in 0x8000_0002u32..=0x8000_0004 {
            let r = __cpuid(leaf);
            for reg in [r.eax, r.ebx, r.ecx, r.edx] {
                bytes.extend(reg.to_le_bytes());
            }
        }
        bytes
    };
    let text = String::from_utf8_lossy(&bytes);
    let text = collapse_spaces(text.trim_matches(char::from(0)).trim());
    (!text.is_empty()).then_some(text)
}

#[cfg(not(target_arch = "x86_64"))]
fn brand_string() -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPUINFO: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R)  \
                           Platinum 8480+\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n\n\
                           processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n";

    #[test]
    fn proc_files_parse() {
        assert_eq!(
            cpuinfo_model(CPUINFO).as_deref(),
            Some("Intel(R) Xeon(R) Platinum 8480+")
        );
        let flags = cpuinfo_flags(CPUINFO).unwrap();
        assert!(flags.contains(&"amx_tile".to_string()));
        let mem = parse_meminfo(
            "MemTotal:       24576000 kB\nMemFree:  1000 kB\nMemAvailable:   12288000 kB\n",
        )
        .unwrap();
        assert_eq!(mem.total_mib, 24000);
        assert_eq!(mem.available_mib, Some(12000));
        assert!(parse_meminfo("nothing").is_none());
    }

    #[test]
    fn this_machine_is_described() {
        let cpu = cpu_info();
        assert!(!cpu.model.is_empty());
        assert!(cpu.logical_cpus >= 1 && cpu.threads >= 1);
        // The kernel's flags agree with the CPU's own report where both exist.
        if let Some(flags) = linux_cpuinfo_flags() {
            let f = cpu.features;
            assert_eq!(f.avx2, flags.iter().any(|x| x == "avx2"));
            // Without the kernel's AMX flag, AMX is reported absent.
            let none: Vec<String> = Vec::new();
            let narrowed = detect_features(Some(&none));
            assert!(!narrowed.amx_tile && !narrowed.amx_bf16);
        }
        if cfg!(target_os = "linux") {
            assert!(memory_info().unwrap().total_mib > 0);
        }
    }
}
