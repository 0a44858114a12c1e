//! A plain node's session once its circuit is set up: the steps run on a thread of the
//! session's own, which reads each frame, computes, sends the hidden states on to the next hop
//! and waits for its reply cell on a raw stream, and passes the cell back: one thread wake-up
//! per message, no hand-off between a runtime task and a compute thread. Frames come on a raw
//! stream too when the previous hop asked for one with `Open.raw` (a node, or a client straight
//! to its first hop), else on the gRPC stream through a task that feeds the thread.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::{Status, Streaming};
use unfed_proto::circuit as wire;
use unfed_proto::convert;
use unfed_proto::node::{Open, Opened, SessionReply, SessionRequest, session_reply, step};
use unfed_proto::raw::RawStream;

use crate::circuit::HopCircuit;
use crate::forward::{Session, StepInput, StepOutput};
use crate::relay::{Downstream, OPEN_TIMEOUT, refused, relay_lost, send_up};
use crate::service::{NodeState, onward, step_frame};
use crate::views::{Seen, saw};

/// Frames and cells buffered between the gRPC stream's task and the session's thread.
const BUFFER: usize = 4;

/// What the session's thread knows of its place in the route.
pub(crate) struct Hop {
    pub session: Session,
    pub circuit: HopCircuit,
    /// At the last shard of a client-sampling session: the logits slice it asked for.
    pub top_k: Option<u32>,
}

/// Serves the session whose `open` set up `hop`: opens the next hop's part (`next`: its
/// address and onion header), answers the open, then runs the steps on the session's thread.
pub(crate) async fn serve(
    state: &Arc<NodeState>,
    hop: Hop,
    open: &Open,
    next: Option<(String, Vec<u8>)>,
    mut inbound: Streaming<SessionRequest>,
    tx: &mpsc::Sender<Result<SessionReply, Status>>,
) -> Result<(), Status> {
    // The next hop's gRPC stream stays open for the session's life; its frames and cells go
    // on the raw stream.
    let (_down_grpc, down) = match next {
        None => (None, None),
        Some((address, header)) => {
            let onward = onward(state, open, &address, header).await?;
            let (grpc, raw) =
                Downstream::open_raw(&state.next_hops.dialer, &address, onward).await?;
            (Some(grpc), Some(raw))
        }
    };
    let idle = state.limits.idle_timeout;
    if open.raw {
        let issued = state.tickets.issue();
        let opened = Opened {
            ticket: issued.ticket.to_vec(),
        };
        send_up(tx, session_reply::Kind::Opened(opened), idle).await?;
        let stream = issued.wait(OPEN_TIMEOUT).await.ok_or_else(|| {
            Status::deadline_exceeded("the previous hop did not open the session's raw stream")
        })?;
        let state = state.clone();
        let up = Upstream::Raw(stream);
        return on_thread(move || run(&state, hop, down, up))?.await;
    }
    send_up(tx, session_reply::Kind::Opened(Opened::default()), idle).await?;
    let (frames, frames_rx) = mpsc::channel(BUFFER);
    let (cells_tx, mut cells) = mpsc::channel(BUFFER);
    let thread = {
        let state = state.clone();
        let up = Upstream::Task {
            frames: frames_rx,
            cells: cells_tx,
        };
        on_thread(move || run(&state, hop, down, up))?
    };
    // Feeds the thread frames from the gRPC stream and sends its cells back up, until either
    // side ends.
    let mut frames = Some(frames);
    loop {
        tokio::select! {
            cell = cells.recv() => match cell {
                Some(cell) => send_up(tx, session_reply::Kind::Cell(cell), idle).await?,
                None => break,
            },
            msg = tokio::time::timeout(idle, inbound.next()), if frames.is_some() => {
                let Ok(msg) = msg else {
                    return Err(Status::deadline_exceeded("the session was idle too long"));
                };
                match step_frame(state, msg)? {
                    Some(frame) => {
                        let sent = frames.as_ref().expect("checked").send(frame).await;
                        if sent.is_err() {
                            break;
                        }
                    }
                    // The client ended the session: the thread ends after the step it runs.
                    None => frames = None,
                }
            }
        }
    }
    thread.await
}

