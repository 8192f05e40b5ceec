//! Fuzz target: any statement text, rewritten for users of every kind, never
//! panics, and whatever the rewriter accepts prints to a text that parses
//! back to exactly the statements it built.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rowgate::policy::{load_sources, Access, Source};
use rowgate::rewrite::{self, default_search_path, Context, OfflineCatalog};

/// The example e-commerce and support policies, plus a table outside the
/// search path and one whose name needs quotes.
const POLICY: &str = r#"
attributes:
  country:  { type: text }
  merchant: { type: text }
groups:
  sales:
    tables: [public.countries, public.merchants, public.orders, sales.refunds, public."Audit"]
  support:
    tables: [public.tickets]
  vietnam:   { attributes: { country: [Vietnam] } }
  singapore: { attributes: { country: [Singapore] } }
users:
  king_manager:
    password: fuzz
    groups: [sales, vietnam]
    attributes: { merchant: [King Inc] }
  apac:
    password: fuzz
    groups: [sales, vietnam, singapore, support]
    attributes: { merchant: All }
  newcomer:
    password: fuzz
    groups: [sales]
  analyst:
    password: fuzz
    role: analyst
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
  sales.refunds:
    filters:
      - { column: order_id, references: public.orders(id) }
  public."Audit":
    filters:
      - { column: merchant, attribute: merchant }
  public.tickets:
    filters:
      - { column: assignee, attribute: username }
"#;

struct Fixture {
    users: Vec<Access>,
    catalog: OfflineCatalog,
    search_path: Vec<String>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let source = Source {
            path: PathBuf::from("fuzz.yaml"),
            text: POLICY.to_string(),
        };
        let policy = match load_sources(&[source]) {
            Ok(loaded) => loaded.policy,
            Err(problems) => panic!("the fuzz policy does not load: {problems:?}"),
        };
        let users = ["king_manager", "apac", "newcomer", "analyst"]
            .iter()
            .map(|u| policy.access(u).expect("every listed user exists"))
            .collect();
        Fixture {
            catalog: OfflineCatalog::new(&policy),
            users,
            search_path: default_search_path(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let fx = fixture();
    for access in &fx.users {
        let cx = Context {
            access,
            catalog: &fx.catalog,
            search_path: &fx.search_path,
            params: &[],
            fence: Default::default(),
        };
        let Ok(out) = rewrite::rewrite(sql, &cx) else {
            continue;
        };
        let statements = out
            .statements
            .as_ref()
            .expect("a non-admin rewrite carries its statements");
        match rewrite::parse_input(&out.sql) {
            Ok(reparsed) => assert!(
                reparsed == *statements,
                "user {}: input {sql:?}\noutput {:?} parses to other statements",
                access.user,
                out.sql
            ),
            Err(e) => panic!(
                "user {}: input {sql:?}\noutput {:?} does not parse: {e}",
                access.user, out.sql
            ),
        }
    }
});
