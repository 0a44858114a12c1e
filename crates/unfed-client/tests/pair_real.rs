//! Shard 0 as a real MPC pair on the network, on SmolLM2 (slow). Every layer runs on the exact
//! reference path here (`UNFED_ENGINE=reference`, set before anything loads: this binary holds
//! this one test): the default kernels quantize activations to 8 bits, which turns the pair's
//! fixed-point error (~1e-3) into flipped near-ties, as it would any change of shard 0's output.

mod common;

use unfed_model::Checkpoint;

#[test]
#[cfg_attr(not(unfed_slow), ignore = "slow: real model weights; set UNFED_SLOW=1")]
fn smollm2_through_the_mpc_pair_matches_the_plaintext_path() {
    // SAFETY: the only test of this binary, before any thread of its own starts.
    unsafe { std::env::set_var("UNFED_ENGINE", "reference") };
    let dir = tempfile::tempdir().unwrap();
    let store = unfed_store::ModelStore::open_default().unwrap();
    let model = store
        .fetch(
            unfed_store::find("smollm2-135m").unwrap(),
            &Default::default(),
        )
        .unwrap();
    // A chat prompt: on a prompt of random ids the model's greedy choices are near ties that
    // any rounding flips.
    let ck = Checkpoint::open(&model).unwrap();
    let tok = unfed_model::TextTokenizer::from_metadata(ck.metadata()).unwrap();
    let chat = unfed_model::ChatTemplate::from_metadata(ck.metadata(), &tok)
        .unwrap()
        .unwrap();
    let text = chat
        .render(
            &[unfed_model::ChatMessage::new(
                "user",
                "What is the capital of France?",
            )],
            true,
        )
        .unwrap();
    let prompt = tok.encode(&text).unwrap();
    drop(ck);
    common::pair::through_the_pair(&dir, &model, "smollm2-135m", &prompt, 32);
}