/// Where a session's frames come from and its cells go.
enum Upstream {
    /// The previous hop's raw stream.
    Raw(RawStream),
    /// The gRPC stream's task.
    Task {
        frames: mpsc::Receiver<unfed_proto::Bytes>,
        cells: mpsc::Sender<Vec<u8>>,
    },
}

impl Upstream {
    /// The next frame, or None when the previous hop ended the session.
    fn next_frame(&mut self, state: &NodeState) -> Result<Option<unfed_proto::Bytes>, Status> {
        let frame = match self {
            Upstream::Task { frames, .. } => return Ok(frames.blocking_recv()),
            Upstream::Raw(stream) => stream.read_message(state.max_frame).map_err(|e| {
                use std::io::ErrorKind::*;
                match e.kind() {
                    WouldBlock | TimedOut => {
                        Status::deadline_exceeded("the session was idle too long")
                    }
                    InvalidData => Status::invalid_argument(format!("step frame refused: {e}")),
                    _ => Status::cancelled("the previous hop closed the session"),
                }
            })?,
        };
        Ok(frame.map(|f| {
            saw(&state.views, || Seen::Frame(f.clone()));
            f.into()
        }))
    }

    fn reply(&mut self, cell: Vec<u8>) -> Result<(), Status> {
        let gone = || Status::cancelled("the previous hop stopped reading");
        match self {
            Upstream::Task { cells, .. } => cells.blocking_send(cell).map_err(|_| gone()),
            Upstream::Raw(stream) => stream.send_message(&cell).map_err(|_| gone()),
        }
    }
}

/// Starts `f` on a thread of its own; the future is what it returned. (Not the runtime's
/// blocking pool: a runtime waits for those when it shuts down, and a session's thread may be
/// waiting for its next frame.)
fn on_thread(
    f: impl FnOnce() -> Result<(), Status> + Send + 'static,
) -> Result<impl Future<Output = Result<(), Status>>, Status> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("unfed-session".into())
        .spawn(move || {
            let _ = done.send(f());
        })
        .map_err(|e| Status::resource_exhausted(format!("cannot start a session thread: {e}")))?;
    Ok(async move {
        result
            .await
            .map_err(|_| Status::internal("the session's thread stopped"))?
    })
}

/// The session's steps, on its thread, until the previous hop ends it or something fails.
fn run(
    state: &NodeState,
    mut hop: Hop,
    mut down: Option<RawStream>,
    mut up: Upstream,
) -> Result<(), Status> {
    while let Some(frame) = up.next_frame(state)? {
        let step = hop.circuit.open_link(&frame).map_err(refused)?;
        let (input, onward) = hop.circuit.open_layer(step).map_err(refused)?;
        if !onward.history.is_empty() {
            saw(&state.views, || Seen::History(onward.history.clone()));
        }
        if onward.defer && !state.head {
            return Err(Status::invalid_argument(
                "only the last shard defers its output",
            ));
        }
        let input = plain_input(state, input, &onward.pad)?;
        let out = hop
            .session
            .step(input, onward.history, onward.defer)
            .map_err(|e| {
                if e.starts_with("busy") {
                    Status::resource_exhausted(e)
                } else {
                    Status::invalid_argument(e)
                }
            })?;
        let circuit = &mut hop.circuit;
        let cell = match (out, down.as_mut()) {
            (StepOutput::Token(t), None) => {
                saw(&state.views, || Seen::Sampled(t));
                circuit.seal_token(t).map_err(refused)?
            }
            (StepOutput::Logits(logits), None) => {
                let plain = wire::encode_logits(&logits, hop.top_k.unwrap_or(0));
                circuit.seal_reply(&plain).map_err(refused)?
            }
            (StepOutput::Deferred, None) => {
                // The filler is exactly as long as the session's replies always are.
                let len = match hop.top_k {
                    Some(k) => wire::logits_reply_len(k, state.vocab),
                    None => wire::TOKEN_REPLY_LEN,
                };
                circuit.seal_reply(&vec![0; len]).map_err(refused)?
            }
            (StepOutput::Hidden { rows, cols, values }, Some(down)) => {
                let hidden = step::Input::Hidden(convert::hidden(rows, cols, &values));
                let frame = circuit
                    .seal_next_input(hidden, onward.onward)
                    .map_err(refused)?;
                down.send_message(&frame).map_err(|_| relay_lost())?;
                let cell = match down.read_message(unfed_proto::MAX_NODE_MESSAGE) {
                    Ok(Some(cell)) => cell,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        return Err(Status::deadline_exceeded(
                            "the next hop did not answer in time",
                        ));
                    }
                    _ => return Err(relay_lost()),
                };
                saw(&state.views, || Seen::Cell(cell.clone()));
                circuit.relay_reply(&cell).map_err(|_| relay_lost())?
            }
            _ => {
                return Err(Status::internal(
                    "shard output does not fit its place in the route",
                ));
            }
        };
        up.reply(cell)?;
    }
    Ok(())
}

