//! The metrics listener: `GET /metrics` over HTTP/1.1 ([`crate::metrics`] renders the body).
//!
//! Whoever can reach the port is a client, so requests are hostile input: the request head is
//! read up to [`MAX_REQUEST`] bytes, a client has [`HEAD_TIMEOUT`] to send it and
//! [`CLIENT_TIMEOUT`] in all to take the answer, at most [`MAX_CLIENTS`] are served at once (more are closed at once), and each
//! connection carries one request (`Connection: close`). It runs on its own thread with its own
//! single-threaded runtime: nothing a client does reaches the capture loop.

use std::{
    net::SocketAddr,
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, oneshot},
};

/// The request head (request line and headers) may be this long at most; Prometheus sends
/// about 300 bytes.
pub const MAX_REQUEST: usize = 8192;
/// A client has this long to send its request and read the answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// A client has this long to send its request head: a scraper sends it at once, and a client
/// that only opens connections holds one of the [`MAX_CLIENTS`] slots no longer than this.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(1);
/// Connections served at once; more are closed without an answer.
pub const MAX_CLIENTS: usize = 16;

/// The exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, thiserror::Error)]
/// Why the metrics listener could not start.
pub enum MetricsError {
    #[error(
        "the metrics listener on {addr} cannot listen ([metrics] listen, --metrics-listen): {source}"
    )]
    /// The address could not be bound (in use, not this host's, a privileged port).
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The bind's error.
        source: std::io::Error,
    },
    #[error("starting the metrics listener on {addr}: {source}")]
    /// The listener's thread or socket options could not be set up.
    Start {
        /// The configured address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// The running listener; stopped when dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Listens on `addr` (bound here: an address in use or not allowed is an error now) and
    /// serves `render()` at `/metrics` on a thread of its own.
    pub fn start(
        addr: SocketAddr,
        render: impl Fn() -> String + Send + Sync + 'static,
    ) -> Result<MetricsServer, MetricsError> {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|source| MetricsError::Bind { addr, source })?;
        let start = |source| MetricsError::Start { addr, source };
        listener.set_nonblocking(true).map_err(start)?;
        let bound = listener.local_addr().map_err(start)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(start)?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("metrics-http".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(l) => serve(l, Arc::new(render), stop_rx).await,
                        Err(e) => log::error!("metrics listener on {bound}: {e}"),
                    }
                });
            })
            .map_err(start)?;
        log::info!("metrics: serving http://{bound}/metrics");
        if !addr.ip().is_loopback() {
            log::warn!(
                "metrics: {bound} is not a loopback address: anyone who can reach it learns \
                 what this node's ctrwatch sees (event counts, sink names, alert rules)"
            );
        }
        Ok(MetricsServer {
            addr: bound,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The address it listens on (the port chosen, when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Render = Arc<dyn Fn() -> String + Send + Sync>;

async fn serve(listener: TcpListener, render: Render, mut stop: oneshot::Receiver<()>) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    let mut last_error: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    // Too many at once: closed (dropped) without an answer.
                    let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else { continue };
                    let render = Arc::clone(&render);
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(CLIENT_TIMEOUT, answer(stream, &render)).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: said once a minute, and a short
                    // pause rather than a busy loop.
                    if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        log::warn!("metrics listener: accepting a connection: {e}");
                        last_error = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// What a request asked for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Metrics,
    NotFound,
    MethodNotAllowed,
    Bad,
    TooLarge,
}

/// Reads one request head (to the blank line) and answers it; then the connection is closed.
async fn answer(mut stream: TcpStream, render: &Render) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read_head = async {
        loop {
            // Only the last bytes read can complete the blank line: a client trickling its
            // head byte by byte costs a constant scan per read, not the whole head again.
            let from = head.len().saturating_sub(3 + buf.len());
            if let Some(end) = find_end(&head[from..]) {
                return Ok(Some(parse(&head[..from + end])));
            }
            if head.len() >= MAX_REQUEST {
                return Ok(Some(Request::TooLarge));
            }
            let want = buf.len().min(MAX_REQUEST - head.len());
            let n = stream.read(&mut buf[..want]).await?;
            if n == 0 {
                // Closed before the request was complete: nothing to answer.
                return Ok(None);
            }
            head.extend_from_slice(&buf[..n]);
        }
    };
    let request = match tokio::time::timeout(HEAD_TIMEOUT, read_head).await {
        Ok(Ok(Some(request))) => request,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => return Err(e),
        // Too slow: closed without an answer.
        Err(_) => return Ok(()),
    };
    let (status, extra, body) = match request {
        Request::Metrics => ("200 OK", "", render()),
        Request::NotFound => (
            "404 Not Found",
            "",
            "not found: the metrics are at /metrics\n".to_string(),
        ),
        Request::MethodNotAllowed => (
            "405 Method Not Allowed",
            "Allow: GET\r\n",
            "method not allowed: GET /metrics\n".to_string(),
        ),
        Request::Bad => ("400 Bad Request", "", "bad request\n".to_string()),
        Request::TooLarge => (
            "431 Request Header Fields Too Large",
            "",
            "request too large\n".to_string(),
        ),
    };
    let content_type = if request == Request::Metrics {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The end of the request head (after its blank line), if it is all there.
fn find_end(head: &[u8]) -> Option<usize> {
    head.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
}

/// The request line: `METHOD TARGET HTTP/1.x`. Headers are not looked at.
fn parse(head: &[u8]) -> Request {
    let Some(line_end) = head.windows(2).position(|w| w == b"\r\n") else {
        return Request::Bad;
    };
    let mut parts = head[..line_end].split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Bad;
    };
    if !version.starts_with(b"HTTP/1.") || method.is_empty() {
        return Request::Bad;
    }
    if method != b"GET" {
        return Request::MethodNotAllowed;
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or(target);
    if path == b"/metrics" {
        Request::Metrics
    } else {
        Request::NotFound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        let p = |s: &str| parse(s.as_bytes());
        assert_eq!(
            p("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Metrics
        );
        assert_eq!(p("GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Request::Metrics);
        assert_eq!(p("GET / HTTP/1.1\r\n\r\n"), Request::NotFound);
        assert_eq!(p("GET /metricsx HTTP/1.1\r\n\r\n"), Request::NotFound);
        assert_eq!(
            p("POST /metrics HTTP/1.1\r\n\r\n"),
            Request::MethodNotAllowed
        );
        assert_eq!(p("GET /metrics\r\n\r\n"), Request::Bad);
        assert_eq!(p("GET /metrics SPDY/3\r\n\r\n"), Request::Bad);
        assert_eq!(p("GET  /metrics HTTP/1.1\r\n\r\n"), Request::Bad);
    }
}
