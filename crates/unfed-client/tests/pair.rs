//! Shard 0 as a real MPC pair on the network, on a tiny generated model (the checks are in
//! `common/pair.rs`; SmolLM2 in `pair_real.rs`).

mod common;

use common::{MAX_TOKENS, PROMPT};
use unfed_model::testing::{TinySpec, write_tiny_gguf};

#[test]
fn a_generation_through_the_mpc_pair_matches_the_plaintext_path() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    write_tiny_gguf(
        &model,
        &TinySpec {
            n_layer: 6,
            ..TinySpec::default()
        },
    )
    .unwrap();
    common::pair::through_the_pair(&dir, &model, "tiny", PROMPT, MAX_TOKENS);
}
