//! SHA-256 helpers: whole-file and per-chunk digests, computed while a file is written or by
//! reading it back, always as lowercase hex.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Size of the chunks whose hashes the manifest lists for each shard file (4 MiB).
pub const CHUNK_SIZE: u64 = 4 << 20;

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Lowercase hex SHA-256 of a sequence of f32 values in little-endian byte order.
pub fn sha256_f32_le(values: &[f32]) -> String {
    let mut h = Sha256::new();
    for v in values {
        h.update(v.to_le_bytes());
    }
    hex::encode(h.finalize())
}

/// Size, SHA-256 and per-chunk SHA-256 of a byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    /// Bytes in the stream.
    pub size: u64,
    /// SHA-256 of the whole stream.
    pub sha256: String,
    /// Chunk size the chunk hashes were computed with.
    pub chunk_size: u64,
    /// SHA-256 of each consecutive `chunk_size` bytes; the last chunk may be shorter; an empty
    /// stream has no chunks.
    pub chunks: Vec<String>,
}

/// A writer that passes bytes through and hashes them, whole and per chunk.
pub struct DigestWriter<W> {
    inner: W,
    whole: Sha256,
    chunk: Sha256,
    in_chunk: u64,
    chunk_size: u64,
    chunks: Vec<String>,
    size: u64,
}

impl<W: Write> DigestWriter<W> {
    /// Wraps `inner`; `chunk_size` must be positive.
    pub fn new(inner: W, chunk_size: u64) -> Self {
        Self {
            inner,
            whole: Sha256::new(),
            chunk: Sha256::new(),
            in_chunk: 0,
            chunk_size: chunk_size.max(1),
            chunks: Vec::new(),
            size: 0,
        }
    }

    fn absorb(&mut self, mut bytes: &[u8]) {
        self.whole.update(bytes);
        self.size += bytes.len() as u64;
        while !bytes.is_empty() {
            let room = (self.chunk_size - self.in_chunk).min(bytes.len() as u64) as usize;
            self.chunk.update(&bytes[..room]);
            self.in_chunk += room as u64;
            bytes = &bytes[room..];
            if self.in_chunk == self.chunk_size {
                let done = std::mem::take(&mut self.chunk);
                self.chunks.push(hex::encode(done.finalize()));
                self.in_chunk = 0;
            }
        }
    }

    /// Returns the inner writer and the digest of everything written.
    pub fn finish(mut self) -> (W, FileDigest) {
        if self.in_chunk > 0 {
            self.chunks.push(hex::encode(self.chunk.finalize()));
        }
        let digest = FileDigest {
            size: self.size,
            sha256: hex::encode(self.whole.finalize()),
            chunk_size: self.chunk_size,
            chunks: self.chunks,
        };
        (self.inner, digest)
    }
}

impl<W: Write> Write for DigestWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.absorb(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads a whole file and digests it.
pub fn digest_file(path: &Path, chunk_size: u64) -> io::Result<FileDigest> {
    let mut w = DigestWriter::new(io::sink(), chunk_size);
    digest_into(path, &mut w)?;
    Ok(w.finish().1)
}

/// SHA-256 of the concatenated contents of `paths`, in the order given.
pub fn digest_concatenation(paths: &[&Path]) -> io::Result<FileDigest> {
    let mut w = DigestWriter::new(io::sink(), CHUNK_SIZE);
    for p in paths {
        digest_into(p, &mut w)?;
    }
    Ok(w.finish().1)
}

fn digest_into<W: Write>(path: &Path, w: &mut DigestWriter<W>) -> io::Result<()> {
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        w.write_all(&buf[..n])?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(sha256_f32_le(&[1.0]), sha256_hex(&1.0f32.to_le_bytes()));
    }

    #[test]
    fn chunks_split_at_boundaries_whatever_the_write_sizes() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let expect: Vec<String> = data.chunks(64).map(sha256_hex).collect();
        for step in [1, 7, 64, 65, 1000] {
            let mut w = DigestWriter::new(Vec::new(), 64);
            for piece in data.chunks(step) {
                w.write_all(piece).unwrap();
            }
            let (out, d) = w.finish();
            assert_eq!(out, data);
            assert_eq!(d.size, 1000);
            assert_eq!(d.sha256, sha256_hex(&data));
            assert_eq!(d.chunks, expect, "write step {step}");
        }
        let (_, empty) = DigestWriter::new(Vec::new(), 64).finish();
        assert!(empty.chunks.is_empty());
    }
}