/// A plain shard's input: token ids at shard 0, hidden states after it — given in the clear,
/// or (right after an MPC pair) masked by the pad whose seed the client put in `pad`.
fn plain_input(
    state: &NodeState,
    input: Option<step::Input>,
    pad: &[u8],
) -> Result<StepInput, Status> {
    if !pad.is_empty() && !matches!(input, Some(step::Input::Masked(_))) {
        return Err(Status::invalid_argument(
            "a pad comes only with masked input",
        ));
    }
    match (input, state.embedding) {
        (Some(step::Input::Tokens(t)), true) => {
            saw(&state.views, || Seen::Tokens(t.ids.clone()));
            Ok(StepInput::Tokens(t.ids))
        }
        (Some(step::Input::Hidden(h)), false) => {
            let values = convert::hidden_values(&h, state.hidden)
                .map_err(|e| Status::invalid_argument(e.0))?;
            saw(&state.views, || Seen::Hidden(values.clone()));
            Ok(StepInput::Hidden {
                rows: h.rows as usize,
                cols: h.cols as usize,
                values,
            })
        }
        (Some(step::Input::Masked(m)), false) if state.shard_index == 1 => {
            let pad: &[u8; wire::PAD_SEED_LEN] = pad.try_into().map_err(|_| {
                Status::invalid_argument("masked input needs the pad's 16-byte seed")
            })?;
            let (rows, cols) = (m.rows as usize, m.cols as usize);
            let words = unfed_mpc::ring::from_bytes(&m.data)
                .filter(|w| {
                    rows > 0 && cols == state.hidden && Some(w.len()) == rows.checked_mul(cols)
                })
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "masked input of {rows} x {cols} in {} bytes, expected n x {}",
                        m.data.len(),
                        state.hidden
                    ))
                })?;
            let sum = unfed_mpc::ring::add(&words, &unfed_mpc::shard::pad(pad, words.len()));
            let values: Vec<f32> = unfed_mpc::ring::decode_all(&sum)
                .into_iter()
                .map(|v| v as f32)
                .collect();
            saw(&state.views, || Seen::Hidden(values.clone()));
            Ok(StepInput::Hidden { rows, cols, values })
        }
        (Some(step::Input::Masked(_)), _) => Err(Status::invalid_argument(
            "only shard 1 takes the masked output of an MPC pair",
        )),
        (Some(step::Input::Mpc(_) | step::Input::Ahead(_)), _) => Err(Status::invalid_argument(
            "this node is not party A of an MPC pair",
        )),
        (Some(_), true) => Err(Status::invalid_argument("shard 0 takes token ids")),
        (Some(_), false) => Err(Status::invalid_argument("this shard takes hidden states")),
        (None, _) => Err(Status::invalid_argument("a Step needs an input")),
    }
}
