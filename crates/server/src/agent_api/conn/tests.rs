//! The connection loop over real TLS connections: RFC 9112's framing and
//! persistence, pipelining, `Expect`, HEAD, refusals as problem documents,
//! a client leaving while its poll is parked, and the listener's drain.

use super::*;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

use super::super::poll::tests::{Fixture, fixture};

/// A listener serving the fixture's agent app.
struct Server {
    addr: std::net::SocketAddr,
    close: tokio::sync::watch::Sender<bool>,
    done: tokio::task::JoinHandle<()>,
    client: Arc<rustls::ClientConfig>,
    anonymous: Arc<rustls::ClientConfig>,
    _fixture: Fixture,
}

async fn server() -> Server {
    let f = fixture().await;
    let now = time::OffsetDateTime::now_utc();
    let issued = f
        .agents
        .issue_listener_certificate(&["localhost".to_owned()], 90, now)
        .await
        .unwrap();
    let verifier =
        super::super::client_verifier(&f.agents.ca_certificates_der().await.unwrap()).unwrap();
    let tls =
        super::super::server_config(verifier, issued.chain_der.clone(), &issued.key_pkcs8_der)
            .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (close, closing) = tokio::sync::watch::channel(false);
    let done = tokio::spawn(super::super::serve(
        listener,
        Arc::new(tls),
        f.ctx.app.clone(),
        closing,
    ));
    let mut roots = rustls::RootCertStore::empty();
    for der in &issued.chain_der {
        roots.add(CertificateDer::from(der.clone())).unwrap();
    }
    let builder = || {
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
    };
    let key = PrivateKeyDer::Pkcs8(f.key.pkcs8_der().to_vec().into());
    let client = builder()
        .with_client_auth_cert(vec![CertificateDer::from(f.cert_der.clone())], key)
        .unwrap();
    let anonymous = builder().with_no_client_auth();
    Server {
        addr,
        close,
        done,
        client: Arc::new(client),
        anonymous: Arc::new(anonymous),
        _fixture: f,
    }
}

/// A client connection and the bytes it has read past the last response.
struct Client {
    tls: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

/// A response as the client read it.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn connect(s: &Server, with_cert: bool) -> Client {
    let config = if with_cert { &s.client } else { &s.anonymous };
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    Client {
        tls,
        buf: Vec::new(),
    }
}

impl Client {
    async fn send(&mut self, raw: &str) {
        self.tls.write_all(raw.as_bytes()).await.unwrap();
        self.tls.flush().await.unwrap();
    }

    /// Reads more bytes; false at the end of the stream.
    async fn more(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(20), self.tls.read(&mut chunk))
            .await
            .expect("no answer within 20 s")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Reads one response (its body unless `to_head`).
    async fn reply(&mut self, to_head: bool) -> Reply {
        loop {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut fields);
            if let httparse::Status::Complete(len) = resp.parse(&self.buf).unwrap() {
                let status = resp.code.unwrap();
                let headers: Vec<(String, String)> = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8(h.value.to_vec()).unwrap(),
                        )
                    })
                    .collect();
                let mut reply = Reply {
                    status,
                    headers,
                    body: Vec::new(),
                };
                let body_len = match reply.header("content-length") {
                    Some(n) if !to_head => n.parse().unwrap(),
                    _ => 0,
                };
                self.buf.drain(..len);
                while self.buf.len() < body_len {
                    assert!(self.more().await, "end of stream inside a body");
                }
                reply.body = self.buf.drain(..body_len).collect();
                return reply;
            }
            assert!(self.more().await, "end of stream before a response");
        }
    }

    /// Whether the server closed the connection (nothing more to read).
    async fn closed(&mut self) -> bool {
        !self.more().await && self.buf.is_empty()
    }
}

const WHOAMI: &str = "GET /agent/v1/whoami HTTP/1.1\r\nHost: localhost\r\n\r\n";

fn problem(reply: &Reply, status: u16) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    let doc: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(doc["status"], status);
}

#[tokio::test]
async fn keep_alive_serves_pipelined_requests_in_order() {
    let s = server().await;
    let mut c = connect(&s, true).await;
    // RFC 9112 §9.3.2: responses in the order of the requests.
    c.send(&format!(
        "{WHOAMI}GET /agent/v1/nothing HTTP/1.1\r\nHost: localhost\r\n\r\n{WHOAMI}"
    ))
    .await;
    let first = c.reply(false).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert!(first.header("date").is_some());
    assert_eq!(
        first.header("content-length"),
        Some(first.body.len().to_string().as_str())
    );
    problem(&c.reply(false).await, 404);
    assert_eq!(c.reply(false).await.status, 200);
    // Still open: a fourth request on the same connection.
    c.send(WHOAMI).await;
    assert_eq!(c.reply(false).await.status, 200);
}

