//! One generation along one route: the session opened at the first hop (directly or through the
//! guard), each step's frame sent and its reply cell read (on the raw stream where it can), and
//! for a model whose shard 0 is an MPC pair, the dealing of each step's material.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use unfed_model::{Sampler, SamplingParams};
use unfed_proto::Dialer;
use unfed_proto::circuit as wire;
use unfed_proto::node::guard_client::GuardClient;
use unfed_proto::node::{Open, SessionReply, SessionRequest, session_reply, session_request};

use crate::circuit::{ClientCircuit, Extras};
use crate::{GuardHop, OutputMode, Route, pair};

/// How long a route may take to open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one step may take along the whole route (a long prompt's prefill included).
const STEP_TIMEOUT: Duration = Duration::from_secs(180);

/// One generation's parameters.
pub(crate) struct Request<'a> {
    pub(crate) model_id: &'a str,
    pub(crate) prompt: &'a [u32],
    pub(crate) max_tokens: usize,
    pub(crate) sampling: &'a SamplingParams,
    pub(crate) end: &'a [u32],
    pub(crate) output: OutputMode,
    /// The model's vocabulary (the length of its logits).
    pub(crate) vocab: usize,
    /// Shard 0 runs on an MPC pair of these shapes: the client deals for it.
    pub(crate) mpc: Option<unfed_mpc::shard::ShardSpec>,
}

/// Runs (or resumes) a generation along one route. `generated` holds the tokens produced so far
/// and grows as tokens arrive, so a failure part-way loses nothing.
pub(crate) async fn run_route(
    dialer: &Dialer,
    route: &Route,
    guard: Option<&GuardHop>,
    req: &Request<'_>,
    generated: &mut Vec<u32>,
    on_token: &mut (dyn FnMut(u32) -> bool + Send),
) -> std::result::Result<(), String> {
    let Request {
        model_id,
        prompt,
        max_tokens,
        sampling,
        end,
        ..
    } = *req;
    // In `decode_client_sample` the sampler is here, resumed past the picks made before.
    let (output, mut local) = match req.output {
        OutputMode::Off => (wire::Output::Sample(sampling.clone()), None),
        OutputMode::ClientSample { top_k } => {
            let mut sampler = Sampler::new(sampling.clone());
            sampler.skip(generated.len());
            (wire::Output::Logits { top_k }, Some((sampler, top_k)))
        }
    };
    let mut circuit = ClientCircuit::build(route, guard.map(|g| g.onion_key), &output)?;
    let mut dealer = match &req.mpc {
        None => None,
        Some(spec) => {
            let b = route.hops[0]
                .pair
                .ok_or("the model requires an MPC pair for shard 0, and the route has none")?;
            Some(pair::PairDealer::new(spec.clone(), b)?)
        }
    };
    // Straight to a plain first hop, the frames and cells go on a raw stream (fewer thread
    // wake-ups per token); through a guard, or to party A, on the gRPC stream.
    let use_raw = guard.is_none() && dealer.is_none();
    let (send, rx) = mpsc::channel(4);
    let open = Open {
        model_id: model_id.into(),
        shard_index: 0,
        onion: circuit.header(),
        raw: use_raw,
    };
    send.send(SessionRequest {
        kind: Some(session_request::Kind::Open(open)),
    })
    .await
    .map_err(|_| "stream closed".to_string())?;
    let requests = ReceiverStream::new(rx);
    let opened = match guard {
        None => {
            dialer
                .connect_node(&route.hops[0].address)
                .await?
                .session(requests)
                .await
        }
        Some(GuardHop { address, .. }) => {
            let channel = dialer.connect(address).await?;
            GuardClient::new(channel)
                .max_decoding_message_size(unfed_proto::MAX_NODE_MESSAGE)
                .max_encoding_message_size(unfed_proto::MAX_NODE_MESSAGE)
                .session(requests)
                .await
        }
    };
    let mut replies: Streaming<SessionReply> =
        opened.map_err(|s| s.message().to_string())?.into_inner();
    let opened = match next_reply(&mut replies, OPEN_TIMEOUT).await? {
        Some(SessionReply {
            kind: Some(session_reply::Kind::Opened(opened)),
        }) => opened,
        _ => return Err("the route did not open".into()),
    };
    let mut raw = None;
    if use_raw {
        let ticket: unfed_proto::raw::Ticket = opened
            .ticket
            .as_slice()
            .try_into()
            .map_err(|_| "the first hop gave no ticket for a raw stream".to_string())?;
        raw = Some(
            dialer
                .connect_raw_async(&route.hops[0].address, &ticket)
                .await?,
        );
    }
    // First step: the prompt plus anything generated before a failure (replayed).
    let mut ids: Vec<u32> = prompt.iter().chain(generated.iter()).copied().collect();
    // The last shard's sampler needs the picks made before; a client sampler has them.
    let mut history = match local {
        None => generated.clone(),
        Some(_) => Vec::new(),
    };
    while generated.len() < max_tokens {
        let (now, history) = (std::mem::take(&mut ids), std::mem::take(&mut history));
        let cell = match dealer.take() {
            None => {
                let frame = circuit.step(now, history)?;
                match &mut raw {
                    Some(stream) => raw_step(stream, &mut replies, frame).await?,
                    None => step(&send, &mut replies, frame).await?,
                }
            }
            Some(d) => {
                // Another decode step may follow: deal its layers while this one runs.
                let ahead = generated.len() + 1 < max_tokens;
                let (d, cell) =
                    pair_step(d, &mut circuit, &send, &mut replies, now, history, ahead).await?;
                dealer = Some(d);
                cell
            }
        };
        let token = match &mut local {
            None => circuit.token(&cell)?,
            Some((sampler, top_k)) => {
                let mut logits = circuit.logits(&cell, *top_k, req.vocab)?;
                sampler.sample(&mut logits, generated)
            }
        };
        if end.contains(&token) {
            return Ok(());
        }
        generated.push(token);
        if !on_token(token) {
            return Ok(());
        }
        ids = vec![token];
    }
    Ok(())
}

