//! A whole network in one test process on 127.0.0.1 port 0: a registry, compute nodes for a
//! tiny generated model split in 3 shards, and the client — checked against the single-process
//! engine, including a node killed in the middle of a generation.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use unfed_client::Client;
use unfed_model::SamplingParams;
use unfed_proto::node::HealthRequest;
use unfed_proto::node::node_client::NodeClient;

#[test]
fn a_network_generates_what_the_engine_generates() {
    let net = start(&[1, 1, 1]);
    let expected = reference(&net.model);
    client_runtime().block_on(network_generates(&net, expected));
}

#[test]
fn a_network_on_tls_generates_what_the_engine_generates() {
    let net = start_with(&[1, 1, 1], true);
    let expected = reference(&net.model);
    client_runtime().block_on(async {
        network_generates(&net, expected).await;
        // Every node registered an https:// address, and every hop was dialled over TLS (a
        // plaintext dial to an https:// node would have failed the generation).
        let candidates = net.client().await.candidates("tiny").await.unwrap();
        assert!(
            candidates
                .iter()
                .flatten()
                .all(|c| c.address.starts_with("https://127.0.0.1"))
        );
    });
}

#[test]
fn tls_services_refuse_clients_that_do_not_verify_them() {
    let net = start_with(&[1], true);
    client_runtime().block_on(async {
        // The web PKI's roots do not include the test CA.
        let e = Client::connect(&net.registry)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("invalid peer certificate"), "{e}");
        // Nor does another CA.
        let other = unfed_proto::tls::TestnetCa::generate("other", 1).unwrap();
        let dialer = unfed_proto::Dialer::trusting(other.cert_pem().as_bytes(), "other").unwrap();
        let e = Client::connect_with(&net.registry, dialer)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("UnknownIssuer"), "{e}");
        // A plaintext connection to a TLS service gets nowhere.
        let plain = net.registry.trim_start_matches("https://");
        let answered = match Client::connect(plain).await {
            Ok(mut c) => c.list_models().await.is_ok(),
            Err(_) => false,
        };
        assert!(!answered);
        // And nobody dials plaintext off loopback.
        let e = net.dialer.connect("192.0.2.1:50051").await.unwrap_err();
        assert!(e.contains("off loopback"), "{e}");
    });
}

#[test]
fn a_node_refuses_to_expose_itself_without_tls() {
    let dir = tempfile::tempdir().unwrap();
    let rt = client_runtime();
    let run = |advertise: &str, tls: Option<unfed_proto::tls::ServerTls>| {
        let config = unfed_node::NodeConfig {
            shards_dir: dir.path().to_path_buf(),
            shard_index: 0,
            advertise: advertise.into(),
            registry: None,
            tls,
            dialer: unfed_proto::Dialer::default(),
            key: unfed_identity::NodeKey::generate(),
            limits: unfed_node::SessionLimits::default(),
            views: None,
            pair: None,
        };
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            unfed_node::run(config, listener, std::future::pending())
                .await
                .unwrap_err()
                .to_string()
        })
    };
    let e = run("203.0.113.9:50051", None);
    assert!(e.contains("off loopback"), "{e}");
    let e = run("https://node.example.org:50051", None);
    assert!(e.contains("needs a certificate"), "{e}");
    let ca = unfed_proto::tls::TestnetCa::generate("test", 1).unwrap();
    let (cert, key) = ca.issue(&["127.0.0.1"], 1).unwrap();
    let tls = unfed_proto::tls::ServerTls::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
    let e = run("127.0.0.1:50051", Some(tls));
    assert!(e.contains("advertise it as https://"), "{e}");
}

async fn network_generates(net: &Net, expected: Vec<u32>) {
    assert!(expected.len() > 4);
    let mut client = net.client().await;
    wait_ready(&mut client).await;
    let models = client.list_models().await.unwrap();
    assert_eq!(models[0].shards.len(), 3);
    let model = client.model("tiny").await.unwrap();
    let got = greedy(&mut client, &model).await;
    assert_eq!(got, expected);
    // Several sessions at once.
    let mut handles = Vec::new();
    for _ in 0..3 {
        let (registry, dialer) = (net.registry.clone(), net.dialer.clone());
        handles.push(tokio::spawn(async move {
            let mut c = Client::connect_with(&registry, dialer).await.unwrap();
            let m = c.model("tiny").await.unwrap();
            greedy(&mut c, &m).await
        }));
    }
    for h in handles {
        assert_eq!(h.await.unwrap(), expected);
    }
}

