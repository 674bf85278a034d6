//! Tensor records of a torch pickle, decoded without executing anything: the opcodes are
//! interpreted by `candle_core::pickle::Stack` into plain `Object`s, and only
//! `torch._utils._rebuild_tensor_v2` records (possibly wrapped) become tensors.

use candle_core::pickle::Object;
use candle_core::DType;

/// One tensor record of the pickle: where its bytes are and how to view them.
#[derive(Clone, Debug)]
pub(super) struct PthEntry {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
    pub offset: usize,
    pub zip_path: String,
}

/// Decode one state-dict value: `_rebuild_tensor_v2(storage, offset, size, stride, …)`,
/// possibly wrapped in `_rebuild_parameter` or `_rebuild_from_type_v2`.
pub(super) fn pth_entry(value: Object, dir: &str) -> Result<PthEntry, String> {
    let (callable, args) = value
        .reduce()
        .map_err(|o| format!("not a tensor ({})", short(&o)))?;
    let (callable, args) = match callable {
        Object::Class {
            module_name,
            class_name,
        } if module_name == "torch._tensor" && class_name == "_rebuild_from_type_v2" => {
            let mut a = args
                .tuple()
                .map_err(|o| format!("bad args {}", short(&o)))?;
            if a.len() < 3 {
                return Err("bad _rebuild_from_type_v2 args".into());
            }
            let inner_args = a.remove(2);
            (a.remove(0), inner_args)
        }
        Object::Class {
            module_name,
            class_name,
        } if module_name == "torch._utils" && class_name == "_rebuild_parameter" => {
            let mut a = args
                .tuple()
                .map_err(|o| format!("bad args {}", short(&o)))?;
            if a.is_empty() {
                return Err("bad _rebuild_parameter args".into());
            }
            a.remove(0)
                .reduce()
                .map_err(|o| format!("not a tensor ({})", short(&o)))?
        }
        c => (c, args),
    };
    match &callable {
        Object::Class {
            module_name,
            class_name,
        } if module_name == "torch._utils" && class_name == "_rebuild_tensor_v2" => {}
        other => return Err(format!("not a tensor ({})", short(other))),
    }
    let mut a = args
        .tuple()
        .map_err(|o| format!("bad args {}", short(&o)))?;
    if a.len() < 4 {
        return Err("bad _rebuild_tensor_v2 args".into());
    }
    let stride =
        Vec::<usize>::try_from(a.remove(3)).map_err(|o| format!("stride {}", short(&o)))?;
    let shape = Vec::<usize>::try_from(a.remove(2)).map_err(|o| format!("size {}", short(&o)))?;
    let offset = a
        .remove(1)
        .int_or_long()
        .map_err(|o| format!("offset {}", short(&o)))? as usize;
    let storage = a
        .remove(0)
        .persistent_load()
        .and_then(|s| s.tuple())
        .map_err(|o| format!("storage {}", short(&o)))?;
    if storage.len() < 3 {
        return Err("bad storage record".into());
    }
    let mut storage = storage;
    let key = storage
        .remove(2)
        .unicode()
        .map_err(|o| format!("storage key {}", short(&o)))?;
    let (_, class_name) = storage
        .remove(1)
        .class()
        .map_err(|o| format!("storage type {}", short(&o)))?;
    let dtype = match class_name.as_str() {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "ByteStorage" => DType::U8,
        "LongStorage" => DType::I64,
        "IntStorage" => DType::I32,
        "ShortStorage" => DType::I16,
        other => return Err(format!("unsupported storage type {other}")),
    };
    if stride.len() != shape.len() {
        return Err("size and stride ranks differ".into());
    }
    Ok(PthEntry {
        dtype,
        shape,
        stride,
        offset,
        zip_path: format!("{dir}/{key}"),
    })
}

fn short(o: &Object) -> String {
    let s = format!("{o:?}");
    if s.len() > 80 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(80).map_or(s.len(), |(i, _)| i)]
        )
    } else {
        s
    }
}

/// The tensor's bytes in row-major order from its storage bytes, honouring offset and strides.
pub(super) fn gather_strided(storage: &[u8], e: &PthEntry) -> Result<Vec<u8>, String> {
    let es = e.dtype.size_in_bytes();
    let overflow = || "the tensor's shape, strides and offset overflow".to_string();
    let n = e
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(overflow)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    // Largest element index the view touches, and its end in bytes: all checked, since
    // every number here comes from the file.
    let last = e
        .shape
        .iter()
        .zip(&e.stride)
        .try_fold(e.offset, |a, (&d, &s)| {
            d.saturating_sub(1)
                .checked_mul(s)
                .and_then(|x| a.checked_add(x))
        })
        .ok_or_else(overflow)?;
    let end = last
        .checked_add(1)
        .and_then(|x| x.checked_mul(es))
        .ok_or_else(overflow)?;
    if end > storage.len() {
        return Err(format!(
            "storage holds {} bytes, the view needs {end}",
            storage.len()
        ));
    }
    let mut contiguous = true;
    let mut expect = 1usize;
    for (&d, &s) in e.shape.iter().zip(&e.stride).rev() {
        if d > 1 && s != expect {
            contiguous = false;
        }
        expect *= d;
    }
    if contiguous {
        return Ok(storage[e.offset * es..(e.offset + n) * es].to_vec());
    }
    let mut out = Vec::with_capacity(n * es);
    let mut idx = vec![0usize; e.shape.len()];
    for _ in 0..n {
        let at = e.offset + idx.iter().zip(&e.stride).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(&storage[at * es..(at + 1) * es]);
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < e.shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_gather_matches_row_major() {
        // A 2×3 f32 tensor stored transposed (Fortran order): storage = [0, 3, 1, 4, 2, 5].
        let storage: Vec<u8> = [0f32, 3., 1., 4., 2., 5.]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let e = PthEntry {
            dtype: DType::F32,
            shape: vec![2, 3],
            stride: vec![1, 2],
            offset: 0,
            zip_path: String::new(),
        };
        let out = gather_strided(&storage, &e).unwrap();
        let vals: Vec<f32> = out
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(vals, vec![0., 1., 2., 3., 4., 5.]);
        let bad = PthEntry { offset: 3, ..e };
        assert!(gather_strided(&storage, &bad).is_err());
    }
}
