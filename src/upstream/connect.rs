//! One upstream session: TCP connect, StartupMessage, authentication with
//! whatever the server asks (trust, cleartext, md5, SCRAM-SHA-256), then the
//! server's ParameterStatus, BackendKeyData and ReadyForQuery, kept to be
//! relayed to the client. Every step is bounded in time: an upstream that
//! accepts and never answers fails the connection, not the session forever.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{Upstream, UpstreamTls};
use crate::tls::{self, Stream};
use crate::wire::{self, Frame, Reader, WireError};

/// The upstream's startup messages are small; this bounds them.
const MAX_STARTUP_MESSAGE: usize = 1 << 20;
/// How long a connection may take to be ready for queries (TCP, TLS,
/// authentication, startup), unless configured
/// (`pool.server_connect_timeout`); the catalog reader's is as long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an upstream session could not be had.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to the upstream database at {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("the upstream database at {0} was not ready for queries within {1:?}")]
    TimedOut(String, Duration),
    /// The server refused the session; its ErrorResponse is relayed as is.
    #[error("the upstream database refused the session")]
    Rejected(Bytes),
    #[error("the upstream database asks for a password and none is configured")]
    NoPassword,
    #[error(
        "the upstream database asks for an authentication method rowgate does not support ({0})"
    )]
    UnsupportedAuth(i32),
    #[error("upstream.tls is `require` but the upstream database does not offer TLS")]
    TlsRefused,
    #[error("upstream TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    #[error(transparent)]
    Wire(#[from] WireError),
}

impl From<std::io::Error> for UpstreamError {
    fn from(e: std::io::Error) -> Self {
        UpstreamError::Wire(WireError::Io(e))
    }
}

/// An authenticated upstream session, ready for queries.
pub struct Connected {
    pub stream: Stream,
    /// Bytes read past the startup messages.
    pub buffer: BytesMut,
    /// ParameterStatus and NoticeResponse messages, to relay to the client.
    pub startup_messages: Vec<Bytes>,
    /// The server's cancel key (process id, secret).
    pub key: Option<(i32, i32)>,
    /// The ReadyForQuery that ended startup.
    pub ready: Bytes,
}

/// Connects and authenticates as the configured upstream user, for
/// `database`, with extra startup `params` (client settings, pinned state),
/// within [`CONNECT_TIMEOUT`].
pub async fn connect(
    cfg: &Upstream,
    database: &str,
    params: &[(String, String)],
) -> Result<Connected, UpstreamError> {
    connect_within(cfg, database, params, CONNECT_TIMEOUT).await
}

/// As [`connect`], within `limit`.
pub async fn connect_within(
    cfg: &Upstream,
    database: &str,
    params: &[(String, String)],
    limit: Duration,
) -> Result<Connected, UpstreamError> {
    tokio::time::timeout(limit, connect_unbounded(cfg, database, params))
        .await
        .unwrap_or_else(|_| {
            let addr = format!("{}:{}", cfg.host, cfg.port);
            Err(UpstreamError::TimedOut(addr, limit))
        })
}

async fn connect_unbounded(
    cfg: &Upstream,
    database: &str,
    params: &[(String, String)],
) -> Result<Connected, UpstreamError> {
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let mut tcp = TcpStream::connect(&addr)
        .await
        .map_err(|e| UpstreamError::Connect(addr.clone(), e))?;
    tcp.set_nodelay(true)?;
    let mut stream = match cfg.tls {
        UpstreamTls::Disable => Stream::Plain(tcp),
        UpstreamTls::Prefer | UpstreamTls::Require => {
            let mut out = BytesMut::new();
            frontend::ssl_request(&mut out);
            tcp.write_all(&out).await?;
            match tcp.read_u8().await? {
                b'S' => {
                    let name = tls::server_name(&cfg.host)?;
                    let tls = tls::upstream_connector()
                        .connect(name, tcp)
                        .await
                        .map_err(UpstreamError::Tls)?;
                    Stream::Client(Box::new(tls))
                }
                b'N' if cfg.tls == UpstreamTls::Prefer => Stream::Plain(tcp),
                b'N' => return Err(UpstreamError::TlsRefused),
                other => {
                    return Err(UpstreamError::Protocol(format!(
                        "unexpected answer {:?} to SSLRequest",
                        other as char
                    )))
                }
            }
        }
    };

    let mut out = BytesMut::new();
    let mut startup: Vec<(&str, &str)> = vec![("user", &cfg.user), ("database", database)];
    startup.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    frontend::startup_message(startup.iter().copied(), &mut out)?;
    stream.write_all(&out).await?;

    let mut buf = BytesMut::with_capacity(8192);
    let mut scram: Option<ScramSha256> = None;
    let mut startup_messages = Vec::new();
    let mut key = None;
    loop {
        let frame = wire::read_frame(&mut stream, &mut buf, MAX_STARTUP_MESSAGE).await?;
        match frame.tag() {
            b'R' => authenticate(cfg, &frame, &mut scram, &mut stream).await?,
            b'S' | b'N' => startup_messages.push(frame.frame),
            b'K' => {
                let mut r = Reader::new(frame.body(), "BackendKeyData");
                key = Some((r.i32()?, r.i32()?));
            }
            b'Z' => {
                return Ok(Connected {
                    stream,
                    buffer: buf,
                    startup_messages,
                    key,
                    ready: frame.frame,
                })
            }
            b'E' => return Err(UpstreamError::Rejected(frame.frame)),
            // NegotiateProtocolVersion: the server speaks 3.0, as asked.
            b'v' => {}
            other => {
                return Err(UpstreamError::Protocol(format!(
                    "unexpected message {:?} during startup",
                    other as char
                )))
            }
        }
    }
}

