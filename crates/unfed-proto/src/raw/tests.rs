//! Raw streams beside gRPC on one port: sorting, tickets, host checks, TLS, message framing.

use super::*;
use crate::tls::TestnetCa;

/// Serves an empty gRPC server on `split`'s HTTP/2 connections; returns the address and the
/// raw streams' receiver.
async fn serve(tls: Option<&ServerTls>) -> (String, mpsc::Receiver<(RawStream, Ticket)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let only = Some("127.0.0.1".parse().unwrap());
    let (incoming, raw) = split(listener, tls, Duration::from_secs(5), only).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(tonic::service::Routes::default())
            .serve_with_incoming(incoming),
    );
    let scheme = if tls.is_some() { "https://" } else { "" };
    (format!("{scheme}127.0.0.1:{port}"), raw)
}

/// A raw stream opens with its ticket and carries bytes both ways; gRPC connections to
/// the same port still complete their (TLS and) HTTP/2 handshakes.
async fn round_trip(address: &str, dialer: &Dialer, raw: &mut mpsc::Receiver<(RawStream, Ticket)>) {
    dialer.connect(address).await.expect("an HTTP/2 connection");
    let ticket = [7u8; 32];
    let mut mine = dialer
        .connect_raw(address, &ticket, Duration::from_secs(5))
        .await
        .unwrap();
    let (mut theirs, got) = raw.recv().await.unwrap();
    assert_eq!(got, ticket);
    assert_eq!(theirs.peer().ip(), mine.peer().ip());
    let echoed = tokio::task::spawn_blocking(move || {
        let big = vec![3u8; 1 << 20];
        let writer = std::thread::spawn(move || {
            mine.write_all(&big).unwrap();
            mine.flush().unwrap();
            mine
        });
        let mut got = vec![0u8; 1 << 20];
        theirs.read_exact(&mut got).unwrap();
        theirs.write_all(b"done").unwrap();
        theirs.flush().unwrap();
        let mut mine = writer.join().unwrap();
        let mut done = [0u8; 4];
        mine.read_exact(&mut done).unwrap();
        (got.iter().all(|&b| b == 3), done)
    })
    .await
    .unwrap();
    assert_eq!(echoed, (true, *b"done"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_streams_and_grpc_share_a_plaintext_port() {
    let (address, mut raw) = serve(None).await;
    round_trip(&address, &Dialer::default(), &mut raw).await;

    // From another host (another loopback address here) neither kind gets through.
    let answer = |dialer: Dialer| {
        let address = address.clone();
        async move {
            let channel = dialer
                .connect(&address)
                .await
                .map_err(|_| tonic::Code::Unavailable)?;
            let mut node = crate::node::node_client::NodeClient::new(channel);
            node.health(crate::node::HealthRequest {})
                .await
                .map(drop)
                .map_err(|s| s.code())
        }
    };
    // The empty server answers that it has no such method: the call got through.
    assert_eq!(
        answer(Dialer::default()).await,
        Err(tonic::Code::Unimplemented)
    );
    let elsewhere = Dialer::default().from_ip("127.0.0.2".parse().unwrap());
    assert_ne!(
        answer(elsewhere.clone()).await,
        Err(tonic::Code::Unimplemented)
    );
    let got = elsewhere
        .connect_raw(&address, &[1; 32], Duration::from_secs(5))
        .await;
    let closed = tokio::task::spawn_blocking(move || {
        let mut stream = got.ok()?;
        Some(stream.read(&mut [0u8; 1]).map_err(|e| e.kind()))
    });
    assert!(matches!(
        closed.await.unwrap(),
        None | Some(Ok(0)) | Some(Err(std::io::ErrorKind::ConnectionReset))
    ));
    assert!(raw.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_streams_and_grpc_share_a_tls_port_and_its_certificate_checks() {
    let ca = TestnetCa::generate("raw test", 1).unwrap();
    let (cert, key) = ca.issue(&["127.0.0.1"], 1).unwrap();
    let tls = ServerTls::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
    let (address, mut raw) = serve(Some(&tls)).await;
    let dialer = Dialer::trusting(ca.cert_pem().as_bytes(), "the CA").unwrap();
    round_trip(&address, &dialer, &mut raw).await;

    // A dialer that does not trust the server's CA gets no raw stream.
    let other = TestnetCa::generate("another", 1).unwrap();
    let stranger = Dialer::trusting(other.cert_pem().as_bytes(), "the CA").unwrap();
    let e = stranger
        .connect_raw(&address, &[1; 32], Duration::from_secs(5))
        .await
        .err()
        .expect("an untrusted server");
    assert!(
        e.contains("cannot open a raw stream") && e.contains("certificate"),
        "{e}"
    );
}

/// Both ends of a fresh raw stream: the dialer's (asynchronous), the server's (blocking).
async fn open(
    address: &str,
    raw: &mut mpsc::Receiver<(RawStream, Ticket)>,
    ticket: u8,
) -> (AsyncRawStream, RawStream) {
    let mine = Dialer::default()
        .connect_raw_async(address, &[ticket; 32])
        .await
        .unwrap();
    let (theirs, got) = raw.recv().await.unwrap();
    assert_eq!(got, [ticket; 32]);
    (mine, theirs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_keep_their_bounds_and_a_stream_cut_inside_one_is_an_error() {
    use std::io::ErrorKind;
    let (address, mut raw) = serve(None).await;
    let (mut mine, mut theirs) = open(&address, &mut raw, 9).await;
    mine.send_message(b"hello").await.unwrap();
    mine.send_message(&[]).await.unwrap();
    mine.send_message(&[1; 100]).await.unwrap();
    let theirs = tokio::task::spawn_blocking(move || {
        assert_eq!(theirs.read_message(64).unwrap().unwrap(), b"hello");
        assert_eq!(theirs.read_message(64).unwrap().unwrap(), b"");
        assert_eq!(theirs.read_message(100).unwrap().unwrap(), [1; 100]);
        theirs.send_message(b"back").unwrap();
        theirs
    })
    .await
    .unwrap();
    assert_eq!(mine.read_message(64).await.unwrap().unwrap(), b"back");
    // The other end gone between messages: a clean end.
    drop(theirs);
    assert!(mine.read_message(64).await.unwrap().is_none());

    // A message over the reader's limit is refused before its bytes are read.
    let (mut mine, mut theirs) = open(&address, &mut raw, 7).await;
    mine.send_message(&[1; 100]).await.unwrap();
    let e = tokio::task::spawn_blocking(move || theirs.read_message(64).unwrap_err())
        .await
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::InvalidData);
    assert!(
        e.to_string().contains("100 bytes, over the limit of 64"),
        "{e}"
    );

    // Gone inside a message: an error.
    let (mut mine, mut theirs) = open(&address, &mut raw, 8).await;
    mine.send_message(&[5; 3]).await.unwrap();
    let cut = tokio::task::spawn_blocking(move || {
        assert_eq!(theirs.read_message(64).unwrap().unwrap(), [5; 3]);
        theirs.write_all(&[10, 0, 0, 0, 1, 2, 3]).unwrap();
        theirs.flush().unwrap();
    });
    cut.await.unwrap();
    let e = mine.read_message(64).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnexpectedEof);
}
