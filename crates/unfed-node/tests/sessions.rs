//! A node's sessions stay bounded: count, positions, KV memory; a refused step leaves the
//! session as it was.

use std::sync::Arc;
use std::time::Duration;

use unfed_model::testing::{TinySpec, write_tiny_gguf};
use unfed_model::{Checkpoint, SamplingParams, ShardModel, ShardRole};
use unfed_node::{Forward, HeadOutput, SessionLimits, StepInput, StepOutput};

fn forward(limits: SessionLimits, head: bool) -> (tempfile::TempDir, Arc<Forward>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_tiny_gguf(&path, &TinySpec::default()).unwrap();
    let ck = Checkpoint::open(&path).unwrap();
    let role = ShardRole {
        layers: if head { 0..4 } else { 0..2 },
        embedding: true,
        head,
    };
    let f = Forward::new(ShardModel::load_role(&ck, role).unwrap(), limits);
    (dir, f)
}

fn limits() -> SessionLimits {
    SessionLimits {
        max_sessions: 2,
        idle_timeout: Duration::from_secs(60),
        max_positions: 16,
        max_kv_bytes: 1 << 30,
    }
}

fn greedy() -> Option<HeadOutput> {
    Some(HeadOutput::Sample(SamplingParams::greedy()))
}

#[test]
fn session_count_and_positions_are_bounded() {
    let (_d, f) = forward(limits(), false);
    let mut one = f.open(None).unwrap();
    let two = f.open(None).unwrap();
    assert!(f.open(None).err().unwrap().contains("busy"));
    match one
        .step(StepInput::Tokens(vec![1, 2, 3]), vec![], false)
        .unwrap()
    {
        StepOutput::Hidden { rows, cols, values } => {
            assert_eq!((rows, cols, values.len()), (3, 64, 192))
        }
        _ => panic!("a middle shard returns hidden states"),
    }
    let err = one
        .step(StepInput::Tokens((0..14).collect()), vec![], false)
        .unwrap_err();
    assert!(err.contains("exceed 16 positions"), "{err}");
    // The refused step did not consume the session; closing one frees a slot.
    assert!(one.step(StepInput::Tokens(vec![4]), vec![], false).is_ok());
    drop(two);
    let _three = f.open(None).unwrap();
    assert_eq!(f.active_sessions(), 2);
    drop(one);
    assert_eq!(f.active_sessions(), 1);
}

#[test]
fn kv_memory_cap_refuses_new_positions_until_a_session_ends() {
    // 2 layers x K and V x 2 KV heads x 16 dims x 4 bytes = 512 bytes per position: room for 10.
    let (_d, f) = forward(
        SessionLimits {
            max_kv_bytes: 5120,
            ..limits()
        },
        false,
    );
    let mut one = f.open(None).unwrap();
    let mut two = f.open(None).unwrap();
    one.step(StepInput::Tokens((0..8).collect()), vec![], false)
        .unwrap();
    let err = two
        .step(StepInput::Tokens((0..4).collect()), vec![], false)
        .unwrap_err();
    assert!(err.contains("memory is full"), "{err}");
    two.step(StepInput::Tokens((0..2).collect()), vec![], false)
        .unwrap();
    // The first session's positions are freed with it.
    drop(one);
    two.step(StepInput::Tokens((0..8).collect()), vec![], false)
        .unwrap();
}

#[test]
fn sessions_on_several_threads_compute_what_one_does() {
    let (_d, f) = forward(limits(), true);
    let run = |f: Arc<Forward>| {
        let mut s = f.open(greedy()).unwrap();
        let mut out = vec![];
        let mut input = vec![1, 2, 3];
        for _ in 0..6 {
            let StepOutput::Token(t) = s.step(StepInput::Tokens(input), vec![], false).unwrap()
            else {
                panic!("the last shard samples")
            };
            out.push(t);
            input = vec![t];
        }
        out
    };
    let alone = run(f.clone());
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let f = f.clone();
            std::thread::spawn(move || run(f))
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), alone);
    }
    assert_eq!(f.active_sessions(), 0);
}

#[test]
fn sampler_history_only_with_a_replayed_first_step() {
    let (_d, f) = forward(limits(), true);
    let mut one = f.open(greedy()).unwrap();
    let err = one
        .step(StepInput::Tokens(vec![1, 2]), vec![5, 6, 7], false)
        .unwrap_err();
    assert!(err.contains("history"), "{err}");
    drop(one);
    let mut two = f.open(greedy()).unwrap();
    two.step(StepInput::Tokens(vec![1, 2, 3]), vec![2, 3], false)
        .unwrap();
    let err = two
        .step(StepInput::Tokens(vec![4]), vec![4], false)
        .unwrap_err();
    assert!(err.contains("history"), "{err}");
}
