//! What a node does with input it must refuse, in a whole network on 127.0.0.1: malformed and
//! oversized messages, a flood of circuit setups from one address, a step the first hop refuses —
//! each a clear error to the sender, and the network keeps serving.

mod common;

use std::time::Duration;

use common::*;
use unfed_model::SamplingParams;
use unfed_proto::node::node_client::NodeClient;

#[test]
fn malformed_and_oversized_messages_get_clear_errors_and_the_node_keeps_serving() {
    use tokio_stream::wrappers::ReceiverStream;
    use unfed_client::{ClientCircuit, Route};
    use unfed_proto::node::{Hidden, Open, SessionRequest, Tokens, session_request, step};

    let net = start(&[1, 1, 1]);
    let expected = reference(&net.model);
    client_runtime().block_on(async {
        let mut client = net.client().await;
        wait_ready(&mut client).await;
        let candidates = client.candidates("tiny").await.unwrap();
        let (hop1, hop2) = (candidates[1][0].clone(), candidates[2][0].clone());
        // Sends a sequence of messages to shard 1 on a fresh session stream; returns the first
        // error.
        let session = |msgs: Vec<SessionRequest>| {
            let addr = hop1.address.clone();
            async move {
                let mut c = NodeClient::connect(format!("http://{addr}"))
                    .await
                    .unwrap()
                    .max_encoding_message_size(usize::MAX)
                    .max_decoding_message_size(usize::MAX);
                let (tx, rx) = tokio::sync::mpsc::channel(8);
                for m in msgs {
                    tx.send(m).await.unwrap();
                }
                drop(tx);
                let mut replies = match c.session(ReceiverStream::new(rx)).await {
                    Ok(r) => r.into_inner(),
                    Err(s) => return s,
                };
                loop {
                    match replies.message().await {
                        Ok(Some(_)) => continue,
                        Ok(None) => panic!("the node accepted a bad session"),
                        Err(s) => return s,
                    }
                }
            }
        };
        let open = |shard: u32, onion: Vec<u8>| SessionRequest {
            kind: Some(session_request::Kind::Open(Open {
                model_id: "tiny".into(),
                shard_index: shard,
                onion,
                raw: false,
            })),
        };
        let frame = |f: Vec<u8>| SessionRequest {
            kind: Some(session_request::Kind::Frame(f.into())),
        };
        // A circuit that starts at shard 1 (as shard 0 would build it for us).
        let circuit = |hops: Vec<unfed_client::Candidate>| {
            ClientCircuit::build(
                &Route { hops },
                None,
                &unfed_proto::circuit::Output::Sample(SamplingParams::greedy()),
            )
            .unwrap()
        };
        let sub_route = vec![hop1.clone(), hop2.clone()];

        let s = session(vec![frame(vec![1, 2, 3])]).await;
        assert!(s.message().contains("starts with an Open"), "{s:?}");
        let s = session(vec![open(0, circuit(sub_route.clone()).header())]).await;
        assert!(s.message().contains("serves shard 1"), "{s:?}");
        let s = session(vec![open(1, vec![7; 100])]).await;
        assert!(s.message().contains("circuit setup refused"), "{s:?}");
        let mut tampered = circuit(sub_route.clone()).header();
        tampered[700] ^= 1;
        let s = session(vec![open(1, tampered)]).await;
        assert!(s.message().contains("circuit setup refused"), "{s:?}");
        // A header built for someone else's key does not open here.
        let s = session(vec![open(1, circuit(vec![hop2.clone()]).header())]).await;
        assert!(s.message().contains("circuit setup refused"), "{s:?}");
        // A circuit whose header says shard 1 is the last hop.
        let s = session(vec![open(1, circuit(vec![hop1.clone()]).header())]).await;
        assert!(s.message().contains("needs a next hop"), "{s:?}");
        // A relay connects only to a node the registry lists for the next shard.
        let mut stranger = hop2.clone();
        stranger.address = "127.0.0.1:9".into();
        let s = session(vec![open(
            1,
            circuit(vec![hop1.clone(), stranger]).header(),
        )])
        .await;
        assert!(
            s.message().contains("not a node the registry lists"),
            "{s:?}"
        );
        // Replaying a setup header is refused, even after its first use ended.
        let once = circuit(sub_route.clone()).header();
        let s = session(vec![open(1, once.clone()), frame(vec![0; 40])]).await;
        assert!(s.message().contains("step frame refused"), "{s:?}");
        let s = session(vec![open(1, once)]).await;
        assert!(s.message().contains("replay"), "{s:?}");

        let hidden = |rows: u32, cols: u32, bytes: usize| {
            step::Input::Hidden(Hidden {
                rows,
                cols,
                data: vec![0; bytes],
            })
        };
        let bad_step = |input: step::Input| {
            let mut c = circuit(sub_route.clone());
            let header = c.header();
            let f = c.frame(input, vec![]).unwrap();
            vec![open(1, header), frame(f)]
        };
        let s = session(bad_step(hidden(2, 7, 56))).await;
        assert!(s.message().contains("expected n x 64"), "{s:?}");
        let s = session(bad_step(hidden(2, 64, 12))).await;
        assert!(s.message().contains("do not hold"), "{s:?}");
        let s = session(bad_step(step::Input::Tokens(Tokens { ids: vec![1] }))).await;
        assert!(s.message().contains("takes hidden states"), "{s:?}");
        let s = session(vec![
            open(1, circuit(sub_route.clone()).header()),
            frame(vec![0; unfed_proto::MAX_NODE_MESSAGE + 1]),
        ])
        .await;
        assert_eq!(s.code(), tonic::Code::OutOfRange, "{s:?}");

        // A session whose frames come on a raw stream (as a relaying node sends them): the
        // bytes written there, and the first error on the gRPC stream.
        let raw_session = |header: Vec<u8>, bytes: Vec<u8>| {
            let addr = hop1.address.clone();
            async move {
                let mut c = NodeClient::connect(format!("http://{addr}")).await.unwrap();
                let (tx, rx) = tokio::sync::mpsc::channel(8);
                let open = Open {
                    model_id: "tiny".into(),
                    shard_index: 1,
                    onion: header,
                    raw: true,
                };
                tx.send(SessionRequest {
                    kind: Some(session_request::Kind::Open(open)),
                })
                .await
                .unwrap();
                let mut replies = c
                    .session(ReceiverStream::new(rx))
                    .await
                    .unwrap()
                    .into_inner();
                let ticket = match replies.message().await.unwrap() {
                    Some(unfed_proto::node::SessionReply {
                        kind: Some(unfed_proto::node::session_reply::Kind::Opened(o)),
                    }) => o.ticket.try_into().expect("a 32-byte ticket"),
                    other => panic!("not opened: {other:?}"),
                };
                let mut raw = unfed_proto::Dialer::default()
                    .connect_raw(&addr, &ticket, Duration::from_secs(10))
                    .await
                    .unwrap();
                // The stream stays open until the error came, so the node cannot see it end.
                let _raw = tokio::task::spawn_blocking(move || {
                    std::io::Write::write_all(&mut raw, &bytes).unwrap();
                    raw
                })
                .await
                .unwrap();
                let status = loop {
                    match replies.message().await {
                        Ok(Some(_)) => continue,
                        Ok(None) => panic!("the node accepted a bad session"),
                        Err(s) => break s,
                    }
                };
                drop(tx);
                status
            }
        };
        let s = raw_session(
            circuit(sub_route.clone()).header(),
            (unfed_proto::MAX_NODE_MESSAGE as u32)
                .to_le_bytes()
                .to_vec(),
        )
        .await;
        assert!(s.message().contains("over the limit"), "{s:?}");
        let garbage = [&40u32.to_le_bytes()[..], &[0; 40]].concat();
        let s = raw_session(circuit(sub_route.clone()).header(), garbage).await;
        assert!(s.message().contains("step frame refused"), "{s:?}");
        let mut c = circuit(sub_route.clone());
        let header = c.header();
        let f = c.frame(hidden(2, 7, 56), vec![]).unwrap();
        let s = raw_session(header, [&(f.len() as u32).to_le_bytes()[..], &f].concat()).await;
        assert!(s.message().contains("expected n x 64"), "{s:?}");

        // Still serving.
        let model = client.model("tiny").await.unwrap();
        let got = greedy(&mut client, &model).await;
        assert_eq!(got, expected);
    });
}