/// A plaintext guard relay for `net` on 127.0.0.1, registered under `key` if given; its address.
fn start_guard(
    net: &Net,
    rt: &tokio::runtime::Runtime,
    key: Option<unfed_identity::NodeKey>,
) -> String {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let guard = listener.local_addr().unwrap().to_string();
    let config = unfed_node::guard::GuardConfig {
        registry: Some(net.registry.clone()),
        max_sessions: 4,
        idle_timeout: Duration::from_secs(30),
        tls: None,
        dialer: net.dialer.clone(),
        views: None,
        announce: key.map(|key| unfed_node::guard::GuardAnnouncement {
            key,
            advertise: guard.clone(),
        }),
    };
    rt.spawn(unfed_node::guard::serve(
        config,
        listener,
        std::future::pending(),
    ));
    guard
}

#[test]
fn a_registered_guard_is_found_at_the_registry_and_never_fronts_its_own_nodes() {
    let net = start(&[2, 1, 1]);
    let expected = reference(&net.model);
    let rt = client_runtime();
    // The guard's operator also runs the first replica of shard 0.
    let (own_node, _, _) = &net.views[0];
    let key = unfed_identity::NodeKey::from_hex(&net.keys[0]).unwrap();
    let identity = key.address().to_string();
    let guard = start_guard(&net, &rt, Some(key));
    rt.block_on(async {
        let mut client = net.client().await;
        wait_ready(&mut client).await;
        let mut listed = client.listed_guards().await.unwrap();
        for _ in 0..100 {
            if !listed.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            listed = client.listed_guards().await.unwrap();
        }
        assert_eq!(listed.len(), 1, "the guard registered");
        assert_eq!(
            (listed[0].identity.as_str(), listed[0].address.as_str()),
            (identity.as_str(), guard.as_str())
        );
        let mut state = unfed_client::GuardState::default();
        let (chosen, _) = state
            .choose(
                &listed,
                1_800_000_000_000,
                std::path::Path::new("guards.json"),
            )
            .unwrap();
        client.use_listed_guard(chosen);
        // Shard 0 has two replicas; the one the guard's identity runs is left out.
        let entry: Vec<String> = client.candidates("tiny").await.unwrap()[0]
            .iter()
            .map(|c| c.address.clone())
            .collect();
        assert_eq!(entry.len(), 1);
        assert_ne!(&entry[0], own_node);
        let model = client.model("tiny").await.unwrap();
        assert_eq!(greedy(&mut client, &model).await, expected);
    });
    // The circuit's entry was the other replica: the guard's own node saw no tokens.
    let own_record = net.views[0].2.entries();
    assert!(
        !own_record
            .iter()
            .any(|s| matches!(s, unfed_node::views::Seen::Tokens(_)))
    );
}

#[test]
fn a_generation_through_a_guard_relay_generates_the_same() {
    let net = start(&[1, 1, 1]);
    let expected = reference(&net.model);
    let rt = client_runtime();
    let guard = start_guard(&net, &rt, None);
    rt.block_on(async {
        let mut client = net.client().await;
        wait_ready(&mut client).await;
        let model = client.model("tiny").await.unwrap();
        client.use_guard(&guard).await.unwrap();
        assert_eq!(greedy(&mut client, &model).await, expected);
        // A guard relays only to a node the registry lists for shard 0.
        use unfed_proto::node::guard_client::GuardClient;
        use unfed_proto::node::{OnionKeyRequest, Open, SessionRequest, session_request};
        let mut g = GuardClient::new(net.dialer.connect(&guard).await.unwrap());
        let key = g
            .onion_key(OnionKeyRequest {})
            .await
            .unwrap()
            .into_inner()
            .onion_key;
        let key = unfed_onion::OnionPublicKey::from_bytes(key.try_into().unwrap()).unwrap();
        let shard1 = client.candidates("tiny").await.unwrap()[1][0].clone();
        let route = unfed_client::Route { hops: vec![shard1] };
        let circuit = unfed_client::ClientCircuit::build(
            &route,
            Some(key),
            &unfed_proto::circuit::Output::Sample(SamplingParams::greedy()),
        )
        .unwrap();
        let open = SessionRequest {
            kind: Some(session_request::Kind::Open(Open {
                model_id: "tiny".into(),
                shard_index: 0,
                onion: circuit.header(),
                raw: false,
            })),
        };
        let mut replies = g
            .session(tokio_stream::iter(vec![open]))
            .await
            .unwrap()
            .into_inner();
        let err = replies.message().await.unwrap_err();
        assert!(
            err.message()
                .contains("not a node the registry lists for shard 0"),
            "{err:?}"
        );
        // A client told of a guard that is not there says so.
        let err = client.use_guard("127.0.0.1:9").await.unwrap_err();
        assert!(err.to_string().contains("cannot reach"), "{err}");
    });
}

