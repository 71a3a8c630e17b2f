//! TLS backends for tests: a certificate authority made here (rcgen), and a TLS front (rustls)
//! that terminates TLS with a certificate of that CA and pipes the plaintext to any of the
//! plain test backends. The front records the name each client asked for and whether it
//! showed a client certificate, and can require one (mTLS).

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// A CA with a server certificate (`localhost`, `127.0.0.1`) and a client certificate, and an
/// unrelated CA; every file is PEM in a temporary folder.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    (params.self_signed(&key).unwrap(), key)
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let (ca_cert, ca_key) = ca("switchyard test CA");
        let (other, _) = ca("some other CA");
        let leaf = |names: Vec<String>, cn: &str| {
            let mut p = CertificateParams::new(names).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &ca_cert, &ca_key).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) =
            leaf(vec!["localhost".into(), "127.0.0.1".into()], "backend");
        let (client_cert, client_key) = leaf(vec!["gateway.test".into()], "switchyard gateway");
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        Pki {
            ca: write("ca.pem", &ca_cert.pem()),
            other_ca: write("other-ca.pem", &other.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server.key", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
            dir,
        }
    }
}

/// What a [`TlsFront`] saw.
#[derive(Default)]
pub struct FrontLog {
    /// Completed handshakes.
    pub handshakes: AtomicUsize,
    /// Handshakes that failed (a client that refused the certificate, or showed none when
    /// one is required).
    pub failed: AtomicUsize,
    /// The SNI of each completed handshake.
    pub names: Mutex<Vec<Option<String>>>,
    /// Completed handshakes where the client showed a certificate.
    pub client_certs: AtomicUsize,
}

/// A TLS server in front of a plain backend at `target`.
pub struct TlsFront {
    pub addr: SocketAddr,
    pub log: Arc<FrontLog>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsFront {
    /// Serves `pki`'s server certificate; with `require_client_cert`, only clients with a
    /// certificate of `pki`'s CA are let through.
    pub async fn start(pki: &Pki, target: SocketAddr, require_client_cert: bool) -> TlsFront {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.server_cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(&pki.server_key).unwrap();
        let builder = rustls::ServerConfig::builder();
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(&pki.ca).unwrap() {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = Arc::new(builder.with_single_cert(certs, key).unwrap());
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(FrontLog::default());
        let l = log.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, l) = (acceptor.clone(), l.clone());
                conns.spawn(async move {
                    let mut tls = match acceptor.accept(tcp).await {
                        Ok(s) => s,
                        Err(_) => {
                            l.failed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                    {
                        let (_, conn) = tls.get_ref();
                        l.names
                            .lock()
                            .unwrap()
                            .push(conn.server_name().map(str::to_owned));
                        if conn.peer_certificates().is_some_and(|c| !c.is_empty()) {
                            l.client_certs.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    l.handshakes.fetch_add(1, Ordering::SeqCst);
                    let Ok(mut plain) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsFront { addr, log, task }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn handshakes(&self) -> usize {
        self.log.handshakes.load(Ordering::SeqCst)
    }

    pub fn failed(&self) -> usize {
        self.log.failed.load(Ordering::SeqCst)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}
