//! Transport security: addresses (`host:port` is plaintext and reaches loopback only,
//! `https://host:port` is TLS), the dialer every outgoing connection goes through and the trust
//! roots it checks servers against, a server's certificate, the rule a service checks before it
//! exposes itself, and the self-signed CA a local testnet issues its certificates from. TLS is
//! rustls (ring), through tonic.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server};
use zeroize::Zeroizing;

use crate::node::node_client::NodeClient;
use crate::registry::registry_client::RegistryClient;
use crate::{CONNECT_TIMEOUT, MAX_NODE_MESSAGE, MAX_REGISTRY_MESSAGE};

/// The scheme of an address served over TLS.
pub const TLS_SCHEME: &str = "https://";
/// How long a TLS handshake may take.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What is wrong with an address, a certificate, or how a service would expose itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TlsError {
    /// Not `host:port` or `https://host:port`.
    #[error("`{address}` is not an address: {why}")]
    BadAddress { address: String, why: &'static str },
    /// A plaintext address off loopback.
    #[error(
        "`{0}` is off loopback: connections that leave loopback use TLS (write https://host:port, \
         and serve with --tls-cert and --tls-key)"
    )]
    PlaintextOffLoopback(String),
    /// Listening on a non-loopback interface without a certificate.
    #[error(
        "refusing to listen on {0} without TLS: give --tls-cert and --tls-key, or listen on 127.0.0.1"
    )]
    ListenWithoutTls(String),
    /// An `https://` address advertised by a service that has no certificate.
    #[error("advertising {0} needs a certificate: give --tls-cert and --tls-key")]
    AdvertiseTlsWithoutCert(String),
    /// A TLS server advertising a plaintext address (clients would fail to talk to it).
    #[error("this service serves TLS, so advertise it as https://{0}")]
    AdvertisePlainWithTls(String),
    /// A certificate or key file that cannot be read or parsed.
    #[error("{what}: {why}")]
    Pem { what: String, why: String },
    /// Certificate generation failed.
    #[error("cannot issue a certificate: {0}")]
    Issue(String),
}

/// An address as a service advertises it and a dialer reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// DNS name, IPv4 address or bracketed IPv6 address.
    pub host: String,
    pub port: u16,
    /// Whether the address is `https://`.
    pub tls: bool,
}

impl Target {
    /// Parses `host:port` or `https://host:port`.
    pub fn parse(address: &str) -> Result<Self, TlsError> {
        let bad = |why| TlsError::BadAddress {
            address: address.to_string(),
            why,
        };
        let (tls, rest) = match address.strip_prefix(TLS_SCHEME) {
            Some(rest) => (true, rest),
            None if address.contains("://") => return Err(bad("the only scheme is https://")),
            None => (false, address),
        };
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| bad("must be host:port"))?;
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 && !port.starts_with('+') => p,
            _ => return Err(bad("the port is not 1-65535")),
        };
        let host_ok = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'))
        {
            inner.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        };
        if !host_ok {
            return Err(bad(
                "the host must be a DNS name, an IPv4 address or a bracketed IPv6 address",
            ));
        }
        Ok(Self {
            host: host.to_string(),
            port,
            tls,
        })
    }

    /// The host without IPv6 brackets: what a certificate names.
    pub fn server_name(&self) -> &str {
        self.host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&self.host)
    }

    /// Whether the host is `localhost` or a loopback IP address.
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(self.server_name())
    }

    fn uri(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }
}

/// Whether `host` (no brackets) is `localhost` or a loopback IP address.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Checks that an address may be dialled: TLS, or plaintext to loopback.
pub fn check_dialable(address: &str) -> Result<Target, TlsError> {
    let target = Target::parse(address)?;
    if !target.tls && !target.is_loopback() {
        return Err(TlsError::PlaintextOffLoopback(address.to_string()));
    }
    Ok(target)
}

/// The rule a service checks before it serves: it listens off loopback only with TLS, and what
/// it advertises matches (an `https://` address with a certificate, a plaintext one only on
/// loopback and only without one).
pub fn check_exposure(
    listen: std::net::SocketAddr,
    advertise: Option<&str>,
    has_cert: bool,
) -> Result<(), TlsError> {
    if !listen.ip().is_loopback() && !has_cert {
        return Err(TlsError::ListenWithoutTls(listen.to_string()));
    }
    let Some(advertise) = advertise else {
        return Ok(());
    };
    let target = Target::parse(advertise)?;
    match (target.tls, has_cert) {
        (true, false) => Err(TlsError::AdvertiseTlsWithoutCert(advertise.to_string())),
        (false, true) => Err(TlsError::AdvertisePlainWithTls(advertise.to_string())),
        (false, false) if !target.is_loopback() => {
            Err(TlsError::PlaintextOffLoopback(advertise.to_string()))
        }
        _ => Ok(()),
    }
}

