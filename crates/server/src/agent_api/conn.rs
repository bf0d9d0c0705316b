//! The agent listener's HTTP/1.1 connection loop.
//!
//! Why not hyper here: hyper keeps an 8 KB read buffer and an 8 KB
//! response-header buffer for the life of every HTTP/1 connection, with no
//! setting to shrink them or release them while a request is in flight,
//! and an agent's connection has a long poll in flight nearly all the
//! time. At 10,000 connected agents those two buffers alone were 160 MB of
//! a 150 MB goal (BENCHMARKS.md, goal 6). This loop holds, while a poll is
//! parked, the TLS connection (which then holds no buffers, `tls.rs`), the
//! connection's context and the poll's own future; a request's bytes exist
//! only while it is read, a response's only while it is written. Framing
//! is `framing.rs` (`httparse` for the head), fuzzed by `agent_http1`.
//!
//! What it does of HTTP/1.1 (RFC 9112): Content-Length and chunked bodies
//! (other transfer codings are refused with 411),
//! `Expect: 100-continue`, persistence per version and `Connection`,
//! pipelined requests in order, a 30 s bound on waiting for a request head
//! (as hyper's `header_read_timeout` was), a `Date` on every response, no
//! body for HEAD, 1xx, 204 and 304. Every refusal is a problem document.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use axum::response::{IntoResponse as _, Response};

use super::framing::{self, Head, HeadError};
use super::poll::{ConnContext, is_poll};
use super::tls::TlsConn;
use crate::errors::ApiError;

/// How long a connection may take to send a complete request head,
/// counted from the end of the previous response (hyper's
/// `header_read_timeout`, as this listener had it).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request body read: the largest any agent route takes (the
/// discovery report); each route's own limit then applies as before.
pub const MAX_BODY: usize = super::discovery::DISCOVERY_BODY_LIMIT;
/// How long a refused request's remaining bytes are read and dropped
/// before the connection closes (see [`TlsConn::linger`]).
const LINGER: Duration = Duration::from_secs(5);
/// Largest response body sent (agent answers are small JSON or PEM).
const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// How a request head arrived, or why none did.
enum Read {
    Head(Box<Head>),
    /// The peer closed (or failed) before a complete head.
    Gone,
    /// No complete head within [`HEAD_TIMEOUT`].
    TimedOut {
        partial: bool,
    },
    Refused(HeadError),
}

/// Serves the requests of one connection until it closes, fails, or
/// `close` turns true (the request in flight, a parked poll included, is
/// answered first, with `Connection: close`).
pub async fn serve(
    mut tls: Box<TlsConn>,
    ctx: Arc<ConnContext>,
    close: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if *close.borrow() {
            break;
        }
        let read = tokio::select! {
            r = read_head(&mut tls) => r,
            () = super::closed(close.clone()) => break,
        };
        let head = match read {
            Read::Head(head) => head,
            Read::Gone => return,
            Read::TimedOut { partial: false } => break,
            Read::TimedOut { partial: true } => {
                let problem = ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request-timeout",
                    "Request timeout",
                    "the request head did not arrive in time",
                );
                return answer_and_close(&mut tls, problem.into_response()).await;
            }
            Read::Refused(e) => return answer_and_close(&mut tls, refusal(e)).await,
        };
        // Only these outlive the head: its fields go into the request.
        let (method, keep_alive) = (head.method.clone(), head.keep_alive);
        let http10 = head.version == http::Version::HTTP_10;
        let resp = match exchange(&mut tls, &ctx, head).await {
            Ok(Some(resp)) => resp,
            Ok(None) => return,
            Err(e) => return answer_and_close(&mut tls, refusal(e)).await,
        };
        let close_now = !keep_alive
            || framing::wants_close(resp.headers())
            || tls.read_closed()
            || *close.borrow();
        // Boxed, as is every future a parked poll does not need: the
        // connection's task is as large as its largest await.
        if Box::pin(respond(&mut tls, &method, resp, close_now, http10))
            .await
            .is_err()
        {
            return;
        }
        if close_now {
            break;
        }
    }
    tls.shutdown().await;
}

/// Answers a request whose framing was refused (or that timed out), then
/// closes, lingering so that the client reads the answer.
async fn answer_and_close(tls: &mut TlsConn, resp: Response) {
    let _ = Box::pin(respond(tls, &Method::GET, resp, true, false)).await;
    Box::pin(tls.linger(LINGER)).await;
}

