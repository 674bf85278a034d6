//! Where and in what precision the model runs: the one parser of `--device` and `--dtype`
//! for every command (`run`, `reproduce`, `stability`, `slurm-script`, `train`,
//! `train-autoencoder`, `bench`, `trace`, `convert-checkpoint`). clap calls `FromStr`, so a
//! misspelling is a usage error (exit 2) before any work starts.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};

/// A device that cannot be opened, or a dtype that cannot be used where it was asked for.
/// Both are the user's choice (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("--device {spec}: {message} (CUDA needs a build with --features cuda and a GPU)")]
    Unavailable { spec: DeviceSpec, message: String },
    #[error("--dtype {0}: a way of computing, not a storage type; use bf16")]
    NotAStorageType(DTypeSpec),
}

impl crate::error::Classify for DeviceError {
    fn is_input_error(&self) -> bool {
        true
    }
}

/// `--device`: `cpu`, `cuda:N`, or `cuda` / `gpu` (both `cuda:0`); any case.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    /// The `--batch-size` a run uses when none is given. On the CPU half the rayon threads,
    /// at least 4 and at most 32: on 2 cores batch 4 is within 6 % of the fastest measured
    /// (batch 8) and 1 GB lighter, and a many-core CPU needs more images per batch to give
    /// every thread work at the 64² and 32² levels (docs/speed.md, "Batch size" and "Scaling
    /// plan"). On CUDA 8, until a GPU has measured better.
    pub fn default_batch_size(self) -> usize {
        match self {
            DeviceSpec::Cpu => (rayon::current_num_threads() / 2).clamp(4, 32),
            DeviceSpec::Cuda(_) => 8,
        }
    }

    pub fn is_cuda(self) -> bool {
        matches!(self, DeviceSpec::Cuda(_))
    }

    /// The candle device. CUDA needs a build with the `cuda` feature and a GPU; without them
    /// this is the user's input error (exit 2).
    pub fn open(self) -> Result<Device, DeviceError> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => Device::new_cuda(n).map_err(|e| DeviceError::Unavailable {
                spec: self,
                message: e.to_string(),
            }),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let spec = s.trim().to_ascii_lowercase();
        match spec.as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("device '{s}': expected cpu, cuda, gpu or cuda:N")),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// `--dtype`: `f32`, `f16`, `bf16` or `bf16-fast`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DTypeSpec {
    #[default]
    F32,
    F16,
    Bf16,
    /// bf16 with plain bf16 products on the CPU (see `Sdseg::with_fast_bf16`); on CUDA the
    /// same as `Bf16`.
    Bf16Fast,
}

impl DTypeSpec {
    /// The dtype the model is asked to compute in.
    pub fn dtype(self) -> DType {
        match self {
            DTypeSpec::F32 => DType::F32,
            DTypeSpec::F16 => DType::F16,
            DTypeSpec::Bf16 | DTypeSpec::Bf16Fast => DType::BF16,
        }
    }
    /// Whether plain (fast) bf16 products are asked for on the CPU.
    pub fn fast_bf16(self) -> bool {
        self == DTypeSpec::Bf16Fast
    }
    /// What a run asked for `self` computes in on `device`, and the warning to print once
    /// when that is not what was asked. On the CPU `f16` becomes `f32`: no kernel here computes
    /// in f16 and candle's f16 CPU ops are ~3× slower than the f32 path while less accurate,
    /// so the run is the `f32` run, bit for bit (`--dtype bf16` is the CPU's reduced-precision
    /// mode). `bf16` / `bf16-fast` stay as asked: the model itself falls back to f32 where the
    /// CPU has no bf16 kernel level (`Sdseg::bf16_fallback_warning`).
    ///
    /// The library keeps computing in f16 on the CPU when asked directly (`Sdseg::load`),
    /// which is how the f16 code path of the model is tested without a GPU.
    pub fn for_device(self, device: DeviceSpec) -> (DTypeSpec, Option<String>) {
        match self {
            DTypeSpec::F16 if !device.is_cuda() => (
                DTypeSpec::F32,
                Some(
                    "--dtype f16: the CPU has no f16 compute path (candle's f16 CPU ops are \
                     slower than f32 and less accurate); running in f32, bit for bit the \
                     --dtype f32 run (--dtype bf16 is the reduced-precision mode on CPUs with \
                     AMX-BF16)"
                        .into(),
                ),
            ),
            d => (d, None),
        }
    }

