//! The first messages of a client connection: SSLRequest and GSSENCRequest
//! (answered `N` without TLS), CancelRequest, and the StartupMessage with
//! its parameters and protocol version.

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use crate::tls::Stream;
use crate::wire::{self, Reader, WireError};

/// What a new connection asked for.
pub enum First {
    Startup(Startup),
    Cancel { pid: i32, secret: i32 },
}

/// A StartupMessage.
#[derive(Debug)]
pub struct Startup {
    pub user: String,
    pub database: String,
    /// Every other parameter, in the order sent.
    pub params: Vec<(String, String)>,
    /// The protocol minor version the client asked for.
    pub minor: i32,
}

/// Why startup failed; each carries the SQLSTATE and message to send.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("unsupported frontend protocol {0}.{1}: server supports 3.0")]
    Protocol(i32, i32),
    #[error("no PostgreSQL user name specified in startup packet")]
    NoUser,
    #[error("invalid startup packet: {0}")]
    Invalid(String),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// Reads the connection's first message(s). An SSLRequest is answered `S`
/// and the connection switched to TLS when `tls` is given, `N` otherwise; a
/// GSSENCRequest is answered `N`.
pub async fn negotiate(
    stream: &mut Stream,
    buf: &mut BytesMut,
    tls: Option<&tokio_rustls::TlsAcceptor>,
) -> Result<First, StartupError> {
    let mut ssl_answered = false;
    let mut gss_answered = false;
    loop {
        let (code, body) = wire::read_startup(stream, buf).await?;
        match code {
            wire::SSL_REQUEST | wire::GSSENC_REQUEST => {
                let answered = if code == wire::SSL_REQUEST {
                    &mut ssl_answered
                } else {
                    &mut gss_answered
                };
                if *answered || stream.is_tls() {
                    return Err(StartupError::Invalid("repeated encryption request".into()));
                }
                *answered = true;
                // Bytes sent before our answer would be a man-in-the-middle's.
                if !buf.is_empty() {
                    return Err(StartupError::Invalid(
                        "data after an encryption request".into(),
                    ));
                }
                match tls.filter(|_| code == wire::SSL_REQUEST) {
                    Some(acceptor) => {
                        stream.write_all(b"S").await.map_err(WireError::from)?;
                        let Stream::Plain(tcp) = std::mem::replace(stream, Stream::Closed) else {
                            return Err(StartupError::Invalid(
                                "repeated encryption request".into(),
                            ));
                        };
                        let tls = acceptor.accept(tcp).await.map_err(StartupError::Tls)?;
                        *stream = Stream::Server(Box::new(tls));
                    }
                    None => stream.write_all(b"N").await.map_err(WireError::from)?,
                }
            }
            wire::CANCEL_REQUEST => {
                let (pid, secret) = super::messages::cancel(&body)?;
                return Ok(First::Cancel { pid, secret });
            }
            code if code >> 16 == 3 => {
                return parse_startup(&body, code & 0xffff).map(First::Startup)
            }
            code => return Err(StartupError::Protocol(code >> 16, code & 0xffff)),
        }
    }
}

/// Decodes a StartupMessage body (after the length and version).
pub fn parse_startup(body: &[u8], minor: i32) -> Result<Startup, StartupError> {
    let mut r = Reader::new(body, "StartupMessage");
    let mut user = None;
    let mut database = None;
    let mut params = Vec::new();
    loop {
        let key = r.cstr()?;
        if key.is_empty() {
            break;
        }
        let value = r.cstr()?.to_string();
        match key {
            "user" => user = Some(value),
            "database" => database = Some(value),
            _ => params.push((key.to_string(), value)),
        }
    }
    if !r.is_empty() {
        return Err(StartupError::Invalid(
            "data after the parameter list".into(),
        ));
    }
    let user = user.filter(|u| !u.is_empty()).ok_or(StartupError::NoUser)?;
    let database = database
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    Ok(Startup {
        user,
        database,
        params,
        minor,
    })
}

/// Startup parameters members and analysts may pass on: the client's
/// identity and the settings they may SET (a `search_path` only when it
/// finds what the pinned one finds). Everything else (`replication`,
/// `role`, ...) is refused, as its SET would be.
pub fn allowed_param(name: &str) -> bool {
    let folded = name.to_ascii_lowercase();
    folded == "application_name" || crate::rewrite::SETTABLE.contains(&folded.as_str())
}

/// The settings of an `options` startup parameter, as PostgreSQL reads it:
/// words separated by spaces (a backslash takes the next character
/// literally), each `-c name=value`, `-cname=value` or `--name=value`
/// (dashes in names read as underscores). Any other switch is refused.
pub fn options(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_ascii_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let refuse = |w: &str| {
        format!("permission denied to use the startup option \"{w}\" through rowgate (options)")
    };
    let mut out = Vec::new();
    let mut words = words.into_iter();
    while let Some(w) = words.next() {
        let setting = if w == "-c" {
            words.next().ok_or_else(|| refuse(&w))?
        } else if let Some(rest) = w.strip_prefix("--").or_else(|| w.strip_prefix("-c")) {
            rest.to_string()
        } else {
            return Err(refuse(&w));
        };
        let (name, value) = setting.split_once('=').ok_or_else(|| refuse(&setting))?;
        out.push((name.replace('-', "_"), value.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod options_tests {
    use super::options;

    #[test]
    fn options_are_read_as_postgresql_reads_them() {
        assert_eq!(
            options("-c search_path=public  -cjit=off --lock-timeout=5s").unwrap(),
            vec![
                ("search_path".to_string(), "public".to_string()),
                ("jit".to_string(), "off".to_string()),
                ("lock_timeout".to_string(), "5s".to_string()),
            ]
        );
        assert_eq!(
            options(r"-c application_name=a\ b").unwrap(),
            vec![("application_name".to_string(), "a b".to_string())]
        );
        assert!(options("-d 5").is_err());
        assert!(options("-c").is_err());
        assert!(options("-c novalue").is_err());
        assert_eq!(options("").unwrap(), vec![]);
    }
}
