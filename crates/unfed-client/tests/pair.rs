//! Shard 0 as a real MPC pair on the network, on a tiny generated model (the checks are in
//! `common/pair.rs`; SmolLM2 in `pair_real.rs`). As there, every layer runs on the exact
//! reference path (`UNFED_ENGINE=reference`, set before anything loads: this binary holds this
//! one test): the default kernels quantize activations to 8 bits, which turns the pair's
//! fixed-point error into flipped near-ties (seen here on the tiny model at token 13).

mod common;

use common::{MAX_TOKENS, PROMPT};
use unfed_model::testing::{TinySpec, write_tiny_gguf};

#[test]
fn a_generation_through_the_mpc_pair_matches_the_plaintext_path() {
    // SAFETY: the only test of this binary, before any thread of its own starts.
    unsafe { std::env::set_var("UNFED_ENGINE", "reference") };
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
