//! HTTP/1.1 message framing of the agent listener (RFC 9112): request heads
//! (parsed by `httparse`), body lengths, persistence, and response heads.
//!
//! Self-contained (std, `http`, `httparse`) so the fuzz target
//! `agent_http1` and its corpus replay include this very file.

use http::header::{CONNECTION, CONTENT_LENGTH, DATE, EXPECT, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};

/// Longest request head accepted (request line and fields): bearer tokens
/// and a gateway's certificate header fit with room to spare.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in one request.
pub const MAX_HEADERS: usize = 100;

/// A parsed request head.
#[derive(Debug)]
pub struct Head {
    /// The method.
    pub method: Method,
    /// The request target.
    pub uri: Uri,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// The header fields.
    pub headers: HeaderMap,
    /// The body's length (Content-Length; 0 without one or when chunked).
    pub body_len: usize,
    /// The body comes in chunks (`Transfer-Encoding: chunked`): read it
    /// with [`chunked_body`].
    pub chunked: bool,
    /// Whether the connection persists after this exchange (RFC 9112 §9.3).
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request with a body.
    pub expect_continue: bool,
}

/// Why a request head was refused; each closes the connection after its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// The head exceeds [`MAX_HEAD`] or [`MAX_HEADERS`]: 431.
    TooLarge,
    /// Not a valid HTTP/1.x request head: 400.
    Malformed(&'static str),
    /// A protocol version other than HTTP/1.0 and HTTP/1.1: 505.
    Version,
    /// A body in a transfer coding other than chunked alone: 411.
    LengthRequired,
    /// Content-Length above the listener's bound: 413.
    BodyTooLarge,
    /// An `Expect` other than 100-continue: 417.
    Expectation,
}

impl HeadError {
    /// The status this error answers with.
    pub fn status(self) -> StatusCode {
        match self {
            Self::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Malformed(_) => StatusCode::BAD_REQUEST,
            Self::Version => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            Self::LengthRequired => StatusCode::LENGTH_REQUIRED,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Expectation => StatusCode::EXPECTATION_FAILED,
        }
    }
}

/// Parses the request head at the start of `buf`: `Ok(None)` while it is
/// incomplete (and within bounds), else the head and its length in bytes.
/// Bodies longer than `max_body` are refused from their Content-Length.
pub fn parse_head(buf: &[u8], max_body: usize) -> Result<Option<(Head, usize)>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
        Ok(httparse::Status::Complete(_)) => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) => return Err(HeadError::Version),
        Err(_) => return Err(HeadError::Malformed("not an HTTP/1.1 request head")),
    };
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| HeadError::Malformed("invalid method"))?;
    let uri = req
        .path
        .unwrap_or_default()
        .parse::<Uri>()
        .map_err(|_| HeadError::Malformed("invalid request target"))?;
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for field in req.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| HeadError::Malformed("invalid field name"))?;
        let value = HeaderValue::from_bytes(field.value)
            .map_err(|_| HeadError::Malformed("invalid field value"))?;
        headers.append(name, value);
    }
    let head = framed(method, uri, version, headers, max_body)?;
    Ok(Some((head, len)))
}

/// The head's framing and persistence from its fields (RFC 9112 §3.2, §6, §9.3).
fn framed(
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    max_body: usize,
) -> Result<Head, HeadError> {
    // §3.2: exactly one Host in HTTP/1.1.
    let hosts = headers.get_all(HOST).iter().count();
    if hosts > 1 || (hosts == 0 && version == Version::HTTP_11) {
        return Err(HeadError::Malformed(
            "an HTTP/1.1 request needs exactly one Host",
        ));
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        // §6.1: in HTTP/1.0, or with a Content-Length, the framing is faulty.
        if version == Version::HTTP_10 || headers.contains_key(CONTENT_LENGTH) {
            return Err(HeadError::Malformed(
                "Transfer-Encoding with HTTP/1.0 or with Content-Length",
            ));
        }
        // §6.1: chunked alone is the one coding every HTTP/1.1 recipient
        // reads; others (compression) are refused.
        let codings: Vec<&str> = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        if !matches!(codings.as_slice(), [c] if c.eq_ignore_ascii_case("chunked")) {
            return Err(HeadError::LengthRequired);
        }
    }
    let chunked = headers.contains_key(TRANSFER_ENCODING);
    let body_len = content_length(&headers)?;
    if body_len > max_body {
        return Err(HeadError::BodyTooLarge);
    }
    let expect_continue = match headers.get(EXPECT) {
        None => false,
        Some(v) if v.as_bytes().eq_ignore_ascii_case(b"100-continue") => {
            version == Version::HTTP_11 && (body_len > 0 || chunked)
        }
        Some(_) => return Err(HeadError::Expectation),
    };
    let keep_alive = match version {
        Version::HTTP_10 => has_token(&headers, "keep-alive") && !has_token(&headers, "close"),
        _ => !has_token(&headers, "close"),
    };
    Ok(Head {
        method,
        uri,
        version,
        headers,
        body_len,
        chunked,
        keep_alive,
        expect_continue,
    })
}

