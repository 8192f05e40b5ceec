//! Framing of PostgreSQL protocol v3 messages: `(tag, length, body)` after
//! startup, `(length, code, body)` during it. Messages are read into one
//! buffer and handed on as bytes; only the few messages the proxy must read
//! are decoded, by the modules that need them.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Protocol codes carried by the first, untagged message of a connection.
pub const PROTOCOL_3: i32 = 196_608;
pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;

/// The largest startup packet accepted (PostgreSQL's own limit).
pub const MAX_STARTUP_LEN: usize = 10_000;

/// What can go wrong reading a message.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed")]
    Closed,
    #[error("connection closed in the middle of a message")]
    Truncated,
    #[error("invalid message length {0}")]
    BadLength(i64),
    #[error("message of {0} bytes exceeds the limit of {1} bytes")]
    TooLarge(usize, usize),
    #[error("malformed {0} message")]
    Malformed(&'static str),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// One tagged message: `frame` holds the whole message, tag and length
/// included, ready to be written on unchanged.
#[derive(Clone, Debug)]
pub struct Frame {
    pub frame: Bytes,
}

impl Frame {
    pub fn tag(&self) -> u8 {
        self.frame[0]
    }

    /// The message body, after the tag and the length.
    pub fn body(&self) -> &[u8] {
        &self.frame[5..]
    }
}

/// If `buf` starts with a complete tagged message, splits it off.
pub fn try_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, WireError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(WireError::BadLength(len.into()));
    }
    let len = len as usize;
    if len > max_len {
        return Err(WireError::TooLarge(len, max_len));
    }
    if buf.len() < len + 1 {
        buf.reserve(len + 1 - buf.len());
        return Ok(None);
    }
    Ok(Some(Frame {
        frame: buf.split_to(len + 1).freeze(),
    }))
}

/// Reads one tagged message, waiting for more bytes as needed.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<Frame, WireError> {
    loop {
        if let Some(frame) = try_frame(buf, max_len)? {
            return Ok(frame);
        }
        fill(r, buf).await?;
    }
}

/// Reads more bytes into `buf`; end of stream is `Closed` between messages
/// and `Truncated` inside one.
pub async fn fill<R: AsyncRead + Unpin>(r: &mut R, buf: &mut BytesMut) -> Result<(), WireError> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(8192);
    }
    if r.read_buf(buf).await? == 0 {
        return Err(if buf.is_empty() {
            WireError::Closed
        } else {
            WireError::Truncated
        });
    }
    Ok(())
}

/// Reads the untagged first message: `(code, body)`.
pub async fn read_startup<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
) -> Result<(i32, Bytes), WireError> {
    loop {
        if buf.len() >= 8 {
            let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
            if !(8..=MAX_STARTUP_LEN as i32).contains(&len) {
                return Err(WireError::BadLength(len.into()));
            }
            let len = len as usize;
            if buf.len() >= len {
                let mut msg = buf.split_to(len);
                msg.advance(4);
                let code = msg.get_i32();
                return Ok((code, msg.freeze()));
            }
        }
        fill(r, buf).await?;
    }
}

/// A cursor over a message body for the few messages the proxy decodes.
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }

    fn malformed(&self) -> WireError {
        WireError::Malformed(self.what)
    }

    /// A NUL-terminated string, which must be UTF-8.
    pub fn cstr(&mut self) -> Result<&'a str, WireError> {
        let bytes = self.cstr_bytes()?;
        std::str::from_utf8(bytes).map_err(|_| self.malformed())
    }

    /// A NUL-terminated string's bytes.
    pub fn cstr_bytes(&mut self) -> Result<&'a [u8], WireError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.malformed())?;
        let s = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    pub fn i16(&mut self) -> Result<i16, WireError> {
        let bytes = self.take(2)?;
        Ok(i16::from_be_bytes([bytes[0], bytes[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, WireError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(self.malformed());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Writes a tagged message whose body `body` fills in.
pub fn put_message(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    body(out);
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn put_cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

/// The fields of an ErrorResponse or NoticeResponse body, in order (a
/// value that is not UTF-8 is read lossily).
pub fn error_fields(body: &[u8]) -> Vec<(u8, String)> {
    body.split(|&b| b == 0)
        .filter_map(|f| f.split_first())
        .map(|(code, value)| (*code, String::from_utf8_lossy(value).into_owned()))
        .collect()
}

/// An ErrorResponse carrying `fields` in order.
pub fn error_from_fields(fields: &[(u8, String)]) -> Bytes {
    let mut out = BytesMut::new();
    put_message(&mut out, b'E', |b| {
        for (code, value) in fields {
            b.put_u8(*code);
            put_cstr(b, value);
        }
        b.put_u8(0);
    });
    out.freeze()
}

/// An ErrorResponse with the fields PostgreSQL always sends.
pub fn error_response(severity: &str, code: &str, message: &str) -> Bytes {
    let mut out = BytesMut::new();
    put_message(&mut out, b'E', |b| {
        for (field, value) in [
            (b'S', severity),
            (b'V', severity),
            (b'C', code),
            (b'M', message),
        ] {
            b.put_u8(field);
            put_cstr(b, value);
        }
        b.put_u8(0);
    });
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_at_message_boundaries() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x09abcd\0Z\0\0\0\x05I"[..]);
        let f = try_frame(&mut buf, 100).unwrap().unwrap();
        assert_eq!(f.tag(), b'Q');
        assert_eq!(f.body(), b"abcd\0");
        let z = try_frame(&mut buf, 100).unwrap().unwrap();
        assert_eq!(z.body(), b"I");
        assert!(try_frame(&mut buf, 100).unwrap().is_none());
    }

    #[test]
    fn bad_and_oversized_lengths() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x02"[..]);
        assert!(matches!(
            try_frame(&mut buf, 100),
            Err(WireError::BadLength(2))
        ));
        let mut buf = BytesMut::from(&b"Q\x7f\0\0\0"[..]);
        assert!(matches!(
            try_frame(&mut buf, 100),
            Err(WireError::TooLarge(_, 100))
        ));
        let mut buf = BytesMut::from(&b"Q\0\0\0\x09ab"[..]);
        assert!(try_frame(&mut buf, 100).unwrap().is_none());
    }

    #[test]
    fn error_response_shape() {
        let e = error_response("ERROR", "42501", "no");
        assert_eq!(&e[..], b"E\0\0\0\x1eSERROR\0VERROR\0C42501\0Mno\0\0");
    }
}
