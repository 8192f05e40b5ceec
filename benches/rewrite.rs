//! What the rewriter costs per statement (everything `rewrite` does: parse,
//! classify, inject every filter, print, and check the printed text), for a
//! point lookup and for a five-table analytical query, next to parsing the
//! analytical query alone; and what a simple-query statement costs once its
//! shape is prepared (taking its shape: the lookup a session makes before
//! it sends `EXECUTE`), against rewriting the same literal lookup. The
//! policy is inline so the figures do not move when the example policies
//! change.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use rowgate::frontend::autoprep;
use rowgate::policy::{load_sources, Access, PolicySet, Source};
use rowgate::rewrite::{self, default_search_path, Context, OfflineCatalog};

/// A pgbench-like schema where every table is filtered: `regions` by the
/// user's attribute, everything else through a chain of `references`
/// (history -> accounts -> branches -> regions, tellers -> branches).
const POLICY: &str = r#"
attributes:
  region: { type: text }
groups:
  tellers:
    tables: [public.regions, public.branches, public.tellers, public.accounts, public.history]
users:
  emea_teller:
    password: bench
    groups: [tellers]
    attributes: { region: [EMEA, APAC] }
tables:
  public.regions:
    filters:
      - { column: name, attribute: region }
  public.branches:
    filters:
      - { column: region_id, references: public.regions(id) }
  public.tellers:
    filters:
      - { column: bid, references: public.branches(bid) }
  public.accounts:
    filters:
      - { column: bid, references: public.branches(bid) }
  public.history:
    filters:
      - { column: aid, references: public.accounts(aid) }
"#;

const LOOKUP: &str = "SELECT abalance FROM accounts WHERE aid = $1";
/// The lookup as the simple protocol sends it (pgbench `-M simple`).
const LITERAL_LOOKUP: &str = "SELECT abalance FROM accounts WHERE aid = 48213;";

/// Five filtered tables, joins of two kinds, GROUP BY and HAVING, a
/// correlated scalar subquery and a CTE.
const ANALYTICAL: &str = "\
WITH recent AS (
    SELECT h.aid, h.tid, sum(h.delta) AS moved
    FROM history h
    WHERE h.mtime > now() - INTERVAL '7 days'
    GROUP BY h.aid, h.tid
)
SELECT r.name AS region, b.bid, count(DISTINCT a.aid) AS accounts,
       count(DISTINCT t.tid) AS tellers, sum(recent.moved) AS moved
FROM regions r
JOIN branches b ON b.region_id = r.id
JOIN accounts a ON a.bid = b.bid
JOIN recent ON recent.aid = a.aid
LEFT JOIN tellers t ON t.tid = recent.tid
WHERE a.abalance > (SELECT avg(a2.abalance) FROM accounts a2 WHERE a2.bid = b.bid)
GROUP BY r.name, b.bid
HAVING count(*) > 1
ORDER BY moved DESC
LIMIT 20";

fn policy() -> PolicySet {
    let source = Source {
        path: PathBuf::from("bench.yaml"),
        text: POLICY.to_string(),
    };
    match load_sources(&[source]) {
        Ok(loaded) => loaded.policy().clone(),
        Err(problems) => panic!("the bench policy does not load: {problems:?}"),
    }
}

fn bench_rewrite(c: &mut Criterion) {
    let policy = policy();
    let access: std::sync::Arc<Access> =
        policy.access("emea_teller").expect("the bench user exists");
    let catalog = OfflineCatalog::new(&policy);
    let search_path = default_search_path();
    let cx = Context {
        access: &access,
        catalog: &catalog,
        search_path: &search_path,
        params: &[],
        fence: Default::default(),
        listing: Default::default(),
    };
    // Fail loudly, before measuring, if a query is refused: a bench of the
    // refusal path would report a misleadingly low figure.
    for sql in [LOOKUP, ANALYTICAL] {
        let out = rewrite::rewrite(sql, &cx).expect("the bench queries are accepted");
        assert!(out.sql.contains("EMEA"), "no filter in {}", out.sql);
    }

    let mut group = c.benchmark_group("rewrite");
    group.bench_function("lookup", |b| {
        b.iter(|| rewrite::rewrite(black_box(LOOKUP), black_box(&cx)))
    });
    group.bench_function("analytical_5_tables", |b| {
        b.iter(|| rewrite::rewrite(black_box(ANALYTICAL), black_box(&cx)))
    });
    group.bench_function("analytical_5_tables_parse_only", |b| {
        b.iter(|| rewrite::parse(black_box(ANALYTICAL)))
    });
    group.bench_function("literal_lookup", |b| {
        b.iter(|| rewrite::rewrite(black_box(LITERAL_LOOKUP), black_box(&cx)))
    });
    group.bench_function("literal_lookup_shape", |b| {
        b.iter(|| autoprep::shape(black_box(LITERAL_LOOKUP)))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5));
    targets = bench_rewrite
}
criterion_main!(benches);
