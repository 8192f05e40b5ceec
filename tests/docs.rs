//! The documentation against the code, so that neither drifts:
//!
//! - the key tables of `docs/reference.md` list exactly the keys the readers
//!   of `proxy.yaml` and of the policy files accept, with the defaults the
//!   code applies;
//! - every key `proxy.example.yaml` shows, commented or not, is a real key,
//!   every key is shown, and the values it shows are the defaults;
//! - the README holds the two commands a newcomer needs, links every page of
//!   `docs/`, and every relative link of the README and of `docs/` resolves
//!   (anchors included);
//! - the lists of `docs/security.md` hold every function, setting and
//!   catalog relation the rewriter's own lists name, and exactly the
//!   parameters `SHOW` refuses.
//!
//! No database is needed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rowgate::config::{Config, Env};
use rowgate::names::RelName;
use rowgate::policy::raw;

const REFERENCE: &str = "docs/reference.md";
const SECURITY: &str = "docs/security.md";
const EXAMPLE: &str = "proxy.example.yaml";
/// The variable the example's `upstream.password` expands.
const PASSWORD_VAR: &str = "ROWGATE_UPSTREAM_PASSWORD";
/// The password variable of the example's second data source.
const TESTING_PASSWORD_VAR: &str = "ROWGATE_TESTING_PASSWORD";
/// The variable the example's token secret expands.
const SECRET_VAR: &str = "ROWGATE_EMBED_SECRET";

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// The keys the code accepts
// ---------------------------------------------------------------------------

/// Every key of `proxy.yaml`, as a dotted path (`upstream.host`).
fn config_keys() -> BTreeSet<String> {
    // Sections come after the mapping that holds them (`audit` before
    // `audit.table`).
    let mut paths = BTreeSet::new();
    for (section, keys) in rowgate::config::KEYS {
        // A section of named entries (`tokens.issuers.<name>`) stands under
        // the key that holds them, and is a key path of its own.
        if let Some(holder) = section.strip_suffix(".<name>") {
            assert!(
                paths.contains(holder),
                "config::KEYS has a section `{section}` that is no key before it"
            );
            paths.insert(section.to_string());
        }
        assert!(
            section.is_empty() || paths.contains(*section),
            "config::KEYS has a section `{section}` that is no key before it"
        );
        for key in *keys {
            paths.insert(if section.is_empty() {
                key.to_string()
            } else {
                format!("{section}.{key}")
            });
        }
    }
    paths
}

/// Every key of a policy file, as a dotted path with placeholders for the
/// names a writer chooses (`users.<name>.role`,
/// `tables.<schema.table>.filters[].column`).
fn policy_keys() -> BTreeSet<String> {
    // Where each mapping of the format stands: the key it is the value of
    // (in its parent), and the path prefix of its keys.
    let nested: [(&str, &str, &[&str], &[&str]); 7] = [
        ("", "", raw::File::KEYS, &[]),
        (
            "integrations",
            "integrations.<name>.",
            raw::Integration::KEYS,
            raw::File::KEYS,
        ),
        (
            "attributes",
            "attributes.<name>.",
            raw::Attribute::KEYS,
            raw::File::KEYS,
        ),
        (
            "groups",
            "groups.<name>.",
            raw::Group::KEYS,
            raw::File::KEYS,
        ),
        ("users", "users.<name>.", raw::User::KEYS, raw::File::KEYS),
        (
            "tables",
            "tables.<schema.table>.",
            raw::Table::KEYS,
            raw::File::KEYS,
        ),
        (
            "filters",
            "tables.<schema.table>.filters[].",
            raw::Filter::KEYS,
            raw::Table::KEYS,
        ),
    ];
    let mut paths = BTreeSet::new();
    for (under, prefix, keys, parent) in nested {
        assert!(
            under.is_empty() || parent.contains(&under),
            "the policy format no longer has `{under}` where this test expects it"
        );
        for key in keys {
            paths.insert(format!("{prefix}{key}"));
        }
    }
    paths
}

