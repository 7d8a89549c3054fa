//! A minimal GGUF header walk, used only to name the tensor behind candle's "unknown dtype" error.

use std::io::Read;

fn u32_le(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn u64_le(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn skip(r: &mut impl Read, n: u64) -> std::io::Result<()> {
    let copied = std::io::copy(&mut r.take(n), &mut std::io::sink())?;
    if copied != n {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

fn string(r: &mut impl Read) -> std::io::Result<String> {
    let n = u64_le(r)?;
    let mut buf = Vec::new();
    r.take(n).read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn skip_value(r: &mut impl Read, ty: u32) -> std::io::Result<()> {
    match ty {
        0 | 1 | 7 => skip(r, 1),
        2 | 3 => skip(r, 2),
        4..=6 => skip(r, 4),
        10..=12 => skip(r, 8),
        8 => {
            let n = u64_le(r)?;
            skip(r, n)
        }
        9 => {
            let item = u32_le(r)?;
            let n = u64_le(r)?;
            (0..n).try_for_each(|_| skip_value(r, item))
        }
        _ => Err(std::io::ErrorKind::InvalidData.into()),
    }
}

/// ggml type ids candle reads.
fn known(ty: u32) -> bool {
    matches!(ty, 0..=3 | 6..=15 | 30)
}

/// The first tensor whose type candle does not know, with that type id (GGUF v2/v3 only).
pub fn first_unknown_type(r: &mut impl Read) -> std::io::Result<Option<(String, u32)>> {
    skip(r, 4)?;
    let version = u32_le(r)?;
    if version < 2 {
        return Ok(None);
    }
    let n_tensors = u64_le(r)?;
    let n_kv = u64_le(r)?;
    for _ in 0..n_kv {
        let _key = string(r)?;
        let ty = u32_le(r)?;
        skip_value(r, ty)?;
    }
    for _ in 0..n_tensors {
        let name = string(r)?;
        let n_dims = u32_le(r)?;
        skip(r, 8 * n_dims as u64)?;
        let ty = u32_le(r)?;
        skip(r, 8)?;
        if !known(ty) {
            return Ok(Some((name, ty)));
        }
    }
    Ok(None)
}

/// ggml's name for a type id.
pub fn type_name(ty: u32) -> String {
    let name = match ty {
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return format!("ggml type {ty}"),
    };
    format!("{name} (ggml type {ty})")
}
