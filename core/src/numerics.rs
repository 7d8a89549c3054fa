//! Numeric comparisons shared by the parity tests, gradient checks and benches, so "how close is
//! close" is measured one way everywhere.

use candle_core::{DType, Tensor};

use crate::Result;

/// max |a − b| over all elements, computed in f32 (shapes must match).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    let d = (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?;
    Ok(d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

/// max |a| over all elements, in f32.
pub fn max_abs(a: &Tensor) -> Result<f32> {
    Ok(a.to_dtype(DType::F32)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn measures_the_largest_gap() {
        let a = Tensor::new(&[1f32, -2.0, 3.0], &Device::Cpu).unwrap();
        let b = Tensor::new(&[1f32, 2.0, 2.5], &Device::Cpu).unwrap();
        assert_eq!(max_abs_diff(&a, &b).unwrap(), 4.0);
        assert_eq!(max_abs(&a).unwrap(), 3.0);
    }
}
