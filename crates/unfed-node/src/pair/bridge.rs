//! The pair's stream as an `unfed_mpc::Link`: the step runs on a blocking thread and each of
//! its exchanges crosses two bounded channels to the async side, which moves the words to and
//! from the other party's stream until the step is done.

use std::time::Duration;

use tokio::sync::mpsc;
use tonic::Status;
use unfed_mpc::{Link, MpcError, ring};
use unfed_proto::node::{PairFrame, pair_frame};

use super::StepJob;

/// How long a party waits for one message of the other party within a step.
pub(crate) const PEER_TIMEOUT: Duration = Duration::from_secs(120);

/// Frames from the other party, read by a task of their own (so waiting is cancel-safe).
pub(crate) type Inbound = mpsc::Receiver<Result<PairFrame, Status>>;

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
    rx
}

pub(crate) fn words_frame(words: &[u64]) -> PairFrame {
    PairFrame {
        kind: Some(pair_frame::Kind::Words(ring::to_bytes(words))),
    }
}

/// Runs `job` with its link bridged onto the other party: `send` puts a frame on our stream,
/// `inbound` yields theirs. Returns what the step returned.
pub(crate) async fn run_step<M, F>(
    job: StepJob,
    send: &mpsc::Sender<M>,
    wrap: F,
    inbound: &mut Inbound,
) -> Result<(Option<Vec<u64>>, unfed_mpc::shard::ShardState), Status>
where
    M: Send + 'static,
    F: Fn(PairFrame) -> M,
{
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u64>>(2);
    let (in_tx, in_rx) = mpsc::channel::<Vec<u64>>(2);
    let mut compute = tokio::task::spawn_blocking(move || {
        let mut link = ThreadLink {
            out: out_tx,
            inp: in_rx,
        };
        job.run(&mut link)
    });
    let to_status = |e: MpcError| Status::aborted(format!("MPC step: {e}"));
    let forward = |words: Vec<u64>| {
        let frame = wrap(words_frame(&words));
        async move {
            tokio::time::timeout(PEER_TIMEOUT, send.send(frame))
                .await
                .map_err(|_| Status::deadline_exceeded("the other party stopped reading"))?
                .map_err(|_| Status::unavailable("the other party hung up"))
        }
    };
    loop {
        tokio::select! {
            done = &mut compute => {
                // The thread has ended: whatever it sent is already queued.
                while let Ok(words) = out_rx.try_recv() {
                    forward(words).await?;
                }
                return done
                    .map_err(|e| Status::internal(format!("MPC step thread: {e}")))?
                    .map_err(to_status);
            }
            Some(words) = out_rx.recv() => forward(words).await?,
            frame = tokio::time::timeout(PEER_TIMEOUT, inbound.recv()) => {
                let words = match frame {
                    Err(_) => return Err(Status::deadline_exceeded("the other party is silent")),
                    Ok(None) => return Err(Status::unavailable("the other party closed the stream")),
                    Ok(Some(Err(s))) => return Err(Status::unavailable(format!("the other party: {}", s.message()))),
                    Ok(Some(Ok(PairFrame { kind: Some(pair_frame::Kind::Words(w)) }))) => w,
                    Ok(Some(Ok(_))) => return Err(Status::invalid_argument("expected a round's words")),
                };
                let words = ring::from_bytes(&words)
                    .ok_or_else(|| Status::invalid_argument("a round's words are not whole u64s"))?;
                // A thread that already failed no longer listens; its error is next.
                let _ = in_tx.send(words).await;
            }
        }
    }
}

/// The compute thread's end of the bridge.
struct ThreadLink {
    out: mpsc::Sender<Vec<u64>>,
    inp: mpsc::Receiver<Vec<u64>>,
}

impl Link for ThreadLink {
    fn exchange(&mut self, mine: &[u64]) -> Result<Vec<u64>, MpcError> {
        let gone = || MpcError::Link("the other party's stream closed".into());
        self.out.blocking_send(mine.to_vec()).map_err(|_| gone())?;
        self.inp.blocking_recv().ok_or_else(gone)
    }
}
