//! What a session starts with: the parameters it sends upstream, an
//! admin's startup `rowgate.view_as`, and the members of its audit records.

use std::net::SocketAddr;

use super::Shared;
use crate::frontend::startup;
use crate::policy::{Access, Role};
use crate::rewrite::{self, view_as};

/// Startup parameters, as names and values.
type Params = Vec<(String, String)>;

/// For an admin whose startup options set `rowgate.view_as`: the user to
/// look as, and the startup parameters without it (the other options as
/// parameters of their own). `None` otherwise; a non-admin's is refused by
/// the parameter check as any other setting.
pub(super) fn startup_view_as(
    params: &[(String, String)],
    login: &Access,
) -> Result<Option<(String, Params)>, String> {
    if login.role != Role::Admin {
        return Ok(None);
    }
    let Some((_, options)) = params.iter().find(|(k, _)| k == "options") else {
        return Ok(None);
    };
    let pairs = startup::options(options)?;
    let Some((_, name)) = pairs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(view_as::SETTING))
    else {
        return Ok(None);
    };
    let mut out: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "options")
        .cloned()
        .collect();
    out.extend(
        pairs
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case(view_as::SETTING))
            .cloned(),
    );
    Ok(Some((name.clone(), out)))
}

/// The members every audit record of a session has.
pub(super) fn audit_fields(
    shared: &Shared,
    nonce: u64,
    peer: SocketAddr,
    params: &[(String, String)],
    (source, database): (&str, &str),
    access: &Access,
) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::Value;
    let mut m = serde_json::Map::new();
    m.insert("instance".into(), shared.instance.into());
    m.insert("session".into(), format!("{nonce:016x}").into());
    m.insert("user".into(), access.user.clone().into());
    access.auth_fields(&mut m);
    let app = params
        .iter()
        .find(|(k, _)| k == "application_name")
        .map(|(_, v)| v.clone());
    if let Some(app) = app {
        m.insert("application_name".into(), app.into());
    }
    m.insert("client".into(), peer.to_string().into());
    m.insert("data_source".into(), source.into());
    m.insert("database".into(), database.into());
    m.insert(
        "role".into(),
        format!("{:?}", access.role).to_lowercase().into(),
    );
    m.insert(
        "groups".into(),
        Value::Array(access.groups.iter().cloned().map(Value::String).collect()),
    );
    m.insert("attributes".into(), access.attributes_json());
    m
}

/// Whether an upstream ErrorResponse is an authentication failure (SQLSTATE
/// class 28).
pub(super) fn upstream_auth_failure(frame: &[u8]) -> bool {
    frame
        .get(5..)
        .unwrap_or_default()
        .split(|&b| b == 0)
        .any(|field| field.len() == 6 && field[0] == b'C' && field[1..].starts_with(b"28"))
}

/// The parameters to send upstream, and the session's search path.
type Startup = (Vec<(String, String)>, Vec<String>);

/// The parameters sent upstream at startup. Admins pass theirs unchanged;
/// members and analysts pass only harmless ones, and get the session state
/// the rewriter relies on pinned: the search path, standard-conforming
/// strings, UTF-8.
pub(super) fn startup_params(
    params: &[(String, String)],
    access: &Access,
    search_path: &[String],
) -> Result<Startup, String> {
    let mut path: Option<Vec<String>> = None;
    let mut out = Vec::new();
    let mut settings: Vec<(String, String)> = Vec::new();
    for (k, v) in params {
        if k.starts_with("_pq_.") {
            continue;
        }
        if access.role == Role::Admin {
            out.push((k.clone(), v.clone()));
            continue;
        }
        if k == "options" {
            settings.extend(startup::options(v)?);
        } else {
            settings.push((k.clone(), v.clone()));
        }
    }
    for (k, v) in settings {
        let name = k.to_ascii_lowercase();
        if !startup::allowed_param(&name) {
            return Err(format!(
                "permission denied to set parameter \"{k}\" through rowgate"
            ));
        }
        if name == "search_path" {
            // The session's path from the start: sent upstream below, with
            // `$user` spelt out as the member's name.
            let entries = rewrite::parse_path_text(&v)
                .ok_or_else(|| format!("invalid value for parameter \"search_path\": \"{v}\""))?;
            path = Some(rewrite::path_for_member(&entries, &access.user));
            continue;
        }
        if name == "client_encoding" {
            continue; // pinned below
        }
        out.push((name, v));
    }
    let path = path.unwrap_or_else(|| search_path.to_vec());
    if access.role != Role::Admin {
        out.push(("search_path".into(), rewrite::path_text(&path)));
        out.push(("standard_conforming_strings".into(), "on".into()));
        out.push(("client_encoding".into(), "UTF8".into()));
    }
    Ok((out, path))
}
