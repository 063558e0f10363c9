//! HTTPS: the rustls server configuration built from PEM certificate and key files, and the
//! rule that keeps credentials off plain HTTP on listeners other hosts can reach.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// A certificate or key file that cannot serve HTTPS. No variant includes key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "could not read certificates from {path}: {source}; expected a PEM file that starts \
         with the server certificate, followed by any intermediates"
    )]
    Certificates {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error(
        "could not read a private key from {path}: {source}; expected a PEM file with one \
         PKCS#8, PKCS#1 (RSA) or SEC1 (EC) private key"
    )]
    PrivateKey {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error(
        "the certificate in {cert} and the private key in {key} cannot be used together: \
         {source}; check that the key belongs to the certificate"
    )]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// Builds the TLS acceptor from a PEM certificate chain and a PEM private key. The server
/// offers TLS 1.3 and 1.2 with rustls' default cipher suites, and HTTP/1.1 over ALPN.
pub fn acceptor(cert_path: &Path, key_path: &Path) -> Result<TlsAcceptor, TlsError> {
    let certificates = CertificateDer::pem_file_iter(cert_path)
        .and_then(|items| items.collect::<Result<Vec<_>, _>>())
        .and_then(|chain| {
            if chain.is_empty() {
                Err(rustls_pki_types::pem::Error::NoItemsFound)
            } else {
                Ok(chain)
            }
        })
        .map_err(|source| TlsError::Certificates {
            path: cert_path.to_owned(),
            source,
        })?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|source| TlsError::PrivateKey {
        path: key_path.to_owned(),
        source,
    })?;

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| {
            builder
                .with_no_client_auth()
                .with_single_cert(certificates, key)
        })
        .map_err(|source| TlsError::Mismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
            source,
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The protection of a listener's plain HTTP connections, as the operator declared it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlainHttp {
    /// Only this host can connect: the listener is on a loopback address.
    Loopback,
    /// A proxy in front terminates TLS (`--behind-tls-proxy`).
    BehindTlsProxy,
    /// The operator accepts credentials in clear text (`--allow-plain-http`).
    Allowed,
    /// None of the above: requests with credentials are rejected.
    Rejected,
}

impl PlainHttp {
    /// Decides for a listener on `listen` that serves plain HTTP.
    pub fn decide(listen: SocketAddr, behind_tls_proxy: bool, allow_plain_http: bool) -> Self {
        if listen.ip().is_loopback() {
            Self::Loopback
        } else if behind_tls_proxy {
            Self::BehindTlsProxy
        } else if allow_plain_http {
            Self::Allowed
        } else {
            Self::Rejected
        }
    }
}

/// Seconds between two warnings about credentials sent over plain HTTP.
const PLAIN_CREDENTIALS_WARNING_INTERVAL: u64 = 60;

/// Rejects requests that carry credentials over plain HTTP: an `Authorization` or
/// `X-API-Key` header, or any request to the OAuth endpoints, whose bodies carry client
/// secrets and tokens. The credential has crossed the network in clear text by then, but
/// rejecting it stops clients from working that way unnoticed.
pub async fn reject_plain_credentials(request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let oauth = path.starts_with("/oauth/");
    let headers = request.headers();
    if !oauth && !headers.contains_key(header::AUTHORIZATION) && !headers.contains_key("x-api-key")
    {
        return next.run(request).await;
    }

    warn_at_most_every_interval();
    let fix = "this listener accepts credentials only over HTTPS; connect with https:// to a \
               server started with --tls-cert and --tls-key, or through a TLS-terminating \
               proxy, and replace any credential already sent over plain HTTP";
    if oauth {
        super::oauth::OAuthErrorResponse::invalid_request(fix).into_response()
    } else {
        super::ApiError::new(StatusCode::FORBIDDEN, "https_required", fix).into_response()
    }
}

/// Logs one warning per [`PLAIN_CREDENTIALS_WARNING_INTERVAL`], so a misconfigured client
/// is visible in the log without a line per request.
fn warn_at_most_every_interval() {
    static LAST_WARNING: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let last = LAST_WARNING.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= PLAIN_CREDENTIALS_WARNING_INTERVAL
        && LAST_WARNING
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            "rejected credentials sent over plain HTTP on a listener that is not on loopback; \
             set --tls-cert and --tls-key, or --behind-tls-proxy if a proxy terminates TLS"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decide_rejects_only_public_listeners_without_flags() {
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let loopback: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let loopback_v6: SocketAddr = "[::1]:8080".parse().unwrap();
        assert_eq!(
            PlainHttp::decide(loopback, false, false),
            PlainHttp::Loopback
        );
        assert_eq!(
            PlainHttp::decide(loopback_v6, false, false),
            PlainHttp::Loopback
        );
        assert_eq!(PlainHttp::decide(public, false, false), PlainHttp::Rejected);
        assert_eq!(
            PlainHttp::decide(public, true, false),
            PlainHttp::BehindTlsProxy
        );
        assert_eq!(PlainHttp::decide(public, false, true), PlainHttp::Allowed);
    }

    #[test]
    fn acceptor_names_the_file_it_cannot_read() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let missing = dir.path().join("missing.pem");

        let err = acceptor(&missing, &empty).err().unwrap().to_string();
        assert!(err.contains("missing.pem"), "{err}");
        let err = acceptor(&empty, &empty).err().unwrap().to_string();
        assert!(err.contains("could not read certificates"), "{err}");
    }

    #[test]
    fn acceptor_rejects_a_key_of_another_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, other.signing_key.serialize_pem()).unwrap();

        let err = acceptor(&cert_path, &key_path).err().unwrap();
        assert!(matches!(err, TlsError::Mismatch { .. }), "{err}");

        std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
        assert!(acceptor(&cert_path, &key_path).is_ok());
    }
}
