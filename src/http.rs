//! The HTTP server on the control core: hyper (HTTP/1.1) over glommio sockets.
//!
//! Routing lives with the caller; this module only moves requests and responses and
//! enforces limits (connections, header and body sizes).

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncWrite};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::rt::ReadBufCursor;
use hyper::{Request, Response};

/// Largest request body we read (admin requests are tiny).
pub const MAX_BODY: usize = 64 * 1024;
/// Concurrent connections served; more are closed at once.
pub const MAX_CONNECTIONS: usize = 256;

/// A request as handlers see it.
pub struct Req {
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

/// Binds `addr` (error if taken) and serves connections on the current executor until
/// the returned task is dropped.
pub fn bind(addr: SocketAddr) -> io::Result<glommio::net::TcpListener> {
    glommio::net::TcpListener::bind(addr).map_err(|e| io::Error::other(e.to_string()))
}

pub async fn serve(listener: glommio::net::TcpListener, handler: Handler) {
    let open = Rc::new(Cell::new(0usize));
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "http accept failed");
                glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.get() >= MAX_CONNECTIONS {
            drop(stream);
            continue;
        }
        open.set(open.get() + 1);
        let (handler, open) = (handler.clone(), open.clone());
        glommio::spawn_local(async move {
            let io = Io(stream);
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let handler = handler.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&handler, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .max_buf_size(16 * 1024)
                .keep_alive(true)
                .serve_connection(io, service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
            open.set(open.get() - 1);
        })
        .detach();
    }
}

async fn respond(handler: &Handler, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return build(Resp::text(413, "request body too large\n")),
    };
    let r = Req {
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

/// hyper's I/O traits over a glommio stream.
struct Io(glommio::net::TcpStream);

impl hyper::rt::Read for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let mut tmp = [0u8; 8192];
        let want = buf.remaining().min(tmp.len());
        match Pin::new(&mut self.get_mut().0).poll_read(cx, &mut tmp[..want]) {
            Poll::Ready(Ok(n)) => {
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
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_close(cx)
    }
}