/// The defaults the code applies to a `proxy.yaml` that sets nothing, by key.
fn config_defaults(path: &Path) -> Vec<(&'static str, String)> {
    let d = Config::parse(path, "", Env::Require, |_| None).expect("an empty proxy.yaml is valid");
    vec![
        ("listen", d.listen.clone()),
        ("policies", d.policies.display().to_string()),
        ("upstream.host", d.sources["default"].host.clone()),
        ("upstream.port", d.sources["default"].port.to_string()),
        ("upstream.user", d.sources["default"].user.clone()),
        (
            "upstream.tls",
            format!("{:?}", d.sources["default"].tls).to_ascii_lowercase(),
        ),
        ("search_path", format!("[{}]", d.search_path.join(", "))),
        ("max_connections", d.max_connections.to_string()),
        ("max_message_bytes", d.max_message_bytes.to_string()),
        ("prepare_threshold", d.prepare_threshold.to_string()),
        (
            "pool.mode",
            format!("{:?}", d.pool.mode).to_ascii_lowercase(),
        ),
        ("pool.size", d.pool.size.to_string()),
        ("pool.min_idle", d.pool.min_idle.to_string()),
        (
            "pool.max_client_wait",
            format!("{}s", d.pool.max_client_wait.as_secs()),
        ),
        (
            "pool.server_idle_timeout",
            format!("{}m", d.pool.server_idle_timeout.as_secs() / 60),
        ),
        (
            "pool.server_lifetime",
            format!("{}h", d.pool.server_lifetime.as_secs() / 3600),
        ),
    ]
}

// ---------------------------------------------------------------------------
// Markdown
// ---------------------------------------------------------------------------

/// The body of the `## ` section whose heading is exactly `heading`, up to
/// the next `## ` heading.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let marker = format!("\n{heading}\n");
    let start = text
        .find(&marker)
        .unwrap_or_else(|| panic!("no section `{heading}`"))
        + marker.len();
    let rest = &text[start..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    &rest[..end]
}

/// The body of the `### ` subsection `heading` of a section, up to the next
/// heading of any level.
fn subsection<'a>(text: &'a str, heading: &str) -> &'a str {
    let marker = format!("\n{heading}\n");
    let start = text
        .find(&marker)
        .unwrap_or_else(|| panic!("no subsection `{heading}`"))
        + marker.len();
    let rest = &text[start..];
    let end = rest.find("\n#").unwrap_or(rest.len());
    &rest[..end]
}

/// The rows of the tables of a section whose first cell is one code span
/// (a key): the key, and the row's cells.
fn key_rows(section: &str) -> Vec<(String, Vec<String>)> {
    let mut rows = Vec::new();
    for line in section.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<String> = line
            .trim_matches('|')
            .split(" | ")
            .map(|c| c.trim().to_string())
            .collect();
        let first = &cells[0];
        let key = first
            .strip_prefix('`')
            .and_then(|k| k.strip_suffix('`'))
            .filter(|k| !k.is_empty() && !k.contains('`'));
        if let Some(key) = key {
            rows.push((key.to_string(), cells.clone()));
        }
    }
    rows
}

/// The list items of a section body: its paragraphs that start with `- `,
/// joined.
fn list_items(body: &str) -> String {
    body.split("\n\n")
        .filter(|p| p.trim_start().starts_with("- "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every code span of a text (single-backtick spans).
fn code_spans(text: &str) -> BTreeSet<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The anchor GitHub gives a heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file's headings.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.insert(slug(line.trim_start_matches('#')));
        }
    }
    out
}

/// The targets of the Markdown links of a text, outside code.
fn links(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Drop code spans: the text between backticks.
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after.find(')').unwrap_or(after.len());
            out.push(after[..end].to_string());
            rest = &after[end..];
        }
    }
    out
}

