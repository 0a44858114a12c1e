//! The engine on tiny generated models: pipelines, the generation loop, the engine thread and
//! streaming text.

use std::sync::Arc;

use unfed_engine::{Engine, Event, GenerateRequest, Pipeline, StopReason, TextStream, generate};
use unfed_model::testing::{TinySpec, write_tiny_gguf};
use unfed_model::{Checkpoint, SamplingParams, ShardModel, ShardRole, TextTokenizer};

fn tiny() -> (tempfile::TempDir, Checkpoint) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_tiny_gguf(&path, &TinySpec::default()).unwrap();
    let ck = Checkpoint::open(&path).unwrap();
    (dir, ck)
}

fn part(ck: &Checkpoint, layers: std::ops::Range<usize>, n: usize) -> ShardModel {
    let role = ShardRole {
        embedding: layers.start == 0,
        head: layers.end == n,
        layers,
    };
    ShardModel::load_role(ck, role).unwrap()
}

fn request(max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt_ids: vec![72, 101, 108, 108, 111],
        max_tokens,
        sampling: SamplingParams::greedy(),
        ignore_eos: true,
    }
}

fn run(p: &Pipeline, tok: &TextTokenizer, req: &GenerateRequest) -> Vec<u32> {
    let mut ids = Vec::new();
    generate(p, tok, req, &mut |e| {
        if let Event::Token { id, .. } = e {
            ids.push(id);
        }
        true
    })
    .unwrap();
    ids
}

#[test]
fn sharded_pipeline_generates_what_the_whole_model_generates() {
    let (_d, ck) = tiny();
    let tok = TextTokenizer::from_metadata(ck.metadata()).unwrap();
    let whole = Pipeline::new(vec![ShardModel::load(&ck).unwrap()]).unwrap();
    let split = Pipeline::new(vec![
        part(&ck, 0..1, 4),
        part(&ck, 1..3, 4),
        part(&ck, 3..4, 4),
    ])
    .unwrap();
    let req = request(24);
    let a = run(&whole, &tok, &req);
    assert_eq!(a.len(), 24);
    assert_eq!(a, run(&split, &tok, &req));
}

#[test]
fn pipeline_rejects_gaps_and_misplaced_ends() {
    let (_d, ck) = tiny();
    let gap = Pipeline::new(vec![part(&ck, 0..1, 4), part(&ck, 2..4, 4)]);
    assert!(
        gap.err()
            .unwrap()
            .to_string()
            .contains("layer 1 comes next")
    );
    let short = Pipeline::new(vec![part(&ck, 0..2, 4)]);
    assert!(short.err().unwrap().to_string().contains("no output head"));
    let no_embed = Pipeline::new(vec![part(&ck, 1..4, 4)]);
    assert!(no_embed.is_err());
}

#[test]
fn engine_thread_streams_and_stops() {
    let (_d, ck) = tiny();
    let tok = Arc::new(TextTokenizer::from_metadata(ck.metadata()).unwrap());
    let pipeline = Pipeline::new(vec![ShardModel::load(&ck).unwrap()]).unwrap();
    let expected = run(&pipeline, &tok, &request(10));
    let engine = Engine::start(pipeline, tok).unwrap();
    // Two requests queued back to back, read in order.
    let first = engine.submit(request(10)).unwrap();
    let second = engine.submit(request(3)).unwrap();
    let collect = |rx: std::sync::mpsc::Receiver<Event>| {
        let mut ids = Vec::new();
        let mut stats = None;
        for e in rx {
            match e {
                Event::Token { id, .. } => ids.push(id),
                Event::Done(s) => stats = Some(s),
                Event::Flush(_) => {}
                Event::Error(e) => panic!("{e}"),
            }
        }
        (ids, stats.unwrap())
    };
    let (ids, stats) = collect(first);
    assert_eq!(ids, expected);
    assert_eq!(stats.stop, StopReason::MaxTokens);
    assert_eq!(stats.decode_steps, 9);
    assert_eq!(collect(second).0, expected[..3]);
    drop(engine);
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let (_d, ck) = tiny();
    let tok = Arc::new(TextTokenizer::from_metadata(ck.metadata()).unwrap());
    let engine = Engine::start(
        Pipeline::new(vec![ShardModel::load(&ck).unwrap()]).unwrap(),
        tok,
    )
    .unwrap();
    let mut empty = request(4);
    empty.prompt_ids.clear();
    let mut out_of_vocab = request(4);
    out_of_vocab.prompt_ids = vec![1_000_000];
    let mut bad_sampling = request(4);
    bad_sampling.sampling.top_p = 0.0;
    for req in [empty, out_of_vocab, bad_sampling] {
        let events: Vec<Event> = engine.submit(req).unwrap().into_iter().collect();
        assert!(matches!(events.last(), Some(Event::Error(_))), "{events:?}");
    }
    // Still serving afterwards.
    let events: Vec<Event> = engine.submit(request(2)).unwrap().into_iter().collect();
    assert!(matches!(events.last(), Some(Event::Done(_))));
}

#[test]
fn text_stream_never_splits_a_character() {
    let (_d, ck) = tiny();
    let tok = TextTokenizer::from_metadata(ck.metadata()).unwrap();
    let text = "a 🦀 and café, 你好";
    let ids = tok.encode(text).unwrap();
    assert!(
        ids.len() > text.chars().count(),
        "multi-byte characters span several tokens"
    );
    let mut stream = TextStream::new();
    let mut out = String::new();
    for id in ids {
        if let Some(piece) = stream.push(&tok, id).unwrap() {
            assert!(!piece.contains('\u{FFFD}'));
            out.push_str(&piece);
        }
    }
    if let Some(rest) = stream.finish(&tok).unwrap() {
        out.push_str(&rest);
    }
    assert_eq!(out, text);
}
