//! TLS of the agent listener on rustls' unbuffered API.
//!
//! Why not tokio-rustls: its `ServerConnection` keeps a 4 KB record buffer
//! (and a few smaller ones) for the whole life of a connection, and at
//! 10,000 connected agents, each with a long poll parked most of the time,
//! an idle kept-alive connection measured ≈ 10.7 KB against ≈ 5.7 KB on the
//! unbuffered API (BENCHMARKS.md, goal 6). Here the buffers are ours: a
//! ciphertext buffer that exists only while records are arriving, the
//! decrypted bytes until the HTTP layer took them, and the bytes to send
//! until they are written. A connection waiting for its next request holds
//! none of them.

use std::io;
use std::sync::Arc;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

/// How much is read from the socket at a time (unless a record is longer).
const READ_CHUNK: usize = 4096;
/// Largest TLS record on the wire: header, 2^14 bytes of plaintext and the
/// expansion RFC 8446 §5.2 allows.
const MAX_RECORD: usize = 5 + (1 << 14) + 256;
/// Plaintext per record written.
const WRITE_CHUNK: usize = 1 << 14;
/// Room for a record's header, content type and AEAD tag.
const RECORD_OVERHEAD: usize = 64;

/// A server-side TLS connection over TCP.
pub struct TlsConn {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// Ciphertext read and not yet processed (the start of a record);
    /// empty and unallocated otherwise.
    incoming: Vec<u8>,
    /// Plaintext decrypted and not yet taken by [`TlsConn::consume`].
    plain: Vec<u8>,
    /// TLS bytes to send, from `sent` on: kept across a cancelled write so
    /// the stream never loses a record.
    outgoing: Vec<u8>,
    sent: usize,
    /// The peer sent close_notify or closed its side of the socket.
    read_closed: bool,
}

/// What one pass of rustls' state machine did.
enum Step {
    /// Made progress (decrypted, encoded, encrypted): call again.
    Progress,
    /// Needs more bytes from the peer (handshake or a partial record).
    NeedData,
    /// Handshake done and nothing to do without new input.
    Idle,
    /// The peer closed the TLS session.
    Closed,
}

/// What to hand rustls once it can take application data.
#[derive(Clone, Copy)]
enum Send<'a> {
    Nothing,
    Data(&'a [u8]),
    CloseNotify,
}

