//! TLS toward backends and upstreams (`wss://`, `https://`, `proxy.tls`), with rustls as the
//! listeners use. The config has read and parsed the files ([`BackendTls`]); this module builds
//! the rustls client settings from them, connects, and says why a handshake failed.
//!
//! Verification is on unless `verify: false`: the system's roots (read once) or the `ca:`
//! certificates, checked against `sni:` or the host the URL names. A failure is an error for
//! the caller's usual path (a feed reconnects with backoff, a request gets 502), never a
//! fallback to plaintext. It is logged by the caller and counted here in
//! `switchyard_backend_tls_failures_total`.

use crate::config::BackendTls;
use crate::metrics;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A connection to a backend: plain TCP, or TLS over it.
pub enum BackendIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for BackendIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            BackendIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            BackendIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            BackendIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            BackendIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            BackendIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            BackendIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            BackendIo::Plain(s) => s.is_write_vectored(),
            BackendIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            BackendIo::Plain(s) => Pin::new(s).poll_flush(cx),
            BackendIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            BackendIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            BackendIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Opens TCP to `host:port` and, when `tls` is set, TLS over it (ALPN `http/1.1`). The error
/// says which step failed and why, ready for a log line; `backend` labels the failure metric.
pub async fn connect(
    host: &str,
    port: u16,
    tls: Option<&BackendTls>,
    backend: &str,
) -> Result<BackendIo, String> {
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    secure(tcp, tls, host, backend).await
}

/// `tcp` as it is, or with TLS over it when `tls` is set.
pub async fn secure(
    tcp: TcpStream,
    tls: Option<&BackendTls>,
    host: &str,
    backend: &str,
) -> Result<BackendIo, String> {
    match tls {
        None => Ok(BackendIo::Plain(tcp)),
        Some(t) => handshake(tcp, t, host, backend).await.map(BackendIo::Tls),
    }
}

/// The TLS handshake over an open connection, toward `host` (or `sni:`).
pub async fn handshake(
    tcp: TcpStream,
    tls: &BackendTls,
    host: &str,
    backend: &str,
) -> Result<Box<tokio_rustls::client::TlsStream<TcpStream>>, String> {
    let name = tls.server_name(host);
    let server_name = ServerName::try_from(name.to_owned())
        .map_err(|_| format!("TLS: {name:?} is not a DNS name or IP address"))?;
    let config = client_config(tls).map_err(|e| {
        failed(backend, "config");
        format!("TLS: {e}")
    })?;
    let connector = tokio_rustls::TlsConnector::from(config);
    match connector.connect(server_name, tcp).await {
        Ok(s) => Ok(Box::new(s)),
        Err(e) => {
            let certificate = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|r| {
                    matches!(
                        r,
                        rustls::Error::InvalidCertificate(_)
                            | rustls::Error::NoCertificatesPresented
                    )
                });
            if certificate {
                failed(backend, "certificate");
                Err(format!(
                    "TLS: the backend's certificate was refused for {name:?}: {e}"
                ))
            } else {
                failed(backend, "handshake");
                Err(format!("TLS handshake with {name:?} failed: {e}"))
            }
        }
    }
}

/// Counts a TLS failure toward `backend` by what failed: `certificate` (verification),
/// `handshake` (anything else in the exchange) or `config` (the client settings).
pub fn failed(backend: &str, reason: &str) {
    metrics::BACKEND_TLS_FAILURES
        .with_label_values(&[backend, reason])
        .inc();
}

/// The system's trusted roots, read once. A machine without any has an empty store, and
/// every verified connection without `ca:` fails, loudly.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                log::warn!("reading the system's trusted certificates: {e}");
            }
            let mut store = RootCertStore::empty();
            let (added, ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                log::error!("no trusted certificate found on this system: TLS backends without `tls.ca` cannot be verified");
            }
            log::debug!("{added} system roots loaded, {ignored} ignored");
            Arc::new(store)
        })
        .clone()
}

/// The rustls client settings for `tls`, built per connection (cheap next to a handshake).
pub fn client_config(tls: &BackendTls) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if !tls.verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
    } else if tls.ca.is_empty() {
        builder.with_root_certificates(system_roots())
    } else {
        let mut store = RootCertStore::empty();
        for der in &tls.ca {
            store
                .add(CertificateDer::from(der.clone()))
                .map_err(|e| format!("a `ca` certificate cannot be a trust anchor: {e}"))?;
        }
        builder.with_root_certificates(store)
    };
    let mut config = match &tls.client {
        Some((chain, key)) => {
            let chain = chain
                .iter()
                .map(|c| CertificateDer::from(c.clone()))
                .collect();
            let key = PrivateKeyDer::try_from(key.clone()).map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client_cert/client_key: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `verify: false`: every certificate is accepted, its signatures still checked for form.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Sets a pingora upstream peer up for `tls` toward `host` (the proxy path: pingora's own
/// rustls connector does the handshake). The server name is never empty: pingora skips
/// verification for a peer without one.
pub fn peer_options(peer: &mut pingora::upstreams::peer::HttpPeer, tls: &BackendTls, host: &str) {
    use pingora::utils::tls::{CertKey, WrappedX509};
    peer.sni = tls.server_name(host).to_owned();
    if !tls.ca.is_empty() {
        let cas: Vec<WrappedX509> = tls
            .ca
            .iter()
            .map(|der| WrappedX509::new(der.clone(), pingora::utils::tls::parse_x509))
            .collect();
        peer.options.ca = Some(Arc::from(cas));
    }
    if let Some((chain, key)) = &tls.client {
        peer.client_cert_key = Some(Arc::new(CertKey::new(chain.clone(), key.clone())));
    }
    peer.options.verify_cert = tls.verify;
    peer.options.verify_hostname = tls.verify;
    peer.options.alpn = pingora::protocols::ALPN::H1;
    // pingora's pool keys a kept-alive connection by address, SNI, client certificate and the
    // verify flags, not by the trusted CAs: without this, a connection one route verified with
    // its `ca` would be reused by a route that trusts another.
    peer.group_key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        tls.hash(&mut h);
        h.finish()
    };
}
