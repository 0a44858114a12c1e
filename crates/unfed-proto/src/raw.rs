//! Raw byte streams beside gRPC on the same port, for traffic where a message's latency is the
//! cost (the MPC pair's rounds, a session's frames between nodes): the dialer opens one with a 32-byte ticket, and the server's
//! accept loop ([`split`]) hands HTTP/2 connections to tonic and raw ones to their owner. Over
//! TLS a raw stream asks for the ALPN protocol [`ALPN_RAW`] (same certificate, same checks);
//! in plaintext, on loopback only, it starts with a preface no HTTP/2 client sends. Once open,
//! a raw stream is blocking `std::io`: one thread reads and writes it with no runtime between.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::tls::{Dialer, HANDSHAKE_TIMEOUT, ServerTls, TlsError, check_dialable};

/// The ALPN protocol of a raw stream over TLS.
pub const ALPN_RAW: &[u8] = b"unfed-raw/1";
/// What opens a raw stream in plaintext (an HTTP/2 connection opens with `PRI * HTTP/2.0`).
const PLAIN_PREFACE: &[u8; 8] = b"UNFEDRAW";
/// Connections being sorted at once (a TLS handshake and the ticket each); more wait.
const MAX_SORTING: usize = 64;

/// What a message's buffer starts with; a longer one grows as its bytes come.
const START_CAPACITY: usize = 64 << 10;

/// The 32 bytes a raw stream opens with, by which its server knows what it is for.
pub type Ticket = [u8; 32];

/// A blocking byte stream (TCP, or TLS over TCP) with read and write timeouts.
pub struct RawStream {
    inner: Box<dyn Duplex>,
    peer: SocketAddr,
}

trait Duplex: Read + Write + Send + Sync {}
impl<T: Read + Write + Send + Sync> Duplex for T {}

impl RawStream {
    /// Who is at the other end.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Writes one message: its length (u32, little-endian), then its bytes, in one write.
    pub fn send_message(&mut self, message: &[u8]) -> std::io::Result<()> {
        self.write_all(&framed(message)?)?;
        self.flush()
    }

