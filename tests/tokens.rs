//! Signed tokens as passwords, through a real client and a real
//! PostgreSQL: every header and claim defect is the same 28P01 with its
//! own reason in rowgate's log; a valid token of each algorithm family
//! logs in; JWKS keys rotate on SIGHUP; token users whose values come from
//! each level (token, suborganization, groups, integration) see exactly
//! what a native role with the same values sees under native RLS; and the
//! attacks on the new surface fail without leaking anything.

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::rls::{self, Outcome, QUERIES};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const HS_SECRET: &str = "an-hmac-secret-for-the-tests-of-rowgate-0123456789";
const AUDIENCE: &str = "rowgate";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Keys of every family, generated for this test run.
struct Keys {
    dir: tempfile::TempDir,
    rsa: EncodingKey,
    ec1: EncodingKey,
    ec2: EncodingKey,
    ec2_jwk: Value,
    ed: EncodingKey,
}

fn ec_jwk(kp: &rcgen::KeyPair, kid: &str) -> Value {
    let raw = kp.public_key_raw();
    assert_eq!(raw.len(), 65, "an uncompressed P-256 point");
    json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..]),
           "kid": kid, "alg": "ES256", "use": "sig"})
}

impl Keys {
    fn generate() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        // RSA with the openssl program (ring, rcgen's backend, does not
        // generate RSA keys).
        let rsa_private = dir.path().join("rsa.pem");
        let status = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&rsa_private)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("the openssl program generates the test's RSA key");
        assert!(status.success());
        let status = Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&rsa_private)
            .arg("-out")
            .arg(dir.path().join("rsa.pub.pem"))
            .status()
            .unwrap();
        assert!(status.success());
        let rsa = EncodingKey::from_rsa_pem(&std::fs::read(&rsa_private).unwrap()).unwrap();

        let ec1 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ec2 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        std::fs::write(dir.path().join("ed.pub.pem"), ed.public_key_pem()).unwrap();
        let keys = Keys {
            rsa,
            ec1: EncodingKey::from_ec_pem(ec1.serialize_pem().as_bytes()).unwrap(),
            ec2: EncodingKey::from_ec_pem(ec2.serialize_pem().as_bytes()).unwrap(),
            ec2_jwk: ec_jwk(&ec2, "k2"),
            ed: EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap(),
            dir,
        };
        keys.write_jwks(&[ec_jwk(&ec1, "k1")]);
        keys
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write_jwks(&self, keys: &[Value]) {
        let set = json!({ "keys": keys });
        std::fs::write(self.path("jwks.json"), set.to_string()).unwrap();
    }

    /// The `tokens:` section for these keys.
    fn config(&self, plaintext: &str) -> String {
        format!(
            "tokens:
  issuers:
    hs: {{ issuer: https://hs.test, audience: {AUDIENCE}, algorithms: [HS256, HS384, HS512], secret: \"{HS_SECRET}\", max_lifetime: 1h, leeway: 5s }}
    rsa: {{ issuer: https://rsa.test, audience: {AUDIENCE}, algorithms: [RS256, PS256], public_keys: {} }}
    ec: {{ issuer: https://ec.test, audience: {AUDIENCE}, algorithms: [ES256], jwks: {} }}
    ed: {{ issuer: https://ed.test, audience: {AUDIENCE}, algorithms: [EdDSA], public_keys: {} }}
  plaintext: {plaintext}
",
            self.path("rsa.pub.pem").display(),
            self.path("jwks.json").display(),
            self.path("ed.pub.pem").display(),
        )
    }
}

/// Claims of a valid token of `iss` for `sub`, with `extra` merged in.
fn claims(iss: &str, sub: &str, extra: Value) -> Value {
    let t = now();
    let mut c = json!({
        "iss": iss, "aud": AUDIENCE, "sub": sub, "iat": t - 5, "exp": t + 600,
        "jti": format!("jti-{sub}-{}", rand_suffix()), "integration": "embed_sales",
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn mint(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn hs(claims: &Value) -> String {
    mint(
        Algorithm::HS256,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
        None,
        claims,
    )
}

/// A token with the given header, signed as HS256 with `secret`.
fn forged(header: &str, claims: &Value, secret: &[u8]) -> String {
    let message = format!(
        "{}.{}",
        b64(header.as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(secret),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{message}.{sig}")
}

/// The token policies, beside the differential suite's.
const TOKEN_POLICY: &str = "
integrations:
  embed_sales:
    tables: [public.countries, public.merchants, public.orders, public.products, sales.*]
    attributes: { country: [Vietnam], tier: All }
    access: read-only
  embed_base:
    tables: [public.countries, public.merchants, public.orders, public.products, sales.*]
  embed_king:
    tables: [public.countries, public.merchants, public.orders, public.products, sales.*]
    attributes: { country: [Vietnam], merchant: [King Inc], tier: All }
    access: read-write
groups:
  client_king:
    attributes: { merchant: [King Inc] }
    access: read-write
users:
  token_admin: { password: admin-pw, role: admin }
";

struct Setup {
    db: String,
    oracles: std::collections::BTreeMap<&'static str, postgres::Client>,
    keys: Keys,
    proxy: common::Proxy,
    _policies: tempfile::TempDir,
}

fn setup(plaintext: &str) -> Setup {
    setup_with(plaintext, "")
}

fn setup_with(plaintext: &str, more: &str) -> Setup {
    let db = common::cluster().create_database("tokens");
    let oracles = rls::setup(&db);
    let keys = Keys::generate();
    let policies = tempfile::tempdir().unwrap();
    std::fs::copy(rls::POLICY, policies.path().join("a.yaml")).unwrap();
    std::fs::write(policies.path().join("tokens.yaml"), TOKEN_POLICY).unwrap();
    let extra = format!(
        "catalog: native\naudit: {{ file: {} }}\n{}{more}",
        keys.path("audit.jsonl").display(),
        keys.config(plaintext)
    );
    let proxy = common::Proxy::start(policies.path(), &extra);
    Setup {
        db,
        oracles,
        keys,
        proxy,
        _policies: policies,
    }
}

impl Setup {
    fn login(&self, user: &str, token: &str) -> Result<postgres::Client, postgres::Error> {
        self.proxy.connect(&self.db, user, token)
    }

    /// Logging in fails with 28P01, and the log says `reason`.
    fn refused(&self, what: &str, user: &str, token: &str, reason: &str) {
        let e = match self.login(user, token) {
            Ok(_) => panic!("{what}: the token logged in"),
            Err(e) => e,
        };
        assert_eq!(
            common::sqlstate(&e).as_deref(),
            Some("28P01"),
            "{what}: {e}"
        );
        let message = e.as_db_error().map(|d| d.message().to_string());
        assert_eq!(
            message,
            Some(format!(
                "password authentication failed for user \"{user}\""
            )),
            "{what}: the client is told only that authentication failed"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.proxy.log();
            if log.contains(&format!("token login refused: {reason}")) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: no `token login refused: {reason}` in the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn one(client: &mut postgres::Client, sql: &str) -> String {
    common::text_rows(client, sql).unwrap()[0][0]
        .clone()
        .unwrap()
}

#[test]
fn every_defect_is_28p01_with_its_reason_and_every_family_logs_in() {
    let s = setup("local");
    let k = &s.keys;
    let hs_secret = HS_SECRET.as_bytes();

    // A valid token of each algorithm family.
    let valid: Vec<(&str, String)> = vec![
        (
            "HS256",
            hs(&claims("https://hs.test", "t_hs256", json!({}))),
        ),
        (
            "HS512",
            mint(
                Algorithm::HS512,
                &EncodingKey::from_secret(hs_secret),
                None,
                &claims("https://hs.test", "t_hs512", json!({})),
            ),
        ),
        (
            "RS256",
            mint(
                Algorithm::RS256,
                &k.rsa,
                None,
                &claims("https://rsa.test", "t_rs", json!({})),
            ),
        ),
        (
            "PS256",
            mint(
                Algorithm::PS256,
                &k.rsa,
                None,
                &claims("https://rsa.test", "t_ps", json!({})),
            ),
        ),
        (
            "ES256",
            mint(
                Algorithm::ES256,
                &k.ec1,
                Some("k1"),
                &claims("https://ec.test", "t_es", json!({})),
            ),
        ),
        (
            "EdDSA",
            mint(
                Algorithm::EdDSA,
                &k.ed,
                None,
                &claims("https://ed.test", "t_ed", json!({})),
            ),
        ),
    ];
    for (alg, token) in &valid {
        let sub = rowgate::tokens::unverified_sub(token).unwrap();
        let mut c = s
            .login(&sub, token)
            .unwrap_or_else(|e| panic!("{alg}: {e}\n{}", s.proxy.log()));
        assert_eq!(one(&mut c, "SELECT current_user"), sub, "{alg}");
        // The integration's values: Vietnam's merchants only.
        assert_eq!(one(&mut c, "SELECT count(*) FROM countries"), "1", "{alg}");
        assert!(common::text_rows(&mut c, "SELECT * FROM tickets").is_err());
    }

    // Every defect, each with its reason.
    let c = |extra: Value| claims("https://hs.test", "ann", extra);
    let t = now();
    let rsa_public = std::fs::read(k.path("rsa.pub.pem")).unwrap();
    let cases: Vec<(&str, &str, String, String)> = vec![
        (
            "bad signature",
            "ann",
            forged(
                r#"{"alg":"HS256"}"#,
                &c(json!({})),
                b"not-the-secret-not-the-secret-not-it",
            ),
            "bad signature".into(),
        ),
        (
            "alg none",
            "ann",
            format!(
                "{}.{}.",
                b64(br#"{"alg":"none","typ":"JWT"}"#),
                b64(c(json!({})).to_string().as_bytes())
            ),
            "alg `none` is never accepted".into(),
        ),
        (
            "HS256 signed with the RSA issuer's public key",
            "ann",
            forged(
                r#"{"alg":"HS256"}"#,
                &claims("https://rsa.test", "ann", json!({})),
                &rsa_public,
            ),
            "algorithm HS256 is not one issuer `rsa` accepts".into(),
        ),
        (
            "an algorithm the issuer does not list",
            "ann",
            mint(
                Algorithm::HS384,
                &EncodingKey::from_secret(b"x"),
                None,
                &claims("https://rsa.test", "ann", json!({})),
            ),
            "algorithm HS384 is not one issuer `rsa` accepts".into(),
        ),
        (
            "expired",
            "ann",
            hs(&c(json!({"iat": t - 100, "exp": t - 60}))),
            "token expired".into(),
        ),
        (
            "not yet valid",
            "ann",
            hs(&c(json!({"nbf": t + 300}))),
            "token not valid for another".into(),
        ),
        (
            "issued in the future",
            "ann",
            hs(&c(json!({"iat": t + 300, "exp": t + 900}))),
            "token issued".into(),
        ),
        (
            "wrong iss",
            "ann",
            hs(&c(json!({"iss": "https://other.test"}))),
            "unknown issuer `https://other.test`".into(),
        ),
        (
            "wrong aud",
            "ann",
            hs(&c(json!({"aud": ["someone-else"]}))),
            "audience `rowgate` is not in the token's `aud`".into(),
        ),
        (
            "lifetime too long",
            "ann",
            hs(&c(json!({"exp": t + 7200}))),
            "token lifetime 7205 s exceeds max_lifetime 3600 s".into(),
        ),
        (
            "no exp",
            "ann",
            hs(&c(json!({"exp": null}))),
            "token has no `exp` claim".into(),
        ),
        (
            "sub is another user",
            "bob",
            hs(&c(json!({}))),
            "sub `ann` is not the user `bob` the client connected as".into(),
        ),
        (
            "unknown integration",
            "ann",
            hs(&c(json!({"integration": "nope"}))),
            "unknown integration `nope`".into(),
        ),
        (
            "no integration",
            "ann",
            hs(&c(json!({"integration": null}))),
            "token has no `integration` claim".into(),
        ),
        (
            "undeclared group",
            "ann",
            hs(&c(json!({"groups": ["vietnam", "admins"]}))),
            "undeclared group `admins`".into(),
        ),
        (
            "attribute of the wrong type",
            "ann",
            hs(&c(json!({"attributes": {"tier": ["one"]}}))),
            "attribute `tier`: `one` is not a valid integer value".into(),
        ),
        (
            "undeclared attribute",
            "ann",
            hs(&c(json!({"attributes": {"salary": ["1"]}}))),
            "undeclared attribute `salary`".into(),
        ),
        (
            "username given",
            "ann",
            hs(&c(json!({"attributes": {"username": ["ceo"]}}))),
            "attribute `username` is built in".into(),
        ),
        (
            "bad access claim",
            "ann",
            hs(&c(json!({"access": "admin"}))),
            "claim `access`: `admin` is not read-only or read-write".into(),
        ),
        (
            "malformed",
            "ann",
            "not.a-token".into(),
            "malformed token: not three dot-separated parts".into(),
        ),
        (
            "garbage parts",
            "ann",
            "@@.@@.@@".into(),
            "malformed token header".into(),
        ),
        (
            "a token over the bound",
            "ann",
            format!("{}.{}.x", "a".repeat(16_390), "b"),
            "token longer than 16384 bytes".into(),
        ),
        (
            "an unknown kid",
            "ann",
            mint(
                Algorithm::ES256,
                &k.ec1,
                Some("k9"),
                &claims("https://ec.test", "ann", json!({})),
            ),
            "no key `k9` of issuer `ec` for ES256".into(),
        ),
    ];
    for (what, user, token, reason) in &cases {
        s.refused(what, user, token, reason);
    }
    assert_eq!(cases.len(), 23);
    // A password message over the bound is not even read.
    s.refused(
        "a huge password message",
        "ann",
        &"x".repeat(100_000),
        "unreadable password message",
    );

    // A declared user keeps SCRAM: a valid token for that name is no password.
    let king = hs(&claims("https://hs.test", "king", json!({})));
    let e = s
        .login("king", &king)
        .err()
        .expect("a declared user with a token");
    assert_eq!(common::sqlstate(&e).as_deref(), Some("28P01"));
    assert!(s.login("king", "pw").is_ok());

    // The audit log names the token by its jti, never by itself, and the
    // issuer in `auth`.
    let audit = std::fs::read_to_string(k.path("audit.jsonl")).unwrap();
    let mut failures = 0;
    let mut logins = 0;
    for line in audit.lines() {
        let record: Value = serde_json::from_str(line).unwrap();
        let event = record["kind"].as_str().unwrap_or_default().to_string();
        if event == "login_failure" && record["auth"] == "token:hs" {
            failures += 1;
            assert!(
                record["token"].as_str().unwrap().starts_with("jti:jti-"),
                "{line}"
            );
            assert!(!record["reason"].as_str().unwrap().is_empty());
        }
        if event == "login"
            && record["auth"]
                .as_str()
                .unwrap_or_default()
                .starts_with("token:")
        {
            logins += 1;
            assert!(record["token"].as_str().is_some(), "{line}");
        }
    }
    for (_, _, token, _) in &cases {
        if token.len() > 20 {
            assert!(
                !audit.contains(token.as_str()),
                "a token is in the audit log"
            );
        }
    }
    assert!(
        failures >= 10,
        "{failures} token login failures recorded:\n{audit}"
    );
    assert_eq!(logins, valid.len(), "{audit}");
    let log = s.proxy.log();
    for (_, token) in &valid {
        assert!(!log.contains(token.as_str()), "a token is in rowgate's log");
    }
}

#[test]
fn jwks_keys_rotate_on_sighup() {
    let s = setup("local");
    let k = &s.keys;
    let with_k1 = |sub: &str| {
        mint(
            Algorithm::ES256,
            &k.ec1,
            Some("k1"),
            &claims("https://ec.test", sub, json!({})),
        )
    };
    let with_k2 = |sub: &str| {
        mint(
            Algorithm::ES256,
            &k.ec2,
            Some("k2"),
            &claims("https://ec.test", sub, json!({})),
        )
    };
    assert!(s.login("rot1", &with_k1("rot1")).is_ok());
    s.refused(
        "k2 before the rotation",
        "rot2",
        &with_k2("rot2"),
        "no key `k2` of issuer `ec` for ES256",
    );

    k.write_jwks(std::slice::from_ref(&k.ec2_jwk));
    s.proxy.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !s.proxy.log().contains("token keys reloaded") {
        assert!(std::time::Instant::now() < deadline, "{}", s.proxy.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        s.login("rot3", &with_k2("rot3")).is_ok(),
        "{}",
        s.proxy.log()
    );
    s.refused(
        "k1 after the rotation",
        "rot4",
        &with_k1("rot4"),
        "no key `k1` of issuer `ec` for ES256",
    );

    // A key set that does not load keeps the current one.
    std::fs::write(k.path("jwks.json"), "{ not json").unwrap();
    s.proxy.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !s.proxy.log().contains("token keys not reloaded") {
        assert!(std::time::Instant::now() < deadline, "{}", s.proxy.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(s.login("rot5", &with_k2("rot5")).is_ok());
}

/// Token users whose values come from each level see what the native role
/// with the same effective values sees.
#[test]
fn token_users_at_every_level_match_native_rls() {
    let mut s = setup("local");
    let cases: Vec<(&str, &str, Value)> = vec![
        // The token's own values over the integration's.
        (
            "token level",
            "king",
            json!({"attributes": {"merchant": ["King Inc"]}}),
        ),
        (
            "the token's All",
            "multi",
            json!({"attributes": {"country": "All", "merchant": ["King Inc", "O'Brien & Co", "Bel Air", "Back\\slash"], "tier": [1, "2"]}}),
        ),
        // The suborganization's values over the integration's.
        (
            "suborganization",
            "king",
            json!({"suborganization": "client_king"}),
        ),
        // The groups' union.
        (
            "groups",
            "apac",
            json!({"integration": "embed_base", "groups": ["vietnam", "singapore", "thailand", "tier2"], "attributes": {"merchant": "All"}}),
        ),
        // The integration's values alone, with an undeclared suborganization
        // (an empty group).
        (
            "integration",
            "king",
            json!({"integration": "embed_king", "suborganization": "client_nobody_declared"}),
        ),
    ];
    let mut compared = 0;
    let mut refusals = 0;
    let mut writers = 0;
    let mut differences = Vec::new();
    for (i, (level, oracle_name, extra)) in cases.iter().enumerate() {
        let sub = format!("tk_{i}");
        let token = hs(&claims("https://hs.test", &sub, extra.clone()));
        let mut through = s
            .login(&sub, &token)
            .unwrap_or_else(|e| panic!("{level}: {e}\n{}", s.proxy.log()));
        let oracle = s.oracles.get_mut(oracle_name).unwrap();
        // Twice each: the ordinary rewrite, then the automatic prepared
        // statement (rowgate's prepare_threshold is 2).
        for &sql in QUERIES.iter().chain(rls::LIVE_QUERIES) {
            let native = rls::run(oracle, sql);
            for run in 1..=2 {
                let ours = rls::run(&mut through, sql);
                compared += 1;
                if ours == native {
                    if ours == Ok(Outcome::Refused) {
                        refusals += 1;
                    }
                } else {
                    differences.push(format!(
                        "{level} ({oracle_name}, run {run}): {sql}\n  native: {native:?}\n  rowgate: {ours:?}"
                    ));
                }
            }
        }
        // The filters did filter: the oracle sees fewer merchants than all.
        let all: usize = one(
            &mut common::cluster().connect(&s.db),
            "SELECT count(*) FROM merchants",
        )
        .parse()
        .unwrap();
        let seen: usize = one(&mut through, "SELECT count(*) FROM merchants")
            .parse()
            .unwrap();
        let seen_orders: usize = one(&mut through, "SELECT count(*) FROM orders")
            .parse()
            .unwrap();
        assert!(seen < all, "{level}: {seen} of {all} merchants");
        // The access level decides writes: read-write (embed_king's, not
        // capped) writes its visible rows; read-only (the integration
        // embed_sales caps client_king's read-write) is refused.
        let access = common::text_rows(&mut through, "SHOW rowgate.access").unwrap();
        let read_write = access
            .iter()
            .flatten()
            .flatten()
            .any(|l| l.starts_with("access: read-write"));
        through.batch_execute("BEGIN").unwrap();
        let deleted = through.execute("DELETE FROM orders", &[]);
        through.batch_execute("ROLLBACK").unwrap();
        match deleted {
            Ok(n) => assert!(read_write && n as usize == seen_orders, "{level}: {n}"),
            Err(e) => {
                assert!(!read_write, "{level}: {e}");
                assert_eq!(common::sqlstate(&e).as_deref(), Some("42501"), "{level}");
            }
        }
        writers += usize::from(read_write);
    }
    assert!(
        differences.is_empty(),
        "{} difference(s):\n{}",
        differences.len(),
        differences.join("\n")
    );
    assert_eq!(writers, 1, "one read-write token among the cases");
    let shapes = QUERIES.len() + rls::LIVE_QUERIES.len();
    assert!(shapes >= 90, "only {shapes} query shapes");
    assert_eq!(compared, cases.len() * 2 * shapes);
    assert!(
        refusals >= cases.len() * 2 * 3,
        "only {refusals} agreed refusals"
    );
}

/// Reads everything the server sends until it closes the connection.
fn drain(stream: &mut std::net::TcpStream) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    got
}

fn startup(user: &str, db: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196608i32.to_be_bytes());
    for (k, v) in [("user", user), ("database", db)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend(body);
    msg
}

fn password_message(token: &[u8]) -> Vec<u8> {
    let mut msg = vec![b'p'];
    msg.extend_from_slice(&((token.len() + 5) as i32).to_be_bytes());
    msg.extend_from_slice(token);
    msg.push(0);
    msg
}

/// Attacks on the token surface, over raw bytes: whatever comes back holds
/// no secret (the HMAC secret, the token, the log's reasons).
#[test]
fn attacks_on_tokens_fail_and_leak_nothing() {
    let s = setup("local");
    let addr = ("127.0.0.1", s.proxy.port);
    let sub = "mallory";
    let good = hs(&claims("https://hs.test", sub, json!({})));
    let secrets = [
        HS_SECRET.as_bytes(),
        good.as_bytes(),
        b"bad signature",
        b"jti-",
    ];
    let scan = |what: &str, got: &[u8], answered: bool| {
        for secret in secrets {
            assert!(
                !got.windows(secret.len()).any(|w| w == secret),
                "{what}: the reply holds {:?}",
                String::from_utf8_lossy(secret)
            );
        }
        assert!(
            !answered || got.windows(5).any(|w| w == b"28P01"),
            "{what}: no 28P01 in {:?}",
            String::from_utf8_lossy(got)
        );
    };
    let mut forged_claims = claims("https://hs.test", sub, json!({}));
    forged_claims["integration"] = json!("embed_king");
    let payloads: Vec<(&str, Vec<u8>)> = vec![
        (
            "forged signature",
            forged(
                r#"{"alg":"HS256"}"#,
                &forged_claims,
                b"guess-guess-guess-guess-guess-guess",
            )
            .into_bytes(),
        ),
        (
            "alg confusion",
            forged(
                r#"{"alg":"HS256"}"#,
                &claims("https://rsa.test", sub, json!({})),
                &std::fs::read(s.keys.path("rsa.pub.pem")).unwrap(),
            )
            .into_bytes(),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(br#"{"alg":"none"}"#),
                b64(forged_claims.to_string().as_bytes())
            )
            .into_bytes(),
        ),
        (
            "another sub's token",
            hs(&claims("https://hs.test", "someone_else", json!({}))).into_bytes(),
        ),
        (
            "a jku header",
            forged(
                r#"{"alg":"HS256","jku":"https://evil.test/jwks"}"#,
                &forged_claims,
                b"guess",
            )
            .into_bytes(),
        ),
        ("not UTF-8", vec![0xff, 0xfe, 0x2e, 0x2e]),
        ("a huge message", vec![b'a'; 100_000]),
    ];
    for (what, payload) in &payloads {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.write_all(&startup(sub, &s.db)).unwrap();
        // AuthenticationCleartextPassword: R, length 8, code 3.
        let mut ask = [0u8; 9];
        stream.read_exact(&mut ask).unwrap();
        assert_eq!(ask, [b'R', 0, 0, 0, 8, 0, 0, 0, 3], "{what}");
        let _ = stream.write_all(&password_message(payload));
        let got = drain(&mut stream);
        // A message over the bound may be cut off before its answer is read.
        scan(what, &got, payload.len() < 20_000);
    }
    // A declared user is asked for SCRAM, never for a cleartext token.
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(&startup("king", &s.db)).unwrap();
    let mut ask = [0u8; 9];
    stream.read_exact(&mut ask).unwrap();
    assert_eq!(&ask[..1], b"R");
    assert_eq!(&ask[5..9], &10i32.to_be_bytes(), "SASL for a declared user");
    // The good token still works: nothing above disturbed the proxy.
    assert!(s.login(sub, &good).is_ok());
}

/// With `plaintext: never`, a token is not even asked for without TLS;
/// `local` allows loopback only (a unit test covers other addresses).
#[test]
fn plaintext_never_refuses_before_the_token_travels() {
    let s = setup("never");
    let sub = "plain";
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", s.proxy.port)).unwrap();
    stream.write_all(&startup(sub, &s.db)).unwrap();
    let got = drain(&mut stream);
    assert_eq!(
        got.first(),
        Some(&b'E'),
        "no password request: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(got.windows(5).any(|w| w == b"28P01"));
    assert!(
        s.proxy
            .log()
            .contains("a token may not travel in plain text from 127.0.0.1"),
        "{}",
        s.proxy.log()
    );

    use rowgate::tokens::Plaintext;
    let lan: std::net::IpAddr = "10.1.2.3".parse().unwrap();
    let lo: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    assert!(!Plaintext::Local.allows(false, lan));
    assert!(Plaintext::Local.allows(false, lo));
    assert!(Plaintext::Local.allows(true, lan));
    assert!(!Plaintext::Never.allows(false, lo));
    assert!(Plaintext::Always.allows(false, lan));
}

/// With `plaintext: never`, a token travels over TLS (psql with
/// `sslmode=require`), and the same client without TLS is refused.
#[test]
fn plaintext_never_takes_a_token_over_tls() {
    let certs = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (
        certs.path().join("server.crt"),
        certs.path().join("server.key"),
    );
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let s = setup_with(
        "never",
        &format!(
            "tls:\n  cert: {}\n  key: {}\n",
            cert.display(),
            key.display()
        ),
    );
    let token = hs(&claims("https://hs.test", "tls_user", json!({})));
    let bin = common::find_pg_bin().expect("PostgreSQL client programs");
    let psql = |sslmode: &str| {
        Command::new(bin.join("psql"))
            .arg(format!(
                "host=127.0.0.1 port={} user=tls_user dbname={} sslmode={sslmode}",
                s.proxy.port, s.db
            ))
            .args([
                "-X",
                "-A",
                "-t",
                "-c",
                "SELECT current_user, count(*) FROM countries",
            ])
            .env("PGPASSWORD", &token)
            .output()
            .expect("run psql")
    };
    let out = psql("require");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "tls_user|1");
    let out = psql("disable");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("password authentication failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The load check: 2,000 token logins and 2,000 SCRAM logins in a row,
/// timed (a figure to read, not an assertion): `cargo test --release
/// --test tokens -- --ignored --nocapture`.
#[test]
#[ignore]
fn load_token_and_scram_logins() {
    let s = setup("local");
    let n = 2000;
    let token = hs(&claims(
        "https://hs.test",
        "loadtest",
        json!({"exp": now() + 3000, "iat": now()}),
    ));
    let started = std::time::Instant::now();
    for _ in 0..n {
        drop(s.login("loadtest", &token).unwrap());
    }
    let tokens = started.elapsed();
    let started = std::time::Instant::now();
    for _ in 0..n {
        drop(s.login("king", "pw").unwrap());
    }
    let scram = started.elapsed();
    println!(
        "{n} token logins: {:.2} s ({:.0}/s); {n} SCRAM logins: {:.2} s ({:.0}/s)",
        tokens.as_secs_f64(),
        n as f64 / tokens.as_secs_f64(),
        scram.as_secs_f64(),
        n as f64 / scram.as_secs_f64()
    );
}

/// An HTTPS server of one JWKS document (which the test may replace),
/// with a certificate for 127.0.0.1 from a CA of its own; it counts the
/// requests it answers.
struct JwksServer {
    port: u16,
    body: std::sync::Arc<std::sync::Mutex<String>>,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ca: PathBuf,
}

impl JwksServer {
    fn start(dir: &std::path::Path, keys: &[Value]) -> JwksServer {
        use tokio_rustls::rustls;
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "rowgate test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let ca = dir.join("jwks-ca.pem");
        std::fs::write(&ca, ca_cert.pem()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
        let config = std::sync::Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let body = std::sync::Arc::new(std::sync::Mutex::new(json!({ "keys": keys }).to_string()));
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (b, h) = (body.clone(), hits.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                    continue;
                };
                let mut tls = rustls::StreamOwned::new(conn, stream);
                let mut request = Vec::new();
                let mut chunk = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                if !request.starts_with(b"GET /jwks.json ") {
                    let _ = tls.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
                    continue;
                }
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = b.lock().unwrap().clone();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes());
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        });
        JwksServer {
            port,
            body,
            hits,
            ca,
        }
    }

    fn set(&self, keys: &[Value]) {
        *self.body.lock().unwrap() = json!({ "keys": keys }).to_string();
    }

    fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A JWKS URL: the keys are fetched at the first login and cached; a token
/// naming a key the cached set lacks fetches it again (key rotation with
/// no SIGHUP), at most once a second; a key removed from the set stops
/// verifying once the set is fetched again; an unreachable URL refuses
/// logins with its reason in the log; `access --token` fetches too.
#[test]
fn jwks_url_keys_are_fetched_cached_and_rotated() {
    let keys = Keys::generate();
    let k1 = k1_jwk(&keys);
    let server = JwksServer::start(keys.dir.path(), &[k1]);
    let db = common::cluster().create_database("tokens_url");
    let policies = tempfile::tempdir().unwrap();
    std::fs::copy(rls::POLICY, policies.path().join("a.yaml")).unwrap();
    std::fs::write(policies.path().join("tokens.yaml"), TOKEN_POLICY).unwrap();
    let extra = format!(
        "tokens:\n  issuers:\n    web: {{ issuer: https://web.test, audience: {AUDIENCE}, algorithms: [ES256], jwks: \"https://127.0.0.1:{}/jwks.json\" }}\n    dead: {{ issuer: https://dead.test, audience: {AUDIENCE}, algorithms: [ES256], jwks: \"https://127.0.0.1:1/jwks.json\" }}\n  plaintext: local\n",
        server.port
    );
    let ca = server.ca.display().to_string();
    let proxy =
        common::Proxy::start_env(policies.path(), &extra, &[("SSL_CERT_FILE", ca.as_str())]);
    let token = |key: &EncodingKey, kid: &str, iss: &str, sub: &str| {
        mint(
            Algorithm::ES256,
            key,
            Some(kid),
            &claims(iss, sub, json!({})),
        )
    };
    let login = |sub: &str, t: &str| proxy.connect(&db, sub, t);

    assert_eq!(
        server.hits(),
        0,
        "nothing is fetched before a login needs it"
    );
    let mut c = login("w1", &token(&keys.ec1, "k1", "https://web.test", "w1"))
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    c.simple_query("SELECT 1").unwrap();
    assert_eq!(server.hits(), 1);
    login("w2", &token(&keys.ec1, "k1", "https://web.test", "w2")).unwrap();
    assert_eq!(server.hits(), 1, "a known key is served from the cache");

    // Rotation: the set now holds k2 only.
    server.set(std::slice::from_ref(&keys.ec2_jwk));
    std::thread::sleep(tokens_min_interval());
    login("w3", &token(&keys.ec2, "k2", "https://web.test", "w3"))
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    assert_eq!(server.hits(), 2, "an unknown kid fetches the set again");
    // k1 is gone from the set, so from the cache.
    let refused = login("w4", &token(&keys.ec1, "k1", "https://web.test", "w4"))
        .err()
        .expect("k1 left the set");
    assert_eq!(common::sqlstate(&refused).as_deref(), Some("28P01"));
    // Unknown kids in a burst: at most one fetch a second.
    let before = server.hits();
    for i in 0..5 {
        let _ = login(
            "w5",
            &token(&keys.ec1, &format!("nope{i}"), "https://web.test", "w5"),
        );
    }
    assert!(
        server.hits() - before <= 2,
        "{} fetches",
        server.hits() - before
    );

    // An issuer whose URL does not answer: refused, with the reason logged.
    let refused = login("d1", &token(&keys.ec1, "k1", "https://dead.test", "d1"))
        .err()
        .expect("no keys for dead.test");
    assert_eq!(common::sqlstate(&refused).as_deref(), Some("28P01"));
    let log = proxy.log();
    assert!(log.contains("cannot fetch the JWKS"), "{log}");
    assert!(
        log.contains("no key `k1` of issuer `dead` for ES256"),
        "{log}"
    );

    // `rowgate access --token` verifies as the proxy does, fetching the set.
    let out = Command::new(env!("CARGO_BIN_EXE_rowgate"))
        .args(["access", "-c"])
        .arg(proxy.dir.path().join("proxy.yaml"))
        .arg("--token")
        .arg(token(&keys.ec2, "k2", "https://web.test", "w6"))
        .env("SSL_CERT_FILE", &ca)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("login: token of issuer web"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The JWK of the first EC key (`k1`), as the key file holds it.
fn k1_jwk(keys: &Keys) -> Value {
    let text = std::fs::read_to_string(keys.path("jwks.json")).unwrap();
    let set: Value = serde_json::from_str(&text).unwrap();
    set["keys"][0].clone()
}

fn tokens_min_interval() -> Duration {
    rowgate::tokens::REMOTE_MIN_INTERVAL + Duration::from_millis(100)
}

/// `SET rowgate.view_as_token`: an admin looks through a token user's
/// eyes, row for row what the token's own login sees (against native RLS
/// too); `RESET` ends it; a bad token is 22023 with its reason, a
/// non-admin 42501; the token never reaches the audit log, rowgate's log
/// or the upstream.
#[test]
fn an_admin_views_as_a_token_user() {
    let mut s = setup("local");
    let sub = "viewed_tk";
    let token = hs(&claims(
        "https://hs.test",
        sub,
        json!({"attributes": {"merchant": ["King Inc"]}}),
    ));
    let signature = token.rsplit('.').next().unwrap().to_string();
    let mut admin = s.proxy.connect(&s.db, "token_admin", "admin-pw").unwrap();
    let everything = one(&mut admin, "SELECT count(*) FROM orders");
    admin
        .batch_execute(&format!("SET rowgate.view_as_token = '{token}'"))
        .unwrap_or_else(|e| panic!("{e}\n{}", s.proxy.log()));
    let mut direct = s.login(sub, &token).unwrap();
    let oracle = s.oracles.get_mut("king").unwrap();
    let mut compared = 0;
    for &sql in QUERIES.iter().take(40) {
        let native = rls::run(oracle, sql);
        let viewed = rls::run(&mut admin, sql);
        let own = rls::run(&mut direct, sql);
        assert_eq!(viewed, own, "{sql}");
        assert_eq!(viewed, native, "{sql}");
        compared += 1;
    }
    assert_eq!(compared, 40);
    let viewed_count = one(&mut admin, "SELECT count(*) FROM orders");
    assert_ne!(viewed_count, everything, "the filters apply");
    let access = common::text_rows(&mut admin, "SHOW rowgate.access").unwrap();
    let access: Vec<String> = access.into_iter().flatten().flatten().collect();
    assert!(
        access.iter().any(|l| l == &format!("user: {sub}")),
        "{access:?}"
    );
    assert!(
        access
            .iter()
            .any(|l| l.starts_with("login: token of issuer hs")),
        "{access:?}"
    );
    admin.batch_execute("RESET rowgate.view_as_token").unwrap();
    assert_eq!(one(&mut admin, "SELECT count(*) FROM orders"), everything);

    // A token that does not verify: 22023 with its reason; the session
    // stays the admin's.
    let expired = hs(&claims(
        "https://hs.test",
        sub,
        json!({"iat": now() - 1000, "exp": now() - 900}),
    ));
    let e = admin
        .batch_execute(&format!("SET rowgate.view_as_token = '{expired}'"))
        .unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "22023");
    assert!(db.message().contains("token expired"), "{}", db.message());
    let e = admin
        .batch_execute("SET rowgate.view_as_token = 'not.a.token'")
        .unwrap_err();
    assert_eq!(common::sqlstate(&e).as_deref(), Some("22023"));
    assert_eq!(one(&mut admin, "SELECT count(*) FROM orders"), everything);
    // A declared user is viewed by name, not by token.
    let declared = hs(&claims("https://hs.test", "king", json!({})));
    let e = admin
        .batch_execute(&format!("SET rowgate.view_as_token = '{declared}'"))
        .unwrap_err();
    assert_eq!(common::sqlstate(&e).as_deref(), Some("22023"));

    // Not an admin: refused, in both protocols.
    let mut member = s.proxy.connect(&s.db, "king", "pw").unwrap();
    let e = member
        .batch_execute(&format!("SET rowgate.view_as_token = '{token}'"))
        .unwrap_err();
    assert_eq!(common::sqlstate(&e).as_deref(), Some("42501"));
    let message = e.as_db_error().unwrap().message().to_string();
    assert!(message.contains("rowgate.view_as_token"), "{message}");
    let e = member
        .query(&format!("SET rowgate.view_as_token = '{token}'"), &[])
        .unwrap_err();
    assert_eq!(common::sqlstate(&e).as_deref(), Some("42501"));
    drop(member);
    drop(admin);

    // The token is nowhere: not in the audit log (whose records name the
    // viewed user), not in rowgate's log, not upstream.
    let audit = s.keys.path("audit.jsonl");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        if text.contains("view_as_end") || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        text.contains("\"kind\":\"view_as_start\"")
            && text.contains(&format!("\"viewed_as\":\"{sub}\"")),
        "{text}"
    );
    assert!(!text.contains(&signature), "the audit log holds the token");
    assert!(
        !s.proxy.log().contains(&signature),
        "rowgate's log holds the token"
    );
    let mut su = common::cluster().connect(&s.db);
    let seen = su
        .query(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
            &[&signature],
        )
        .unwrap();
    assert_eq!(
        seen[0].get::<_, i64>(0),
        0,
        "a query upstream holds the token"
    );
}
