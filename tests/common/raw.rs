//! A raw protocol client, for tests that look at every message: it sends
//! bytes as given, reads backend messages one at a time, and keeps every
//! byte it receives.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;

/// How long one protocol read may wait before it fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// A backend message: tag and body.
#[derive(Debug)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    /// A field of an ErrorResponse or NoticeResponse.
    pub fn field(&self, code: u8) -> Option<String> {
        let mut rest = &self.body[..];
        while let Some((&c, tail)) = rest.split_first() {
            if c == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0)?;
            if c == code {
                return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
            }
            rest = &tail[end + 1..];
        }
        None
    }

    /// The columns of a DataRow, as text.
    pub fn columns(&self) -> Vec<Option<String>> {
        let b = &self.body;
        let n = i16::from_be_bytes([b[0], b[1]]) as usize;
        let mut at = 2;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let len = i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            at += 4;
            if len < 0 {
                out.push(None);
            } else {
                let end = at + len as usize;
                out.push(Some(String::from_utf8_lossy(&b[at..end]).into_owned()));
                at = end;
            }
        }
        out
    }
}

/// A minimal protocol client over TCP to 127.0.0.1.
pub struct Client {
    pub stream: TcpStream,
    /// Every byte of every message read so far.
    pub received: Vec<u8>,
    /// The transaction status of the last ReadyForQuery.
    pub status: u8,
}

impl Client {
    pub fn connect(port: u16) -> Result<Client, String> {
        let stream =
            TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .map_err(|e| e.to_string())?;
        Ok(Client {
            stream,
            received: Vec::new(),
            status: b'I',
        })
    }