#[tokio::test]
async fn close_and_http10_end_the_connection_after_the_answer() {
    let s = server().await;
    let mut c = connect(&s, true).await;
    c.send("GET /agent/v1/whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    let reply = c.reply(false).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(c.closed().await);

    let mut c = connect(&s, true).await;
    c.send("GET /agent/v1/whoami HTTP/1.0\r\n\r\n").await;
    assert_eq!(c.reply(false).await.status, 200);
    assert!(c.closed().await);

    // A client offering only HTTP/1.0 in ALPN (curl --http1.0) is served.
    let mut http10 = (*s.client).clone();
    http10.alpn_protocols = vec![b"http/1.0".to_vec()];
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(http10))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.0"[..]));
    let mut c = Client {
        tls,
        buf: Vec::new(),
    };
    c.send("GET /agent/v1/whoami HTTP/1.0\r\n\r\n").await;
    assert_eq!(c.reply(false).await.status, 200);
    assert!(c.closed().await);

    // HTTP/1.0 with keep-alive persists, and says so (RFC 9112 §9.3).
    let mut c = connect(&s, true).await;
    c.send("GET /agent/v1/whoami HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let reply = c.reply(false).await;
    assert_eq!(reply.header("connection"), Some("keep-alive"));
    c.send(WHOAMI).await;
    assert_eq!(c.reply(false).await.status, 200);
}

#[tokio::test]
async fn head_is_answered_without_a_body() {
    let s = server().await;
    let mut c = connect(&s, true).await;
    // Were a body sent, the second response would not parse.
    c.send(&format!(
        "HEAD /agent/v1/whoami HTTP/1.1\r\nHost: localhost\r\n\r\n{WHOAMI}"
    ))
    .await;
    let head = c.reply(true).await;
    assert_eq!(head.status, 200, "{head:?}");
    let get = c.reply(false).await;
    assert_eq!(get.status, 200);
    assert!(!get.body.is_empty());
}

#[tokio::test]
async fn expect_100_continue_gets_a_100_before_the_body() {
    let s = server().await;
    let mut c = connect(&s, true).await;
    c.send(
        "POST /agent/v1/whoami HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    )
    .await;
    let interim = c.reply(true).await;
    assert_eq!(interim.status, 100);
    c.send("{}").await;
    problem(&c.reply(false).await, 405);
    c.send(WHOAMI).await;
    assert_eq!(c.reply(false).await.status, 200);
}

/// RFC 9112 §7.1: a chunked body is read whole, so the request after it
/// is served; a chunk that breaks the framing is a 400 that closes.
#[tokio::test]
async fn a_chunked_body_is_read_and_the_connection_goes_on() {
    let s = server().await;
    let mut c = connect(&s, true).await;
    c.send(
        "POST /agent/v1/whoami HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
         1\r\n{\r\n1;x=y\r\n}\r\n0\r\nX-T: 1\r\n\r\n",
    )
    .await;
    problem(&c.reply(false).await, 405);
    c.send(WHOAMI).await;
    assert_eq!(c.reply(false).await.status, 200);
    c.send(
        "POST /agent/v1/whoami HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
         2\r\n{}X\r\n",
    )
    .await;
    let reply = c.reply(false).await;
    problem(&reply, 400);
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(c.closed().await, "a broken chunk left the connection open");
}

#[tokio::test]
async fn framing_errors_are_problems_and_close_the_connection() {
    let s = server().await;
    let cases = [
        (
            "POST /agent/v1/whoami HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1, 2\r\n\r\n",
            400,
        ),
        (
            "POST /agent/v1/whoami HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\r\n",
            411,
        ),
        ("GET /agent/v1/whoami HTTP/1.1\r\n\r\n", 400),
        (
            "GET /agent/v1/whoami HTTP/1.1\r\nHost: localhost\r\nExpect: x\r\n\r\n",
            417,
        ),
        (
            "POST /agent/v1/whoami HTTP/1.1\r\nHost: localhost\r\nContent-Length: 999999999\r\n\r\n",
            413,
        ),
    ];
    for (raw, status) in cases {
        let mut c = connect(&s, true).await;
        c.send(raw).await;
        let reply = c.reply(false).await;
        problem(&reply, status);
        assert_eq!(reply.header("connection"), Some("close"), "{raw:?}");
        assert!(c.closed().await, "{raw:?} left the connection open");
    }
    // A body refused from its Content-Length is still being sent: the
    // client reads the 413 rather than a reset (lingering close).
    let mut c = connect(&s, true).await;
    let body = "x".repeat(4 * 1024 * 1024);
    c.send(&format!(
        "POST /agent/v1/discovered HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
        MAX_BODY + 1
    ))
    .await;
    problem(&c.reply(false).await, 413);
    let mut c = connect(&s, true).await;
    let long = "a".repeat(framing::MAX_HEAD);
    c.send(&format!(
        "GET /agent/v1/whoami HTTP/1.1\r\nHost: localhost\r\nX-Long: {long}\r\n\r\n"
    ))
    .await;
    problem(&c.reply(false).await, 431);
    assert!(c.closed().await);
}

/// The first poll's ETag, then a long poll with it (parked on the server).
async fn park(c: &mut Client, wait: u32) {
    c.send("GET /agent/v1/assignments HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    let first = c.reply(false).await;
    assert_eq!(first.status, 200, "{first:?}");
    let etag = first.header("etag").unwrap().to_owned();
    c.send(&format!(
        "GET /agent/v1/assignments?wait={wait} HTTP/1.1\r\nHost: localhost\r\nIf-None-Match: {etag}\r\n\r\n"
    ))
    .await;
}

#[tokio::test]
async fn a_parked_poll_answers_then_serves_the_request_pipelined_behind_it() {
    let s = server().await;
    let mut c = connect(&s, true).await;
    park(&mut c, 1).await;
    c.send(WHOAMI).await;
    let poll = c.reply(false).await;
    assert_eq!(poll.status, 304, "{poll:?}");
    assert!(poll.header("content-length").is_none());
    assert_eq!(c.reply(false).await.status, 200);
}

#[tokio::test]
async fn a_client_leaving_ends_its_parked_poll() {
    let s = server().await;
    let mut c = connect(&s, true).await;
    park(&mut c, 30).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(c);
    // The connection is gone at once (the drain has nothing to wait for),
    // not after the poll's 30 s.
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.close.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), s.done)
        .await
        .expect("the parked poll outlived its client")
        .unwrap();
}

#[tokio::test]
async fn the_drain_answers_the_parked_poll_then_closes() {
    let s = server().await;
    let mut idle = connect(&s, true).await;
    let mut c = connect(&s, true).await;
    park(&mut c, 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.close.send(true).unwrap();
    // The idle connection closes at once; the poll is answered, then closed.
    assert!(idle.closed().await);
    let reply = c.reply(false).await;
    assert_eq!(reply.status, 304);
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(c.closed().await);
    tokio::time::timeout(Duration::from_secs(5), s.done)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn without_a_certificate_the_poll_is_refused_with_a_problem() {
    let s = server().await;
    let mut c = connect(&s, false).await;
    c.send("GET /agent/v1/assignments HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    problem(&c.reply(false).await, 401);
}

#[tokio::test]
async fn a_parked_connection_stays_small() {
    // What a connection's task and its parked poll hold inline, for each
    // connected agent; their heap (the TLS session, the poll's state) is
    // measured by bench/memory.sh.
    let s = server().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = s.client.clone();
    tokio::spawn(async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let _tls = tokio_rustls::TlsConnector::from(client)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let (tcp, _) = listener.accept().await.unwrap();
    let f = &s._fixture;
    let issued = f
        .agents
        .issue_listener_certificate(
            &["localhost".to_owned()],
            90,
            time::OffsetDateTime::now_utc(),
        )
        .await
        .unwrap();
    let verifier =
        super::super::client_verifier(&f.agents.ca_certificates_der().await.unwrap()).unwrap();
    let config =
        super::super::server_config(verifier, issued.chain_der.clone(), &issued.key_pkcs8_der)
            .unwrap();
    let config = Arc::new(config);
    let tls = TlsConn::accept(tcp, config.clone()).await.unwrap();
    let ctx = Arc::new(ConnContext {
        app: f.ctx.app.clone(),
        info: f.ctx.info.clone(),
        identity: f.ctx.identity.clone(),
    });
    let poll = ctx.poll(
        Request::get("/agent/v1/assignments?wait=55")
            .body(Body::empty())
            .unwrap(),
    );
    let poll_size = std::mem::size_of_val(&poll);
    drop(poll);
    let tls_size = std::mem::size_of_val(&*tls);
    let task = serve(tls, ctx, tokio::sync::watch::channel(false).1);
    let task_size = std::mem::size_of_val(&task);
    // The task as the listener spawns it: the handshake before that loop.
    let (raw, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (_raw, (other, peer)) = (raw.unwrap(), accepted.unwrap());
    let conn = super::super::Connection {
        tls: config,
        app: f.ctx.app.clone(),
        close: tokio::sync::watch::channel(false).1,
        peer,
    };
    let run = conn.run(other, tokio::sync::mpsc::channel(1).0);
    let run_size = std::mem::size_of_val(&run);
    eprintln!(
        "TlsConn {tls_size} B, connection loop {task_size} B, whole task {run_size} B, poll future {poll_size} B"
    );
    // 3,784 and 2,896 B (debug build) before their arguments and the
    // futures they only need briefly went to the heap.
    assert!(task_size <= 1024, "connection loop {task_size} B");
    assert!(poll_size <= 1536, "poll future {poll_size} B");
    // The handshake's result once stayed inline in the task, moved out but
    // its slot kept: 3,216 B in a release build, 816 of them the loop. Now
    // the rest is the handshake's timer and the connection's few values
    // (280 B in a debug build); a `TlsConn` inline would add 1,216.
    assert!(
        run_size <= task_size + 512,
        "the whole task ({run_size} B) holds more than the loop ({task_size} B) and its context"
    );
}
