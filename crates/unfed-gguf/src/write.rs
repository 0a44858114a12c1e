//! The GGUF writer: version 3, little-endian, tensors aligned as llama.cpp expects.

use std::io::Write;

use crate::{DEFAULT_ALIGNMENT, GgmlType, GgufError, MAGIC, Result, Value};

/// A tensor to write: its record and its raw bytes (already in `ty`'s block layout).
#[derive(Debug, Clone)]
pub struct OutTensor<'a> {
    pub name: String,
    /// GGUF order: `dims[0]` is the innermost dimension.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub data: &'a [u8],
}

/// Writes a complete GGUF file. Tensor data is laid out in the order given.
pub fn write_gguf<W: Write>(
    w: &mut W,
    metadata: &[(String, Value)],
    tensors: &[OutTensor<'_>],
) -> Result<()> {
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        Some((_, v)) => v
            .as_u64()
            .filter(|a| *a > 0 && a.is_power_of_two())
            .ok_or_else(|| GgufError::Metadata {
                key: "general.alignment".into(),
                problem: "not a power of two".into(),
            })?,
        None => DEFAULT_ALIGNMENT,
    };
    let mut out = CountingWriter {
        inner: w,
        written: 0,
    };
    out.write_all(&MAGIC)?;
    out.write_all(&3u32.to_le_bytes())?;
    out.write_all(&(tensors.len() as u64).to_le_bytes())?;
    out.write_all(&(metadata.len() as u64).to_le_bytes())?;
    for (key, value) in metadata {
        write_string(&mut out, key)?;
        out.write_all(&value.type_id().to_le_bytes())?;
        write_value(&mut out, key, value)?;
    }
    let mut offset = 0u64;
    let mut offsets = Vec::with_capacity(tensors.len());
    for t in tensors {
        let elements: u64 = t.dims.iter().product();
        let expected = t.ty.byte_size(elements);
        if expected != Some(t.data.len() as u64) {
            return Err(GgufError::Corrupt(format!(
                "tensor `{}`: {} bytes of data for {elements} {} elements",
                t.name,
                t.data.len(),
                t.ty
            )));
        }
        write_string(&mut out, &t.name)?;
        out.write_all(&(t.dims.len() as u32).to_le_bytes())?;
        for d in &t.dims {
            out.write_all(&d.to_le_bytes())?;
        }
        out.write_all(&t.ty.id().to_le_bytes())?;
        out.write_all(&offset.to_le_bytes())?;
        offsets.push(offset);
        offset = (offset + t.data.len() as u64).div_ceil(alignment) * alignment;
    }
    pad(&mut out, alignment)?;
    let data_start = out.written;
    for (t, off) in tensors.iter().zip(offsets) {
        pad_to(&mut out, data_start + off)?;
        out.write_all(t.data)?;
    }
    pad(&mut out, alignment)?;
    out.flush()?;
    Ok(())
}

struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    written: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn pad<W: Write>(out: &mut CountingWriter<'_, W>, alignment: u64) -> Result<()> {
    let target = out.written.div_ceil(alignment) * alignment;
    pad_to(out, target)
}

fn pad_to<W: Write>(out: &mut CountingWriter<'_, W>, target: u64) -> Result<()> {
    let n = target - out.written;
    out.write_all(&vec![0u8; n as usize])?;
    Ok(())
}

fn write_string<W: Write>(out: &mut W, s: &str) -> Result<()> {
    out.write_all(&(s.len() as u64).to_le_bytes())?;
    out.write_all(s.as_bytes())?;
    Ok(())
}

fn write_value<W: Write>(out: &mut W, key: &str, value: &Value) -> Result<()> {
    match value {
        Value::U8(v) => out.write_all(&[*v])?,
        Value::I8(v) => out.write_all(&v.to_le_bytes())?,
        Value::U16(v) => out.write_all(&v.to_le_bytes())?,
        Value::I16(v) => out.write_all(&v.to_le_bytes())?,
        Value::U32(v) => out.write_all(&v.to_le_bytes())?,
        Value::I32(v) => out.write_all(&v.to_le_bytes())?,
        Value::F32(v) => out.write_all(&v.to_le_bytes())?,
        Value::Bool(v) => out.write_all(&[u8::from(*v)])?,
        Value::String(s) => write_string(out, s)?,
        Value::U64(v) => out.write_all(&v.to_le_bytes())?,
        Value::I64(v) => out.write_all(&v.to_le_bytes())?,
        Value::F64(v) => out.write_all(&v.to_le_bytes())?,
        Value::Array(items) => {
            // An empty array still needs an element type; llama.cpp uses u8's id then.
            let elem_ty = items.first().map_or(0, Value::type_id);
            if items.iter().any(|i| i.type_id() != elem_ty) {
                return Err(GgufError::Metadata {
                    key: key.into(),
                    problem: "array elements of mixed types".into(),
                });
            }
            out.write_all(&elem_ty.to_le_bytes())?;
            out.write_all(&(items.len() as u64).to_le_bytes())?;
            for item in items {
                write_value(out, key, item)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GgufFile;
    use proptest::prelude::*;

    fn sample() -> Vec<u8> {
        let meta = vec![
            (
                "general.architecture".to_string(),
                Value::String("llama".into()),
            ),
            ("llama.block_count".to_string(), Value::U32(2)),
            (
                "tokenizer.ggml.tokens".to_string(),
                Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
            ),
            ("x.f".to_string(), Value::F32(1.5)),
        ];
        let a = vec![1u8; 8];
        let b = vec![2u8; 20];
        let tensors = vec![
            OutTensor {
                name: "a".into(),
                dims: vec![2],
                ty: GgmlType::F32,
                data: &a,
            },
            OutTensor {
                name: "b".into(),
                dims: vec![32],
                ty: GgmlType::Q4_1,
                data: &b,
            },
        ];
        let mut buf = Vec::new();
        write_gguf(&mut buf, &meta, &tensors).unwrap();
        buf
    }

    #[test]
    fn write_then_read() {
        let buf = sample();
        let f = GgufFile::parse(&buf).unwrap();
        assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(f.get_u64("llama.block_count").unwrap(), 2);
        assert_eq!(f.get_f64("x.f").unwrap(), 1.5);
        let b = f.tensor("b").unwrap();
        assert_eq!(b.ty, GgmlType::Q4_1);
        let start = (f.data_offset + b.offset) as usize;
        assert_eq!(&buf[start..start + 20], &[2u8; 20]);
        assert_eq!(f.data_offset % 32, 0);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let buf = sample();
        // The last bytes are alignment padding after the final tensor; cut anywhere before
        // the end of real data.
        let f = GgufFile::parse(&buf).unwrap();
        let b = f.tensor("b").unwrap();
        let real_end = (f.data_offset + b.offset + b.size) as usize;
        for len in 0..real_end {
            assert!(
                GgufFile::parse(&buf[..len]).is_err(),
                "truncated at {len} parsed"
            );
        }
    }

    #[test]
    fn not_gguf() {
        assert!(matches!(
            GgufFile::parse(b"hello world, not a model"),
            Err(GgufError::NotGguf)
        ));
    }

    proptest! {
        #[test]
        fn random_corruption_never_panics(pos in 0usize..400, byte in any::<u8>()) {
            let mut buf = sample();
            let p = pos % buf.len();
            buf[p] = byte;
            let _ = GgufFile::parse(&buf);
        }

        #[test]
        fn random_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if bytes.len() >= 4 { bytes[..4].copy_from_slice(b"GGUF"); }
            let _ = GgufFile::parse(&bytes);
        }
    }
}