    pub fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .map_err(|e| format!("send: {e}"))
    }

    /// The next message; an error when the connection ends or the read
    /// times out.
    pub fn read(&mut self) -> Result<Msg, String> {
        let mut head = [0u8; 5];
        self.stream
            .read_exact(&mut head)
            .map_err(|e| format!("no answer from the server ({e})"))?;
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        if len < 4 {
            return Err(format!("bad message length {len}"));
        }
        let mut body = vec![0u8; len as usize - 4];
        self.stream
            .read_exact(&mut body)
            .map_err(|e| format!("truncated message ({e})"))?;
        self.received.extend_from_slice(&head);
        self.received.extend_from_slice(&body);
        Ok(Msg { tag: head[0], body })
    }

    /// Messages up to and including the next ReadyForQuery. A COPY FROM
    /// that reaches the server is failed at once, so that nothing waits.
    pub fn until_ready(&mut self) -> Result<Vec<Msg>, String> {
        self.read_until(b"Z", |client, m| {
            if m.tag != b'G' {
                return Ok(());
            }
            let mut buf = BytesMut::new();
            frontend::copy_fail("the test client sends no COPY data", &mut buf)
                .map_err(|e| e.to_string())?;
            client.send(&buf)
        })
    }

    /// Sends a StartupMessage with the `extra` parameters and authenticates,
    /// with SCRAM-SHA-256 when the server asks for it. Returns every message
    /// of the startup up to ReadyForQuery, or up to the ErrorResponse when
    /// the server refuses the session.
    pub fn login(
        &mut self,
        user: &str,
        database: &str,
        password: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Result<Vec<Msg>, String> {
        let mut buf = BytesMut::new();
        let mut params = vec![("user", user), ("database", database)];
        params.extend_from_slice(extra);
        frontend::startup_message(params, &mut buf).map_err(|e| e.to_string())?;
        self.send(&buf)?;
        let mut scram = None;
        self.read_until(b"EZ", |client, m| match m.tag {
            b'R' => client.answer_authentication(m, password, &mut scram),
            _ => Ok(()),
        })
    }

    /// Answers an authentication request: nothing to do, or the next step of
    /// SCRAM-SHA-256.
    fn answer_authentication(
        &mut self,
        m: &Msg,
        password: Option<&str>,
        scram: &mut Option<ScramSha256>,
    ) -> Result<(), String> {
        let code = i32::from_be_bytes([m.body[0], m.body[1], m.body[2], m.body[3]]);
        let mut buf = BytesMut::new();
        match code {
            0 => Ok(()),
            3 => {
                // A cleartext password: a signed token.
                let password = password.ok_or("a password was asked for")?;
                frontend::password_message(password.as_bytes(), &mut buf)
                    .map_err(|e| e.to_string())?;
                self.send(&buf)
            }
            10 => {
                let password = password.ok_or("a password was asked for")?;
                let s = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut buf)
                    .map_err(|e| e.to_string())?;
                *scram = Some(s);
                self.send(&buf)
            }
            11 => {
                let s = scram.as_mut().ok_or("SASL continue before SASL")?;
                s.update(&m.body[4..]).map_err(|e| e.to_string())?;
                frontend::sasl_response(s.message(), &mut buf).map_err(|e| e.to_string())?;
                self.send(&buf)
            }
            12 => {
                let mut s = scram.take().ok_or("SASL final before SASL")?;
                s.finish(&m.body[4..]).map_err(|e| e.to_string())
            }
            other => Err(format!("unexpected authentication request {other}")),
        }
    }

    /// Messages up to and including the first with a tag in `last`, each
    /// shown to `answer` as it arrives. Notes the status of a ReadyForQuery.
    fn read_until(
        &mut self,
        last: &[u8],
        mut answer: impl FnMut(&mut Client, &Msg) -> Result<(), String>,
    ) -> Result<Vec<Msg>, String> {
        let mut out = Vec::new();
        loop {
            let m = self.read()?;
            answer(self, &m)?;
            if m.tag == b'Z' {
                self.status = m.body.first().copied().unwrap_or(b'I');
            }
            let done = last.contains(&m.tag);
            out.push(m);
            if done {
                return Ok(out);
            }
        }
    }

    /// One Query message; the messages up to ReadyForQuery.
    pub fn query(&mut self, sql: &str) -> Result<Vec<Msg>, String> {
        let mut buf = BytesMut::new();
        frontend::query(sql, &mut buf).map_err(|e| e.to_string())?;
        self.send(&buf)?;
        self.until_ready()
    }

    /// An Execute of a portal that does not exist, then a Parse and a Close
    /// of the unnamed statement, which PostgreSQL skips after the error,
    /// and a Sync: the messages up to ReadyForQuery.
    #[allow(dead_code)]
    pub fn skipped_unnamed_parse(&mut self) -> Result<Vec<Msg>, String> {
        let mut buf = BytesMut::new();
        frontend::execute("no_such_portal", 0, &mut buf).map_err(|e| e.to_string())?;
        frontend::parse("", "SELECT 'skipped'", [], &mut buf).map_err(|e| e.to_string())?;
        frontend::close(b'S', "", &mut buf).map_err(|e| e.to_string())?;
        frontend::sync(&mut buf);
        self.send(&buf)?;
        self.until_ready()
    }

    /// A simple-query `COPY ... FROM STDIN` with `data`: the messages up to
    /// ReadyForQuery (the data is sent when the server asks for it).
    #[allow(dead_code)]
    pub fn copy_in(&mut self, sql: &str, data: &[u8]) -> Result<Vec<Msg>, String> {
        let mut buf = BytesMut::new();
        frontend::query(sql, &mut buf).map_err(|e| e.to_string())?;
        self.send(&buf)?;
        self.read_until(b"Z", |client, m| {
            if m.tag != b'G' {
                return Ok(());
            }
            let mut buf = BytesMut::new();
            frontend::CopyData::new(data)
                .map_err(|e| e.to_string())?
                .write(&mut buf);
            frontend::copy_done(&mut buf);
            client.send(&buf)
        })
    }

    /// Sends Terminate; the connection may already be gone.
    pub fn terminate(&mut self) {
        let mut buf = BytesMut::new();
        frontend::terminate(&mut buf);
        let _ = self.send(&buf);
    }
}
