//! TLS for PostgreSQL connections: a `tokio_postgres::tls::TlsConnect` on tokio-rustls.
//!
//! `connect_raw` takes the connector for one stream; our stream (a glommio socket through
//! tokio-util's compat layer) is `!Send`, which ready-made connectors refuse. It also gives
//! the driver `tls-server-end-point` channel binding, so SCRAM-SHA-256-PLUS ties the password
//! exchange to this TLS session: a man in the middle is caught even with `sslmode=require`,
//! which does not check the certificate.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};

/// Options named in TLS error hints.
const CA_OPTION: &str = "--database-ca-file (DATABASE_CA_FILE) or sslrootcert in DATABASE_URL";
const CERT_OPTION: &str = "sslcert and sslkey in DATABASE_URL";

/// Connects one stream; `name` is the host checked against the certificate (and SNI).
pub(crate) struct PgTls {
    pub config: Arc<rustls::ClientConfig>,
    pub name: ServerName<'static>,
}

impl<S> TlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream<S>>>>>;

    fn connect(self, stream: S) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config);
        let fut = connector.connect(self.name, stream);
        Box::pin(async move {
            match fut.await {
                Ok(s) => Ok(PgTlsStream(s)),
                Err(e) => Err(explain(e)),
            }
        })
    }
}

/// Puts words and a hint on a rustls error carried in an I/O error.
fn explain(e: io::Error) -> io::Error {
    let described = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map(|t| crate::tls::describe(t, CA_OPTION, CERT_OPTION));
    match described {
        Some(msg) => io::Error::new(e.kind(), msg),
        None => e,
    }
}

pub(crate) struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for PgTlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        session
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|cert| end_point_hash(cert.as_ref()))
            .map_or_else(ChannelBinding::none, ChannelBinding::tls_server_end_point)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// `tls-server-end-point` (RFC 5929): the certificate's hash with the hash function of its
/// signature algorithm (MD5 and SHA-1 become SHA-256). `None` for algorithms without one
/// (Ed25519, RSA-PSS): the driver then authenticates without channel binding.
fn end_point_hash(cert: &[u8]) -> Option<Vec<u8>> {
    use ring::digest;
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    let oid = signature_algorithm(cert)?;
    let alg = match oid {
        [p @ .., last] if p == RSA => match last {
            0x04 | 0x05 | 0x0b => &digest::SHA256, // md5, sha1, sha256 WithRSAEncryption
            0x0c => &digest::SHA384,
            0x0d => &digest::SHA512,
            _ => return None,
        },
        [p @ .., 0x01] if p == ECDSA => &digest::SHA256, // ecdsa-with-SHA1
        [p @ .., 0x03, n] if p == ECDSA => match n {
            0x02 => &digest::SHA256,
            0x03 => &digest::SHA384,
            0x04 => &digest::SHA512,
            _ => return None,
        },
        _ => return None,
    };
    Some(digest::digest(alg, cert).as_ref().to_vec())
}

/// The OID of `Certificate.signatureAlgorithm` in a DER certificate.
fn signature_algorithm(cert: &[u8]) -> Option<&[u8]> {
    let (0x30, certificate, _) = der(cert)? else {
        return None;
    };
    let (0x30, _tbs, rest) = der(certificate)? else {
        return None;
    };
    let (0x30, algorithm, _) = der(rest)? else {
        return None;
    };
    match der(algorithm)? {
        (0x06, oid, _) => Some(oid),
        _ => None,
    }
}

/// One DER element: (tag, contents, what follows).
fn der(d: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = d.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_read_der_lengths_and_refuse_truncation() {
        assert_eq!(
            der(&[0x06, 0x01, 0x2a, 0xff]),
            Some((6, &[0x2a][..], &[0xff][..]))
        );
        let long = [&[0x04, 0x81, 0x80][..], &[7; 0x80]].concat();
        assert_eq!(
            der(&long).map(|(_, c, r)| (c.len(), r.len())),
            Some((0x80, 0))
        );
        assert_eq!(der(&[0x30, 0x05, 1, 2]), None);
        assert_eq!(der(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(der(&[]), None);
    }

    #[test]
    fn should_pick_the_hash_of_the_signature_algorithm() {
        // Certificate { tbs: SEQUENCE {}, algorithm: SEQUENCE { OID }, signature }
        let cert = |oid: &[u8]| {
            let mut alg = vec![0x06, oid.len() as u8];
            alg.extend_from_slice(oid);
            let mut body = vec![0x30, 0x00, 0x30, alg.len() as u8];
            body.extend_from_slice(&alg);
            body.extend_from_slice(&[0x03, 0x01, 0x00]);
            let mut c = vec![0x30, body.len() as u8];
            c.extend_from_slice(&body);
            c
        };
        let sha256_rsa = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
        let ecdsa_384 = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
        let ed25519 = [0x2b, 0x65, 0x70];
        assert_eq!(
            end_point_hash(&cert(&sha256_rsa)).map(|h| h.len()),
            Some(32)
        );
        assert_eq!(end_point_hash(&cert(&ecdsa_384)).map(|h| h.len()), Some(48));
        assert_eq!(end_point_hash(&cert(&ed25519)), None);
        assert_eq!(end_point_hash(b"garbage"), None);
    }
}
