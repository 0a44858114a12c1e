//! A node's forward thread keeps its sessions bounded: count, positions, KV memory, idle time.

use std::time::Duration;

use unfed_model::testing::{TinySpec, write_tiny_gguf};
use unfed_model::{Checkpoint, SamplingParams, ShardModel, ShardRole};
use unfed_node::{Forward, SessionLimits, StepInput, StepOutput};

fn forward(limits: SessionLimits, head: bool) -> (tempfile::TempDir, Forward) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_tiny_gguf(&path, &TinySpec::default()).unwrap();
    let ck = Checkpoint::open(&path).unwrap();
    let role = if head {
        ShardRole {
            layers: 0..4,
            embedding: true,
            head: true,
        }
    } else {
        ShardRole {
            layers: 0..2,
            embedding: true,
            head: false,
        }
    };
    let (f, _thread) = Forward::start(ShardModel::load_role(&ck, role).unwrap(), limits).unwrap();
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

#[tokio::test]
async fn session_count_and_positions_are_bounded() {
    let (_d, f) = forward(limits(), false);
    f.open(1, None).await.unwrap();
    f.open(2, None).await.unwrap();
    assert!(f.open(3, None).await.unwrap_err().contains("busy"));
    assert!(
        f.open(1, None)
            .await
            .unwrap_err()
            .contains("already in use")
    );
    match f
        .step(1, StepInput::Tokens(vec![1, 2, 3]), vec![], false)
        .await
        .unwrap()
    {
        StepOutput::Hidden { rows, cols, values } => {
            assert_eq!((rows, cols, values.len()), (3, 64, 192))
        }
        _ => panic!("a middle shard returns hidden states"),
    }
    let err = f
        .step(1, StepInput::Tokens((0..14).collect()), vec![], false)
        .await
        .unwrap_err();
    assert!(err.contains("exceed 16 positions"), "{err}");
    // The refused step did not consume the session; closing frees a slot.
    assert!(
        f.step(1, StepInput::Tokens(vec![4]), vec![], false)
            .await
            .is_ok()
    );
    f.close(2).await;
    f.open(3, None).await.unwrap();
    assert_eq!(f.active_sessions().await, 2);
}

#[tokio::test]
async fn kv_memory_cap_refuses_new_positions() {
    // 2 layers x K and V x 2 KV heads x 16 dims x 4 bytes = 512 bytes per position: room for 10.
    let (_d, f) = forward(
        SessionLimits {
            max_kv_bytes: 5120,
            ..limits()
        },
        false,
    );
    f.open(1, None).await.unwrap();
    f.open(2, None).await.unwrap();
    f.step(1, StepInput::Tokens((0..8).collect()), vec![], false)
        .await
        .unwrap();
    let err = f
        .step(2, StepInput::Tokens((0..4).collect()), vec![], false)
        .await
        .unwrap_err();
    assert!(err.contains("memory is full"), "{err}");
    f.step(2, StepInput::Tokens((0..2).collect()), vec![], false)
        .await
        .unwrap();
}

#[tokio::test]
async fn idle_sessions_are_evicted() {
    let (_d, f) = forward(
        SessionLimits {
            idle_timeout: Duration::from_millis(50),
            ..limits()
        },
        true,
    );
    f.open(
        1,
        Some(unfed_node::HeadOutput::Sample(SamplingParams::greedy())),
    )
    .await
    .unwrap();
    assert!(matches!(
        f.step(1, StepInput::Tokens(vec![1, 2]), vec![], false)
            .await
            .unwrap(),
        StepOutput::Token(_)
    ));
    tokio::time::sleep(Duration::from_millis(120)).await;
    let err = f
        .step(1, StepInput::Tokens(vec![3]), vec![], false)
        .await
        .unwrap_err();
    assert!(err.contains("no such session"), "{err}");
    assert_eq!(f.active_sessions().await, 0);
}

#[tokio::test]
async fn sampler_history_only_with_a_replayed_first_step() {
    let (_d, f) = forward(limits(), true);
    f.open(
        1,
        Some(unfed_node::HeadOutput::Sample(SamplingParams::greedy())),
    )
    .await
    .unwrap();
    let err = f
        .step(1, StepInput::Tokens(vec![1, 2]), vec![5, 6, 7], false)
        .await
        .unwrap_err();
    assert!(err.contains("history"), "{err}");
    f.open(
        2,
        Some(unfed_node::HeadOutput::Sample(SamplingParams::greedy())),
    )
    .await
    .unwrap();
    f.step(2, StepInput::Tokens(vec![1, 2, 3]), vec![2, 3], false)
        .await
        .unwrap();
    let err = f
        .step(2, StepInput::Tokens(vec![4]), vec![4], false)
        .await
        .unwrap_err();
    assert!(err.contains("history"), "{err}");
}
