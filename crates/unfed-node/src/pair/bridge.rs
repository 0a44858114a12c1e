//! The pair's stream as an `unfed_mpc::Link`: the step runs on a blocking thread that sends
//! each round's words on the other party's stream and reads theirs from it directly, holding
//! back for later the sealed frames for B that come in meanwhile.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::Status;
use unfed_mpc::{Link, MpcError, ring};
use unfed_proto::node::{PairFrame, pair_frame};

use super::StepJob;

/// How long a party waits for one message of the other party within a step.
pub(crate) const PEER_TIMEOUT: Duration = Duration::from_secs(120);

/// How many sealed frames for B may come in during a step (the layers of the next step, sent
/// ahead, are one).
const MAX_HELD: usize = 2;

/// Frames from the other party, read by a task of their own (so waiting is cancel-safe), and
/// the sealed frames that came in while a step was exchanging rounds, held for after it.
pub(crate) struct Inbound {
    rx: mpsc::Receiver<Result<PairFrame, Status>>,
    held: VecDeque<Vec<u8>>,
}

impl Inbound {
    /// The next frame, the held ones first.
    pub async fn recv(&mut self) -> Option<Result<PairFrame, Status>> {
        match self.held.pop_front() {
            Some(sealed) => Some(Ok(PairFrame {
                kind: Some(pair_frame::Kind::Sealed(sealed)),
            })),
            None => self.rx.recv().await,
        }
    }
}

/// Reads `stream` into a bounded channel until it ends or the receiver goes.
pub(crate) fn read_frames(mut stream: tonic::Streaming<PairFrame>) -> Inbound {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let next = stream.message().await;
            let item = match next {
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
    Inbound {
        rx,
        held: VecDeque::new(),
    }
}

pub(crate) fn words_frame(words: &[u64]) -> PairFrame {
    PairFrame {
        kind: Some(pair_frame::Kind::Words(ring::to_bytes(words))),
    }
}

/// Runs `job` with its link bridged onto the other party: the step's thread puts each
/// round's frame on our stream (`send`, after `wrap`) and takes the other party's words from
/// `inbound` itself, so a round crosses no task of ours in between (each hop is a thread
/// wake-up, and a step has ~90 rounds). Returns what the step returned.
pub(crate) async fn run_step<M, F>(
    job: StepJob,
    send: &mpsc::Sender<M>,
    wrap: F,
    inbound: &mut Inbound,
) -> Result<(Option<Vec<u64>>, unfed_mpc::shard::ShardState), Status>
where
    M: Send + 'static,
    F: Fn(PairFrame) -> M + Send + 'static,
{
    // The thread holds the inbound frames for the step and hands them back at its end.
    let closed = Inbound {
        rx: mpsc::channel(1).1,
        held: VecDeque::new(),
    };
    let mut link = ThreadLink {
        runtime: tokio::runtime::Handle::current(),
        send: send.clone(),
        wrap,
        inbound: std::mem::replace(inbound, closed),
    };
    let (done, back) = tokio::task::spawn_blocking(move || {
        let done = job.run(&mut link);
        (done, link.inbound)
    })
    .await
    .map_err(|e| Status::internal(format!("MPC step thread: {e}")))?;
    *inbound = back;
    done.map_err(|e| Status::aborted(format!("MPC step: {e}")))
}

/// The step thread's end of the stream.
struct ThreadLink<M, F> {
    runtime: tokio::runtime::Handle,
    send: mpsc::Sender<M>,
    wrap: F,
    inbound: Inbound,
}

impl<M: Send + 'static, F: Fn(PairFrame) -> M> Link for ThreadLink<M, F> {
    fn exchange(&mut self, mine: &[u64]) -> Result<Vec<u64>, MpcError> {
        let fail = |why: &str| MpcError::Link(why.into());
        let frame = (self.wrap)(words_frame(mine));
        let (send, inbound) = (&self.send, &mut self.inbound);
        let frame = self.runtime.block_on(async {
            tokio::time::timeout(PEER_TIMEOUT, send.send(frame))
                .await
                .map_err(|_| fail("the other party stopped reading"))?
                .map_err(|_| fail("the other party hung up"))?;
            loop {
                match tokio::time::timeout(PEER_TIMEOUT, inbound.rx.recv()).await {
                    Err(_) => return Err(fail("the other party is silent")),
                    Ok(None) => return Err(fail("the other party closed the stream")),
                    Ok(Some(Err(s))) => {
                        return Err(MpcError::Link(format!("the other party: {}", s.message())));
                    }
                    // The next step's layers, sent ahead while this one runs: for after it.
                    Ok(Some(Ok(PairFrame {
                        kind: Some(pair_frame::Kind::Sealed(sealed)),
                    }))) if inbound.held.len() < MAX_HELD => inbound.held.push_back(sealed),
                    Ok(Some(Ok(frame))) => return Ok(frame),
                }
            }
        })?;
        match frame {
            PairFrame {
                kind: Some(pair_frame::Kind::Words(w)),
            } => ring::from_bytes(&w).ok_or_else(|| fail("a round's words are not whole u64s")),
            _ => Err(fail("expected a round's words")),
        }
    }
}
