//! `rowgate access`: a user's role, groups, readable tables with each one's
//! effective filter as SQL, and every attribute value with where it came from.

use std::fmt::Write as _;

use super::{ConfigArg, FAILED, OK};
use crate::policy::{Access, AccessLevel, Grant, Origin, PolicySet, Role};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    who: super::Who,
    /// The database a client would name: it chooses the data source, as
    /// a session's does (default: the user's default source).
    #[arg(long)]
    database: Option<String>,
}

pub fn run(args: &Args) -> u8 {
    let Some(view) = super::load_who(&args.config.config, &args.who, args.database.as_deref())
    else {
        return FAILED;
    };
    print!("{}", render(&view.policy, &view.access));
    OK
}

/// The report `rowgate access` prints.
pub fn render(policy: &PolicySet, access: &Access) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "user: {}", access.user);
    let role_note = match access.role {
        Role::Admin => "statements pass unchanged",
        Role::Analyst => "reads every table, no row filters, read-only",
        Role::Member => "reads granted tables, row filters apply, read-only",
    };
    let _ = writeln!(out, "role: {} ({role_note})", access.role.name());
    let groups = if access.groups.is_empty() {
        "(none)".to_string()
    } else {
        access.groups.join(", ")
    };
    let _ = writeln!(out, "groups: {groups}");
    if let Some(t) = &access.token {
        let sub = match &t.suborganization {
            Some(s) => format!(", suborganization {s}"),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "login: token of issuer {} ({}), integration {}{sub}",
            t.issuer, t.token_id, t.integration
        );
    }
    let (level, from) = &access.level;
    if access.token.is_some() || from.as_slice() != [Origin::Default] {
        let from: Vec<String> = from.iter().map(|o| o.to_string()).collect();
        let note = match level {
            AccessLevel::ReadOnly => "",
            AccessLevel::ReadWrite => {
                "; INSERT, UPDATE and DELETE of granted tables, new rows checked against the filters"
            }
        };
        let _ = writeln!(out, "access: {} ({}){note}", level.name(), from.join(", "));
    }

    let several = policy.data_source != crate::policy::DEFAULT_DATA_SOURCE
        || !access.data_sources.is_empty()
        || access.default_data_source.is_some();
    if several {
        let _ = writeln!(out, "data source: {}", policy.data_source);
        let usable: Vec<String> = access
            .data_sources
            .iter()
            .map(|(s, o)| format!("{s} ({o})"))
            .collect();
        let usable = if usable.is_empty() {
            "every one".to_string()
        } else {
            usable.join(", ")
        };
        let _ = writeln!(out, "data sources: {usable}");
        if let Some((d, o)) = &access.default_data_source {
            let _ = writeln!(out, "default data source: {d} ({o})");
        }
    }

    let _ = writeln!(out, "attributes:");
    for (name, resolved) in &access.attributes {
        let _ = writeln!(out, "  {name}: {resolved}");
    }

    let _ = writeln!(out, "tables:");
    match access.role {
        Role::Admin | Role::Analyst => {
            let _ = writeln!(out, "  every table: all rows");
        }
        Role::Member if access.grants.is_empty() => {
            let _ = writeln!(out, "  (none)");
        }
        Role::Member => {
            for (grant, origin) in &access.grants {
                match grant {
                    Grant::Table(rel) => {
                        let filter = filter_text(access, rel);
                        let read_only = match access.level.0 {
                            AccessLevel::ReadWrite => access
                                .read_only
                                .iter()
                                .find(|(g, _)| g.covers(rel))
                                .map(|(_, o)| format!(", read-only ({o})"))
                                .unwrap_or_default(),
                            AccessLevel::ReadOnly => String::new(),
                        };
                        let _ = writeln!(out, "  {rel} ({origin}{read_only}): {filter}");
                    }
                    Grant::Schema(_) => {
                        let _ = writeln!(
                            out,
                            "  {grant} ({origin}): every table of the schema; all rows unless a rule below applies"
                        );
                        for rel in policy.tables.keys().filter(|r| grant.covers(r)) {
                            let _ = writeln!(out, "    {rel}: {}", filter_text(access, rel));
                        }
                    }
                }
            }
        }
    }
    out
}

fn filter_text(access: &Access, rel: &crate::names::RelName) -> String {
    match access.filter(rel) {
        None => "all rows".to_string(),
        Some(expr) => format!("WHERE {expr}"),
    }
}
