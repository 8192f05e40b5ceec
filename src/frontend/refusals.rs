//! Refusal markers and the errors that come back for them: a plain
//! synchronous type, part of a session's pipeline state.
//!
//! A refused statement goes upstream as a *probe*: the client's own text
//! followed by `\n;` and a *marker*, a token unique to the session and
//! refusal (a refusal without a text, such as of a FunctionCall message,
//! sends the marker alone). The relay swaps the marker's error for the
//! refusal's. PostgreSQL parses a whole text before it executes
//! any of it, and the marker after a `;` can never parse, so nothing of a
//! probe runs; its error says what PostgreSQL's own parser thinks of the
//! client's text:
//!
//! - at the marker: the text is valid PostgreSQL, and the refusal stands
//!   (for a text rowgate's parser cannot read: `0A000`, not supported);
//! - inside the client's text: a syntax error, relayed as PostgreSQL said
//!   it (with the marker taken out of a message that quoted the rest of the
//!   text, as an unterminated string does);
//! - at the `;`: the text ended in the middle of a statement, relayed as
//!   PostgreSQL says it then, "syntax error at end of input".

use std::collections::HashMap;

use bytes::Bytes;

use crate::rewrite::Refusal;
use crate::wire;

/// The prefix of every refusal marker.
pub const MARKER: &str = "rowgate_refusal_";
/// What follows a probe's client text: a line break ends a `--` comment,
/// and the `;` ends the statement, so the marker starts a statement of its
/// own.
const PROBE_JOIN: &str = "\n;";
/// Refusals remembered at once; markers skipped upstream (after an earlier
/// error in the same pipeline) are never matched.
const REMEMBERED: usize = 64;

/// The refusals of one session whose errors have not come back yet.
pub struct Refusals {
    /// `rowgate_refusal_<nonce>_`, as it appears in a marker's error.
    prefix: String,
    pending: HashMap<u64, Pending>,
}

struct Pending {
    sqlstate: &'static str,
    message: String,
    /// For a probe: the client text's length in characters (PostgreSQL's
    /// error positions count characters).
    probe_chars: Option<usize>,
}

impl Refusals {
    pub fn new(nonce: u64) -> Self {
        Refusals {
            prefix: format!("{MARKER}{nonce:016x}_"),
            pending: HashMap::new(),
        }
    }

    /// Registers refusal number `seq` and returns the text to send upstream
    /// in place of the statement: a probe of its text `sql` when there is
    /// one (so that a syntax error is reported first, as PostgreSQL reports
    /// it before any permission check), a marker otherwise.
    pub fn register(&mut self, seq: u64, refusal: &Refusal, sql: Option<&str>) -> String {
        let marker = format!("{}{seq}", self.prefix);
        let probe = sql.filter(|s| !s.contains('\0'));
        let pending = &mut self.pending;
        if pending.len() >= REMEMBERED {
            let oldest = *pending.keys().min().unwrap_or(&0);
            pending.remove(&oldest);
        }
        pending.insert(
            seq,
            Pending {
                sqlstate: refusal.sqlstate(),
                message: refusal.to_string(),
                probe_chars: probe.map(|s| s.chars().count()),
            },
        );
        match probe {
            Some(sql) => format!("{sql}{PROBE_JOIN}{marker}"),
            None => marker,
        }
    }

