//! The TLS flags every networked command shares: a service's certificate and key, and the CA a
//! process trusts for `https://` addresses.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use unfed_proto::Dialer;
use unfed_proto::tls::ServerTls;

/// How this process verifies the servers it connects to.
#[derive(Args, Clone, Default)]
pub struct DialArgs {
    /// CA certificate(s), PEM, to trust for https:// addresses instead of the web PKI's roots
    /// (a testnet's `tls/ca.pem`).
    #[arg(long, env = "UNFED_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

impl DialArgs {
    pub fn dialer(&self) -> Result<Dialer> {
        Ok(match &self.tls_ca {
            Some(path) => Dialer::trusting_file(path)?,
            None => Dialer::default(),
        })
    }
}

/// A service's certificate, and how it verifies the servers it connects to.
#[derive(Args, Clone, Default)]
pub struct ServeTlsArgs {
    /// This service's certificate chain, PEM (leaf first); with --tls-key it serves TLS, which
    /// listening or advertising off loopback requires.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key, PEM.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    #[command(flatten)]
    pub dial: DialArgs,
}

impl ServeTlsArgs {
    pub fn server(&self) -> Result<Option<ServerTls>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(ServerTls::from_files(cert, key)?)),
            _ => Ok(None),
        }
    }
}
