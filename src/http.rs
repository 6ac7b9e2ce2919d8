//! The HTTP server on the control core: hyper (HTTP/1.1) over glommio sockets.
//!
//! Routing lives with the caller; this module only moves requests and responses and
//! enforces limits: connections, header and body sizes, and time. A client gets
//! `HEAD_TIMEOUT` to send a request head (from connecting, or from the previous response)
//! and `BODY_TIMEOUT` for its body, however slowly it trickles bytes; and when all
//! `MAX_CONNECTIONS` are taken, the connection that has waited longest for a request head
//! makes room for the new one. So slow or stuck clients (slowloris) cannot lock probes and
//! scrapes out of /health and /metrics.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncWrite};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::rt::ReadBufCursor;
use hyper::{Request, Response};

use crate::rt;

/// Largest request body we read (admin requests are tiny).
pub const MAX_BODY: usize = 64 * 1024;
/// Concurrent connections served. At the cap, the one that has waited longest for a request
/// head is closed to make room; if all are mid-request, the new one is closed.
pub const MAX_CONNECTIONS: usize = 256;
/// A connection with no byte read or written for this long is closed (idle keep-alive,
/// stuck clients).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// A request head must be complete this long after the connection opened or the previous
/// response was ready, even if bytes keep trickling in (slowloris).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a closing connection keeps reading (and discarding) what the client still sends.
const LINGER: Duration = Duration::from_secs(1);
/// A request body must be complete this long after its head (else 408).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// One open connection, as the accept loop sees it.
struct Conn {
    /// Since when it waits for a request head (accepted, or last response ready); `None`
    /// while a request is being served.
    waiting_since: Cell<Option<Instant>>,
    /// Set to close it now (evicted to make room).
    evict: crate::rt::sync::Latch,
}

/// A request as handlers see it.
pub struct Req {
    /// The client's address (for the loopback-only admin option).
    pub peer: Option<SocketAddr>,
    pub method: hyper::Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

/// A response: status, content type, body.
pub struct Resp {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Resp {
    pub fn json(status: u16, body: String) -> Resp {
        Resp {
            status,
            content_type: "application/json",
            body,
        }
    }
    pub fn text(status: u16, body: impl Into<String>) -> Resp {
        Resp {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

pub type Handler = Rc<dyn Fn(Req) -> Pin<Box<dyn Future<Output = Resp>>>>;

/// Binds `addr` (error if taken) for serving on the current executor.
///
/// The listener is the standard library's: `SO_REUSEADDR`, so connections of an earlier run
/// still in TIME_WAIT on the port (a restart within a minute of closing them) do not stop
/// it, and no `SO_REUSEPORT`, so a second instance on a port in use is an error. glommio's
/// own `bind` sets only `SO_REUSEPORT`: the opposite on both counts.
pub fn bind(addr: SocketAddr) -> io::Result<glommio::net::TcpListener> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let fd = std::net::TcpListener::bind(addr)?.into_raw_fd();
    // SAFETY: `fd` is a bound, listening TCP socket whose ownership `into_raw_fd` handed
    // over; the glommio listener now owns and closes it.
    Ok(unsafe { glommio::net::TcpListener::from_raw_fd(fd) })
}

pub async fn serve(listener: glommio::net::TcpListener, handler: Handler) {
    let open: Rc<RefCell<Vec<Rc<Conn>>>> = Rc::default();
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "http accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.borrow().len() >= MAX_CONNECTIONS && !evict_longest_waiting(&open) {
            // Every connection is in the middle of a request: the new one is closed.
            drop(stream);
            continue;
        }
        let conn = Rc::new(Conn {
            waiting_since: Cell::new(Some(Instant::now())),
            evict: Default::default(),
        });
        open.borrow_mut().push(conn.clone());
        let peer = stream.peer_addr().ok();
        let linger = rt::dup_stream(&stream).ok();
        let (handler, open) = (handler.clone(), open.clone());
        glommio::spawn_local(async move {
            let activity = Rc::new(Cell::new(Instant::now()));
            let io = Io(stream, Some(activity.clone()));
            let phase = conn.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (handler, phase) = (handler.clone(), phase.clone());
                async move {
                    phase.waiting_since.set(None);
                    let resp = respond(&handler, peer, req).await;
                    phase.waiting_since.set(Some(Instant::now()));
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .max_buf_size(16 * 1024)
                .keep_alive(true)
                .serve_connection(io, service);
            let watchdog = async {
                loop {
                    let now = Instant::now();
                    let idle_at = activity.get() + IDLE_TIMEOUT;
                    let head_at = conn.waiting_since.get().map(|t| t + HEAD_TIMEOUT);
                    let next = head_at.map_or(idle_at, |h| h.min(idle_at));
                    if next <= now || conn.evict.is_set() {
                        return Ok(());
                    }
                    rt::time::timeout(next - now, conn.evict.wait()).await;
                }
            };
            if let Err(e) = futures_lite::future::or(served, watchdog).await {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
            open.borrow_mut().retain(|c| !Rc::ptr_eq(c, &conn));
            if let Some(s) = linger {
                linger_close(s).await;
            }
        })
        .detach();
    }
}

/// Closes a connection without losing what was sent on it. When hyper ends a connection
/// (an error answered with 400, the client's `Connection: close`) while requests it will not
/// read are still in the socket's receive buffer, closing the socket makes the kernel send a
/// reset, and the client may discard responses it has not read yet (HTTP/1.1's "lingering
/// close", RFC 9112 section 9.6). So: send our FIN after everything written, then read and
/// drop what the client still sends, until it closes or `LINGER` passes.
async fn linger_close(s: glommio::net::TcpStream) {
    use futures_lite::AsyncReadExt;
    let _ = s.shutdown(std::net::Shutdown::Write).await;
    let deadline = Instant::now() + LINGER;
    let mut s = s;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match rt::time::timeout(left, s.read(&mut buf)).await {
            Some(Ok(n)) if n > 0 => continue,
            _ => return,
        }
    }
}

/// Closes the connection that has waited longest for a request head, to make room; false
/// when every connection is serving a request.
fn evict_longest_waiting(open: &RefCell<Vec<Rc<Conn>>>) -> bool {
    let mut open = open.borrow_mut();
    let oldest = open
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.waiting_since.get().map(|t| (t, i)))
        .min();
    match oldest {
        Some((_, i)) => {
            open.swap_remove(i).evict.set();
            true
        }
        None => false,
    }
}

async fn respond(
    handler: &Handler,
    peer: Option<SocketAddr>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let collect = Limited::new(body, MAX_BODY).collect();
    let body = match rt::time::timeout(BODY_TIMEOUT, collect).await {
        Some(Ok(b)) => b.to_bytes(),
        Some(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return build(Resp::text(413, "request body too large\n"))
        }
        Some(Err(_)) => return build(Resp::text(400, "malformed request body\n")),
        None => return build(Resp::text(408, "request body not received in time\n")),
    };
    let r = Req {
        peer,
        method: parts.method,
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers,
        body,
    };
    build(handler(r).await)
}

fn build(r: Resp) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(r.body)));
    *resp.status_mut() =
        hyper::StatusCode::from_u16(r.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = hyper::header::HeaderValue::from_str(r.content_type) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

/// hyper's I/O traits over a glommio stream; records the time of the last byte moved.
struct Io(glommio::net::TcpStream, Option<Rc<Cell<Instant>>>);

impl Io {
    fn touch(&self) {
        if let Some(a) = &self.1 {
            a.set(Instant::now());
        }
    }
}

impl hyper::rt::Read for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let mut tmp = [0u8; 8192];
        let want = buf.remaining().min(tmp.len());
        let this = self.get_mut();
        match Pin::new(&mut this.0).poll_read(cx, &mut tmp[..want]) {
            Poll::Ready(Ok(n)) => {
                this.touch();
                buf.put_slice(&tmp[..n]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl hyper::rt::Write for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.0).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(_))) {
            this.touch();
        }
        r
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_close(cx)
    }
}

