//! Attribute types and typed attribute values, checked when a policy loads and
//! turned into SQL literal nodes (never strings spliced into SQL).

use std::fmt;

use sqlparser::ast::{Expr, UnaryOperator, Value};

/// The type of a declared attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttrType {
    Text,
    Integer,
    Numeric,
    Boolean,
    Date,
    Uuid,
}

impl AttrType {
    pub const NAMES: &'static str = "text, integer, numeric, boolean, date, uuid";

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "text" => AttrType::Text,
            "integer" => AttrType::Integer,
            "numeric" => AttrType::Numeric,
            "boolean" => AttrType::Boolean,
            "date" => AttrType::Date,
            "uuid" => AttrType::Uuid,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            AttrType::Text => "text",
            AttrType::Integer => "integer",
            AttrType::Numeric => "numeric",
            AttrType::Boolean => "boolean",
            AttrType::Date => "date",
            AttrType::Uuid => "uuid",
        }
    }

    /// Checks a value as written in the policy file against this type; the
    /// error says why it does not fit. Values are checked as text, exactly as
    /// written (YAML's own typing of plain scalars plays no part):
    ///
    /// - `text`: any value, kept as written: `02134`, `12.50`, `0x1A` and
    ///   `yes` stay those very characters;
    /// - `integer`: decimal digits with an optional sign, within 64 bits;
    ///   `0x1A`, `0o17`, `1_000` and `1e3` are refused (write integers in
    ///   decimal);
    /// - `numeric`: a decimal number (`12.50`, `-3`, `1.5e3`), kept exactly
    ///   as written, every digit (PostgreSQL numerics are exact);
    /// - `boolean`: `true` or `false` in any letter case; YAML 1.1's `yes`,
    ///   `no`, `on` and `off` are refused;
    /// - `date`: `YYYY-MM-DD`, a real calendar date;
    /// - `uuid`: 8-4-4-4-12 hex digits, kept lower-case.
    ///
    /// Spaces around a quoted value are ignored by every type but `text`.
    pub fn check(self, written: &str) -> Result<AttrValue, String> {
        let misfit = || format!("`{written}` is not a valid {} value", self.name());
        let s = written.trim();
        match self {
            AttrType::Text => Ok(AttrValue::Text(written.to_string())),
            AttrType::Integer if is_integer(s) => s
                .parse::<i64>()
                .map(AttrValue::Integer)
                .map_err(|_| misfit()),
            AttrType::Integer => {
                let digits = s.strip_prefix(['+', '-']).unwrap_or(s).to_ascii_lowercase();
                if ["0x", "0o", "0b"].iter().any(|p| digits.starts_with(p)) {
                    Err(format!("{} (write integers in decimal)", misfit()))
                } else {
                    Err(misfit())
                }
            }
            AttrType::Numeric if is_decimal(s) => Ok(AttrValue::Numeric(s.to_string())),
            AttrType::Boolean if s.eq_ignore_ascii_case("true") => Ok(AttrValue::Boolean(true)),
            AttrType::Boolean if s.eq_ignore_ascii_case("false") => Ok(AttrValue::Boolean(false)),
            AttrType::Date if is_date(s) => Ok(AttrValue::Date(s.to_string())),
            AttrType::Uuid if is_uuid(s) => Ok(AttrValue::Uuid(s.to_ascii_lowercase())),
            _ => Err(misfit()),
        }
    }
}

/// One attribute value, already checked against its type.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AttrValue {
    Text(String),
    Integer(i64),
    /// A decimal number exactly as written.
    Numeric(String),
    Boolean(bool),
    /// `YYYY-MM-DD`.
    Date(String),
    /// Lower-case hyphenated form.
    Uuid(String),
}

impl AttrValue {
    /// The value as a SQL literal node. Text, dates and uuids are untyped
    /// string literals, so they take the column's type as PostgreSQL does
    /// for a literal in `column IN (...)`.
    pub fn to_expr(&self) -> Expr {
        match self {
            AttrValue::Text(s) | AttrValue::Date(s) | AttrValue::Uuid(s) => {
                Expr::value(Value::SingleQuotedString(s.clone()))
            }
            AttrValue::Integer(i) => number(&i.to_string()),
            AttrValue::Numeric(n) => number(n),
            AttrValue::Boolean(b) => Expr::value(Value::Boolean(*b)),
        }
    }
}