    /// What to send the client in place of an upstream ErrorResponse with
    /// body `body`: `None` to relay it as it is.
    pub fn translate(&mut self, body: &[u8]) -> Option<Bytes> {
        let fields = wire::error_fields(body);
        let field = |code: u8| fields.iter().find(|(c, _)| *c == code).map(|(_, v)| v);
        let position: Option<usize> = field(b'P').and_then(|p| p.parse().ok());
        // A read-write member's new row that failed its table's check.
        if field(b'C').map(String::as_str) == Some("22P02") {
            if let Some(message) =
                field(b'M').and_then(|m| crate::rewrite::writes::check_message(m))
            {
                return Some(wire::error_response(
                    "ERROR",
                    crate::rewrite::Refusal::SQLSTATE,
                    &message,
                ));
            }
        }
        let Some(seq) = self.marker_in(body) else {
            let pending = &mut self.pending;
            // A probe whose text ended mid-statement fails at the `;`.
            if field(b'C').map(String::as_str) != Some("42601") {
                return None;
            }
            let position = position?;
            let seq = *pending
                .iter()
                .filter(|(_, p)| p.probe_chars.map(|n| n + 2) == Some(position))
                .map(|(seq, _)| seq)
                .min()?;
            let chars = pending.get(&seq)?.probe_chars?;
            pending.retain(|&s, _| s > seq);
            let mut fields = fields;
            for (code, value) in fields.iter_mut() {
                match code {
                    b'M' => *value = "syntax error at end of input".to_string(),
                    b'P' => *value = (chars + 1).to_string(),
                    _ => {}
                }
            }
            return Some(wire::error_from_fields(&fields));
        };
        let pending = &mut self.pending;
        let refusal = pending.remove(&seq)?;
        // Earlier markers were skipped by an earlier error: forget them.
        pending.retain(|&s, _| s > seq);
        match (refusal.probe_chars, position) {
            (Some(chars), Some(at)) if at <= chars => {
                // The client's own syntax error, whose message quoted the
                // rest of the text (an unterminated string or comment).
                let marker = format!("{PROBE_JOIN}{}{seq}", self.prefix);
                let fields: Vec<(u8, String)> = fields
                    .into_iter()
                    .map(|(c, v)| (c, v.replace(&marker, "")))
                    .collect();
                Some(wire::error_from_fields(&fields))
            }
            _ => Some(wire::error_response(
                "ERROR",
                refusal.sqlstate,
                &refusal.message,
            )),
        }
    }