/// Reads the body of `head` and answers it; None when the connection is
/// gone (nothing is to be written); a chunked body whose framing is
/// refused, as a refused head.
async fn exchange(
    tls: &mut TlsConn,
    ctx: &Arc<ConnContext>,
    head: Box<Head>,
) -> Result<Option<Response>, HeadError> {
    if head.expect_continue
        && (head.chunked || tls.buffered().len() < head.body_len)
        && tls
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .is_err()
    {
        return Ok(None);
    }
    let body = if head.chunked {
        let mut decoder = framing::Chunked::default();
        loop {
            match decoder.advance(tls.buffered(), MAX_BODY) {
                Ok(Some(used)) => {
                    tls.consume(used);
                    break bytes::Bytes::from(std::mem::take(&mut decoder.body));
                }
                Ok(None) => {
                    if !tls.fill().await.unwrap_or(false) {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    } else {
        while tls.buffered().len() < head.body_len {
            if !tls.fill().await.unwrap_or(false) {
                return Ok(None);
            }
        }
        let body = bytes::Bytes::copy_from_slice(&tls.buffered()[..head.body_len]);
        tls.consume(head.body_len);
        body
    };
    let req = request_of(head, body);
    if is_poll(req.method(), req.uri().path()) {
        return Ok(parked(tls, Box::pin(ctx.poll(req))).await);
    }
    Ok(Some(Box::pin(ctx.clone().call(req)).await))
}

/// The request of `head` with `body`. Not inlined into [`exchange`]: a
/// head kept there would stay in the connection's task while its poll is
/// parked.
fn request_of(head: Box<Head>, body: bytes::Bytes) -> Request<Body> {
    let Head {
        method,
        uri,
        version,
        headers,
        ..
    } = *head;
    let mut req = Request::new(Body::from(body));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    req
}

/// A poll: its `answer` (boxed, so the connection's task stays small) runs
/// while the socket is watched; a close from the client ends the wait and
/// nothing is written, as hyper did. Bytes of a pipelined request are
/// kept for after the answer.
async fn parked(
    tls: &mut TlsConn,
    mut answer: Pin<Box<impl Future<Output = Response>>>,
) -> Option<Response> {
    let mut watching = !tls.read_closed();
    loop {
        tokio::select! {
            resp = &mut answer => return Some(resp),
            more = tls.fill(), if watching => match more {
                Ok(true) => watching = false,
                Ok(false) | Err(_) => return None,
            },
        }
    }
}

/// Reads a complete request head within [`HEAD_TIMEOUT`].
async fn read_head(tls: &mut TlsConn) -> Read {
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    loop {
        match framing::parse_head(tls.buffered(), MAX_BODY) {
            Ok(Some((head, len))) => {
                tls.consume(len);
                return Read::Head(Box::new(head));
            }
            Ok(None) => {}
            Err(e) => return Read::Refused(e),
        }
        match tokio::time::timeout_at(deadline, tls.fill()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false) | Err(_)) => return Read::Gone,
            Err(_) => {
                return Read::TimedOut {
                    partial: !tls.buffered().is_empty(),
                };
            }
        }
    }
}

/// The problem document answering a refused head.
fn refusal(e: HeadError) -> Response {
    let status = e.status();
    let (code, title, detail) = match e {
        HeadError::TooLarge => (
            "head-too-large",
            "Request header fields too large",
            format!(
                "the request head exceeds {} bytes or {} fields",
                framing::MAX_HEAD,
                framing::MAX_HEADERS
            ),
        ),
        HeadError::Malformed(why) => ("bad-request", "Bad request", why.to_owned()),
        HeadError::Version => (
            "http-version",
            "HTTP version not supported",
            "this listener speaks HTTP/1.0 and HTTP/1.1".to_owned(),
        ),
        HeadError::LengthRequired => (
            "length-required",
            "Length required",
            "send the body with a Content-Length or chunked (no other transfer coding is accepted)"
                .to_owned(),
        ),
        HeadError::BodyTooLarge => return ApiError::body_too_large(MAX_BODY).into_response(),
        HeadError::Expectation => (
            "expectation-failed",
            "Expectation failed",
            "only Expect: 100-continue is supported".to_owned(),
        ),
    };
    ApiError::new(status, code, title, detail).into_response()
}

/// Writes `resp` (to a request with `method`): its body collected within
/// [`MAX_RESPONSE`], then one write of head and body.
async fn respond(
    tls: &mut TlsConn,
    method: &Method,
    resp: Response,
    close: bool,
    http10: bool,
) -> std::io::Result<()> {
    let (parts, body) = resp.into_parts();
    let (status, headers, body) = match axum::body::to_bytes(body, MAX_RESPONSE).await {
        Ok(body) => (parts.status, parts.headers, body),
        Err(e) => {
            tracing::error!(error = %e, status = %parts.status, "agent response body unreadable or too large");
            let (p, b) = ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                "the response could not be produced",
            )
            .into_response()
            .into_parts();
            let b = axum::body::to_bytes(b, MAX_RESPONSE)
                .await
                .unwrap_or_default();
            (p.status, p.headers, b)
        }
    };
    let with_body = framing::has_body(method, status);
    let body_len = if with_body {
        Some(body.len())
    } else {
        head_length(method, status, &headers)
    };
    let mut out = Vec::with_capacity(256 + if with_body { body.len() } else { 0 });
    framing::write_response_head(
        &mut out,
        status,
        &headers,
        body_len,
        close,
        http10 && !close,
        &date::now(),
    );
    if with_body {
        out.extend_from_slice(&body);
    }
    tls.write_all(&out).await
}

/// The Content-Length a bodiless answer may still state: a HEAD response's
/// own (the size a GET would have), never for 1xx, 204 or 304.
fn head_length(method: &Method, status: StatusCode, headers: &HeaderMap) -> Option<usize> {
    // Whatever a GET would get with a body (not 1xx, 204 or 304).
    if method != Method::HEAD || !framing::has_body(&Method::GET, status) {
        return None;
    }
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The `Date` field's value (IMF-fixdate), formatted once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }

    /// Now, as a `Date` value.
    pub fn now() -> String {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with(|c| {
            let mut c = c.borrow_mut();
            if c.0 != secs || c.1.is_empty() {
                *c = (secs, httpdate::fmt_http_date(now));
            }
            c.1.clone()
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
