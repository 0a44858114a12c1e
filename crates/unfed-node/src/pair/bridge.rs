//! The pair's two channels per session: the gRPC stream (the open message, the sealed frames
//! for B, errors), read by a task of its own, and the raw stream of the rounds
//! (`unfed_proto::raw`), an `unfed_mpc::Link` the step's blocking thread writes and reads with
//! no runtime in between: a step has ~60 rounds per layer, and each hop through a task is a
//! thread wake-up on both sides.

use std::io::{Read, Write};
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::Status;
use unfed_mpc::{Link, MpcError, Role, ring};
use unfed_proto::node::PairFrame;
use unfed_proto::raw::RawStream;

use super::StepJob;

/// How long a party waits for one message of the other party within a step.
pub(crate) const PEER_TIMEOUT: Duration = Duration::from_secs(120);

/// The most words one round may carry.
const MAX_ROUND_WORDS: usize = unfed_proto::MAX_NODE_MESSAGE / 8;

/// A round message at most this long (bytes) is written before the other party's is read,
/// whoever's turn it is: it fits in the sockets' buffers, so the write cannot wait on the
/// other party's read. A longer one waits its turn: A's first, B's after A's was read.
const SMALL_ROUND: usize = 16 << 10;

/// Frames from the other party's gRPC stream, read by a task of their own (so waiting is
/// cancel-safe).
pub(crate) struct Inbound(mpsc::Receiver<Result<PairFrame, Status>>);

impl Inbound {
    pub async fn recv(&mut self) -> Option<Result<PairFrame, Status>> {
        self.0.recv().await
    }
}

/// Reads `stream` into a bounded channel until it ends or the receiver goes.
pub(crate) fn read_frames(mut stream: tonic::Streaming<PairFrame>) -> Inbound {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let item = match stream.message().await {
                Ok(Some(frame)) => Ok(frame),
                Ok(None) => break,
                Err(s) => Err(s),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
    });
    Inbound(rx)
}

/// One party's end of a session's rounds: each round's words, u32 little-endian count first.
pub(crate) struct RoundLink {
    stream: RawStream,
    role: Role,
    buf: Vec<u8>,
}

impl RoundLink {
    pub fn new(stream: RawStream, role: Role) -> Self {
        Self {
            stream,
            role,
            buf: Vec::new(),
        }
    }

    fn write(&mut self, words: &[u64]) -> Result<(), MpcError> {
        self.buf.clear();
        self.buf.extend((words.len() as u32).to_le_bytes());
        ring::extend_bytes(&mut self.buf, words);
        self.stream
            .write_all(&self.buf)
            .and_then(|()| self.stream.flush())
            .map_err(link_error)
    }

    fn read(&mut self) -> Result<Vec<u64>, MpcError> {
        let mut count = [0u8; 4];
        self.stream.read_exact(&mut count).map_err(link_error)?;
        let count = u32::from_le_bytes(count) as usize;
        if count > MAX_ROUND_WORDS {
            return Err(MpcError::Link(format!(
                "the other party sent a round of {count} words, over the limit of {MAX_ROUND_WORDS}"
            )));
        }
        self.buf.resize(count * 8, 0);
        self.stream.read_exact(&mut self.buf).map_err(link_error)?;
        Ok(ring::from_bytes(&self.buf).expect("whole words"))
    }
}

impl Link for RoundLink {
    fn exchange(&mut self, mine: &[u64]) -> Result<Vec<u64>, MpcError> {
        if self.role == Role::A || mine.len() * 8 <= SMALL_ROUND {
            self.write(mine)?;
            self.read()
        } else {
            let theirs = self.read()?;
            self.write(mine)?;
            Ok(theirs)
        }
    }
}

fn link_error(e: std::io::Error) -> MpcError {
    use std::io::ErrorKind::*;
    MpcError::Link(match e.kind() {
        WouldBlock | TimedOut => "the other party is silent".into(),
        UnexpectedEof | ConnectionReset | BrokenPipe => "the other party closed the stream".into(),
        _ => format!("the stream to the other party: {e}"),
    })
}

/// Runs `job` on a blocking thread over the session's round link, which it takes and gives
/// back (a step that fails leaves the session without one). Returns what the step returned.
pub(crate) async fn run_step(
    job: StepJob,
    link: &mut Option<RoundLink>,
) -> Result<(Option<Vec<u64>>, unfed_mpc::shard::ShardState), Status> {
    let mut taken = link.take().ok_or_else(|| {
        Status::failed_precondition("the session lost its link to the other party")
    })?;
    let (done, back) = tokio::task::spawn_blocking(move || {
        let done = job.run(&mut taken);
        (done, taken)
    })
    .await
    .map_err(|e| Status::internal(format!("MPC step thread: {e}")))?;
    let done = done.map_err(|e| Status::aborted(format!("MPC step: {e}")))?;
    *link = Some(back);
    Ok(done)
}