    /// Reads one message of at most `max` bytes ([`RawStream::send_message`]'s framing); None
    /// when the stream ends cleanly between messages. A longer one is refused with an
    /// `InvalidData` error that says so, before its bytes are read.
    pub fn read_message(&mut self, max: usize) -> std::io::Result<Option<Vec<u8>>> {
        let mut len = [0u8; 4];
        let mut got = 0;
        while got < len.len() {
            match self.read(&mut len[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                // (A TLS peer that closes without a close_notify.)
                Err(e) if got == 0 && e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Ok(None);
                }
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // Grown as the bytes come past 64 KiB, not allocated at the announced length.
        let len = checked_len(len, max)?;
        let mut message = Vec::with_capacity(len.min(START_CAPACITY));
        self.take(len as u64).read_to_end(&mut message)?;
        whole(message, len)
    }
}

impl Read for RawStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Write for RawStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Dialer {
    /// A raw stream to the server at `address` (its gRPC address) opened with `ticket`, whose
    /// reads and writes time out after `io_timeout`. The error names the address and why.
    pub async fn connect_raw(
        &self,
        address: &str,
        ticket: &Ticket,
        io_timeout: Duration,
    ) -> Result<RawStream, String> {
        let (dialed, peer) = self.dial_raw(address, ticket).await?;
        let fail = |e: std::io::Error| format!("cannot open a raw stream to {address}: {e}");
        let inner: Box<dyn Duplex> = match dialed {
            Dialed::Plain(tcp) => Box::new(blocking(tcp, io_timeout).map_err(fail)?),
            Dialed::Tls(tls) => {
                let (tcp, conn) = tls.into_inner();
                let tcp = blocking(tcp, io_timeout).map_err(fail)?;
                Box::new(rustls::StreamOwned::new(conn, tcp))
            }
        };
        Ok(RawStream { inner, peer })
    }

    /// [`Dialer::connect_raw`] for a task on the runtime: the stream stays asynchronous.
    pub async fn connect_raw_async(
        &self,
        address: &str,
        ticket: &Ticket,
    ) -> Result<AsyncRawStream, String> {
        Ok(AsyncRawStream(self.dial_raw(address, ticket).await?.0))
    }

    async fn dial_raw(
        &self,
        address: &str,
        ticket: &Ticket,
    ) -> Result<(Dialed, SocketAddr), String> {
        let fail = |why: String| format!("cannot open a raw stream to {address}: {why}");
        let target = check_dialable(address).map_err(|e| e.to_string())?;
        let connect = async {
            let addr = tokio::net::lookup_host((target.host.trim_matches(['[', ']']), target.port))
                .await?
                .next()
                .ok_or_else(|| std::io::Error::other("the name has no address"))?;
            let socket = match addr {
                SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            if let Some(ip) = self.local {
                socket.bind(SocketAddr::new(ip, 0))?;
            }
            socket.connect(addr).await
        };
        let tcp = tokio::time::timeout(crate::CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| fail("no connection in time".into()))?
            .map_err(|e| fail(e.to_string()))?;
        tcp.set_nodelay(true).map_err(|e| fail(e.to_string()))?;
        let peer = tcp.peer_addr().map_err(|e| fail(e.to_string()))?;
        let opened = async {
            if !target.tls {
                let mut tcp = tcp;
                let hello = [&PLAIN_PREFACE[..], ticket].concat();
                tcp.write_all(&hello).await.map_err(|e| e.to_string())?;
                return Ok(Dialed::Plain(tcp));
            }
            let name = rustls::pki_types::ServerName::try_from(target.server_name().to_string())
                .map_err(|e| e.to_string())?;
            let connector = tokio_rustls::TlsConnector::from(self.rustls(ALPN_RAW)?);
            let mut tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| crate::tls::deepest(&e))?;
            if tls.get_ref().1.alpn_protocol() != Some(ALPN_RAW) {
                return Err("the server does not serve raw streams".into());
            }
            tls.write_all(ticket).await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            Ok(Dialed::Tls(Box::new(tls)))
        };
        let dialed = tokio::time::timeout(HANDSHAKE_TIMEOUT, opened)
            .await
            .map_err(|_| fail("no handshake in time".into()))?
            .map_err(fail)?;
        Ok((dialed, peer))
    }
}

/// A raw stream just opened, before it is made blocking or kept asynchronous.
enum Dialed {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A raw stream read and written by a task on the runtime, with the framing of
/// [`RawStream::send_message`] and [`RawStream::read_message`].
pub struct AsyncRawStream(Dialed);

impl AsyncRawStream {
    /// Writes one message: its length (u32, little-endian), then its bytes, in one write.
    pub async fn send_message(&mut self, message: &[u8]) -> std::io::Result<()> {
        let buf = framed(message)?;
        match &mut self.0 {
            Dialed::Plain(tcp) => tcp.write_all(&buf).await,
            Dialed::Tls(tls) => {
                tls.write_all(&buf).await?;
                tls.flush().await
            }
        }
    }

    /// Reads one message of at most `max` bytes; None when the stream ended between messages.
    pub async fn read_message(&mut self, max: usize) -> std::io::Result<Option<Vec<u8>>> {
        match &mut self.0 {
            Dialed::Plain(tcp) => read_message_async(tcp, max).await,
            Dialed::Tls(tls) => read_message_async(tls, max).await,
        }
    }
}

async fn read_message_async(
    r: &mut (impl AsyncRead + Unpin),
    max: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        // (A clean end between messages; over TLS also one without a close_notify.)
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = checked_len(len, max)?;
    let mut message = Vec::with_capacity(len.min(START_CAPACITY));
    r.take(len as u64).read_to_end(&mut message).await?;
    whole(message, len)
}

/// `message` if it has all `len` bytes (the stream ended inside it otherwise).
fn whole(message: Vec<u8>, len: usize) -> std::io::Result<Option<Vec<u8>>> {
    if message.len() < len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Some(message))
}

/// `message` with its length in front.
fn framed(message: &[u8]) -> std::io::Result<Vec<u8>> {
    let len = u32::try_from(message.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "message too long"))?;
    let mut buf = Vec::with_capacity(4 + message.len());
    buf.extend(len.to_le_bytes());
    buf.extend_from_slice(message);
    Ok(buf)
}

/// A message length read off the wire, refused when over `max`.
fn checked_len(len: [u8; 4], max: usize) -> std::io::Result<usize> {
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a message of {len} bytes, over the limit of {max}"),
        ));
    }
    Ok(len)
}

