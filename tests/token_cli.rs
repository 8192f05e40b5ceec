//! The offline commands with signed tokens: `rowgate access --token` and
//! `rowgate explain --token` show a token user's access with where each
//! part came from, without connecting anywhere (the example of
//! docs/concepts.md, run); `rowgate check` reports every problem of
//! `tokens:` and of `integrations:` and access levels at its position.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_rowgate");
const SECRET: &str = "a-secret-of-the-token-cli-tests-0123456789";

/// The policy of docs/concepts.md's example.
const POLICY: &str = "attributes:
  country:  { type: text }
  merchant: { type: text }
integrations:
  sales_embed:
    tables: [public.orders, public.merchants, public.countries]
    attributes: { country: [Vietnam] }
    access: read-only
groups:
  client_2:
    tables: [public.client_2_dashboard]
    attributes: { merchant: [King Inc] }
    access: read-write
users:
  lead_2: { password: pw, groups: [client_2] }
  viewer: { password: pw, access: read-only, groups: [client_2] }
tables:
  public.countries:
    filters:
      - { column: name, attribute: country }
  public.merchants:
    filters:
      - { column: name, attribute: merchant }
      - { column: country_id, references: public.countries(id) }
  public.orders:
    filters:
      - { column: merchant_id, references: public.merchants(id) }
  public.client_2_dashboard:
    filters:
      - { column: merchant, attribute: merchant }
";

const CONFIG: &str = "tokens:
  issuers:
    embed:
      issuer: https://app.example.com
      audience: rowgate
      algorithms: [HS256]
      secret: ${ROWGATE_TEST_EMBED_SECRET}
  plaintext: local
";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(claims: Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