/// How this process opens connections: plaintext to loopback `host:port`, TLS to
/// `https://host:port`, verifying the server against the dialer's trust roots (the web PKI's
/// roots unless a CA file is given, in which case only that CA).
#[derive(Clone, Default)]
pub struct Dialer {
    /// The CA certificates (one PEM bundle) to trust instead of the web PKI's.
    ca: Option<Certificate>,
    /// The local address connections leave from (None: the system's choice).
    pub(crate) local: Option<std::net::IpAddr>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.ca {
            None => f.write_str("Dialer(web PKI roots)"),
            Some(_) => f.write_str("Dialer(given CA)"),
        }
    }
}

impl Dialer {
    /// A dialer that trusts only the CA certificates in `pem` (one or more).
    pub fn trusting(pem: &[u8], what: &str) -> Result<Self, TlsError> {
        parse_certs(pem, what)?;
        Ok(Self {
            ca: Some(Certificate::from_pem(pem)),
            local: None,
        })
    }

    /// A dialer that trusts only the CA certificates in the PEM file at `path`.
    pub fn trusting_file(path: &Path) -> Result<Self, TlsError> {
        let what = format!("CA file {}", path.display());
        let pem = std::fs::read(path).map_err(|e| TlsError::Pem {
            what: what.clone(),
            why: e.to_string(),
        })?;
        Self::trusting(&pem, &what)
    }

    /// The same dialer, connecting from `ip` (a host with several addresses).
    pub fn from_ip(mut self, ip: std::net::IpAddr) -> Self {
        self.local = Some(ip);
        self
    }

    /// A channel to `address`, with the connect timeout and TCP_NODELAY. The error names the
    /// address and, for TLS, why the handshake failed.
    pub async fn connect(&self, address: &str) -> Result<Channel, String> {
        let target = check_dialable(address).map_err(|e| e.to_string())?;
        self.channel(&target, target.server_name())
            .await
            .map_err(|why| format!("cannot reach {address}{why}"))
    }

    /// A node client for `address`, with the node message limits.
    pub async fn connect_node(&self, address: &str) -> Result<NodeClient<Channel>, String> {
        Ok(NodeClient::new(self.connect(address).await?)
            .max_decoding_message_size(MAX_NODE_MESSAGE)
            .max_encoding_message_size(MAX_NODE_MESSAGE))
    }

    /// A registry client for `address`, with the registry message limits.
    pub async fn connect_registry(&self, address: &str) -> Result<RegistryClient<Channel>, String> {
        Ok(RegistryClient::new(self.connect(address).await?)
            .max_decoding_message_size(MAX_REGISTRY_MESSAGE)
            .max_encoding_message_size(MAX_REGISTRY_MESSAGE))
    }

    /// The rustls configuration of this dialer's TLS connections that do not go through tonic
    /// (`crate::raw`): its trust roots, asking for the one ALPN protocol `alpn`.
    pub(crate) fn rustls(&self, alpn: &[u8]) -> Result<Arc<rustls::ClientConfig>, String> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Some(ca) => {
                for cert in parse_certs(ca.get_ref(), "the CA").map_err(|e| e.to_string())? {
                    roots.add(cert).map_err(|e| format!("the CA: {e}"))?;
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(config))
    }

    /// Connects to `target`, verifying a TLS server's certificate for `server_name`. The error
    /// is empty or `: reason`.
    async fn channel(&self, target: &Target, server_name: &str) -> Result<Channel, String> {
        let mut endpoint = Endpoint::from_shared(target.uri())
            .map_err(|_| ": not a valid URI".to_string())?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .initial_stream_window_size(crate::NODE_STREAM_WINDOW)
            .initial_connection_window_size(crate::NODE_CONNECTION_WINDOW)
            .local_address(self.local);
        if target.tls {
            let config = ClientTlsConfig::new()
                .domain_name(server_name)
                .timeout(HANDSHAKE_TIMEOUT);
            let config = match &self.ca {
                None => config.with_webpki_roots(),
                Some(ca) => config.ca_certificate(ca.clone()),
            };
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| format!(": {}", deepest(&e)))?;
        }
        match endpoint.connect().await {
            Ok(channel) => Ok(channel),
            // A plain refusal says nothing worth adding; a TLS failure says why.
            Err(e) if target.tls => Err(format!(": {}", deepest(&e))),
            Err(_) => Err(String::new()),
        }
    }
}

