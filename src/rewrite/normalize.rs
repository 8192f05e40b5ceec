//! PostgreSQL spellings that sqlparser does not read, turned, token by
//! token, into spellings it reads that mean the same (a pure function of
//! the text, before parsing). What cannot be written back the same way is
//! remembered and restored when the statement is printed ([`Fixups`]).
//!
//! - `MOVE ...` is read as its twin `FETCH ...` and printed as `MOVE`;
//! - `FETCH c`, `FETCH 5 c`, `FETCH FROM c` (no `FROM`, or no direction)
//!   gain them: `FETCH NEXT FROM c`;
//! - `TABLE t` (a statement, a set operand or a subquery) is
//!   `SELECT * FROM t`;
//! - `FROM ONLY t` and `ONLY (t)` lose `ONLY`, and the names are remembered:
//!   the rewriter accepts them only for relations without inheritance
//!   children or partitions, where `ONLY` changes nothing;
//! - `interval(p) 'literal'`, whose precision sqlparser drops, is
//!   `('literal'::interval(p))`;
//! - a string constant continued on the next line (`'a'` newline `'b'`) is
//!   one constant;
//! - `FORCE_QUOTE *` of `COPY` is read with a placeholder column and printed
//!   as `*` again.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Location, Token, Tokenizer};

/// The placeholder column standing for `FORCE_QUOTE *` (under rowgate's
/// reserved prefix, so no client name is taken for it).
pub const ALL_COLUMNS: &str = "rowgate_all_columns";

/// The placeholder function standing for `ROWS FROM`.
pub const ROWS_FROM: &str = "rowgate_rows_from";

/// What the printed statements need restored, by statement index.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Fixups {
    /// Statements read from `MOVE`.
    pub moves: Vec<usize>,
    /// Statements whose `FORCE_QUOTE *` was read as the placeholder.
    pub force_quote_all: Vec<usize>,
    /// Statements whose `ROWS FROM (` was read as the placeholder call.
    pub rows_from: Vec<usize>,
    /// Relation names written after `ONLY` (each as its name parts, as
    /// written), by statement.
    pub only: Vec<(usize, Vec<sqlparser::ast::Ident>)>,
    /// Names written `(name).*`, read as `name.*`, by statement: right only
    /// where the name is a FROM item's and no column's.
    pub row_stars: Vec<(usize, sqlparser::ast::Ident)>,
}

/// Words one of which a text must hold for [`normalize`] to change it.
const TRIGGERS: &[&[u8]] = &[
    b"table",
    b"only",
    b"fetch",
    b"move",
    b"force_quote",
    b"rows",
    b").*",
];

/// Whether the text may hold a spelling [`normalize`] changes (a cheap
/// test, so that most statements are not tokenized twice).
fn may_change(sql: &str) -> bool {
    let bytes = sql.as_bytes();
    // A quote, then only whitespace with a line break, then a quote.
    let continued = bytes.iter().enumerate().any(|(i, &b)| {
        b == b'\'' && {
            let rest = &bytes[i + 1..];
            let gap = rest
                .iter()
                .position(|c| !c.is_ascii_whitespace())
                .unwrap_or(rest.len());
            rest.get(gap) == Some(&b'\'') && rest[..gap].contains(&b'\n')
        }
    });
    if continued {
        return true;
    }
    // `interval(`, with or without spaces before the parenthesis.
    let interval = bytes.windows(8).enumerate().any(|(i, w)| {
        w.eq_ignore_ascii_case(b"interval")
            && bytes[i + 8..]
                .iter()
                .find(|c| !c.is_ascii_whitespace())
                .is_some_and(|&c| c == b'(')
    });
    interval
        || TRIGGERS.iter().any(|word| {
            bytes
                .windows(word.len())
                .any(|w| w.eq_ignore_ascii_case(word))
        })
}