/// Checks every relative link of the Markdown file `file`: the target file
/// exists and, with `#anchor`, holds a heading with that anchor.
fn check_links(file: &Path) -> Vec<String> {
    let text = read(file);
    let dir = file.parent().unwrap_or(Path::new(""));
    let mut problems = Vec::new();
    for link in links(&text) {
        if link.contains("://") || link.starts_with("mailto:") {
            continue;
        }
        let (path, anchor) = match link.split_once('#') {
            Some((p, a)) => (p, Some(a)),
            None => (link.as_str(), None),
        };
        let target = if path.is_empty() {
            file.to_path_buf()
        } else {
            dir.join(path)
        };
        if !target.exists() {
            problems.push(format!(
                "{}: link to `{link}`: no such file",
                file.display()
            ));
            continue;
        }
        if let Some(anchor) = anchor {
            if !anchors(&read(&target)).contains(anchor) {
                problems.push(format!(
                    "{}: link to `{link}`: {} has no heading with that anchor",
                    file.display(),
                    target.display()
                ));
            }
        }
    }
    problems
}

fn docs_pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir("docs")
        .expect("docs/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    pages
}

/// Where two sets differ, for an assertion message.
fn difference(what: &str, code: &BTreeSet<String>, doc: &BTreeSet<String>) -> String {
    let missing: Vec<_> = code.difference(doc).collect();
    let extra: Vec<_> = doc.difference(code).collect();
    format!("{what}:\n  in the code, not in the documentation: {missing:?}\n  in the documentation, not in the code: {extra:?}")
}

// ---------------------------------------------------------------------------
// docs/reference.md
// ---------------------------------------------------------------------------

#[test]
fn the_reference_lists_exactly_the_config_keys_with_their_defaults() {
    let text = read(REFERENCE);
    let rows = key_rows(section(&text, "## proxy.yaml keys"));
    let documented: BTreeSet<String> = rows.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(rows.len(), documented.len(), "a key is listed twice");
    let code = config_keys();
    assert!(
        code == documented,
        "{}",
        difference("proxy.yaml keys in docs/reference.md", &code, &documented)
    );

    let cell = |key: &str| -> &Vec<String> {
        &rows
            .iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("no row for `{key}`"))
            .1
    };
    for (key, default) in config_defaults(Path::new("proxy.yaml")) {
        let default_cell = &cell(key)[2];
        assert!(
            default_cell.contains(&format!("`{default}`")),
            "docs/reference.md gives `{key}` the default {default_cell:?}; the code's is `{default}`"
        );
    }
    let d = Config::parse(Path::new("proxy.yaml"), "", Env::Require, |_| None).unwrap();
    assert!(
        d.sources["default"].password.is_none()
            && d.sources["default"].database.is_none()
            && d.tls.is_none()
    );
    assert!(d.workers.is_none());
    for key in ["upstream.password", "upstream.database", "tls", "workers"] {
        assert!(
            cell(key)[2].starts_with("(none"),
            "`{key}` has no default in the code; docs/reference.md says {:?}",
            cell(key)[2]
        );
    }
}

