//! The client messages the proxy reads (the rest pass on as bytes): one
//! decoder per message, pure functions over a message body, so that the
//! fuzz target exercises exactly what the proxy runs.

use crate::wire::{Reader, WireError};

/// The text of a Query message; `Ok(Err(()))` when it is not UTF-8.
pub fn query(body: &[u8]) -> Result<Result<&str, ()>, WireError> {
    let mut r = Reader::new(body, "Query");
    let text = r.cstr_bytes()?;
    Ok(std::str::from_utf8(text).map_err(|_| ()))
}

/// The text of a PasswordMessage (a cleartext password: a signed token);
/// `None` when it is not one UTF-8 string ended by a NUL.
pub fn password(body: &[u8]) -> Option<String> {
    let mut r = Reader::new(body, "PasswordMessage");
    let text = r.cstr_bytes().ok()?;
    if !r.is_empty() {
        return None;
    }
    std::str::from_utf8(text).ok().map(str::to_string)
}

/// A Parse message.
#[derive(Debug)]
pub struct Parse<'a> {
    pub name: &'a str,
    /// The query text; `Err(())` when it is not UTF-8.
    pub query: Result<&'a str, ()>,
    /// The parameter count and type OIDs, as sent.
    pub types: &'a [u8],
}

pub fn parse(body: &[u8]) -> Result<Parse<'_>, WireError> {
    let mut r = Reader::new(body, "Parse");
    let name = r.cstr()?;
    let query = std::str::from_utf8(r.cstr_bytes()?).map_err(|_| ());
    let types = r.rest();
    let mut check = Reader::new(types, "Parse");
    let count = check.i16()?;
    if count < 0 || check.take(count as usize * 4).is_err() || !check.is_empty() {
        return Err(WireError::Malformed("Parse"));
    }
    Ok(Parse { name, query, types })
}

/// The parameter type OIDs of a Parse message's type list (as `parse`
/// returns it, already checked to be well formed); 0 for unspecified.
pub fn param_types(types: &[u8]) -> Vec<u32> {
    types
        .get(2..)
        .unwrap_or_default()
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A Bind message's portal and statement names, and the rest as sent.
pub fn bind(body: &[u8]) -> Result<(&str, &str, &[u8]), WireError> {
    let mut r = Reader::new(body, "Bind");
    let portal = r.cstr()?;
    let statement = r.cstr()?;
    Ok((portal, statement, r.rest()))
}

/// A Describe or Close message: `S` (statement) or `P` (portal), and the
/// name.
pub fn target(body: &[u8]) -> Result<(u8, &str), WireError> {
    let mut r = Reader::new(body, "Describe/Close");
    let kind = r.take(1)?[0];
    let name = r.cstr()?;
    if !r.is_empty() {
        return Err(WireError::Malformed("Describe/Close"));
    }
    Ok((kind, name))
}

/// A SASLInitialResponse: the mechanism and the client's first message.
pub fn sasl_initial(body: &[u8]) -> Result<(&str, &[u8]), WireError> {
    let mut r = Reader::new(body, "SASLInitialResponse");
    let mechanism = r.cstr()?;
    let len = r.i32()?;
    let data = if len < 0 {
        &[][..]
    } else {
        r.take(len as usize)?
    };
    Ok((mechanism, data))
}

/// A CancelRequest's key.
pub fn cancel(body: &[u8]) -> Result<(i32, i32), WireError> {
    let mut r = Reader::new(body, "CancelRequest");
    Ok((r.i32()?, r.i32()?))
}

/// The portal an Execute message names.
pub fn execute_portal(body: &[u8]) -> Result<&str, WireError> {
    let mut r = Reader::new(body, "Execute");
    r.cstr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoders_reject_malformed_bodies() {
        assert_eq!(query(b"SELECT 1\0").unwrap(), Ok("SELECT 1"));
        assert_eq!(query(b"\xff\0").unwrap(), Err(()));
        assert!(query(b"no terminator").is_err());
        let p = parse(b"s1\0SELECT $1\0\0\x01\0\0\0\x17").unwrap();
        assert_eq!((p.name, p.query), ("s1", Ok("SELECT $1")));
        assert!(parse(b"s1\0SELECT $1\0\0\x02\0\0\0\x17").is_err());
        assert!(parse(b"s1\0SELECT\0\xff\xff").is_err());
        assert_eq!(
            sasl_initial(b"SCRAM-SHA-256\0\0\0\0\x02ab").unwrap(),
            ("SCRAM-SHA-256", &b"ab"[..])
        );
        assert!(sasl_initial(b"SCRAM-SHA-256\0\0\0\0\x09ab").is_err());
        assert!(cancel(b"\0\0\0\x01").is_err());
        assert_eq!(bind(b"p\0s\0\0\0").unwrap(), ("p", "s", &b"\0\0"[..]));
        assert!(bind(b"p\0s").is_err());
        assert_eq!(target(b"S\0").unwrap(), (b'S', ""));
        assert!(target(b"S").is_err());
        assert!(target(b"Pa\0b").is_err());
    }
}
