//! Messages a session composes to send upstream in a client's stead, and
//! the names of rowgate's own prepared statements.

use bytes::{BufMut, Bytes, BytesMut};

use crate::frontend::messages;
use crate::frontend::tags::frontend;
use crate::rewrite;
use crate::wire::{self, WireError};

/// The prefix of the names of automatic prepared statements.
const AUTO: &str = "rowgate_auto_";
/// A statement name under the reserved prefix that nothing ever prepares.
pub(super) const NO_STATEMENT: &str = "rowgate_reserved";

/// A Query's text for its audit record ("" when it is not UTF-8).
pub(super) fn refusal_sql(body: &[u8]) -> String {
    match messages::query(body) {
        Ok(Ok(sql)) => sql.to_string(),
        _ => String::new(),
    }
}

pub(super) fn query_message(text: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(text.len() + 6);
    wire::put_message(&mut out, frontend::QUERY, |b| wire::put_cstr(b, text));
    out.freeze()
}

/// The name of a session's `n`th automatic statement.
pub(super) fn auto_name(nonce: u64, n: usize) -> String {
    format!("{}{n}", auto_prefix(nonce))
}

/// What the names of a session's automatic statements start with.
pub(super) fn auto_prefix(nonce: u64) -> String {
    format!("{AUTO}{nonce:016x}_")
}

pub(super) fn parse_message(name: &str, text: &str, types: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(text.len() + name.len() + types.len() + 8);
    wire::put_message(&mut out, frontend::PARSE, |b| {
        wire::put_cstr(b, name);
        wire::put_cstr(b, text);
        b.put_slice(types);
    });
    out.freeze()
}

/// A Bind, Describe or Close naming a statement under rowgate's reserved
/// prefix, made to name one that never exists: the client's own statements
/// cannot carry the prefix (their Parse and PREPARE are refused), and
/// rowgate's are not the client's to run, describe or close. `None` for
/// any other message.
pub(super) fn reserved_target(tag: u8, body: &[u8]) -> Result<Option<Bytes>, WireError> {
    let mut out = BytesMut::new();
    if tag == frontend::BIND {
        let (portal, statement, rest) = messages::bind(body)?;
        if !rewrite::is_reserved_name(statement) {
            return Ok(None);
        }
        wire::put_message(&mut out, frontend::BIND, |b| {
            wire::put_cstr(b, portal);
            wire::put_cstr(b, NO_STATEMENT);
            b.put_slice(rest);
        });
    } else {
        let (kind, name) = messages::target(body)?;
        if kind != b'S' || !rewrite::is_reserved_name(name) {
            return Ok(None);
        }
        wire::put_message(&mut out, tag, |b| {
            b.put_u8(b'S');
            wire::put_cstr(b, NO_STATEMENT);
        });
    }
    Ok(Some(out.freeze()))
}

pub(super) fn close_message(kind: u8, name: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(name.len() + 7);
    wire::put_message(&mut out, frontend::CLOSE, |b| {
        b.put_u8(kind);
        wire::put_cstr(b, name);
    });
    out.freeze()
}

/// `EXECUTE name(values)`; the values are plain numbers (see
/// [`autoprep::shape`]).
pub(super) fn execute(name: &str, values: &[String]) -> String {
    if values.is_empty() {
        format!("EXECUTE {name}")
    } else {
        format!("EXECUTE {name}({})", values.join(", "))
    }
}