#[test]
fn the_reference_lists_exactly_the_policy_keys_with_their_defaults() {
    let text = read(REFERENCE);
    let rows = key_rows(section(&text, "## Policy file keys"));
    let documented: BTreeSet<String> = rows.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(rows.len(), documented.len(), "a key is listed twice");
    let code = policy_keys();
    assert!(
        code == documented,
        "{}",
        difference("policy file keys in docs/reference.md", &code, &documented)
    );

    let row = |key: &str| &rows.iter().find(|(k, _)| k == key).unwrap().1;
    // The attribute types, as the loader names them.
    let types = row("attributes.<name>.type");
    for ty in rowgate::policy::AttrType::NAMES.split(", ") {
        assert!(
            types[1].contains(&format!("`{ty}`")),
            "attribute type `{ty}` is missing from docs/reference.md"
        );
    }
    // The default role, as the loader applies it.
    let loaded = rowgate::policy::load_sources(&[rowgate::policy::Source {
        path: PathBuf::from("p.yaml"),
        text: "users:\n  u: { password: \"SCRAM-SHA-256$4096:0GGE1H9DNEVdR81J8HbvyQ==$rFOHGYonHZVbH2w0K1ua6Mnd1JAuotn3UVvMw023ehY=:1cjFhljiPXhtrpNqhTiu0wmF5EEBvzBfFtLb471GnPk=\" }\n".into(),
    }])
    .expect("a user with a password only is valid");
    let role = loaded.policy().users["u"].role.name();
    assert!(
        row("users.<name>.role")[2].contains(&format!("`{role}`")),
        "the default role is `{role}`; docs/reference.md says {:?}",
        row("users.<name>.role")[2]
    );
}

// ---------------------------------------------------------------------------
// proxy.example.yaml
// ---------------------------------------------------------------------------

/// A line that writes a key, commented out or not: its indentation (for a
/// commented line, the position of `#` plus the spaces after `# `), the key,
/// and what follows the colon.
fn key_line(line: &str) -> Option<(usize, &str, &str)> {
    let lead = line.len() - line.trim_start().len();
    let mut body = &line[lead..];
    let mut indent = lead;
    if let Some(rest) = body.strip_prefix('#') {
        let rest = rest.strip_prefix(' ').unwrap_or(rest);
        indent += rest.len() - rest.trim_start().len();
        body = rest.trim_start();
    }
    let (key, rest) = body.split_once(':')?;
    let is_key = !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_');
    (is_key && (rest.is_empty() || rest.starts_with(' '))).then_some((indent, key, rest))
}

/// Every key the example shows, commented or not, as a dotted path, with
/// its line number.
fn example_keys(text: &str) -> Vec<(String, usize)> {
    let mut open: Vec<(usize, String)> = Vec::new();
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let Some((indent, key, rest)) = key_line(line) else {
            continue;
        };
        while open.last().is_some_and(|(i, _)| *i >= indent) {
            open.pop();
        }
        let mut path: Vec<&str> = open.iter().map(|(_, k)| k.as_str()).chain([key]).collect();
        // The name of an entry of a mapping of named entries (an issuer's).
        for (section, _) in rowgate::config::KEYS {
            if let Some(holder) = section.strip_suffix(".<name>") {
                let depth = holder.split('.').count();
                if path.len() > depth && path[..depth].join(".") == holder {
                    path[depth] = "<name>";
                }
            }
        }
        keys.push((path.join("."), n + 1));
        if rest.split('#').next().unwrap_or("").trim().is_empty() {
            open.push((indent, key.to_string()));
        }
    }
    keys
}

/// The example with every commented-out key written out.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|line| {
            let lead = line.len() - line.trim_start().len();
            match line[lead..].strip_prefix('#') {
                Some(rest) if key_line(line).is_some() => {
                    let rest = rest.strip_prefix(' ').unwrap_or(rest);
                    format!("{}{rest}\n", &line[..lead])
                }
                _ => format!("{line}\n"),
            }
        })
        .collect()
}

#[test]
fn the_example_config_shows_every_key_and_only_real_ones() {
    let text = read(EXAMPLE);
    let shown = example_keys(&text);
    let code = config_keys();
    for (key, line) in &shown {
        assert!(
            code.contains(key),
            "{EXAMPLE}:{line}: `{key}` is not a key of proxy.yaml"
        );
    }
    let shown: BTreeSet<String> = shown.into_iter().map(|(k, _)| k).collect();
    assert!(
        shown == code,
        "{}",
        difference("keys of proxy.example.yaml", &code, &shown)
    );
}

