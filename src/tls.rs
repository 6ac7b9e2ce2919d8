//! The TLS client side, shared by Redis (`rediss://`) and PostgreSQL (`sslmode`): PEM files,
//! trust roots, the client certificate, and how much of the server's certificate is checked.
//!
//! rustls with the *ring* provider only (no aws-lc-rs and its C build). Files are read and
//! checked once, at startup ([`TlsFiles::load`]), so a bad path or PEM stops the program with
//! exit code 2 before any connection; [`TlsFiles::client_config`] then builds the rustls
//! configuration each connection type shares.
//!
//! Without a CA file the system store is used (`rustls-native-certs`: the distribution's
//! bundle, or `SSL_CERT_FILE` / `SSL_CERT_DIR`), like redis-cli and psql, which trust what
//! OpenSSL trusts. A compiled-in Mozilla list (webpki-roots) would ignore an organization's
//! own CAs added with `update-ca-certificates` and would age with the binary.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

pub use rustls::ClientConfig;

/// How much of the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Signed by a trusted CA and valid for the host name or IP (rediss://, verify-full).
    Full,
    /// Signed by a trusted CA, any name (PostgreSQL `sslmode=verify-ca`).
    Chain,
    /// Encryption only, as libpq's `require` and `prefer`: any certificate is accepted (the
    /// handshake signature is still checked against it).
    None,
}

/// A file named by an option; `label` is how messages name the option, e.g.
/// `--redis-ca-file (REDIS_CA_FILE)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PemPath {
    pub label: String,
    pub path: PathBuf,
}

impl PemPath {
    pub fn new(label: impl Into<String>, path: impl Into<PathBuf>) -> PemPath {
        PemPath {
            label: label.into(),
            path: path.into(),
        }
    }

    fn read(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.path)
            .map_err(|e| format!("{}: cannot read '{}': {e}", self.label, self.shown()))
    }

    fn shown(&self) -> String {
        self.path.display().to_string().escape_debug().collect()
    }
}

/// Trusted CAs and the client identity, read and checked at startup. Cheap to clone.
#[derive(Clone, Default)]
pub struct TlsFiles {
    /// `None`: the system store.
    ca: Option<(PemPath, Arc<Vec<CertificateDer<'static>>>)>,
    identity: Option<Arc<Identity>>,
}

struct Identity {
    cert: PemPath,
    key: PemPath,
    chain: Vec<CertificateDer<'static>>,
    key_der: PrivateKeyDer<'static>,
}

impl TlsFiles {
    /// Reads and checks the files: `ca` a PEM bundle of trusted CAs (else the system store);
    /// `cert` and `key` the client certificate chain and its private key (both or neither;
    /// `names` are the two options, for the message when one is missing). Errors name the
    /// option and the file.
    pub fn load(
        ca: Option<PemPath>,
        cert: Option<PemPath>,
        key: Option<PemPath>,
        names: [&str; 2],
    ) -> Result<TlsFiles, String> {
        let ca = match ca {
            Some(p) => {
                let certs = read_certs(&p)?;
                let mut store = RootCertStore::empty();
                for (i, c) in certs.iter().enumerate() {
                    store.add(c.clone()).map_err(|e| {
                        format!(
                            "{}: certificate {} in '{}' is not a usable CA certificate: {e}",
                            p.label,
                            i + 1,
                            p.shown()
                        )
                    })?;
                }
                Some((p, Arc::new(certs)))
            }
            None => None,
        };
        let identity = match (cert, key) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(format!(
                    "{} is set but {} is not: a client certificate needs both (or neither)",
                    names[0], names[1]
                ));
            }
            (None, Some(_)) => {
                return Err(format!(
                    "{} is set but {} is not: a client certificate needs both (or neither)",
                    names[1], names[0]
                ));
            }
            (Some(cert), Some(key)) => {
                let chain = read_certs(&cert)?;
                let key_der = read_key(&key)?;
                // Also checks that the key is usable and belongs to the certificate.
                builder(Arc::new(NoVerifier::default()))?
                    .with_client_auth_cert(chain.clone(), key_der.clone_key())
                    .map_err(|e| {
                        format!(
                            "{} '{}' and {} '{}' do not go together: {e}",
                            cert.label,
                            cert.shown(),
                            key.label,
                            key.shown()
                        )
                    })?;
                Some(Arc::new(Identity {
                    cert,
                    key,
                    chain,
                    key_der,
                }))
            }
        };
        Ok(TlsFiles { ca, identity })
    }

    /// The CA file, if one was given.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca.as_ref().map(|(p, _)| p.path.as_path())
    }

    /// The client certificate file, if one was given.
    pub fn client_cert_file(&self) -> Option<&Path> {
        self.identity.as_ref().map(|i| i.cert.path.as_path())
    }

    /// The rustls configuration: trust roots (the CA file, else the system store), the client
    /// certificate when given, and `verify`. With no root at all, verification fails at each
    /// handshake with a message saying so (a plain-TCP run need not have any).
    pub fn client_config(&self, verify: Verify) -> Result<Arc<ClientConfig>, String> {
        let provider = provider();
        let roots = match (&self.ca, verify) {
            // Nothing to check against: do not load the system store for nothing.
            (_, Verify::None) => Arc::new(RootCertStore::empty()),
            (Some((_, certs)), _) => {
                let mut store = RootCertStore::empty();
                store.add_parsable_certificates(certs.iter().cloned());
                Arc::new(store)
            }
            (None, _) => system_roots().clone(),
        };
        let webpki = if roots.is_empty() {
            None
        } else {
            Some(
                WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| format!("TLS trust roots: {e}"))?,
            )
        };
        let no_roots = match &self.ca {
            Some((p, _)) => format!("{} '{}' holds no usable CA", p.label, p.shown()),
            None => "no CA certificate in the system store (install ca-certificates or give \
                     a CA file)"
                .to_string(),
        };
        let verifier = Arc::new(Verifier {
            verify,
            webpki,
            no_roots,
            provider: provider.clone(),
        });
        let b = builder(verifier)?;
        let config = match &self.identity {
            Some(id) => b
                .with_client_auth_cert(id.chain.clone(), id.key_der.clone_key())
                .map_err(|e| format!("{}: {e}", id.cert.label))?,
            None => b.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }
}