#[test]
fn killing_a_node_mid_generation_resumes_on_its_replica() {
    let net = start(&[1, 2, 1]);
    let expected = reference(&net.model);
    client_runtime().block_on(failover(&net, expected));
}

async fn failover(net: &Net, expected: Vec<u32>) {
    let mut client = net.client().await;
    wait_ready(&mut client).await;
    let model = client.model("tiny").await.unwrap();

    // A watcher kills whichever shard-1 replica holds the session once 5 tokens have arrived.
    let seen = Arc::new(AtomicUsize::new(0));
    let killed: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let replicas: Vec<String> = net
        .nodes
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, (s, _))| *s == 1)
        .map(|(a, _)| a.clone())
        .collect();
    let watcher = {
        let (seen, killed, nodes) = (seen.clone(), killed.clone(), net.nodes.clone());
        tokio::spawn(async move {
            while seen.load(Ordering::SeqCst) < 5 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            for addr in replicas {
                let mut c = NodeClient::connect(format!("http://{addr}")).await.unwrap();
                if c.health(HealthRequest {})
                    .await
                    .unwrap()
                    .into_inner()
                    .active_sessions
                    > 0
                {
                    let (_, rt) = nodes.lock().unwrap().remove(&addr).unwrap();
                    rt.shutdown_background();
                    *killed.lock().unwrap() = Some(addr);
                    return;
                }
            }
        })
    };
    let mut on_token = |_: u32| {
        if seen.fetch_add(1, Ordering::SeqCst) + 1 == 5 {
            // Hold the generation here until the watcher has killed the node.
            for _ in 0..200 {
                if killed.lock().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        true
    };
    let got = client
        .generate(
            &model,
            PROMPT,
            MAX_TOKENS,
            &SamplingParams::greedy(),
            &mut on_token,
        )
        .await
        .unwrap();
    watcher.await.unwrap();
    assert!(
        killed.lock().unwrap().is_some(),
        "the watcher found no replica holding the session"
    );
    assert_eq!(
        got, expected,
        "the resumed generation differs from an undisturbed one"
    );
}

#[test]
fn nodes_register_again_with_a_registry_that_lost_its_database() {
    let mut net = start(&[1, 1, 1]);
    let rt = client_runtime();
    rt.block_on(async {
        let mut client = net.client().await;
        wait_ready(&mut client).await;
    });
    // The registry dies and comes back on the same address with an empty database.
    net.registry_rt.take().unwrap().shutdown_background();
    let fresh = net._dir.path().join("fresh.db");
    let (registry_rt, _) = start_registry(&net.registry, &fresh, None);
    net.registry_rt = Some(registry_rt);
    rt.block_on(async {
        let mut client = net.client().await;
        wait_ready(&mut client).await;
    });
}

#[test]
fn client_sampling_generates_what_the_last_shard_would_have_sampled() {
    let net = start(&[1, 1, 1]);
    let expected = reference(&net.model);
    client_runtime().block_on(async {
        let mut client = net.client().await;
        wait_ready(&mut client).await;
        let model = client.model("tiny").await.unwrap();
        let sampled = SamplingParams {
            temperature: 0.8,
            top_k: 20,
            top_p: 0.95,
            repeat_penalty: 1.1,
            repeat_last_n: 16,
            seed: 7,
        };
        let by_node = run(&mut client, &model, sampled.clone()).await;
        // A slice larger than the sampler's top-k, and every logit: the same picks, greedy or
        // seeded, as the last shard makes in mode off.
        for top_k in [32, 0] {
            client.set_output_mode(unfed_client::OutputMode::ClientSample { top_k });
            assert_eq!(
                run(&mut client, &model, SamplingParams::greedy()).await,
                expected
            );
            assert_eq!(run(&mut client, &model, sampled.clone()).await, by_node);
        }
        // A one-logit slice is greedy whatever the temperature.
        client.set_output_mode(unfed_client::OutputMode::ClientSample { top_k: 1 });
        assert_eq!(run(&mut client, &model, sampled.clone()).await, expected);
    });
}

async fn run(
    client: &mut Client,
    model: &unfed_client::RemoteModel,
    sampling: SamplingParams,
) -> Vec<u32> {
    client
        .generate(model, PROMPT, MAX_TOKENS, &sampling, &mut |_| true)
        .await
        .unwrap()
}