#[test]
fn the_example_config_is_valid_and_shows_the_defaults() {
    let text = read(EXAMPLE);
    let path = Path::new(EXAMPLE);
    let lookup = |name: &str| {
        [PASSWORD_VAR, SECRET_VAR, TESTING_PASSWORD_VAR]
            .contains(&name)
            .then(|| "secret".to_string())
    };

    // `rowgate check` with the variable set, `explain` without it.
    let config = Config::parse(path, &text, Env::Require, lookup)
        .unwrap_or_else(|e| panic!("{EXAMPLE} with {PASSWORD_VAR} set: {e:?}"));
    rowgate::policy::load_path(&config.policies)
        .unwrap_or_else(|e| panic!("the policies of {EXAMPLE}: {e:?}"));
    Config::parse(path, &text, Env::Lenient, |_| None)
        .unwrap_or_else(|e| panic!("{EXAMPLE} for explain: {e:?}"));
    assert!(
        Config::parse(path, &text, Env::Require, |_| None).is_err(),
        "{EXAMPLE} should take the upstream password from {PASSWORD_VAR}"
    );

    // With the commented-out keys written out, it is still valid, and every
    // value it shows for a key with a default is that default.
    let all = uncommented(&text);
    let full = Config::parse(path, &all, Env::Require, lookup)
        .unwrap_or_else(|e| panic!("{EXAMPLE} with every key written out: {e:?}\n{all}"));
    assert!(full.tls.is_some() && full.sources["default"].database.is_some());
    let shown = [
        ("listen", full.listen.clone()),
        ("policies", full.policies.display().to_string()),
        ("upstream.host", full.sources["default"].host.clone()),
        ("upstream.port", full.sources["default"].port.to_string()),
        ("upstream.user", full.sources["default"].user.clone()),
        (
            "upstream.tls",
            format!("{:?}", full.sources["default"].tls).to_ascii_lowercase(),
        ),
        ("search_path", format!("[{}]", full.search_path.join(", "))),
        ("max_connections", full.max_connections.to_string()),
        ("max_message_bytes", full.max_message_bytes.to_string()),
        ("prepare_threshold", full.prepare_threshold.to_string()),
    ];
    for ((key, default), (_, value)) in config_defaults(path).into_iter().zip(shown) {
        assert_eq!(
            value, default,
            "{EXAMPLE} shows `{key}` as {value}, but its default is {default}"
        );
    }
}

// ---------------------------------------------------------------------------
// README.md and links
// ---------------------------------------------------------------------------

#[test]
fn the_test_command_is_what_ci_runs() {
    let ci = read(".ci/run");
    assert!(
        ci.contains("./test.sh"),
        ".ci/run must run the README's ./test.sh"
    );
    let script = read("test.sh");
    assert!(
        script.contains("exec cargo test \"$@\""),
        "test.sh must end in cargo test"
    );
}

#[test]
fn the_readme_gives_the_two_commands_and_links_every_page() {
    let readme = read("README.md");
    let lines: BTreeSet<&str> = readme.lines().map(str::trim).collect();
    for command in ["cargo run --release -- demo", "./test.sh"] {
        assert!(
            lines.contains(command),
            "README.md should give `{command}` on a line of its own"
        );
    }
    let linked: BTreeSet<String> = links(&readme)
        .into_iter()
        .filter(|l| l.starts_with("docs/"))
        .map(|l| l.split('#').next().unwrap_or_default().to_string())
        .collect();
    for page in docs_pages() {
        let page = page.display().to_string();
        assert!(linked.contains(&page), "README.md does not link {page}");
    }
}

