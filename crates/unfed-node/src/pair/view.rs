//! `--record-view FILE`: every ring element a party of the MPC pair received, with labels, in
//! a file anyone can test (what the dealer gave it, and each round from the other party).
//!
//! Format: the 8 bytes `UNFEDVW1`, then records until the end of the file, each
//! `label_len: u8, label: UTF-8, session: u64, step: u32, round: u32, count: u64, words: u64 × count`
//! (integers little-endian). Labels: `dealt` (the party's expanded material: its seed's stream
//! is not included, only the words the client sent), `peer` (one round from the other party),
//! `output` (A only: B's output share minus B's pad).

use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The file's first bytes.
pub const MAGIC: &[u8; 8] = b"UNFEDVW1";

/// One labelled batch of received ring elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub label: String,
    /// The party's own number for the client session.
    pub session: u64,
    /// The step of the session, from 0.
    pub step: u32,
    /// The round within the step (0 for `dealt` and `output`).
    pub round: u32,
    pub words: Vec<u64>,
}

/// An open view file; clones append to the same file.
#[derive(Clone)]
pub struct ViewFile(Arc<Mutex<std::io::BufWriter<std::fs::File>>>);

impl ViewFile {
    /// Creates (or truncates) `path` and writes the header.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        f.write_all(MAGIC)?;
        f.flush()?;
        Ok(Self(Arc::new(Mutex::new(f))))
    }

    /// Appends records and flushes them (a step's worth at a time).
    pub fn write(&self, records: &[Record]) -> std::io::Result<()> {
        let mut f = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for r in records {
            let label = r.label.as_bytes();
            f.write_all(&[label.len().min(255) as u8])?;
            f.write_all(&label[..label.len().min(255)])?;
            f.write_all(&r.session.to_le_bytes())?;
            f.write_all(&r.step.to_le_bytes())?;
            f.write_all(&r.round.to_le_bytes())?;
            f.write_all(&(r.words.len() as u64).to_le_bytes())?;
            for w in &r.words {
                f.write_all(&w.to_le_bytes())?;
            }
        }
        f.flush()
    }
}

/// Reads a view file back.
pub fn read(path: &Path) -> std::io::Result<Vec<Record>> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.read_to_end(&mut bytes)?;
    let mut rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| bad("not a view file"))?;
    let mut take = |n: usize| -> std::io::Result<&[u8]> {
        if rest.len() < n {
            return Err(bad("truncated record"));
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let mut out = Vec::new();
    while let Ok(len) = take(1) {
        let len = len[0] as usize;
        let label = String::from_utf8(take(len)?.to_vec()).map_err(|_| bad("label not UTF-8"))?;
        let session = u64::from_le_bytes(take(8)?.try_into().expect("8"));
        let step = u32::from_le_bytes(take(4)?.try_into().expect("4"));
        let round = u32::from_le_bytes(take(4)?.try_into().expect("4"));
        let count = u64::from_le_bytes(take(8)?.try_into().expect("8")) as usize;
        let words =
            unfed_mpc::ring::from_bytes(take(count.checked_mul(8).ok_or_else(|| bad("count"))?)?)
                .expect("whole words");
        out.push(Record {
            label,
            session,
            step,
            round,
            words,
        });
    }
    Ok(out)
}
