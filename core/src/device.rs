//! Device selection from a user-facing string (`cpu`, `cuda`, `cuda:N`), with a clear error when
//! the binary was built without the `cuda` feature, and the dtype names users type.

use candle_core::{DType, Device};

use crate::{Error, Result};

/// `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
pub fn parse_device(spec: &str) -> Result<Device> {
    match spec.trim().to_ascii_lowercase().as_str() {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .map_err(|_| Error::Input(format!("device '{spec}': bad CUDA ordinal")))?,
                None => 0,
            };
            if !cfg!(feature = "cuda") {
                return Err(Error::Input(format!(
                    "device '{spec}' needs a build with `--features cuda` (this binary is CPU-only)"
                )));
            }
            Ok(Device::new_cuda(ordinal)?)
        }
        _ => Err(Error::Input(format!(
            "device '{spec}' unknown: use cpu, cuda or cuda:N"
        ))),
    }
}

/// `f32`, `f16`, `bf16`. Half precision on CPU works but is slower than f32 there; it is meant for GPUs.
pub fn parse_dtype(spec: &str) -> Result<DType> {
    match spec.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        _ => Err(Error::Input(format!(
            "dtype '{spec}' unknown: use f32, f16 or bf16"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_explains() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device("tpu")
            .unwrap_err()
            .to_string()
            .contains("cpu, cuda"));
        assert!(parse_device("cuda:x").is_err());
        if !cfg!(feature = "cuda") {
            assert!(parse_device("cuda")
                .unwrap_err()
                .to_string()
                .contains("--features cuda"));
        }
        assert_eq!(parse_dtype("BF16").unwrap(), DType::BF16);
        assert!(parse_dtype("f8").is_err());
    }
}