/// Sends one step's frame and returns its reply cell.
async fn step(
    send: &mpsc::Sender<SessionRequest>,
    replies: &mut Streaming<SessionReply>,
    frame: Vec<u8>,
) -> std::result::Result<Vec<u8>, String> {
    send_frame(send, frame).await?;
    reply_cell(replies).await
}

/// [`step`] on the first hop's raw stream; when it breaks, the reason is the first hop's error
/// on the gRPC stream, if it gives one within a second.
async fn raw_step(
    stream: &mut unfed_proto::raw::AsyncRawStream,
    replies: &mut Streaming<SessionReply>,
    frame: Vec<u8>,
) -> std::result::Result<Vec<u8>, String> {
    let exchange = async {
        stream.send_message(&frame).await?;
        stream.read_message(unfed_proto::MAX_NODE_MESSAGE).await
    };
    match tokio::time::timeout(STEP_TIMEOUT, exchange).await {
        Ok(Ok(Some(cell))) => Ok(cell),
        Err(_) => Err(format!("the route did not answer within {STEP_TIMEOUT:?}")),
        Ok(_) => Err(
            match tokio::time::timeout(Duration::from_secs(1), replies.message()).await {
                Ok(Err(status)) => status.message().to_string(),
                _ => "the route closed the session".into(),
            },
        ),
    }
}

async fn send_frame(
    send: &mpsc::Sender<SessionRequest>,
    frame: Vec<u8>,
) -> std::result::Result<(), String> {
    send.send(SessionRequest {
        kind: Some(session_request::Kind::Frame(frame.into())),
    })
    .await
    .map_err(|_| "stream closed".to_string())
}

async fn reply_cell(replies: &mut Streaming<SessionReply>) -> std::result::Result<Vec<u8>, String> {
    match next_reply(replies, STEP_TIMEOUT).await? {
        Some(SessionReply {
            kind: Some(session_reply::Kind::Cell(cell)),
        }) => Ok(cell),
        _ => Err("the route closed the session".into()),
    }
}

/// One step through an MPC pair: `ids` dealt (off the async workers) in as many frames as
/// their material needs, all but the last deferred at the last shard; the last one's cell.
/// With `ahead`, the layers of the next (one-token) step are dealt and sent to the pair while
/// the last frame runs.
async fn pair_step(
    mut dealer: pair::PairDealer,
    circuit: &mut ClientCircuit,
    send: &mpsc::Sender<SessionRequest>,
    replies: &mut Streaming<SessionReply>,
    mut ids: Vec<u32>,
    history: Vec<u32>,
    ahead: bool,
) -> std::result::Result<(pair::PairDealer, Vec<u8>), String> {
    let mut history = Some(history);
    loop {
        let (back, dealt, rest) = off_workers(move || {
            let dealt = dealer.deal(&ids);
            if let Ok(d) = &dealt {
                ids.drain(..d.positions);
            }
            (dealer, dealt, ids)
        })
        .await?;
        (dealer, ids) = (back, rest);
        let dealt = dealt?;
        let extras = Extras {
            history: history.take().unwrap_or_default(),
            pad: Some(dealt.pad),
            defer: !ids.is_empty(),
        };
        let frame = circuit.frame_with(unfed_proto::node::step::Input::Mpc(dealt.input), extras)?;
        send_frame(send, frame).await?;
        if !ids.is_empty() {
            circuit.filler(&reply_cell(replies).await?)?;
            continue;
        }
        if !ahead {
            return Ok((dealer, reply_cell(replies).await?));
        }
        let send_ahead = async {
            let (dealer, dealt) = off_workers(move || {
                let dealt = dealer.deal_ahead();
                (dealer, dealt)
            })
            .await?;
            send_frame(send, circuit.frame_ahead(dealt?)?).await?;
            Ok::<_, String>(dealer)
        };
        let (cell, dealer) = tokio::join!(reply_cell(replies), send_ahead);
        return Ok((dealer?, cell?));
    }
}

/// Runs `f` on a blocking thread (dealing is milliseconds of CPU).
async fn off_workers<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::result::Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("dealing: {e}"))
}

/// The next reply on a session stream, or why there is none (errors, and a route that stays
/// silent past `limit`, count as a broken route).
async fn next_reply(
    replies: &mut Streaming<SessionReply>,
    limit: Duration,
) -> std::result::Result<Option<SessionReply>, String> {
    match tokio::time::timeout(limit, replies.message()).await {
        Ok(r) => r.map_err(|s| s.message().to_string()),
        Err(_) => Err(format!("the route did not answer within {limit:?}")),
    }
}
