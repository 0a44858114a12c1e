use unfed_model::{Checkpoint, Compute, Input, LogitsMode, ShardModel, ShardRole};
use unfed_mpc::shard::LocalPair;
use unfed_node::mpc_weights;
#[test]
#[ignore]
fn dbg() {
    let store = unfed_store::ModelStore::open_default().unwrap();
    let path = store
        .fetch(
            unfed_store::find(&std::env::var("M").unwrap()).unwrap(),
            &Default::default(),
        )
        .unwrap();
    let ck = Checkpoint::open(&path).unwrap();
    let cfg = ck.config().unwrap();
    let toks: Vec<u32> = vec![
        1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411,
        407, 19712, 8182, 2, 198, 1,
    ];
    for k in [1usize, 2] {
        let role = ShardRole {
            layers: 0..k,
            embedding: true,
            head: false,
        };
        let exact = ShardModel::load_role_with(&ck, role.clone(), Compute::Reference).unwrap();
        let fast = ShardModel::load_role(&ck, role).unwrap();
        let weights = mpc_weights::load(&ck, &cfg, k).unwrap();
        let mut pair = LocalPair::new(mpc_weights::spec(&cfg, k), &weights, [7; 16]);
        let got = pair.step(&toks).unwrap();
        let run = |m: &ShardModel| {
            let mut c = m.new_cache();
            m.forward(Input::Tokens(&toks), &mut c, LogitsMode::All)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let (e, f) = (run(&exact), run(&fast));
        let maxd = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max)
        };
        let mag = e.iter().fold(0f32, |a, b| a.max(b.abs()));
        eprintln!(
            "k={k}: |ref| max {mag}; mpc-vs-exact {} fast-vs-exact {} mpc-vs-fast {}",
            maxd(&got, &e),
            maxd(&f, &e),
            maxd(&got, &f)
        );
    }
}