/// The connections of one listener, sorted: HTTP/2 ones for tonic (`serve_with_incoming`),
/// raw ones with their tickets, whose reads and writes time out after `io_timeout`. A
/// connection from another host than `only_from` (when given) is closed at once, and one that
/// completes neither handshake in time is dropped. Ends when tonic drops its end.
pub fn split(
    listener: TcpListener,
    tls: Option<&ServerTls>,
    io_timeout: Duration,
    only_from: Option<std::net::IpAddr>,
) -> Result<(Incoming, mpsc::Receiver<(RawStream, Ticket)>), TlsError> {
    let configs = match tls {
        Some(t) => Some((t.rustls(b"h2")?, t.rustls(ALPN_RAW)?)),
        None => None,
    };
    let (h2_tx, h2_rx) = mpsc::channel(MAX_SORTING);
    let (raw_tx, raw_rx) = mpsc::channel(MAX_SORTING);
    let sorting = Arc::new(Semaphore::new(MAX_SORTING));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = h2_tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((tcp, peer)) = accepted else {
                // Out of descriptors, or a connection reset before it was taken: try again.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            // (An IPv4 peer on a dual-stack socket shows as ::ffff:a.b.c.d.)
            if only_from.is_some_and(|ip| ip.to_canonical() != peer.ip().to_canonical()) {
                continue;
            }
            let Ok(permit) = sorting.clone().acquire_owned().await else {
                return;
            };
            let (h2_tx, raw_tx, configs) = (h2_tx.clone(), raw_tx.clone(), configs.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let _ = tcp.set_nodelay(true);
                let sorted =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, sort(tcp, peer, configs, io_timeout))
                        .await;
                match sorted {
                    Ok(Ok(Sorted::H2(conn))) => drop(h2_tx.send(Ok(conn)).await),
                    Ok(Ok(Sorted::Raw(stream, ticket))) => {
                        drop(raw_tx.send((stream, ticket)).await)
                    }
                    _ => {}
                }
            });
        }
    });
    Ok((tokio_stream::wrappers::ReceiverStream::new(h2_rx), raw_rx))
}

/// The HTTP/2 connections [`split`] hands tonic.
pub type Incoming = tokio_stream::wrappers::ReceiverStream<std::io::Result<Conn>>;

/// An HTTP/2 connection, plaintext or with its TLS already terminated.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

enum Sorted {
    H2(Conn),
    Raw(RawStream, Ticket),
}

async fn sort(
    mut tcp: TcpStream,
    peer: SocketAddr,
    configs: Option<(Arc<rustls::ServerConfig>, Arc<rustls::ServerConfig>)>,
    io_timeout: Duration,
) -> std::io::Result<Sorted> {
    let mut ticket = Ticket::default();
    let Some((h2, raw)) = configs else {
        let mut head = [0u8; PLAIN_PREFACE.len()];
        loop {
            let n = tcp.peek(&mut head).await?;
            if n == 0 || head[..n] != PLAIN_PREFACE[..n] {
                return Ok(Sorted::H2(Conn::Plain(tcp)));
            }
            if n == head.len() {
                break;
            }
            // The preface so far, in pieces: wait for the rest.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tcp.read_exact(&mut head).await?;
        tcp.read_exact(&mut ticket).await?;
        let stream = RawStream {
            inner: Box::new(blocking(tcp, io_timeout)?),
            peer,
        };
        return Ok(Sorted::Raw(stream, ticket));
    };
    let start =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
    let wants_raw = start
        .client_hello()
        .alpn()
        .is_some_and(|mut protocols| protocols.any(|p| p == ALPN_RAW));
    if !wants_raw {
        let tls = start.into_stream(h2).await?;
        return Ok(Sorted::H2(Conn::Tls(Box::new(tls))));
    }
    let mut tls = start.into_stream(raw).await?;
    tls.read_exact(&mut ticket).await?;
    let (tcp, conn) = tls.into_inner();
    let stream = RawStream {
        inner: Box::new(rustls::StreamOwned::new(conn, blocking(tcp, io_timeout)?)),
        peer,
    };
    Ok(Sorted::Raw(stream, ticket))
}

/// `tcp` as a blocking socket with read and write timeouts.
fn blocking(tcp: TcpStream, io_timeout: Duration) -> std::io::Result<std::net::TcpStream> {
    let tcp = tcp.into_std()?;
    tcp.set_nonblocking(false)?;
    tcp.set_read_timeout(Some(io_timeout))?;
    tcp.set_write_timeout(Some(io_timeout))?;
    Ok(tcp)
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(tcp) => tcp,
            Conn::Tls(tls) => tls.get_ref().0,
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.tcp().connect_info()
    }
}

/// `$body` on the connection's inner stream `$io`, pinned, whichever kind it is.
macro_rules! on_inner {
    ($conn:expr, $io:ident => $body:expr) => {
        match $conn.get_mut() {
            Conn::Plain(tcp) => {
                let $io = std::pin::Pin::new(tcp);
                $body
            }
            Conn::Tls(tls) => {
                let $io = std::pin::Pin::new(tls.as_mut());
                $body
            }
        }
    };
}

type Poll<T> = std::task::Poll<std::io::Result<T>>;
type Cx<'a, 'b> = &'a mut std::task::Context<'b>;

impl AsyncRead for Conn {
    fn poll_read(self: std::pin::Pin<&mut Self>, cx: Cx, buf: &mut ReadBuf<'_>) -> Poll<()> {
        on_inner!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: std::pin::Pin<&mut Self>, cx: Cx, buf: &[u8]) -> Poll<usize> {
        on_inner!(self, io => io.poll_write(cx, buf))
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: Cx) -> Poll<()> {
        on_inner!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: std::pin::Pin<&mut Self>, cx: Cx) -> Poll<()> {
        on_inner!(self, io => io.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests;