/// The text to parse, and what to restore in its printing.
pub fn normalize(sql: &str) -> (String, Fixups) {
    if !may_change(sql) {
        return (sql.to_string(), Fixups::default());
    }
    let Some(owned) = significant(sql) else {
        return (sql.to_string(), Fixups::default());
    };
    let sig: Vec<(usize, usize, &Token)> = owned.iter().map(|(s, e, t)| (*s, *e, t)).collect();
    // A client's own word `rowgate_rows_from` (refused later as unknown) is
    // never taken for the placeholder: then `ROWS FROM` is not read.
    let client_names_placeholder = sig
        .iter()
        .any(|(_, _, t)| matches!(t, Token::Word(w) if w.value.eq_ignore_ascii_case(ROWS_FROM)));
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let mut fixups = Fixups::default();
    let word = |t: &Token, kw: Keyword| matches!(t, Token::Word(w) if w.quote_style.is_none() && w.keyword == kw);
    let mut statement = 0;
    let mut stmt_first: Option<usize> = None;
    let mut k = 0;
    while k < sig.len() {
        let (start, end, t) = sig[k];
        let prev = k.checked_sub(1).map(|p| &sig[p].2);
        if matches!(t, Token::SemiColon) {
            statement += 1;
            stmt_first = None;
            k += 1;
            continue;
        }
        let at_start = stmt_first.is_none();
        if at_start {
            stmt_first = Some(k);
        }
        // MOVE and FETCH.
        if at_start
            && (word(t, Keyword::FETCH)
                || matches!(&t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("move")))
        {
            if !word(t, Keyword::FETCH) {
                edits.push((start, end, "FETCH".to_string()));
                fixups.moves.push(statement);
            }
            let rest: Vec<usize> = (k + 1..sig.len())
                .take_while(|&j| !matches!(sig[j].2, Token::SemiColon))
                .collect();
            let is_from = |j: usize| word(sig[j].2, Keyword::FROM) || word(sig[j].2, Keyword::IN);
            let has_from = rest.iter().any(|&j| is_from(j));
            match rest.as_slice() {
                [] => {}
                [only] if !has_from => {
                    edits.push((sig[*only].0, sig[*only].0, "NEXT FROM ".into()))
                }
                [.., last] if !has_from => edits.push((sig[*last].0, sig[*last].0, "FROM ".into())),
                [first, ..] if is_from(*first) => {
                    edits.push((sig[*first].0, sig[*first].0, "NEXT ".into()))
                }
                _ => {}
            }
            k += 1 + rest.len();
            continue;
        }
        // TABLE t.
        if word(t, Keyword::TABLE) {
            let opens = match prev {
                None | Some(Token::SemiColon) | Some(Token::LParen) => true,
                Some(p) => {
                    [
                        Keyword::UNION,
                        Keyword::INTERSECT,
                        Keyword::EXCEPT,
                        Keyword::ALL,
                        Keyword::DISTINCT,
                    ]
                    .iter()
                    .any(|kw| word(p, *kw))
                        || (matches!(p, Token::RParen)
                            && stmt_first.is_some_and(|f| word(sig[f].2, Keyword::WITH)))
                }
            };
            if opens {
                edits.push((start, end, "SELECT * FROM".to_string()));
            }
        }
        // ONLY t, ONLY (t).
        if word(t, Keyword::ONLY)
            && prev.is_some_and(|p| {
                word(p, Keyword::FROM)
                    || word(p, Keyword::JOIN)
                    || word(p, Keyword::TABLE)
                    || matches!(p, Token::Comma)
            })
        {
            let mut j = k + 1;
            let paren = matches!(sig.get(j).map(|s| &s.2), Some(Token::LParen));
            if paren {
                j += 1;
            }
            let mut parts = Vec::new();
            while let Some((_, _, tok)) = sig.get(j) {
                if let Token::Word(w) = &tok {
                    parts.push(sqlparser::ast::Ident {
                        value: w.value.clone(),
                        quote_style: w.quote_style,
                        span: sqlparser::tokenizer::Span::empty(),
                    });
                    j += 1;
                    if matches!(sig.get(j).map(|s| &s.2), Some(Token::Period)) {
                        j += 1;
                        continue;
                    }
                }
                break;
            }
            let closed = !paren || matches!(sig.get(j).map(|s| &s.2), Some(Token::RParen));
            if !parts.is_empty() && closed {
                edits.push((start, end, String::new()));
                if paren {
                    edits.push((sig[k + 1].0, sig[k + 1].1, String::new()));
                    edits.push((sig[j].0, sig[j].1, String::new()));
                }
                fixups.only.push((statement, parts));
            }
        }
        // interval(p) 'literal'.
        if word(t, Keyword::INTERVAL) {
            if let (
                Some((_, _, open)),
                Some((_, _, n)),
                Some((_, _, close)),
                Some((lit_start, lit_end, lit)),
            ) = (
                sig.get(k + 1),
                sig.get(k + 2),
                sig.get(k + 3),
                sig.get(k + 4),
            ) {
                if matches!(open, Token::LParen)
                    && matches!(n, Token::Number(..))
                    && matches!(close, Token::RParen)
                    && matches!(lit, Token::SingleQuotedString(_))
                {
                    let Token::Number(p, _) = &n else {
                        unreachable!()
                    };
                    edits.push((
                        start,
                        *lit_end,
                        format!("({}::interval({p}))", &sql[*lit_start..*lit_end]),
                    ));
                    k += 5;
                    continue;
                }
            }
        }
        // 'a' newline 'b'.
        if let Token::SingleQuotedString(first) = &t {
            let mut value = first.clone();
            let mut j = k;
            while let Some((_, _, next)) = sig.get(j + 1) {
                let Token::SingleQuotedString(more) = &next else {
                    break;
                };
                // Only whitespace with a line break between them.
                let between = &sql[sig[j].1..sig[j + 1].0];
                if !between.contains('\n') || !between.chars().all(char::is_whitespace) {
                    break;
                }
                value.push_str(more);
                j += 1;
            }
            if j > k {
                edits.push((start, sig[j].1, format!("'{}'", value.replace('\'', "''"))));
                k = j + 1;
                continue;
            }
        }
        // ROWS FROM (.
        if matches!(&t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("rows"))
            && sig.get(k + 1).is_some_and(|n| word(n.2, Keyword::FROM))
            && matches!(sig.get(k + 2).map(|n| &n.2), Some(Token::LParen))
            && !client_names_placeholder
        {
            edits.push((start, sig[k + 2].1, format!("{ROWS_FROM}(")));
            fixups.rows_from.push(statement);
            k += 3;
            continue;
        }
        // (m).*
        if matches!(t, Token::LParen) {
            if let (
                Some((_, _, Token::Word(w))),
                Some((_, close_end, Token::RParen)),
                Some((_, _, Token::Period)),
                Some((_, star_end, Token::Mul)),
            ) = (
                sig.get(k + 1),
                sig.get(k + 2),
                sig.get(k + 3),
                sig.get(k + 4),
            ) {
                let _ = close_end;
                let name = sqlparser::ast::Ident {
                    value: w.value.clone(),
                    quote_style: w.quote_style,
                    span: sqlparser::tokenizer::Span::empty(),
                };
                edits.push((start, *star_end, format!("{name}.*")));
                fixups.row_stars.push((statement, name));
                k += 5;
                continue;
            }
        }
        // FORCE_QUOTE *.
        if matches!(&t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("force_quote"))
        {
            if let Some((s, e, star)) = sig.get(k + 1) {
                if matches!(star, Token::Mul) {
                    edits.push((*s, *e, format!("({ALL_COLUMNS})")));
                    fixups.force_quote_all.push(statement);
                    k += 2;
                    continue;
                }
            }
        }
        k += 1;
    }
    if edits.is_empty() {
        return (sql.to_string(), fixups);
    }
    edits.sort_by_key(|e| (e.0, e.1));
    let mut out = String::with_capacity(sql.len() + 32);
    let mut copied = 0;
    for (s, e, text) in edits {
        if s < copied {
            continue;
        }
        out.push_str(&sql[copied..s]);
        out.push_str(&text);
        if s == e && !text.is_empty() && !text.ends_with(' ') {
            out.push(' ');
        }
        copied = e;
    }
    out.push_str(&sql[copied..]);
    (out, fixups)
}