#[test]
fn a_flood_of_setups_from_one_address_is_refused_before_any_work() {
    let net = start(&[1, 1]);
    client_runtime().block_on(async {
        let mut client = net.client().await;
        wait_ready(&mut client).await;
        let hop = client.candidates("tiny").await.unwrap()[1][0]
            .address
            .clone();
        let mut node = NodeClient::connect(format!("http://{hop}")).await.unwrap();
        let (mut refused, mut peeled) = (0, 0);
        for _ in 0..100 {
            let open = unfed_proto::node::SessionRequest {
                kind: Some(unfed_proto::node::session_request::Kind::Open(
                    unfed_proto::node::Open {
                        model_id: "tiny".into(),
                        shard_index: 1,
                        onion: vec![0; unfed_onion::HEADER_LEN],
                        raw: false,
                    },
                )),
            };
            let status = match node.session(tokio_stream::iter([open])).await {
                Err(s) => s,
                Ok(r) => r.into_inner().message().await.unwrap_err(),
            };
            if status.message().contains("too many circuit setups") {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted);
                refused += 1;
            } else {
                peeled += 1;
            }
        }
        // The burst is served (and its junk headers refused after peeling); the rest is not.
        assert!(
            peeled >= 64 && refused > 0,
            "{peeled} peeled, {refused} refused"
        );
    });
}

#[test]
fn a_first_hop_refusing_a_step_tells_the_client_why() {
    // The step's frame goes on the first hop's raw stream; its reason comes on the gRPC stream.
    let net = start(&[1, 1, 1]);
    client_runtime().block_on(async {
        let mut client = net.client().await;
        wait_ready(&mut client).await;
        let model = client.model("tiny").await.unwrap();
        let max = unfed_node::SessionLimits::default().max_positions;
        let prompt = vec![1; max + 1];
        let err = client
            .generate(&model, &prompt, 4, &SamplingParams::greedy(), &mut |_| true)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("the session would exceed {max} positions")),
            "{err}"
        );
        // And the network still serves.
        assert_eq!(greedy(&mut client, &model).await, reference(&net.model));
    });
}