impl fmt::Display for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrValue::Text(s) | AttrValue::Date(s) | AttrValue::Uuid(s) => f.write_str(s),
            AttrValue::Numeric(n) => f.write_str(n),
            AttrValue::Integer(i) => write!(f, "{i}"),
            AttrValue::Boolean(b) => write!(f, "{b}"),
        }
    }
}

/// A number literal as the parser would produce it: a sign is a unary operator.
fn number(text: &str) -> Expr {
    match text.strip_prefix('-') {
        Some(abs) => Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr: Box::new(number(abs)),
        },
        None => Expr::value(Value::Number(
            text.trim_start_matches('+').to_string(),
            false,
        )),
    }
}

/// Decimal digits with an optional sign.
fn is_integer(s: &str) -> bool {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn is_decimal(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = (!int.is_empty() || !frac.is_empty()) && digits(int) && digits(frac);
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exponent_ok
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = &s[r];
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    };
    let (Some(year), Some(month), Some(day)) = (num(0..4), num(5..7), num(8..10)) else {
        return false;
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    year >= 1 && (1..=days).contains(&day)
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_values() {
        let int = AttrType::Integer;
        assert_eq!(int.check("7"), Ok(AttrValue::Integer(7)));
        assert_eq!(int.check(" -42 "), Ok(AttrValue::Integer(-42)));
        assert_eq!(int.check("007"), Ok(AttrValue::Integer(7)));
        assert!(int.check("abc").is_err());
        assert!(int.check("1.5").is_err());
        assert!(int.check("1e3").is_err());
        assert!(int.check("1_000").is_err());
        assert_eq!(
            int.check("0x1A"),
            Err("`0x1A` is not a valid integer value (write integers in decimal)".into())
        );
        assert_eq!(
            int.check("99999999999999999999"),
            Err("`99999999999999999999` is not a valid integer value".into())
        );
        assert_eq!(
            int.check("9223372036854775807"),
            Ok(AttrValue::Integer(i64::MAX))
        );
        let num = AttrType::Numeric;
        assert!(num.check("1.5e3").is_ok());
        assert_eq!(
            num.check("123456789012345678901234567890.10"),
            Ok(AttrValue::Numeric(
                "123456789012345678901234567890.10".into()
            ))
        );
        assert_eq!(num.check("12.50"), Ok(AttrValue::Numeric("12.50".into())));
        assert!(num.check("1.5.3").is_err());
        assert!(num.check(".").is_err());
        assert!(num.check(".nan").is_err());
        assert!(num.check("0x1A").is_err());
        assert!(AttrType::Date.check("2024-02-29").is_ok());
        assert!(AttrType::Date.check("2023-02-29").is_err());
        assert!(AttrType::Date.check("2023-13-01").is_err());
        assert_eq!(
            AttrType::Uuid.check("123E4567-e89b-12d3-a456-426614174000"),
            Ok(AttrValue::Uuid(
                "123e4567-e89b-12d3-a456-426614174000".into()
            ))
        );
        assert!(AttrType::Uuid.check("123").is_err());
        let boolean = AttrType::Boolean;
        assert_eq!(boolean.check("true"), Ok(AttrValue::Boolean(true)));
        assert_eq!(boolean.check("FALSE"), Ok(AttrValue::Boolean(false)));
        for yaml11 in ["yes", "no", "on", "off", "y", "1"] {
            assert!(boolean.check(yaml11).is_err(), "{yaml11}");
        }
        for written in ["02134", "12.50", "0x1A", "yes", " padded "] {
            assert_eq!(
                AttrType::Text.check(written),
                Ok(AttrValue::Text(written.into()))
            );
        }
    }

    #[test]
    fn literals_are_nodes() {
        let v = AttrValue::Text("O'Brien \\ \u{e9}".into());
        assert_eq!(v.to_expr().to_string(), "'O''Brien \\ \u{e9}'");
        assert_eq!(AttrValue::Integer(-3).to_expr().to_string(), "-3");
    }
}
