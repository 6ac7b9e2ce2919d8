//! The byte pipes under a connection: plain TCP, or TLS with rustls driven by hand.
//!
//! A connection reads on one (dup'ed) fd in its reader task and writes on another in its
//! writer task (see `conn`). A TLS stream cannot be split like that, so instead both halves
//! share one `rustls::ClientConnection` behind a `RefCell`, borrowed only between awaits: the
//! reader feeds it ciphertext and takes plaintext out, the writer puts plaintext in and sends
//! the records it yields. Each half keeps its own glommio stream, so neither ever waits on the
//! other's socket (no lock held across I/O, no shared waker).
//!
//! The halves are generic parameters of the reader and writer tasks, so the plain-TCP path
//! compiles to exactly what it was: no enum, no box, no extra copy.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::rc::Rc;
use std::sync::Arc;

use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use rustls::ClientConnection;

/// Hints named in TLS error messages.
const CA_OPTION: &str = "--redis-ca-file (REDIS_CA_FILE)";
const CERT_OPTION: &str = "--redis-client-cert / --redis-client-key";

/// The receiving half of a connection.
pub(crate) trait ReadHalf {
    /// Waits for bytes and appends them to `buf` (`scratch` is room for a socket read);
    /// returns how many, 0 when the peer closed.
    async fn read_into(&mut self, buf: &mut BytesMut, scratch: &mut [u8]) -> io::Result<usize>;
}

/// The sending half of a connection.
pub(crate) trait WriteHalf {
    /// Sends all of `data` (and anything the transport itself has pending).
    async fn send(&mut self, data: &[u8]) -> io::Result<()>;

    /// Whether the transport has bytes of its own to send with nothing queued (TLS records
    /// the reader produced, such as a key update).
    fn wants_flush(&self) -> bool {
        false
    }
}

impl ReadHalf for TcpStream {
    #[inline]
    async fn read_into(&mut self, buf: &mut BytesMut, scratch: &mut [u8]) -> io::Result<usize> {
        let n = self.read(scratch).await?;
        buf.extend_from_slice(&scratch[..n]);
        Ok(n)
    }
}

impl WriteHalf for TcpStream {
    #[inline]
    async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.write_all(data).await
    }
}

type Session = Rc<RefCell<ClientConnection>>;

/// TLS over `stream`: runs the handshake, bounded by the caller's timeout. `host` is the
/// name checked against the certificate and sent as SNI (an IP is checked against IP SANs).
pub(crate) async fn handshake(
    stream: &mut TcpStream,
    config: Arc<rustls::ClientConfig>,
    host: &str,
) -> Result<ClientConnection, String> {
    let name = crate::tls::server_name(host)?;
    let mut tls = ClientConnection::new(config, name).map_err(|e| describe(&e))?;
    let mut out = Vec::with_capacity(4096);
    let mut scratch = vec![0u8; 16 * 1024];
    loop {
        while tls.wants_write() {
            out.clear();
            tls.write_tls(&mut out).map_err(|e| e.to_string())?;
            stream
                .write_all(&out)
                .await
                .map_err(|e| format!("sending the TLS handshake: {e}"))?;
        }
        if !tls.is_handshaking() {
            return Ok(tls);
        }
        let n = stream
            .read(&mut scratch)
            .await
            .map_err(|e| format!("reading the TLS handshake: {e}"))?;
        if n == 0 {
            return Err(
                "the server closed the connection during the TLS handshake (is the \
                        port a TLS port?)"
                    .into(),
            );
        }
        let mut rd = &scratch[..n];
        while !rd.is_empty() {
            tls.read_tls(&mut rd).map_err(|e| e.to_string())?;
            if let Err(e) = tls.process_new_packets() {
                // Tell the server why (best effort), then give up.
                out.clear();
                if tls.write_tls(&mut out).is_ok() {
                    let _ = stream.write_all(&out).await;
                }
                return Err(describe(&e));
            }
        }
    }
}

/// Splits an established session into the reader's and the writer's halves.
pub(crate) fn split(
    tls: ClientConnection,
    read: TcpStream,
    write: TcpStream,
    wake_writer: impl Fn() + 'static,
) -> (TlsReader, TlsWriter) {
    let session: Session = Rc::new(RefCell::new(tls));
    (
        TlsReader {
            stream: read,
            tls: session.clone(),
            closed: false,
            wake_writer: Box::new(wake_writer),
        },
        TlsWriter {
            stream: write,
            tls: session,
            out: Vec::with_capacity(16 * 1024),
        },
    )
}

pub(crate) struct TlsReader {
    stream: TcpStream,
    tls: Session,
    /// The server sent close_notify.
    closed: bool,
    wake_writer: Box<dyn Fn()>,
}

impl TlsReader {
    /// Runs the records received so far through rustls and moves their plaintext to `buf`.
    fn absorb(&mut self, mut data: &[u8], buf: &mut BytesMut) -> io::Result<usize> {
        let mut tls = self.tls.borrow_mut();
        let mut got = 0;
        loop {
            let state = tls.process_new_packets().map_err(|e| tls_error(&e))?;
            let n = state.plaintext_bytes_to_read();
            if n > 0 {
                let old = buf.len();
                buf.resize(old + n, 0);
                tls.reader().read_exact(&mut buf[old..])?;
                got += n;
            }
            if state.peer_has_closed() {
                self.closed = true;
            }
            if data.is_empty() {
                break;
            }
            // Takes what fits in rustls' buffer; the loop processes it and comes back for more.
            tls.read_tls(&mut data)?;
        }
        if tls.wants_write() {
            (self.wake_writer)();
        }
        Ok(got)
    }
}

impl ReadHalf for TlsReader {
    async fn read_into(&mut self, buf: &mut BytesMut, scratch: &mut [u8]) -> io::Result<usize> {
        // Plaintext that arrived with the end of the handshake comes first.
        let mut got = self.absorb(&[], buf)?;
        while got == 0 && !self.closed {
            let n = self.stream.read(scratch).await?;
            if n == 0 {
                return Ok(0);
            }
            got = self.absorb(&scratch[..n], buf)?;
        }
        Ok(got)
    }
}

pub(crate) struct TlsWriter {
    stream: TcpStream,
    tls: Session,
    /// Ciphertext on its way to the socket.
    out: Vec<u8>,
}

impl WriteHalf for TlsWriter {
    async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        let mut done = 0;
        loop {
            {
                let mut tls = self.tls.borrow_mut();
                // rustls takes as much as its buffer limit allows; the rest goes next round.
                let took = if done < data.len() {
                    tls.writer().write(&data[done..])?
                } else {
                    0
                };
                done += took;
                self.out.clear();
                while tls.wants_write() {
                    tls.write_tls(&mut self.out)?;
                }
                if took == 0 && done < data.len() && self.out.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "TLS session takes no more data",
                    ));
                }
            }
            if !self.out.is_empty() {
                self.stream.write_all(&self.out).await?;
            }
            if done >= data.len() {
                if self.out.capacity() > 1 << 20 {
                    self.out = Vec::with_capacity(16 * 1024);
                }
                return Ok(());
            }
        }
    }

    fn wants_flush(&self) -> bool {
        self.tls.borrow().wants_write()
    }
}

fn describe(e: &rustls::Error) -> String {
    crate::tls::describe(e, CA_OPTION, CERT_OPTION)
}

fn tls_error(e: &rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {}", describe(e)))
}
