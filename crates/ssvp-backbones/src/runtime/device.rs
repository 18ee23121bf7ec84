//! The one place a device name (`--device`) becomes a candle [`Device`].

use candle_core::Device;

use crate::{Error, Result};

/// Whether this build can run on NVIDIA GPUs (`--features cuda`).
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// `cpu`, `cuda` (the first GPU) or `cuda:N`.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    let ordinal = match spec.as_str() {
        "cpu" => return Ok(Device::Cpu),
        "cuda" | "gpu" => 0,
        other => match other.strip_prefix("cuda:") {
            Some(n) => n.parse::<usize>().map_err(|_| Error::InvalidInput {
                message: format!("device `{spec}`: the GPU number after `cuda:` must be 0, 1, ..."),
            })?,
            None => {
                return Err(Error::InvalidInput {
                    message: format!("unknown device `{spec}` (cpu, cuda or cuda:N)"),
                })
            }
        },
    };
    cuda_device(ordinal)
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> Result<Device> {
    Device::new_cuda(ordinal).map_err(|e| Error::Device {
        message: format!(
            "cannot open CUDA device {ordinal}: {e} (is the NVIDIA driver loaded, and are \
             libcublas, libcurand and libnvrtc of CUDA 12 or 13 on the library path?)"
        ),
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(ordinal: usize) -> Result<Device> {
    Err(Error::Device {
        message: format!(
            "device cuda:{ordinal}: this ssvp was built without CUDA; rebuild with \
             `cargo build --release --features cuda` (README: \"GPU build\")"
        ),
    })
}

/// A short name of `device` for reports (`cpu`, `cuda:0`).
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_or_say_what_is_accepted() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device(" CPU ").unwrap().is_cpu());
        let err = parse_device("tpu").unwrap_err().to_string();
        assert!(err.contains("cpu, cuda or cuda:N"), "{err}");
        let err = parse_device("cuda:x").unwrap_err().to_string();
        assert!(err.contains("GPU number"), "{err}");
        if !CUDA_BUILT {
            let err = parse_device("cuda").unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
        assert_eq!(device_name(&Device::Cpu), "cpu");
    }
}
