//! `tls:` under `backend:` and `proxy:`: the files are read and parsed here, at load, so a
//! missing or broken certificate is a config error with its path, not a failed connection later.

use super::Validator;
use crate::config::model::BackendTls;
use crate::config::raw::RawBackendTls;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

impl Validator<'_> {
    /// Reads `tls:` (absent: verify against the system's roots, SNI from the URL).
    pub(super) fn backend_tls(&mut self, at: &str, raw: Option<&RawBackendTls>) -> BackendTls {
        let default = RawBackendTls::default();
        let raw = raw.unwrap_or(&default);
        let ca = match &raw.ca {
            Some(file) => {
                let certs = self.certificates(&format!("{at}.ca"), file);
                if certs.is_empty() {
                    self.err(
                        format!("{at}.ca"),
                        format!("{file:?} holds no PEM certificate"),
                    );
                }
                certs
            }
            None => Vec::new(),
        };
        if let Some(sni) = &raw.sni {
            if rustls_pki_types::ServerName::try_from(sni.as_str()).is_err() {
                self.err(
                    format!("{at}.sni"),
                    format!("{sni:?} is not a DNS name or IP address"),
                );
            }
        }
        let client = match (&raw.client_cert, &raw.client_key) {
            (Some(cert), Some(key)) => {
                let chain = self.certificates(&format!("{at}.client_cert"), cert);
                if chain.is_empty() {
                    self.err(
                        format!("{at}.client_cert"),
                        format!("{cert:?} holds no PEM certificate"),
                    );
                }
                let key = self.private_key(&format!("{at}.client_key"), key);
                key.map(|k| (chain, k))
            }
            (None, None) => None,
            (Some(_), None) => {
                self.err(
                    format!("{at}.client_key"),
                    "client_cert needs its client_key (mTLS)",
                );
                None
            }
            (None, Some(_)) => {
                self.err(
                    format!("{at}.client_cert"),
                    "client_key needs its client_cert (mTLS)",
                );
                None
            }
        };
        let verify = raw.verify.unwrap_or(true);
        if !verify {
            log::warn!("{at}.verify is false: any certificate is accepted, including an attacker's; use it in a lab only");
        }
        BackendTls {
            ca,
            sni: raw.sni.clone(),
            client,
            verify,
        }
    }

    /// Every certificate of a PEM file, each checked to parse as X.509, as DER.
    fn certificates(&mut self, at: &str, file: &str) -> Vec<Vec<u8>> {
        let path = self.base_dir.join(file);
        let iter = match CertificateDer::pem_file_iter(&path) {
            Ok(i) => i,
            Err(e) => {
                self.err(at, format!("cannot read {file:?}: {e} (relative paths are resolved from the config file's folder)"));
                return Vec::new();
            }
        };
        let mut certs = Vec::new();
        for (i, c) in iter.enumerate() {
            match c {
                Ok(der) => match x509_parser::parse_x509_certificate(&der) {
                    Ok(_) => certs.push(der.to_vec()),
                    Err(e) => self.err(
                        at,
                        format!("{file:?}: certificate {} is not valid X.509: {e}", i + 1),
                    ),
                },
                Err(e) => {
                    self.err(at, format!("{file:?} is not valid PEM: {e}"));
                    return Vec::new();
                }
            }
        }
        certs
    }

    /// A PEM private key (PKCS#8, PKCS#1 or SEC1) of a type rustls can sign with, as DER.
    fn private_key(&mut self, at: &str, file: &str) -> Option<Vec<u8>> {
        let path = self.base_dir.join(file);
        match PrivateKeyDer::from_pem_file(&path) {
            Ok(key) => {
                if let Err(e) = rustls::crypto::ring::sign::any_supported_type(&key) {
                    self.err(at, format!("{file:?}: unusable private key: {e}"));
                    return None;
                }
                Some(key.secret_der().to_vec())
            }
            Err(e) => {
                self.err(
                    at,
                    format!("cannot read a PEM private key from {file:?}: {e}"),
                );
                None
            }
        }
    }
}