fn tls_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl TlsConn {
    /// Completes the handshake on `tcp` (the caller bounds its time).
    /// Boxed from the start: rustls' state is most of this struct's 2 KB,
    /// and a future that held it inline, even moved out, would keep that
    /// slot for the connection's whole life.
    pub async fn accept(
        tcp: TcpStream,
        config: Arc<rustls::ServerConfig>,
    ) -> io::Result<Box<Self>> {
        let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        let mut me = Box::new(Self {
            tcp,
            conn,
            incoming: Vec::new(),
            plain: Vec::new(),
            outgoing: Vec::new(),
            sent: 0,
            read_closed: false,
        });
        loop {
            match me.process(Send::Nothing)? {
                Step::Progress => {}
                Step::Idle if !me.conn.is_handshaking() => {
                    me.flush().await?;
                    return Ok(me);
                }
                Step::Idle | Step::NeedData => {
                    me.flush().await?;
                    if me.read_some().await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                Step::Closed => return Err(io::ErrorKind::UnexpectedEof.into()),
            }
        }
    }

    /// The client's certificate chain, if it sent one (rustls verified it).
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// Plaintext received and not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.plain
    }

    /// Drops the first `n` bytes of [`TlsConn::buffered`]; the buffer's
    /// memory goes once it is empty.
    pub fn consume(&mut self, n: usize) {
        if n >= self.plain.len() {
            self.plain = Vec::new();
        } else {
            self.plain.drain(..n);
        }
    }

    /// Whether the peer closed its side (no more plaintext will come).
    pub fn read_closed(&self) -> bool {
        self.read_closed
    }

    /// Waits for more plaintext: true once some was added to
    /// [`TlsConn::buffered`], false when the peer closed. Cancel-safe, and
    /// holds no buffer while it waits for the socket.
    pub async fn fill(&mut self) -> io::Result<bool> {
        let before = self.plain.len();
        loop {
            match self.process(Send::Nothing)? {
                Step::Progress => continue,
                Step::Closed => return Ok(self.plain.len() > before),
                Step::Idle | Step::NeedData => {}
            }
            if self.plain.len() > before {
                return Ok(true);
            }
            self.flush().await?;
            if self.read_closed || self.read_some().await? == 0 {
                return Ok(false);
            }
        }
    }

    /// Encrypts and sends `data`.
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        for chunk in data.chunks(WRITE_CHUNK) {
            self.send(Send::Data(chunk)).await?;
        }
        self.flush().await
    }

    /// Sends close_notify and shuts the socket's write side (best effort).
    pub async fn shutdown(&mut self) {
        if self.send(Send::CloseNotify).await.is_ok() && self.flush().await.is_ok() {
            let _ = self.tcp.shutdown().await;
        }
    }

    /// Closes our side, then reads and drops what the client still sends
    /// (a body we refused before reading it) until it closes or `bound`
    /// passes: closing at once could reset the connection before the client
    /// read our answer (RFC 9112 §9.6, lingering close).
    pub async fn linger(&mut self, bound: std::time::Duration) {
        self.shutdown().await;
        let deadline = tokio::time::Instant::now() + bound;
        while let Ok(Ok(true)) = tokio::time::timeout_at(deadline, self.fill()).await {
            self.plain = Vec::new();
        }
    }

    /// Runs rustls until it took `what` (encrypted into `outgoing`).
    async fn send(&mut self, what: Send<'_>) -> io::Result<()> {
        loop {
            match self.process(what)? {
                Step::Idle => return Ok(()),
                Step::Progress => {}
                Step::Closed => {
                    // The peer's close_notify: our side may still write.
                    if matches!(what, Send::Nothing) {
                        return Ok(());
                    }
                }
                Step::NeedData => {
                    // Only during a handshake, which `accept` completed.
                    return Err(tls_error("TLS wants data before it can send"));
                }
            }
        }
    }

    /// One call of rustls' state machine over the ciphertext received so
    /// far; `what` is encrypted once it can take application data (and is
    /// then reported as `Idle`).
    fn process(&mut self, what: Send<'_>) -> io::Result<Step> {
        let status = self.conn.process_tls_records(&mut self.incoming);
        let mut discard = status.discard;
        let step = match status.state.map_err(tls_error)? {
            ConnectionState::ReadTraffic(mut records) => {
                while let Some(record) = records.next_record() {
                    let record = record.map_err(tls_error)?;
                    discard += record.discard;
                    self.plain.extend_from_slice(record.payload);
                }
                Step::Progress
            }
            ConnectionState::EncodeTlsData(mut encode) => {
                let start = self.outgoing.len();
                self.outgoing.resize(start + 1024, 0);
                let n = match encode.encode(&mut self.outgoing[start..]) {
                    Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                        self.outgoing.resize(start + required_size, 0);
                        encode.encode(&mut self.outgoing[start..])
                    }
                    other => other,
                }
                .map_err(tls_error)?;
                self.outgoing.truncate(start + n);
                Step::Progress
            }
            ConnectionState::TransmitTlsData(transmit) => {
                // The bytes are in `outgoing`, written before any wait.
                transmit.done();
                Step::Progress
            }
            ConnectionState::BlockedHandshake => Step::NeedData,
            ConnectionState::WriteTraffic(mut traffic) => {
                let start = self.outgoing.len();
                let wrote = match what {
                    Send::Nothing => None,
                    Send::Data(data) => {
                        self.outgoing
                            .resize(start + data.len() + RECORD_OVERHEAD, 0);
                        Some(match traffic.encrypt(data, &mut self.outgoing[start..]) {
                            Err(EncryptError::InsufficientSize(InsufficientSizeError {
                                required_size,
                            })) => {
                                self.outgoing.resize(start + required_size, 0);
                                traffic.encrypt(data, &mut self.outgoing[start..])
                            }
                            other => other,
                        })
                    }
                    Send::CloseNotify => {
                        self.outgoing.resize(start + RECORD_OVERHEAD, 0);
                        Some(traffic.queue_close_notify(&mut self.outgoing[start..]))
                    }
                };
                match wrote {
                    Some(n) => {
                        let n = n.map_err(tls_error)?;
                        self.outgoing.truncate(start + n);
                    }
                    None if self.incoming.len() > discard => {
                        // A partial record: more bytes to come.
                        self.release_incoming(discard);
                        return Ok(Step::NeedData);
                    }
                    None => {}
                }
                Step::Idle
            }
            ConnectionState::PeerClosed | ConnectionState::Closed => {
                self.read_closed = true;
                Step::Closed
            }
            // No early data is accepted (max_early_data_size is 0), and a
            // state added by a later rustls is not one this loop knows.
            _ => return Err(tls_error("unexpected TLS state")),
        };
        self.release_incoming(discard);
        Ok(step)
    }

    /// Drops `n` processed bytes of ciphertext; the buffer goes once empty.
    fn release_incoming(&mut self, n: usize) {
        if n >= self.incoming.len() {
            self.incoming = Vec::new();
        } else if n > 0 {
            self.incoming.drain(..n);
        }
    }

    /// Writes what `outgoing` holds; cancel-safe (progress is kept).
    async fn flush(&mut self) -> io::Result<()> {
        while self.sent < self.outgoing.len() {
            let n = self.tcp.write(&self.outgoing[self.sent..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.sent += n;
        }
        self.outgoing = Vec::new();
        self.sent = 0;
        Ok(())
    }

    /// Reads what the socket has into `incoming`: at least the rest of a
    /// started record if that is longer than [`READ_CHUNK`]. 0 at the
    /// end of the stream. Cancel-safe: nothing changes before the socket
    /// is readable, and no buffer is held while waiting.
    async fn read_some(&mut self) -> io::Result<usize> {
        loop {
            self.tcp.readable().await?;
            let start = self.incoming.len();
            let record = match self.incoming.get(3..5) {
                Some(len) => 5 + usize::from(u16::from_be_bytes([len[0], len[1]])),
                None => 0,
            };
            let want = record
                .saturating_sub(start)
                .clamp(READ_CHUNK, MAX_RECORD + READ_CHUNK);
            self.incoming.resize(start + want, 0);
            match self.tcp.try_read(&mut self.incoming[start..]) {
                Ok(n) => {
                    self.incoming.truncate(start + n);
                    if n == 0 {
                        self.read_closed = true;
                    }
                    if self.incoming.is_empty() {
                        self.incoming = Vec::new();
                    }
                    return Ok(n);
                }
                Err(e) => {
                    self.incoming.truncate(start);
                    if self.incoming.is_empty() {
                        self.incoming = Vec::new();
                    }
                    if e.kind() != io::ErrorKind::WouldBlock {
                        return Err(e);
                    }
                }
            }
        }
    }
}