/// A one-shot HTTP/1.1 request from the current glommio executor (for `switch` and
/// `report`). `base` is like `http://127.0.0.1:3000`; returns (status, body).
pub async fn request(
    base: &str,
    method: hyper::Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<String>,
) -> Result<(u16, String), String> {
    let u = url::Url::parse(base).map_err(|e| format!("invalid admin URL: {e}"))?;
    if u.scheme() != "http" {
        return Err("only http:// admin URLs are supported".into());
    }
    let host = u.host_str().ok_or("admin URL has no host")?.to_string();
    let port = u.port_or_known_default().unwrap_or(80);
    let lookup = host.clone();
    let addr = glommio::executor()
        .spawn_blocking(move || {
            use std::net::ToSocketAddrs;
            (lookup.as_str(), port)
                .to_socket_addrs()
                .map(|mut a| a.next())
        })
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?
        .ok_or_else(|| format!("resolving {host}: no address"))?;
    let stream = glommio::net::TcpStream::connect_timeout(addr, std::time::Duration::from_secs(5))
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(Io(stream, None))
        .await
        .map_err(|e| format!("http: {e}"))?;
    let driver = glommio::spawn_local(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, format!("{host}:{port}"));
    if let Some(token) = bearer {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let has_body = body.is_some();
    if has_body {
        req = req.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| format!("http: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("http: {e}"))?;
    let status = resp.status().as_u16();
    let bytes = Limited::new(resp.into_body(), 64 << 20)
        .collect()
        .await
        .map_err(|e| format!("http body: {e}"))?
        .to_bytes();
    drop(driver);
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// Runs the future `make` builds on a fresh (unpinned) glommio executor and waits for it:
/// for the one-shot subcommands.
pub fn block_on<T, F, Fut>(make: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
{
    rt::executor::spawn(
        "cli",
        glommio::Placement::Unbound,
        rt::executor::ONE_SHOT_PREEMPT,
        make,
    )
    .map_err(|e| e.to_string())?
    .join()
    .map_err(|e| e.to_string())
}