/// The innermost cause of an error (for TLS: what rustls said).
pub(crate) fn deepest(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// A server's certificate chain and private key.
#[derive(Clone)]
pub struct ServerTls {
    cert_pem: Vec<u8>,
    key_pem: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls(..)")
    }
}

impl ServerTls {
    /// A certificate chain (leaf first) and its private key, both PEM, checked to parse and to
    /// match each other.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let tls = Self {
            cert_pem: cert_pem.to_vec(),
            key_pem: Zeroizing::new(key_pem.to_vec()),
        };
        tls.rustls(b"h2")?;
        Ok(tls)
    }

    /// The rustls configuration serving this certificate, offering the one ALPN protocol
    /// `alpn` (for servers that terminate TLS themselves, `crate::raw`).
    pub(crate) fn rustls(&self, alpn: &[u8]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let certs = parse_certs(&self.cert_pem, "the certificate")?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(|e| TlsError::Pem {
            what: "the private key".into(),
            why: format!("no PEM private key ({e})"),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
            .map_err(|e| TlsError::Pem {
                what: "the certificate and key".into(),
                why: e.to_string(),
            })?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(config))
    }

    /// Reads [`ServerTls::from_pem`]'s inputs from files.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| TlsError::Pem {
                what: p.display().to_string(),
                why: e.to_string(),
            })
        };
        let key_pem = Zeroizing::new(read(key)?);
        Self::from_pem(&read(cert)?, &key_pem)
    }

    /// A tonic server builder serving this certificate.
    pub fn server(&self) -> Result<Server, TlsError> {
        let identity = Identity::from_pem(&self.cert_pem, &*self.key_pem);
        Server::builder()
            .tls_config(
                tonic::transport::ServerTlsConfig::new()
                    .identity(identity)
                    .timeout(HANDSHAKE_TIMEOUT),
            )
            .map_err(|e| TlsError::Pem {
                what: "the certificate and key".into(),
                why: deepest(&e),
            })
    }
}

/// A tonic server builder: with TLS when a certificate is given, plaintext otherwise.
pub fn server(tls: Option<&ServerTls>) -> Result<Server, TlsError> {
    match tls {
        Some(t) => t.server(),
        None => Ok(Server::builder()),
    }
}

/// Proves that a client trusting `dialer`'s roots accepts `tls` for `advertised`: serves the
/// certificate on a loopback port and completes a real TLS (and HTTP/2) handshake with it,
/// verifying the chain, the validity period, the name and that the key matches.
pub async fn probe(tls: &ServerTls, dialer: &Dialer, advertised: &Target) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot bind a loopback port for the probe: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let mut builder = tls.server().map_err(|e| e.to_string())?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        builder
            .add_routes(tonic::service::Routes::default())
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    let local = Target {
        host: "127.0.0.1".into(),
        port,
        tls: true,
    };
    let result = dialer.channel(&local, advertised.server_name()).await;
    let _ = stop.send(());
    let _ = server.await;
    result
        .map(drop)
        .map_err(|why| format!("the TLS handshake failed{why}"))
}

/// A certificate authority made for one local testnet: its key lives only in memory, so nothing
/// it did not issue at start-up can ever be signed by it.
pub struct TestnetCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    cert_pem: String,
}

impl TestnetCa {
    /// A fresh self-signed CA valid from a day ago for `days`.
    pub fn generate(name: &str, days: i64) -> Result<Self, TlsError> {
        let issue = |e: rcgen::Error| TlsError::Issue(e.to_string());
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(issue)?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        validity(&mut params, days);
        let key = rcgen::KeyPair::generate().map_err(issue)?;
        let cert = params.self_signed(&key).map_err(issue)?;
        Ok(Self {
            issuer: rcgen::Issuer::new(params, key),
            cert_pem: cert.pem(),
        })
    }

    /// The CA certificate (PEM), for dialers to trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A server certificate for `hosts` (DNS names or IP addresses) with a fresh key: the
    /// certificate PEM and the key PEM.
    pub fn issue(
        &self,
        hosts: &[&str],
        days: i64,
    ) -> Result<(String, Zeroizing<String>), TlsError> {
        let issue = |e: rcgen::Error| TlsError::Issue(e.to_string());
        let names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).map_err(issue)?;
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            hosts.first().copied().unwrap_or("unfed"),
        );
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, days);
        let key = rcgen::KeyPair::generate().map_err(issue)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(issue)?;
        Ok((cert.pem(), Zeroizing::new(key.serialize_pem())))
    }
}

fn validity(params: &mut rcgen::CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days);
}

fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            what: what.to_string(),
            why: format!("not PEM ({e})"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what: what.to_string(),
            why: "holds no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_their_scheme() {
        let t = Target::parse("https://[::1]:443").unwrap();
        assert_eq!((t.server_name(), t.port, t.tls), ("::1", 443, true));
        assert!(t.is_loopback());
        let t = Target::parse("node.example.org:50051").unwrap();
        assert_eq!(
            (t.host.as_str(), t.tls, t.is_loopback()),
            ("node.example.org", false, false)
        );
        assert!(Target::parse("localhost:1").unwrap().is_loopback());
        assert!(Target::parse("127.8.9.10:1").unwrap().is_loopback());
        for bad in [
            "http://127.0.0.1:1",
            "no-port",
            "h:0",
            "h:+1",
            "ho st:1",
            "[::1:80",
            "https://",
        ] {
            assert!(
                matches!(Target::parse(bad), Err(TlsError::BadAddress { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn plaintext_reaches_only_loopback() {
        assert!(check_dialable("127.0.0.1:50050").is_ok());
        assert!(check_dialable("https://203.0.113.1:50050").is_ok());
        assert_eq!(
            check_dialable("203.0.113.1:50050"),
            Err(TlsError::PlaintextOffLoopback("203.0.113.1:50050".into()))
        );
        assert!(check_dialable("[2001:db8::1]:50050").is_err());
    }

    #[test]
    fn a_service_exposes_itself_only_with_tls() {
        let lo: std::net::SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let any: std::net::SocketAddr = "0.0.0.0:5000".parse().unwrap();
        assert!(check_exposure(lo, Some("127.0.0.1:5000"), false).is_ok());
        assert!(check_exposure(lo, None, false).is_ok());
        assert!(check_exposure(any, Some("https://n.example.org:5000"), true).is_ok());
        let refused = [
            (any, None, false),
            (any, Some("127.0.0.1:5000"), false),
            (lo, Some("203.0.113.4:5000"), false),
            (lo, Some("https://n.example.org:5000"), false),
            (lo, Some("127.0.0.1:5000"), true),
        ];
        for (listen, advertise, cert) in refused {
            assert!(
                check_exposure(listen, advertise, cert).is_err(),
                "{listen} {advertise:?} {cert}"
            );
        }
    }

    fn issued(ca: &TestnetCa, hosts: &[&str]) -> ServerTls {
        let (cert, key) = ca.issue(hosts, 1).unwrap();
        ServerTls::from_pem(cert.as_bytes(), key.as_bytes()).unwrap()
    }

    #[test]
    fn certificates_and_keys_are_checked_when_loaded() {
        let ca = TestnetCa::generate("test", 1).unwrap();
        let (cert, _) = ca.issue(&["127.0.0.1"], 1).unwrap();
        let (_, other_key) = ca.issue(&["127.0.0.1"], 1).unwrap();
        let e = ServerTls::from_pem(cert.as_bytes(), other_key.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("certificate and key"), "{e}");
        assert!(ServerTls::from_pem(b"not pem", other_key.as_bytes()).is_err());
        assert!(ServerTls::from_pem(cert.as_bytes(), b"").is_err());
        assert!(Dialer::trusting(b"", "empty").is_err());
    }

    #[tokio::test]
    async fn the_probe_accepts_a_good_certificate_and_says_why_it_refuses_a_bad_one() {
        let ca = TestnetCa::generate("test", 1).unwrap();
        let trusting = Dialer::trusting(ca.cert_pem().as_bytes(), "test CA").unwrap();
        let target = |a: &str| Target::parse(a).unwrap();
        let good = issued(&ca, &["127.0.0.1", "node.example.org"]);
        probe(&good, &trusting, &target("https://node.example.org:443"))
            .await
            .unwrap();
        probe(&good, &trusting, &target("https://127.0.0.1:443"))
            .await
            .unwrap();
        let e = probe(&good, &trusting, &target("https://other.example.org:443"))
            .await
            .unwrap_err();
        assert!(e.contains("not valid for name"), "{e}");
        let stranger = TestnetCa::generate("stranger", 1).unwrap();
        let e = probe(
            &issued(&stranger, &["127.0.0.1"]),
            &trusting,
            &target("https://127.0.0.1:1"),
        )
        .await
        .unwrap_err();
        assert!(e.contains("UnknownIssuer"), "{e}");
        // A self-signed CA is not in the web PKI.
        let e = probe(&good, &Dialer::default(), &target("https://127.0.0.1:1"))
            .await
            .unwrap_err();
        assert!(e.contains("UnknownIssuer"), "{e}");
    }
}