impl PartialEq for TlsFiles {
    fn eq(&self, other: &TlsFiles) -> bool {
        self.ca_file() == other.ca_file()
            && self.client_cert_file() == other.client_cert_file()
            && self.identity.as_ref().map(|i| &i.key.path)
                == other.identity.as_ref().map(|i| &i.key.path)
    }
}

impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca_file", &self.ca_file())
            .field("client_cert", &self.client_cert_file())
            .field(
                "client_key",
                &self.identity.as_ref().map(|i| i.key.path.as_path()),
            )
            .finish()
    }
}

/// The server name rustls checks the certificate against and sends as SNI: a DNS name, or
/// an IP address (matched against the certificate's IP SANs; no SNI is sent for it).
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| format!("'{host}' cannot be checked against a certificate: {e}"))
}

/// A TLS error in words, with a hint at the usual fix. `ca_option` names the option that
/// gives trusted CAs; `cert_option` the client certificate's.
pub fn describe(e: &rustls::Error, ca_option: &str, cert_option: &str) -> String {
    use rustls::{AlertDescription as A, Error as E};
    match e {
        E::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
            "server certificate not trusted: its issuer is not a trusted CA (UnknownIssuer); \
             give the CA that signed it with {ca_option}"
        ),
        E::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!("server certificate does not match the host: {e}"),
        E::AlertReceived(
            a @ (A::CertificateRequired | A::HandshakeFailure | A::BadCertificate),
        ) => format!(
            "the server refused the handshake (alert {a:?}): it may require a client \
             certificate ({cert_option})"
        ),
        other => other.to_string(),
    }
}

/// The crypto provider: ring, the only one compiled in.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn builder(
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, String> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier))
}

/// The system store, loaded once per process (a few ms); unreadable entries are skipped.
fn system_roots() -> &'static Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!(error = %e, "system CA store");
        }
        let mut store = RootCertStore::empty();
        let (added, ignored) = store.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "system CA certificates loaded");
        Arc::new(store)
    })
}

fn read_certs(p: &PemPath) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = p.read()?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: '{}' is not valid PEM: {e}", p.label, p.shown()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: '{}' holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)",
            p.label,
            p.shown()
        ));
    }
    Ok(certs)
}

fn read_key(p: &PemPath) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = p.read()?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        let why = match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "holds no private key (expected PEM: -----BEGIN PRIVATE KEY-----, \
                 RSA PRIVATE KEY or EC PRIVATE KEY)"
                    .to_string()
            }
            other => format!("is not a valid PEM private key: {other}"),
        };
        format!("{}: '{}' {why}", p.label, p.shown())
    })
}

/// The one certificate verifier, for every [`Verify`] level.
#[derive(Debug)]
struct Verifier {
    verify: Verify,
    /// `None` when there is no trust root at all.
    webpki: Option<Arc<WebPkiServerVerifier>>,
    /// What to say when `webpki` is `None`.
    no_roots: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.verify == Verify::None {
            return Ok(ServerCertVerified::assertion());
        }
        let Some(webpki) = &self.webpki else {
            return Err(rustls::Error::General(self.no_roots.clone()));
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            // webpki checks the chain before the name: a name error means the chain is good.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self.verify == Verify::Chain => Ok(ServerCertVerified::assertion()),
            other => other,
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A verifier that refuses everything: only used to check a client identity at load time.
#[derive(Debug)]
struct NoVerifier(Arc<CryptoProvider>);

impl Default for NoVerifier {
    fn default() -> Self {
        NoVerifier(provider())
    }
}

impl ServerCertVerifier for NoVerifier {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Err(rustls::Error::General("not for connecting".into()))
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("not for connecting".into()))
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("not for connecting".into()))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