/// A chunked body (RFC 9112 §7.1) decoded as its bytes arrive; trailer
/// fields are read and dropped. Each call goes on from the last complete
/// chunk, so a body sent in many small records costs time in its length,
/// not in its length times the records. Refused past `max_body` decoded
/// bytes, or when the chunk framing alone would hold more than a bounded
/// multiple of that.
#[derive(Debug, Default)]
pub struct Chunked {
    /// Bytes of the wire decoded so far (whole chunks).
    pos: usize,
    /// The body so far.
    pub body: Vec<u8>,
}

impl Chunked {
    /// Decodes on in `buf` (the body's wire bytes from its start, more of
    /// them than at the last call): `Ok(None)` while incomplete, else the
    /// bytes the body took (chunks and trailer section).
    pub fn advance(&mut self, buf: &[u8], max_body: usize) -> Result<Option<usize>, HeadError> {
        // One-byte chunks take six bytes on the wire: past that, it is not a body.
        if buf.len() > max_body.saturating_mul(6).saturating_add(MAX_HEAD) {
            return Err(HeadError::BodyTooLarge);
        }
        loop {
            let rest = &buf[self.pos..];
            let (used, size) = match httparse::parse_chunk_size(rest) {
                Ok(httparse::Status::Complete(found)) => found,
                Ok(httparse::Status::Partial) if rest.len() > MAX_HEAD => {
                    return Err(HeadError::Malformed("invalid chunk size line"));
                }
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(_) => return Err(HeadError::Malformed("invalid chunk size line")),
            };
            let size = usize::try_from(size).map_err(|_| HeadError::BodyTooLarge)?;
            if size == 0 {
                let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let trailers = &rest[used..];
                return match httparse::parse_headers(trailers, &mut fields) {
                    Ok(httparse::Status::Complete((end, _))) => Ok(Some(self.pos + used + end)),
                    Ok(httparse::Status::Partial) if trailers.len() > MAX_HEAD => {
                        Err(HeadError::TooLarge)
                    }
                    Ok(httparse::Status::Partial) => Ok(None),
                    Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
                    Err(_) => Err(HeadError::Malformed("invalid trailer section")),
                };
            }
            if self.body.len().saturating_add(size) > max_body {
                return Err(HeadError::BodyTooLarge);
            }
            let Some(chunk) = rest.get(used..used + size + 2) else {
                return Ok(None);
            };
            if &chunk[size..] != b"\r\n" {
                return Err(HeadError::Malformed("a chunk does not end with CRLF"));
            }
            self.body.extend_from_slice(&chunk[..size]);
            self.pos += used + size + 2;
        }
    }
}

/// Content-Length (§6.3): one decimal value, or a list of the same value.
fn content_length(headers: &HeaderMap) -> Result<usize, HeadError> {
    let bad = HeadError::Malformed("invalid Content-Length");
    let mut len = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        let text = value.to_str().map_err(|_| bad)?;
        for item in text.split(',') {
            let item = item.trim();
            if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad);
            }
            let n: usize = item.parse().map_err(|_| HeadError::BodyTooLarge)?;
            if len.is_some_and(|l| l != n) {
                return Err(bad);
            }
            len = Some(n);
        }
    }
    Ok(len.unwrap_or(0))
}

/// Whether the Connection field lists `token` (case-insensitive).
fn has_token(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether a response with `status` to `method` carries a body (RFC 9110 §6.4.1).
pub fn has_body(method: &Method, status: StatusCode) -> bool {
    method != Method::HEAD
        && !status.is_informational()
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::NOT_MODIFIED
}

/// Whether a response asks for the connection to close.
pub fn wants_close(headers: &HeaderMap) -> bool {
    has_token(headers, "close")
}

/// Writes a response head to `out`: the status line, `headers` (less the
/// framing and date fields, which are ours), `Date`, `Content-Length` for
/// `body_len` where RFC 9110 §8.6 allows one, and `Connection`.
pub fn write_response_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    body_len: Option<usize>,
    close: bool,
    http10_keep_alive: bool,
    date: &str,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING || name == CONNECTION || name == DATE
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(date.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(len) = body_len {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(len.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10_keep_alive {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}