    /// The dtype for storing weights (`convert-checkpoint`): `bf16-fast` is a way of
    /// computing, not a storage type.
    pub fn storage(self) -> Result<DType, DeviceError> {
        match self {
            DTypeSpec::Bf16Fast => Err(DeviceError::NotAStorageType(self)),
            d => Ok(d.dtype()),
        }
    }
}

impl FromStr for DTypeSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(DTypeSpec::F32),
            "f16" => Ok(DTypeSpec::F16),
            "bf16" => Ok(DTypeSpec::Bf16),
            "bf16-fast" => Ok(DTypeSpec::Bf16Fast),
            _ => Err(format!("dtype '{s}': expected f32, f16, bf16 or bf16-fast")),
        }
    }
}

impl fmt::Display for DTypeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DTypeSpec::F32 => "f32",
            DTypeSpec::F16 => "f16",
            DTypeSpec::Bf16 => "bf16",
            DTypeSpec::Bf16Fast => "bf16-fast",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_spellings() {
        for (s, want) in [
            ("cpu", DeviceSpec::Cpu),
            ("CPU", DeviceSpec::Cpu),
            ("cuda", DeviceSpec::Cuda(0)),
            ("gpu", DeviceSpec::Cuda(0)),
            (" cuda:2 ", DeviceSpec::Cuda(2)),
        ] {
            assert_eq!(s.parse::<DeviceSpec>(), Ok(want), "{s}");
        }
        for s in ["", "cuda:", "cuda:x", "gpu:1", "tpu"] {
            assert!(s.parse::<DeviceSpec>().is_err(), "{s}");
        }
        assert_eq!(DeviceSpec::Cuda(0).to_string(), "cuda:0");
        assert!(DeviceSpec::Cpu.open().unwrap().is_cpu());
        #[cfg(not(feature = "cuda"))]
        {
            let e = DeviceSpec::Cuda(1).open().unwrap_err().to_string();
            assert!(
                e.contains("--device cuda:1") && e.contains("--features cuda"),
                "{e}"
            );
        }
    }

    #[test]
    fn dtype_spellings() {
        for d in [
            DTypeSpec::F32,
            DTypeSpec::F16,
            DTypeSpec::Bf16,
            DTypeSpec::Bf16Fast,
        ] {
            assert_eq!(d.to_string().parse::<DTypeSpec>(), Ok(d));
        }
        assert!("F32".parse::<DTypeSpec>().is_err());
        assert_eq!(DTypeSpec::Bf16Fast.dtype(), DType::BF16);
        assert!(DTypeSpec::Bf16Fast.fast_bf16() && !DTypeSpec::Bf16.fast_bf16());
        assert!(DTypeSpec::Bf16Fast.storage().is_err());
        assert_eq!(DTypeSpec::F16.storage().unwrap(), DType::F16);
    }

    #[test]
    fn default_batch_size_follows_the_threads() {
        let cpu = DeviceSpec::Cpu.default_batch_size();
        assert_eq!(cpu, (rayon::current_num_threads() / 2).clamp(4, 32));
        let pool = |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        };
        for (threads, want) in [(1, 4), (2, 4), (9, 4), (16, 8), (64, 32), (192, 32)] {
            let got = pool(threads).install(|| DeviceSpec::Cpu.default_batch_size());
            assert_eq!(got, want, "{threads} threads");
        }
        assert_eq!(DeviceSpec::Cuda(0).default_batch_size(), 8);
    }

    #[test]
    fn f16_on_the_cpu_runs_as_f32_and_says_so() {
        let (d, warning) = DTypeSpec::F16.for_device(DeviceSpec::Cpu);
        assert_eq!(d, DTypeSpec::F32);
        assert!(warning.unwrap().contains("--dtype f16"));
        for d in [DTypeSpec::F32, DTypeSpec::Bf16, DTypeSpec::Bf16Fast] {
            assert_eq!(d.for_device(DeviceSpec::Cpu), (d, None), "{d}");
        }
        for d in [DTypeSpec::F16, DTypeSpec::Bf16] {
            assert_eq!(d.for_device(DeviceSpec::Cuda(0)), (d, None), "{d}");
        }
    }
}