fn client_2(extra: Value) -> Value {
    let mut c = json!({
        "iss": "https://app.example.com", "aud": "rowgate", "sub": "u-77",
        "iat": now(), "exp": now() + 600, "jti": "a1b2",
        "integration": "sales_embed", "suborganization": "client_2",
        "attributes": {"country": ["Vietnam", "Singapore"]},
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(dir: &Path, args: &[&str]) -> Out {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("ROWGATE_TEST_EMBED_SECRET", SECRET)
        .output()
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

fn setup(config: &str, policy: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/p.yaml"), policy).unwrap();
    std::fs::write(dir.path().join("proxy.yaml"), config).unwrap();
    dir
}

#[test]
fn access_with_a_token_shows_every_value_with_its_origin() {
    let dir = setup(CONFIG, POLICY);
    let t = token(client_2(json!({})));
    let out = run(dir.path(), &["access", "--token", &t]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let expected = [
        "user: u-77",
        "role: member (reads granted tables, row filters apply, read-only)",
        "groups: client_2",
        "login: token of issuer embed (jti:a1b2), integration sales_embed, suborganization client_2",
        "access: read-only (integration sales_embed)",
        "attributes:",
        "  country: Vietnam (token), Singapore (token)",
        "  merchant: King Inc (group client_2)",
        "  username: u-77 (login name)",
        "tables:",
        "  public.client_2_dashboard (group client_2): WHERE client_2_dashboard.merchant IN ('King Inc')",
    ];
    assert_eq!(&lines[..expected.len()], expected, "{}", out.stdout);
    assert!(lines[expected.len()].starts_with("  public.orders (integration sales_embed): WHERE"));
    assert!(lines.contains(
        &"  public.countries (integration sales_embed): WHERE countries.name IN ('Vietnam', 'Singapore')"
    ));
    assert!(!out.stdout.contains(&t) && !out.stderr.contains(&t));

    // Without the token's own values: the integration's country; a token
    // that caps access; a suborganization that is no declared group.
    let t = token(client_2(
        json!({"attributes": {}, "suborganization": "client_9"}),
    ));
    let out = run(dir.path(), &["access", "--token", &t]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("  country: Vietnam (integration sales_embed)\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("  merchant: (no value: no rows)\n"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("groups: client_9\n"), "{}", out.stdout);
    assert!(!out.stdout.contains("client_2_dashboard"), "{}", out.stdout);
}

/// A declared user's access level: the highest of their own and their
/// groups', with where it came from; offline, no table is known writable.
#[test]
fn access_shows_a_declared_users_level_with_its_origin() {
    let dir = setup(CONFIG, POLICY);
    let out = run(dir.path(), &["access", "--user", "lead_2"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains(
            "access: read-write (group client_2); INSERT, UPDATE and DELETE of granted tables, new rows checked against the filters\n"
        ),
        "{}",
        out.stdout
    );
    let out = run(dir.path(), &["access", "--user", "viewer"]);
    assert!(
        out.stdout.contains("access: read-write (group client_2);"),
        "{}",
        out.stdout
    );
    let out = run(
        dir.path(),
        &["explain", "--user", "lead_2", "UPDATE orders SET id = 1"],
    );
    assert_eq!(out.code, 1);
    assert!(out.stdout.starts_with("ERROR 42501"), "{}", out.stdout);
}

#[test]
fn explain_with_a_token_rewrites_for_its_user() {
    let dir = setup(CONFIG, POLICY);
    let t = token(client_2(json!({})));
    let out = run(
        dir.path(),
        &["explain", "--token", &t, "SELECT * FROM client_2_dashboard"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        "SELECT * FROM (SELECT * FROM public.client_2_dashboard WHERE client_2_dashboard.merchant IN ('King Inc')) AS client_2_dashboard"
    );
    let out = run(
        dir.path(),
        &["explain", "--token", &t, "DELETE FROM orders"],
    );
    assert_eq!(out.code, 1);
    assert!(out.stdout.starts_with("ERROR 42501"), "{}", out.stdout);
}

#[test]
fn a_refused_token_prints_its_reason() {
    let dir = setup(CONFIG, POLICY);
    for (claims, reason) in [
        (
            client_2(json!({"exp": now() - 100, "iat": now() - 200})),
            "token expired",
        ),
        (
            client_2(json!({"integration": "nope"})),
            "unknown integration `nope`",
        ),
        (
            client_2(json!({"groups": ["ghosts"]})),
            "undeclared group `ghosts`",
        ),
        (
            client_2(json!({"aud": "other"})),
            "audience `rowgate` is not in the token's `aud`",
        ),
    ] {
        let out = run(dir.path(), &["access", "--token", &token(claims)]);
        assert_eq!(out.code, 2, "{reason}: {}", out.stdout);
        assert!(out.stderr.contains(reason), "{reason}: {}", out.stderr);
    }
    let out = run(dir.path(), &["access", "--token", "x.y.z"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("token refused: malformed token header"),
        "{}",
        out.stderr
    );
    // --user and --token exclude each other; one is needed.
    assert_eq!(run(dir.path(), &["access"]).code, 2);
    assert_eq!(
        run(dir.path(), &["access", "--user", "a", "--token", "b"]).code,
        2
    );
}

#[test]
fn check_reports_token_and_integration_problems_at_their_positions() {
    let config = "tokens:
  issuers:
    hs:
      issuer: https://a.example.com
      audience: rowgate
      algorithms: [HS256, RS256, none]
      secret: ${ROWGATE_TEST_EMBED_SECRET}
      max_lifetime: forever
    pem:
      issuer: https://a.example.com
      audience: rowgate
      algorithms: [HS256]
      public_keys: keys/missing.pem
    url:
      issuer: https://c.example.com
      audience: rowgate
      algorithms: [ES256]
      jwks: http://c.example.com/jwks.json
    empty:
      audience: rowgate
      algorithms: [ES256]
  plaintext: sometimes
";
    let policy = "attributes:
  country: { type: text }
integrations:
  a:
    tables: [public.t]
    attributes: { country: [x], tier: [1] }
    access: everything
    data_sources: [production]
groups:
  g: { access: write, default_data_source: testing }
users:
  u: { password: pw, access: read-write, data_sources: [default] }
";
    let dir = setup(config, policy);
    let out = run(dir.path(), &["check"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    let expected = [
        "proxy.yaml:6:34: tokens.issuers.hs.algorithms: `none` is not one of",
        "proxy.yaml:7:15: tokens.issuers.hs: a `secret` checks HMAC algorithms (HS256, HS384, HS512) only",
        "proxy.yaml:8:21: tokens.issuers.hs.max_lifetime: `forever` is not a duration",
        "proxy.yaml:9:5: tokens.issuers.pem: another issuer already has `issuer: https://a.example.com`",
        "proxy.yaml:13:20: tokens.issuers.pem: HMAC algorithms (HS256, HS384, HS512) need a `secret`",
        "proxy.yaml:18:13: tokens.issuers.url.jwks: `http://c.example.com/jwks.json` is not an https URL",
        "proxy.yaml:19:5: tokens.issuers.empty: `issuer` is missing",
        "proxy.yaml:19:5: tokens.issuers.empty: give its keys: `secret`, `public_keys` or `jwks`",
        "proxy.yaml:22:14: tokens.plaintext: `sometimes` is not one of never, local, always",
        "policies/p.yaml:6:33: undefined attribute `tier`",
        "policies/p.yaml:7:13: access: `everything` is not read-only or read-write",
        "policies/p.yaml:8:20: undeclared data source `production` (proxy.yaml declares default)",
        "policies/p.yaml:10:16: access: `write` is not read-only or read-write",
        "policies/p.yaml:10:44: undeclared data source `testing`",
    ];
    let lines: Vec<&str> = out.stderr.lines().collect();
    for want in expected {
        assert!(
            lines.iter().any(|l| l.contains(want)),
            "no `{want}` in:\n{}",
            out.stderr
        );
    }
    assert!(
        out.stderr
            .contains(&format!("{} problem(s) found", expected.len())),
        "{}",
        out.stderr
    );
}