/// The printed statements with the fixups restored.
pub fn print(statements: &[sqlparser::ast::Statement], fixups: &Fixups) -> String {
    let mut out = String::new();
    for (i, s) in statements.iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        let mut text = s.to_string();
        if fixups.moves.contains(&i) {
            if let Some(rest) = text.strip_prefix("FETCH") {
                text = format!("MOVE{rest}");
            }
        }
        if fixups.rows_from.contains(&i) {
            text = restore_rows_from(&text);
        }
        if fixups.force_quote_all.contains(&i) {
            let placeholder = format!("({ALL_COLUMNS})");
            if let Some(at) = text.rfind(&placeholder) {
                text.replace_range(at..at + placeholder.len(), "*");
            }
        }
        out.push_str(&text);
    }
    out
}

/// A printed statement with each call of the `ROWS FROM` placeholder (a
/// word, not inside a string or a quoted name) written `ROWS FROM (` again;
/// every other byte as printed.
fn restore_rows_from(text: &str) -> String {
    let Some(tokens) = significant(text) else {
        return text.to_string();
    };
    let mut out = String::with_capacity(text.len() + 16);
    let mut copied = 0;
    for (start, end, token) in tokens {
        if matches!(&token, Token::Word(w) if w.quote_style.is_none() && w.value == ROWS_FROM) {
            out.push_str(&text[copied..start]);
            out.push_str("ROWS FROM ");
            copied = end;
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// The significant tokens of `sql` with their byte ranges (`None` when it
/// does not tokenize).
fn significant(sql: &str) -> Option<Vec<(usize, usize, Token)>> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize_with_location()
        .ok()?;
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(sql.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let offset = |loc: Location| -> Option<usize> {
        let line = line_starts.get(loc.line.checked_sub(1)? as usize)?;
        let col = loc.column.checked_sub(1)? as usize;
        match sql[*line..].char_indices().nth(col) {
            Some((i, _)) => Some(line + i),
            None => Some(sql.len()),
        }
    };
    tokens
        .into_iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_) | Token::EOF))
        .map(|t| Some((offset(t.span.start)?, offset(t.span.end)?, t.token)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(sql: &str) -> String {
        normalize(sql).0
    }

    #[test]
    fn fetch_and_move_gain_direction_and_from() {
        assert_eq!(text("FETCH c"), "FETCH NEXT FROM c");
        assert_eq!(text("FETCH 5 c"), "FETCH 5 FROM c");
        assert_eq!(text("FETCH FROM c"), "FETCH NEXT FROM c");
        assert_eq!(text("FETCH NEXT FROM c"), "FETCH NEXT FROM c");
        assert_eq!(text("move c"), "FETCH NEXT FROM c");
        assert_eq!(normalize("SELECT 1; MOVE 2 c").1.moves, vec![1]);
    }

    #[test]
    fn table_is_select_star() {
        assert_eq!(text("TABLE merchants"), "SELECT * FROM merchants");
        assert_eq!(
            text("SELECT 1 UNION ALL TABLE t"),
            "SELECT 1 UNION ALL SELECT * FROM t"
        );
        assert_eq!(
            text("WITH a AS (SELECT 1) TABLE a"),
            "WITH a AS (SELECT 1) SELECT * FROM a"
        );
        assert_eq!(text("LOCK TABLE t"), "LOCK TABLE t");
        assert_eq!(text("CREATE TABLE t (x int)"), "CREATE TABLE t (x int)");
    }

    #[test]
    fn only_is_dropped_and_remembered() {
        let (t, f) = normalize("SELECT * FROM ONLY s.t, ONLY (u) JOIN ONLY v ON true");
        assert_eq!(t, "SELECT * FROM  s.t,  u JOIN  v ON true");
        let names: Vec<Vec<String>> = f
            .only
            .iter()
            .map(|(_, p)| p.iter().map(|i| i.value.clone()).collect())
            .collect();
        assert_eq!(names, vec![vec!["s", "t"], vec!["u"], vec!["v"]]);
        assert_eq!(text("TABLE ONLY t"), "SELECT * FROM  t");
    }

    #[test]
    fn interval_precision_and_continued_strings() {
        assert_eq!(
            text("SELECT interval(0) '1 day 01:23:45.6789'"),
            "SELECT ('1 day 01:23:45.6789'::interval(0))"
        );
        assert_eq!(text("SELECT 'a'\n  'b''c'"), "SELECT 'ab''c'");
        assert_eq!(text("SELECT 'a' 'b'"), "SELECT 'a' 'b'");
        assert_eq!(
            text("COPY t TO STDOUT (FORCE_QUOTE *)"),
            "COPY t TO STDOUT (FORCE_QUOTE (rowgate_all_columns))"
        );
    }

    #[test]
    fn rows_from_is_a_placeholder_call() {
        let (t, f) = normalize("SELECT * FROM ROWS FROM (generate_series(1, 2), f(x)) AS r(a, b)");
        assert_eq!(
            t,
            "SELECT * FROM rowgate_rows_from(generate_series(1, 2), f(x)) AS r(a, b)"
        );
        assert_eq!(f.rows_from, vec![0]);
        assert_eq!(
            restore_rows_from("SELECT 'rowgate_rows_from(' FROM rowgate_rows_from(g(1))"),
            "SELECT 'rowgate_rows_from(' FROM ROWS FROM (g(1))"
        );
        // A client's own use of the name is not taken for one.
        assert!(
            normalize("SELECT * FROM rowgate_rows_from(1), ROWS FROM (f())")
                .1
                .rows_from
                .is_empty()
        );
    }

    #[test]
    fn a_parenthesized_row_star_is_a_star() {
        let (t, f) = normalize("SELECT (m).*, ( \"M\" ) . * FROM merchants m");
        assert_eq!(t, "SELECT m.*, \"M\".* FROM merchants m");
        let names: Vec<String> = f.row_stars.iter().map(|(_, i)| i.value.clone()).collect();
        assert_eq!(names, vec!["m", "M"]);
        assert_eq!(text("SELECT (m).a FROM t m"), "SELECT (m).a FROM t m");
    }

    #[test]
    fn text_without_such_spellings_is_unchanged() {
        for sql in [
            "SELECT 1",
            "SELECT 'TABLE x' FROM t",
            "",
            "SELECT \"table\" FROM t",
        ] {
            assert_eq!(text(sql), sql);
        }
    }
}