async fn authenticate(
    cfg: &Upstream,
    frame: &Frame,
    scram: &mut Option<ScramSha256>,
    stream: &mut Stream,
) -> Result<(), UpstreamError> {
    let mut r = Reader::new(frame.body(), "Authentication");
    let code = r.i32()?;
    let password = || cfg.password.as_deref().ok_or(UpstreamError::NoPassword);
    let mut out = BytesMut::new();
    match code {
        0 => return Ok(()),
        3 => frontend::password_message(password()?.as_bytes(), &mut out)?,
        5 => {
            let salt = r.take(4)?;
            let hash = postgres_protocol::authentication::md5_hash(
                cfg.user.as_bytes(),
                password()?.as_bytes(),
                [salt[0], salt[1], salt[2], salt[3]],
            );
            frontend::password_message(hash.as_bytes(), &mut out)?;
        }
        10 => {
            let mut mechanisms = Vec::new();
            loop {
                let m = r.cstr()?;
                if m.is_empty() {
                    break;
                }
                mechanisms.push(m);
            }
            if !mechanisms.contains(&"SCRAM-SHA-256") {
                return Err(UpstreamError::UnsupportedAuth(code));
            }
            let s = ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
            frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut out)?;
            *scram = Some(s);
        }
        11 => {
            let s = scram
                .as_mut()
                .ok_or_else(|| UpstreamError::Protocol("SASL out of order".into()))?;
            s.update(r.rest())
                .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
            frontend::sasl_response(s.message(), &mut out)?;
        }
        12 => {
            let s = scram
                .as_mut()
                .ok_or_else(|| UpstreamError::Protocol("SASL out of order".into()))?;
            s.finish(r.rest())
                .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
            return Ok(());
        }
        other => return Err(UpstreamError::UnsupportedAuth(other)),
    }
    stream.write_all(&out).await?;
    Ok(())
}

/// Forwards a cancel for the upstream session `key` at `cfg`, within a
/// few seconds.
pub async fn cancel(cfg: &Upstream, key: (i32, i32)) -> std::io::Result<()> {
    let connect = TcpStream::connect((cfg.host.as_str(), cfg.port));
    let stream = tokio::time::timeout(CANCEL_TIMEOUT, connect)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    send_cancel(stream, key).await
}

/// How long a cancel request's connection may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends a CancelRequest to `address` (`host:port`: another rowgate
/// instance), within a few seconds.
pub async fn cancel_at(address: &str, key: (i32, i32)) -> std::io::Result<()> {
    let connect = TcpStream::connect(address);
    let stream = tokio::time::timeout(CANCEL_TIMEOUT, connect)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    send_cancel(stream, key).await
}

async fn send_cancel(mut stream: TcpStream, key: (i32, i32)) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    frontend::cancel_request(key.0, key.1, &mut out);
    stream.write_all(&out).await?;
    // PostgreSQL closes the connection once it has the request.
    let mut sink = [0u8; 1];
    let _ = tokio::time::timeout(
        CANCEL_TIMEOUT,
        tokio::io::AsyncReadExt::read(&mut stream, &mut sink),
    )
    .await;
    Ok(())
}