#[test]
fn every_relative_link_resolves() {
    let mut problems = check_links(Path::new("README.md"));
    problems.extend(check_links(Path::new("docker/README.md")));
    for page in docs_pages() {
        problems.extend(check_links(&page));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------
// docs/security.md and the rewriter's lists
// ---------------------------------------------------------------------------

#[test]
fn the_security_model_lists_every_denied_function_and_setting() {
    let text = read(SECURITY);
    let refused = section(&text, "## What is refused, and why");

    let functions = code_spans(subsection(refused, "### Functions"));
    let mut missing: Vec<String> = rowgate::rewrite::functions::DENIED
        .iter()
        .filter(|f| !functions.contains(**f))
        .map(|f| f.to_string())
        .collect();
    missing.extend(
        rowgate::rewrite::functions::DENIED_PREFIXES
            .iter()
            .map(|p| format!("{p}*"))
            .filter(|p| !functions.contains(p)),
    );
    assert!(
        missing.is_empty(),
        "denied functions missing from docs/security.md: {missing:?}"
    );

    let settings = code_spans(subsection(refused, "### Settings"));
    let missing: Vec<&str> = rowgate::rewrite::SETTABLE
        .iter()
        .copied()
        .filter(|s| !settings.contains(*s))
        .collect();
    assert!(
        missing.is_empty(),
        "settable parameters missing from docs/security.md: {missing:?}"
    );
}

#[test]
fn the_security_model_lists_exactly_the_refused_show_parameters() {
    let text = read(SECURITY);
    let body = subsection(section(&text, "## What is refused, and why"), "### SHOW");
    // `SHOW ALL` or a bare parameter name, as `SHOW` takes it.
    let listed: BTreeSet<String> = code_spans(&list_items(body))
        .iter()
        .map(|span| {
            let span = span.trim();
            let name = match span.split_once(' ') {
                Some((show, rest)) if show.eq_ignore_ascii_case("show") => rest,
                _ => span,
            };
            name.trim().to_ascii_lowercase()
        })
        .collect();
    let code: BTreeSet<String> = rowgate::rewrite::SHOW_DENIED
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert!(
        code == listed,
        "{}",
        difference(
            "parameters SHOW refuses, in docs/security.md (### SHOW)",
            &code,
            &listed
        )
    );
}

#[test]
fn the_security_model_lists_exactly_the_blocked_catalog_relations() {
    use rowgate::rewrite::catalog::{is_blocked_catalog, INFORMATION_SCHEMA, PG_CATALOG};
    let text = read(SECURITY);
    let body = subsection(
        section(&text, "## What is refused, and why"),
        "### Catalog relations",
    );
    // The names in the list items: `pg_*` names of `pg_catalog` and
    // `information_schema.*` names, exact or as `prefix*` patterns.
    const INFO: &str = "information_schema.";
    let listed: Vec<(&str, String)> = code_spans(&list_items(body))
        .into_iter()
        .filter_map(|s| match s.strip_prefix(INFO) {
            Some(name) => Some(("information_schema", name.to_string())),
            None => s.starts_with("pg_").then_some(("pg_catalog", s)),
        })
        .collect();
    assert!(
        listed.iter().any(|(schema, _)| *schema == "pg_catalog"),
        "no catalog relations listed"
    );
    let covers = |schema: &str, name: &str| {
        listed.iter().any(|(s, l)| {
            *s == schema
                && match l.strip_suffix('*') {
                    Some(prefix) => name.starts_with(prefix),
                    None => l == name,
                }
        })
    };
    for (schema, l) in &listed {
        let probe = l.strip_suffix('*').map_or(l.clone(), |p| format!("{p}x"));
        assert!(
            is_blocked_catalog(&RelName::new(*schema, &probe)),
            "docs/security.md lists `{l}` as refused, but {schema}.{probe} is readable"
        );
    }
    for (schema, names) in [
        ("pg_catalog", PG_CATALOG),
        ("information_schema", INFORMATION_SCHEMA),
    ] {
        for name in names {
            if is_blocked_catalog(&RelName::new(schema, *name)) {
                assert!(
                    covers(schema, name),
                    "{schema}.{name} is refused but docs/security.md does not list it"
                );
            }
        }
    }
}