    /// The number of the marker an error quotes, if it quotes one of this
    /// session's.
    fn marker_in(&self, body: &[u8]) -> Option<u64> {
        let prefix = self.prefix.as_bytes();
        let at = body.windows(prefix.len()).position(|w| w == prefix)?;
        let digits: String = body[at + prefix.len()..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .map(|&b| b as char)
            .collect();
        digits.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(fields: &[(u8, &str)]) -> Vec<u8> {
        let owned: Vec<(u8, String)> = fields.iter().map(|(c, v)| (*c, v.to_string())).collect();
        let frame = wire::error_from_fields(&owned);
        frame[5..].to_vec()
    }

    fn fields_of(frame: &Bytes) -> Vec<(u8, String)> {
        wire::error_fields(&frame[5..])
    }

    fn get(fields: &[(u8, String)], code: u8) -> Option<&str> {
        fields
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_marker_error_becomes_its_refusal_once() {
        let mut r = Refusals::new(7);
        let text = r.register(1, &Refusal::Table("hr.salaries".into()), None);
        assert_eq!(text, format!("{MARKER}0000000000000007_1"));
        let body = error(&[
            (b'S', "ERROR"),
            (b'C', "42601"),
            (b'M', &format!("syntax error at or near \"{text}\"")),
            (b'P', "1"),
        ]);
        let out = r.translate(&body).expect("translated");
        let f = fields_of(&out);
        assert_eq!(get(&f, b'C'), Some("42501"));
        assert_eq!(
            get(&f, b'M'),
            Some("permission denied for table hr.salaries")
        );
        assert!(r.translate(&body).is_none(), "matched twice");
    }

    #[test]
    fn a_failed_write_check_becomes_native_rls_message() {
        let mut r = Refusals::new(7);
        let quoted = |marker: &str| {
            error(&[
                (b'S', "ERROR"),
                (b'C', "22P02"),
                (
                    b'M',
                    &format!("invalid input syntax for type integer: \"{marker}6f7264657273\""),
                ),
            ])
        };
        let f = fields_of(&r.translate(&quoted("rowgate_check_")).expect("translated"));
        assert_eq!(get(&f, b'C'), Some("42501"));
        assert_eq!(
            get(&f, b'M'),
            Some("new row violates row-level security policy for table \"orders\"")
        );
        let f = fields_of(&r.translate(&quoted("rowgate_using_")).expect("translated"));
        assert_eq!(
            get(&f, b'M'),
            Some("new row violates row-level security policy (USING expression) for table \"orders\"")
        );
        // Another error that happens to quote it is left alone.
        let body = error(&[(b'C', "23505"), (b'M', "rowgate_check_6f7264657273")]);
        assert!(r.translate(&body).is_none());
        let body = error(&[
            (b'C', "22P02"),
            (b'M', "invalid input syntax for type integer: \"x\""),
        ]);
        assert!(r.translate(&body).is_none());
    }

    #[test]
    fn other_errors_pass() {
        let mut r = Refusals::new(7);
        r.register(1, &Refusal::Unparsable("x".into()), Some("SELECT 1 AS"));
        let body = error(&[(b'C', "22012"), (b'M', "division by zero")]);
        assert!(r.translate(&body).is_none());
        // A syntax error inside the text passes unchanged.
        let body = error(&[(b'C', "42601"), (b'M', "syntax error"), (b'P', "3")]);
        assert!(r.translate(&body).is_none());
    }

    #[test]
    fn a_probe_failing_at_its_marker_is_unsupported() {
        let mut r = Refusals::new(1);
        let sql = "SELECT é FROM t";
        let text = r.register(4, &Refusal::Unparsable("nope".into()), Some(sql));
        assert!(text.starts_with(sql) && text.ends_with("_4"));
        let at = sql.chars().count() + 3;
        let body = error(&[
            (b'C', "42601"),
            (
                b'M',
                &format!("syntax error at or near \"{}\"", &text[sql.len() + 2..]),
            ),
            (b'P', &at.to_string()),
        ]);
        let f = fields_of(&r.translate(&body).expect("translated"));
        assert_eq!(get(&f, b'C'), Some("0A000"));
        assert!(get(&f, b'M').is_some_and(|m| m.contains("does not support")));
        assert_eq!(get(&f, b'P'), None);
    }

    #[test]
    fn a_probe_ending_mid_statement_is_a_syntax_error_at_end_of_input() {
        let mut r = Refusals::new(1);
        let sql = "SELECT 1 AS";
        r.register(2, &Refusal::Unparsable("x".into()), Some(sql));
        let body = error(&[
            (b'S', "ERROR"),
            (b'C', "42601"),
            (b'M', "syntax error at or near \";\""),
            (b'P', "13"),
        ]);
        let f = fields_of(&r.translate(&body).expect("translated"));
        assert_eq!(get(&f, b'M'), Some("syntax error at end of input"));
        assert_eq!(get(&f, b'P'), Some("12"));
        assert_eq!(get(&f, b'S'), Some("ERROR"));
    }

    #[test]
    fn an_unterminated_string_loses_the_marker_it_swallowed() {
        let mut r = Refusals::new(1);
        let sql = "SELECT 'abc";
        let text = r.register(3, &Refusal::Unparsable("x".into()), Some(sql));
        let body = error(&[
            (b'C', "42601"),
            (
                b'M',
                &format!(
                    "unterminated quoted string at or near \"{}\"",
                    &text["SELECT ".len()..]
                ),
            ),
            (b'P', "8"),
        ]);
        let f = fields_of(&r.translate(&body).expect("translated"));
        assert_eq!(
            get(&f, b'M'),
            Some("unterminated quoted string at or near \"'abc\"")
        );
        assert_eq!(get(&f, b'P'), Some("8"));
        assert_eq!(get(&f, b'C'), Some("42601"));
    }

    #[test]
    fn statements_with_a_text_are_probed() {
        let mut r = Refusals::new(1);
        let t = r.register(1, &Refusal::Unsupported("x".into()), Some("SELECT 1"));
        assert!(t.starts_with("SELECT 1\n;rowgate_refusal_"), "{t}");
        let t = r.register(2, &Refusal::Unparsable("x".into()), Some("a\0b"));
        assert!(t.starts_with(MARKER));
        let t = r.register(3, &Refusal::Table("t".into()), None);
        assert!(t.starts_with(MARKER));
    }
}
