#!/usr/bin/env python3
"""Dashboard queries through rowgate next to native row-level security.

Run by benches/analytics.sh, which sets up PostgreSQL, the data, the native
RLS roles and `rowgate serve`, and passes a JSON file describing them. For
each (query, user) this runs the query once per target as a warm-up, checks
that rowgate's rows equal the native RLS rows, then runs it REPS more times
per target, the order of the targets rotating each time:

- rowgate:    connected to `rowgate serve` as the policy user;
- native:     connected to PostgreSQL as the user's native RLS role;
- unfiltered: connected to PostgreSQL as the superuser (owner of the tables).

Every statement goes through libpq's PQexec (the simple query protocol), and
the time is the client's wall time for it, rows received. The Markdown
report goes to standard output, progress to standard error. The exit status
is 1 when rowgate's rows differ from the native ones, or a statement failed
other than by a refusal or the timeout.
"""

import datetime
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time

from psycopg import pq

# Die at once on Ctrl-C or TERM, even inside a long PQexec: the driver
# script stops PostgreSQL and rowgate and removes everything.
signal.signal(signal.SIGINT, signal.SIG_DFL)
signal.signal(signal.SIGTERM, signal.SIG_DFL)

TARGETS = ("rowgate", "native", "unfiltered")
# rowgate is flagged when its median is above this bound.
BOUND_FACTOR = 1.5
BOUND_MS = 1.0

USER_NOTES = {
    "one_merchant": "merchant manager: one merchant ({merchant_name}), in its country ({country_name})",
    "one_country": "country manager: every merchant of {country_name}",
    "all_user": "every country, every merchant (All), filters still applied",
    "analyst": "rowgate role `analyst` (no filters); natively a BYPASSRLS role",
}

# The dashboard queries: (name, kind, check, SQL). kind is L when every
# condition on a table's columns is leakproof in PostgreSQL's sense (plain
# comparisons with constants or now()-expressions, joins on keys), N when
# some is not (LIKE, lower(), numeric compared with float8). check is
# "exact" (sorted rows equal) or "visible" (LIMIT without ORDER BY: any rows
# may come back, so rowgate's must be as many as natively, and each one an
# order the native role sees, as it sees it). {names} are filled in from the
# data (see parameters()).
QUERIES = [
    # Point lookups by primary key (drill-downs).
    ("pk_order", "L", "exact",
     "SELECT * FROM orders WHERE id = {order_id}"),
    ("pk_customer", "L", "exact",
     "SELECT id, email, name, country_id, created_at FROM customers WHERE id = {customer_id}"),
    ("items_of_order", "L", "exact",
     "SELECT * FROM order_items WHERE order_id = {order_id}"),
    # KPIs and breakdowns over date ranges.
    ("kpi_30d", "L", "exact",
     "SELECT count(*) AS orders, sum(amount) AS revenue FROM orders "
     "WHERE created_at >= now() - interval '30 days'"),
    ("status_30d", "L", "exact",
     "SELECT status, count(*), sum(amount) FROM orders "
     "WHERE created_at >= now() - interval '30 days' GROUP BY status ORDER BY status"),
    # Superset: a time-series chart over a fixed range.
    ("superset_daily", "L", "exact",
     "SELECT date_trunc('day', created_at) AS __timestamp, sum(amount) AS \"SUM(amount)\" "
     "FROM public.orders "
     "WHERE created_at >= TO_TIMESTAMP('{superset_from}', 'YYYY-MM-DD HH24:MI:SS') "
     "AND created_at < TO_TIMESTAMP('{superset_to}', 'YYYY-MM-DD HH24:MI:SS') "
     "GROUP BY date_trunc('day', created_at) ORDER BY \"SUM(amount)\" DESC LIMIT 10000"),
    # Metabase: count by day, previous 7 days.
    ("metabase_7d", "L", "exact",
     "SELECT CAST(date_trunc('day', \"public\".\"orders\".\"created_at\") AS date) AS \"created_at\", "
     "count(*) AS \"count\" FROM \"public\".\"orders\" "
     "WHERE (\"public\".\"orders\".\"created_at\" >= date_trunc('day', (now() + INTERVAL '-7 day'))) "
     "AND (\"public\".\"orders\".\"created_at\" < date_trunc('day', now())) "
     "GROUP BY CAST(date_trunc('day', \"public\".\"orders\".\"created_at\") AS date) "
     "ORDER BY CAST(date_trunc('day', \"public\".\"orders\".\"created_at\") AS date) ASC"),
    # Grafana: $__timeGroup and $__timeFilter over the last 6 hours.
    ("grafana_6h", "L", "exact",
     "SELECT floor(extract(epoch FROM created_at) / 300) * 300 AS \"time\", count(*) AS orders, "
     "sum(amount) AS revenue FROM orders "
     "WHERE created_at BETWEEN '{grafana_from}' AND '{grafana_to}' GROUP BY 1 ORDER BY 1"),
    # Tableau: a sum by status with timestamp literals.
    ("tableau_status_90d", "L", "exact",
     "SELECT \"orders\".\"status\" AS \"status\", SUM(\"orders\".\"amount\") AS \"sum:amount:ok\" "
     "FROM \"public\".\"orders\" \"orders\" "
     "WHERE ((\"orders\".\"created_at\" >= (TIMESTAMP '{tableau_from}')) "
     "AND (\"orders\".\"created_at\" < (TIMESTAMP '{tableau_to}'))) GROUP BY 1"),
    # Joins filtered on a dimension.
    ("merchant_by_name_30d", "L", "exact",
     "SELECT m.name, count(*) AS orders, sum(o.amount) AS revenue "
     "FROM merchants m JOIN orders o ON o.merchant_id = m.id "
     "WHERE m.name = '{merchant_name}' AND o.created_at >= now() - interval '30 days' "
     "GROUP BY m.name"),
    ("merchant_by_id_latest", "L", "exact",
     "SELECT o.id, o.status, o.amount, o.created_at "
     "FROM orders o JOIN merchants m ON m.id = o.merchant_id "
     "WHERE m.id = {merchant_id} ORDER BY o.created_at DESC LIMIT 100"),
    ("customer_by_email", "L", "exact",
     "SELECT c.id, c.email, o.id AS order_id, o.amount, o.created_at "
     "FROM customers c JOIN orders o ON o.customer_id = c.id "
     "WHERE c.email = '{email}' ORDER BY o.created_at DESC"),
    # Table previews.
    ("preview_50", "L", "visible",
     "SELECT * FROM orders LIMIT 50"),
    ("latest_50", "L", "exact",
     "SELECT * FROM orders ORDER BY created_at DESC LIMIT 50"),
    # Distinct counts, monthly aggregates, windows.
    ("distinct_customers_last_month", "L", "exact",
     "SELECT count(DISTINCT customer_id) FROM orders "
     "WHERE created_at >= date_trunc('month', now()) - interval '1 month' "
     "AND created_at < date_trunc('month', now())"),
    ("monthly_revenue", "L", "exact",
     "SELECT date_trunc('month', created_at) AS month, count(*) AS orders, sum(amount) AS revenue "
     "FROM orders GROUP BY 1 ORDER BY 1"),
    ("running_total_60d", "L", "exact",
     "SELECT day, revenue, sum(revenue) OVER (ORDER BY day) AS running "
     "FROM (SELECT date_trunc('day', created_at) AS day, sum(amount) AS revenue FROM orders "
     "WHERE created_at >= now() - interval '60 days' GROUP BY 1) d ORDER BY day"),
    ("top3_customers_per_merchant_90d", "L", "exact",
     "SELECT merchant_id, customer_id, total FROM ("
     "SELECT merchant_id, customer_id, sum(amount) AS total, "
     "row_number() OVER (PARTITION BY merchant_id ORDER BY sum(amount) DESC, customer_id) AS rn "
     "FROM orders WHERE created_at >= now() - interval '90 days' "
     "GROUP BY merchant_id, customer_id) t WHERE rn <= 3"),
    # EXISTS and IN subqueries.
    ("exists_refunds_7d", "L", "exact",
     "SELECT m.id, m.name FROM merchants m WHERE EXISTS ("
     "SELECT 1 FROM orders o WHERE o.merchant_id = m.id AND o.status = 'refunded' "
     "AND o.created_at >= now() - interval '7 days') ORDER BY m.name"),
    ("in_customers_of_country_30d", "L", "exact",
     "SELECT count(*), sum(amount) FROM orders "
     "WHERE customer_id IN (SELECT id FROM customers WHERE country_id = {country_id}) "
     "AND created_at >= now() - interval '30 days'"),
    # order_items: one product over 7 days, categories, sums across tables.
    ("product_items_7d", "L", "exact",
     "SELECT date_trunc('day', o.created_at) AS day, sum(oi.quantity) AS units, "
     "sum(oi.quantity * oi.price) AS revenue "
     "FROM order_items oi JOIN orders o ON o.id = oi.order_id "
     "WHERE oi.product_id = {product_id} AND o.created_at >= now() - interval '7 days' "
     "GROUP BY 1 ORDER BY 1"),
    ("category_revenue_7d", "L", "exact",
     "SELECT p.category, sum(oi.quantity) AS units, sum(oi.quantity * oi.price) AS revenue "
     "FROM order_items oi JOIN orders o ON o.id = oi.order_id "
     "JOIN products p ON p.id = oi.product_id "
     "WHERE o.created_at >= now() - interval '7 days' GROUP BY p.category ORDER BY revenue DESC"),
    ("country_sales_30d", "L", "exact",
     "SELECT c.name AS country, count(DISTINCT o.id) AS orders, "
     "sum(oi.quantity * oi.price) AS revenue "
     "FROM countries c JOIN merchants m ON m.country_id = c.id "
     "JOIN orders o ON o.merchant_id = m.id JOIN order_items oi ON oi.order_id = o.id "
     "WHERE o.created_at >= now() - interval '30 days' GROUP BY c.name ORDER BY revenue DESC"),
    ("customer_country_30d", "L", "exact",
     "SELECT cc.name AS customer_country, count(*) AS orders, sum(o.amount) AS revenue "
     "FROM orders o JOIN customers cu ON cu.id = o.customer_id "
     "JOIN countries cc ON cc.id = cu.country_id "
     "WHERE o.created_at >= now() - interval '30 days' GROUP BY cc.name ORDER BY cc.name"),
    # Conditions that are not leakproof.
    ("merchant_like_30d", "N", "exact",
     "SELECT m.name, count(o.id) AS orders, sum(o.amount) AS revenue "
     "FROM merchants m JOIN orders o ON o.merchant_id = m.id "
     "WHERE m.name LIKE '{merchant_prefix}%' AND o.created_at >= now() - interval '30 days' "
     "GROUP BY m.name ORDER BY m.name"),
    ("customer_lower_email", "N", "exact",
     "SELECT c.id, c.email, count(o.id) AS orders "
     "FROM customers c LEFT JOIN orders o ON o.customer_id = c.id "
     "WHERE lower(c.email) = '{email_lower}' GROUP BY c.id, c.email"),
    ("amount_float8_7d", "N", "exact",
     "SELECT count(*), sum(amount) FROM orders "
     "WHERE amount > 450.5::float8 AND created_at >= now() - interval '7 days'"),
]


def log(message):
    print(message, file=sys.stderr, flush=True)


class Failed(Exception):
    pass


class Result:
    """One statement's outcome: seconds, and rows (text) or an error."""

    def __init__(self, seconds, rows=None, sqlstate=None, error=None):
        self.seconds = seconds
        self.rows = rows
        self.sqlstate = sqlstate
        self.error = error

    @property
    def ok(self):
        return self.error is None

    @property
    def refused(self):
        return self.sqlstate == "42501"

    @property
    def timed_out(self):
        return self.sqlstate == "57014"

    def describe(self):
        if self.ok:
            return f"{len(self.rows)} rows"
        return f"ERROR {self.sqlstate}: {self.error}"


def connect(cfg, port, user, password=None):
    parts = [
        "host=127.0.0.1",
        f"port={port}",
        f"dbname={cfg['database']}",
        f"user={user}",
        "application_name=analytics-bench",
        "sslmode=disable",
    ]
    if password:
        parts.append(f"password={password}")
    conn = pq.PGconn.connect(" ".join(parts).encode())
    if conn.status != pq.ConnStatus.OK:
        raise Failed(f"cannot connect as {user} to port {port}: "
                     f"{conn.get_error_message().strip()}")
    return conn


def run(conn, sql):
    """Runs sql with PQexec; the time covers sending it and receiving every row."""
    started = time.perf_counter()
    res = conn.exec_(sql.encode())
    seconds = time.perf_counter() - started
    try:
        if res.status == pq.ExecStatus.TUPLES_OK:
            n, f = res.ntuples, res.nfields
            rows = [tuple(res.get_value(r, c) for c in range(f)) for r in range(n)]
            return Result(seconds, rows=rows)
        if res.status == pq.ExecStatus.COMMAND_OK:
            return Result(seconds, rows=[])
        state = res.error_field(pq.DiagnosticField.SQLSTATE)
        message = res.error_field(pq.DiagnosticField.MESSAGE_PRIMARY)
        return Result(seconds,
                      sqlstate=state.decode() if state else "?",
                      error=(message or res.error_message or b"?").decode(errors="replace").strip())
    finally:
        res.clear()


def must(conn, sql):
    result = run(conn, sql)
    if not result.ok:
        raise Failed(f"{sql}: {result.describe()}")
    return result.rows


def one(conn, sql):
    rows = must(conn, sql)
    if not rows:
        raise Failed(f"{sql}: no rows")
    return [v.decode() if v is not None else None for v in rows[0]]


def sort_key(row):
    return tuple((v is None, v or b"") for v in row)


def parameters(cfg, conn):
    """The constants of the queries, taken from the generated data."""
    m = cfg["merchant_id"]
    merchant_name, country_id, country_name = one(
        conn, f"SELECT m.name, c.id, c.name FROM merchants m JOIN countries c "
              f"ON c.id = m.country_id WHERE m.id = {m}")
    (order_id,) = one(
        conn, f"SELECT id FROM orders WHERE merchant_id = {m} ORDER BY id "
              f"OFFSET (SELECT count(*) / 2 FROM orders WHERE merchant_id = {m}) LIMIT 1")
    # A customer of that merchant from the merchant's own country, so that
    # one_merchant and one_country see their orders; any customer of the
    # merchant if there is none.
    rows = must(conn, f"SELECT c.id, c.email FROM orders o JOIN customers c ON c.id = o.customer_id "
                      f"WHERE o.merchant_id = {m} AND c.country_id = {country_id} "
                      f"ORDER BY o.id DESC LIMIT 1")
    if not rows:
        rows = must(conn, f"SELECT c.id, c.email FROM orders o JOIN customers c "
                          f"ON c.id = o.customer_id WHERE o.merchant_id = {m} "
                          f"ORDER BY o.id DESC LIMIT 1")
    customer_id, email = (v.decode() for v in rows[0])
    (product_id,) = one(
        conn, f"SELECT oi.product_id FROM orders o JOIN order_items oi ON oi.order_id = o.id "
              f"WHERE o.merchant_id = {m} ORDER BY o.id DESC, oi.id LIMIT 1")
    now = datetime.datetime.now(datetime.timezone.utc)
    month = now.date().replace(day=1)
    last_month = (month - datetime.timedelta(days=1)).replace(day=1)
    month_before = (last_month - datetime.timedelta(days=1)).replace(day=1)
    today = now.date()
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    return {
        "merchant_id": m,
        "merchant_name": merchant_name,
        "merchant_prefix": merchant_name[:-1],
        "country_id": country_id,
        "country_name": country_name,
        "order_id": order_id,
        "customer_id": customer_id,
        "email": email,
        "email_lower": email.lower(),
        "product_id": product_id,
        # Superset: the month before last, as its time range picker writes it.
        "superset_from": f"{month_before} 00:00:00",
        "superset_to": f"{last_month} 00:00:00",
        # Grafana: the last 6 hours, as $__timeFilter writes them.
        "grafana_from": (now - datetime.timedelta(hours=6)).strftime(stamp),
        "grafana_to": now.strftime(stamp),
        # Tableau: the 90 days before today.
        "tableau_from": f"{today - datetime.timedelta(days=90)} 00:00:00.000",
        "tableau_to": f"{today} 00:00:00.000",
    }


class Bench:
    def __init__(self, cfg):
        self.cfg = cfg
        self.users = cfg["users"]
        if cfg["only_users"].strip():
            wanted = cfg["only_users"].split()
            unknown = [u for u in wanted if u not in self.users]
            if unknown:
                raise Failed(f"unknown user(s) in BENCH_USERS: {' '.join(unknown)} "
                             f"(known: {' '.join(self.users)})")
            self.users = [u for u in self.users if u in wanted]
        self.queries = QUERIES
        if cfg["only_queries"].strip():
            wanted = cfg["only_queries"].split()
            names = [q[0] for q in QUERIES]
            unknown = [q for q in wanted if q not in names]
            if unknown:
                raise Failed(f"unknown query name(s) in BENCH_QUERIES: {' '.join(unknown)} "
                             f"(known: {' '.join(names)})")
            self.queries = [q for q in QUERIES if q[0] in wanted]
        self.unfiltered = self.session(cfg["pg_port"], "postgres")
        self.params = parameters(cfg, self.unfiltered)
        self.conns = {}
        for u in self.users:
            self.conns[(u, "rowgate")] = self.session(cfg["rowgate_port"], u, cfg["password"])
            self.conns[(u, "native")] = self.session(cfg["pg_port"], f"rls_{u}")
            self.conns[(u, "unfiltered")] = self.unfiltered
        self.results = []
        self.failures = []

    def session(self, port, user, password=None):
        conn = connect(self.cfg, port, user, password)
        must(conn, f"SET statement_timeout = '{self.cfg['timeout_seconds']}s'")
        return conn

    # ------------------------------------------------------------ checking

    def same_rows(self, user, check, rowgate, native):
        """Whether rowgate's rows are what native RLS gives; a reason if not."""
        if check == "exact":
            a = sorted(rowgate.rows, key=sort_key)
            b = sorted(native.rows, key=sort_key)
            if a == b:
                return None
            sa, sb = set(a), set(b)
            only_rg = sum(1 for r in a if r not in sb)
            only_nat = sum(1 for r in b if r not in sa)
            return (f"rowgate {len(a)} rows, native {len(b)} rows; "
                    f"{only_rg} rows only through rowgate, {only_nat} only natively")
        # visible: as many rows, each an order the native role sees as is.
        if len(rowgate.rows) != len(native.rows):
            return f"rowgate {len(rowgate.rows)} rows, native {len(native.rows)} rows"
        if not rowgate.rows:
            return None
        ids = ",".join(r[0].decode() for r in rowgate.rows)
        seen = must(self.conns[(user, "native")], f"SELECT * FROM orders WHERE id IN ({ids})")
        if sorted(seen, key=sort_key) != sorted(rowgate.rows, key=sort_key):
            return (f"of rowgate's {len(rowgate.rows)} rows the native role sees "
                    f"{len(set(seen) & set(rowgate.rows))} as they are")
        return None

    def verify(self, user, name, check, sql, rowgate, native):
        """Checks rowgate's rows against native's. A difference is checked
        again twice, both run back to back, since `now()` moves between two
        runs and the data has an order every few seconds; returns the
        difference that remains, if any."""
        reason = self.same_rows(user, check, rowgate, native)
        for _ in range(2):
            if reason is None:
                return None
            log(f"   {name} / {user}: rows differ ({reason}); running both again")
            rowgate = run(self.conns[(user, "rowgate")], sql)
            native = run(self.conns[(user, "native")], sql)
            if not (rowgate.ok and native.ok):
                return f"on the new run: rowgate {rowgate.describe()}, native {native.describe()}"
            reason = self.same_rows(user, check, rowgate, native)
        return reason

    # ------------------------------------------------------------ measuring

    def measure(self):
        reps = self.cfg["reps"]
        pairs = [(q, u) for q in self.queries for u in self.users]
        log(f"== {len(pairs)} (query, user) pairs, 1 warm-up + {reps} timed run(s) per target")
        for index, ((name, kind, check, template), user) in enumerate(pairs):
            sql = template.format(**self.params)
            entry = {"query": name, "kind": kind, "user": user, "sql": sql,
                     "status": "ok", "note": "", "rows": None,
                     "times": {t: [] for t in TARGETS}, "median": {}}
            # Warm-up, and the rows to compare.
            warm = {t: run(self.conns[(user, t)], sql) for t in TARGETS}
            broken = set()
            for t in TARGETS:
                r = warm[t]
                if r.ok:
                    continue
                broken.add(t)
                if t == "rowgate" and r.refused:
                    entry["status"] = "REFUSED"
                    entry["note"] = r.error
                elif r.timed_out:
                    if entry["status"] == "ok":
                        entry["status"] = "TIMEOUT"
                    entry["note"] += f"{t} timed out. "
                else:
                    entry["status"] = "ERROR"
                    entry["note"] += f"{t}: {r.describe()}. "
                    self.failures.append(f"{name} / {user}: {t}: {r.describe()}")
            if warm["native"].ok:
                entry["rows"] = len(warm["native"].rows)
            if "rowgate" not in broken and "native" not in broken:
                reason = self.verify(user, name, check, sql, warm["rowgate"], warm["native"])
                if reason:
                    entry["status"] = "MISMATCH"
                    entry["note"] = reason
                    self.failures.append(f"{name} / {user}: rows differ: {reason}")
                    log(f"!! MISMATCH {name} / {user}: {reason}\n!! {sql}")
            for rep in range(reps):
                shift = (index + rep) % len(TARGETS)
                order = TARGETS[shift:] + TARGETS[:shift]
                got = {}
                for t in order:
                    if t in broken:
                        continue
                    r = run(self.conns[(user, t)], sql)
                    got[t] = r
                    if r.ok:
                        entry["times"][t].append(r.seconds * 1000)
                    else:
                        broken.add(t)
                        if entry["status"] in ("ok", "TIMEOUT"):
                            entry["status"] = "TIMEOUT" if r.timed_out else "ERROR"
                        entry["note"] += f"{t}: {r.describe()}. "
                        if not r.timed_out:
                            self.failures.append(f"{name} / {user}: {t}: {r.describe()}")
                # Every repetition's rows are checked too: from the second
                # run on, rowgate runs the statement it prepared.
                if (entry["status"] == "ok" and "rowgate" in got and "native" in got
                        and got["rowgate"].ok and got["native"].ok):
                    reason = self.verify(user, name, check, sql, got["rowgate"], got["native"])
                    if reason:
                        entry["status"] = "MISMATCH"
                        entry["note"] = f"repetition {rep + 1}: {reason}"
                        self.failures.append(f"{name} / {user}: rows differ: {entry['note']}")
                        log(f"!! MISMATCH {name} / {user}: {entry['note']}\n!! {sql}")
            for t in TARGETS:
                if entry["times"][t]:
                    entry["median"][t] = statistics.median(entry["times"][t])
            self.results.append(entry)
            log(f"[{index + 1}/{len(pairs)}] {name} / {user}: {self.progress(entry)}")

    @staticmethod
    def ratio(entry):
        m = entry["median"]
        if entry["status"] in ("ok", "MISMATCH") and "rowgate" in m and m.get("native"):
            return m["rowgate"] / m["native"]
        return None

    @staticmethod
    def over_bound(entry):
        m = entry["median"]
        return (Bench.ratio(entry) is not None
                and m["rowgate"] > BOUND_FACTOR * m["native"] + BOUND_MS)

    def progress(self, entry):
        m = entry["median"]
        parts = [f"{t} {m[t]:.1f} ms" for t in TARGETS if t in m]
        r = self.ratio(entry)
        if r is not None:
            parts.append(f"ratio {r:.2f}")
        if entry["status"] != "ok":
            parts.append(f"{entry['status']} {entry['note']}".strip())
        return ", ".join(parts)

    # ------------------------------------------------------------ report

    def report(self):
        cfg, p = self.cfg, self.params
        out = []
        w = out.append
        when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        w("## Analytical queries (`benches/analytics.sh`)")
        w("")
        w(f"- {when}; rowgate `{cfg['revision']}`; {cfg['postgres_version']}; "
          f"{os.cpu_count()} CPUs; {platform.system()} {platform.release()}.")
        w(f"- {cfg['orders']:,} orders, order_items 3x, customers 1/10, 2,000 merchants, "
          f"10,000 products, 30 countries; {cfg['database_size']} on disk; generated in "
          f"{cfg['generation_seconds']} s. shared_buffers 512MB, fsync off, other settings default.")
        with open("/proc/loadavg") as f:
            load_end = " ".join(f.read().split()[:3])
        w(f"- Load average {cfg['load_start']} at the start, {load_end} at the end "
          f"(other processes on the machine add noise).")
        w(f"- Per (query, user) and target: 1 warm-up, then the median of {cfg['reps']} run(s), "
          f"the targets' order rotating each run; client wall time per statement, simple "
          f"query protocol, rows received.")
        w("- Targets: **rowgate** (`rowgate serve`, as the policy user; its upstream role "
          "bypasses RLS), **native** (PostgreSQL directly, as the user's RLS role with the same "
          "rules as `CREATE POLICY`), **unfiltered** (PostgreSQL directly, as the superuser).")
        w("- Users: " + "; ".join(f"`{u}`: {USER_NOTES[u].format(**p)}" for u in self.users) + ".")
        w(f"- kind L: every condition on table columns is leakproof; N: some is not. "
          f"Flag `>bound`: rowgate > {BOUND_FACTOR} x native + {BOUND_MS:g} ms.")
        w("")
        w("| query | kind | user | rows | rowgate ms | native ms | unfiltered ms | rowgate/native | flag |")
        w("|---|---|---|---:|---:|---:|---:|---:|---|")

        def ms(entry, t):
            v = entry["median"].get(t)
            return f"{v:.1f}" if v is not None else "-"

        for e in self.results:
            r = self.ratio(e)
            flags = []
            if e["status"] != "ok":
                flags.append(e["status"])
            if self.over_bound(e):
                flags.append(">bound")
            rows = "-" if e["rows"] is None else str(e["rows"])
            w(f"| {e['query']} | {e['kind']} | {e['user']} | {rows} | {ms(e, 'rowgate')} | "
              f"{ms(e, 'native')} | {ms(e, 'unfiltered')} | "
              f"{'-' if r is None else f'{r:.2f}'} | {' '.join(flags)} |")
        w("")

        measured = [e for e in self.results if self.ratio(e) is not None]

        def geomean(entries):
            if not entries:
                return "-"
            return f"{math.exp(sum(math.log(self.ratio(e)) for e in entries) / len(entries)):.2f}"

        w("| rowgate/native | geomean | pairs | over bound |")
        w("|---|---:|---:|---:|")
        groups = [("all", measured)]
        groups += [(f"user {u}", [e for e in measured if e["user"] == u]) for u in self.users]
        groups += [("kind L (leakproof)", [e for e in measured if e["kind"] == "L"]),
                   ("kind N (not leakproof)", [e for e in measured if e["kind"] == "N"])]
        for label, entries in groups:
            over = sum(1 for e in entries if self.over_bound(e))
            w(f"| {label} | {geomean(entries)} | {len(entries)} | {over} |")
        w("")
        if measured:
            worst = max(measured, key=self.ratio)
            w(f"- Worst ratio: **{self.ratio(worst):.2f}**, `{worst['query']}` as `{worst['user']}` "
              f"(rowgate {worst['median']['rowgate']:.1f} ms, native {worst['median']['native']:.1f} ms).")
        over = [e for e in measured if self.over_bound(e)]
        w(f"- Over the bound: **{len(over)}** of {len(measured)} measured pairs"
          + (": " + ", ".join(f"{e['query']}/{e['user']}" for e in over) if over else "") + ".")
        for status in ("REFUSED", "TIMEOUT", "ERROR", "MISMATCH"):
            hit = [e for e in self.results if e["status"] == status]
            if hit:
                w(f"- {status} ({len(hit)}): "
                  + "; ".join(f"{e['query']}/{e['user']}: {e['note'].strip()}" for e in hit))
        w(f"- Total time of the run: {int(time.time()) - cfg['started']} s "
          f"(build, start, generation and measurement).")
        w("")
        w("<details><summary>The queries</summary>")
        w("")
        w("| query | kind | SQL |")
        w("|---|---|---|")
        for name, kind, _check, template in self.queries:
            text = template.format(**self.params).replace("|", "\\|")
            w(f"| {name} | {kind} | `{text}` |")
        w("")
        w("</details>")
        print("\n".join(out), flush=True)

    # ------------------------------------------------------------ explain

    def forwarded(self, user, sql):
        """What rowgate forwards for sql, from the debug log of a fresh
        session (so the statement is not yet an automatic prepared one);
        else `rowgate explain`'s offline rewrite. Returns (sql, source)."""
        path = self.cfg["rowgate_log"]
        start = os.path.getsize(path)
        conn = connect(self.cfg, self.cfg["rowgate_port"], user, self.cfg["password"])
        try:
            run(conn, sql)
        finally:
            conn.finish()
        time.sleep(0.2)
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
        found = None
        for line in text.splitlines():
            m = re.search(r"\bforward\b.*\buser=(\S+) sql=(.*)$", line)
            if m and m.group(1) == user:
                found = m.group(2)
        if found:
            return found, "the live server's debug log"
        proc = subprocess.run([self.cfg["rowgate"], "explain", "-c", self.cfg["proxy_yaml"],
                               "--user", user, sql], capture_output=True, text=True)
        return proc.stdout.strip() or proc.stderr.strip(), "`rowgate explain` (offline)"

    def explain(self):
        measured = [e for e in self.results if self.ratio(e) is not None]
        worst = sorted(measured, key=self.ratio, reverse=True)[: self.cfg["explain_top"]]
        if not worst:
            return
        upstream = self.session(self.cfg["pg_port"], self.cfg["upstream_role"])
        out = ["", "## EXPLAIN of the worst ratios", ""]
        for e in worst:
            user, sql = e["user"], e["sql"]
            log(f"== EXPLAIN {e['query']} / {user}")
            fwd, source = self.forwarded(user, sql)
            out.append(f"### {e['query']} / {user}: rowgate/native {self.ratio(e):.2f}")
            out.append("")
            out.append(f"Forwarded by rowgate (from {source}):")
            out.append("")
            out += ["```sql", fwd, "```", ""]
            plans = [("rowgate's statement, run directly as the upstream role", upstream, fwd),
                     (f"the query natively, as rls_{user}", self.conns[(user, "native")], sql)]
            for label, conn, text in plans:
                r = run(conn, f"EXPLAIN (ANALYZE, COSTS OFF) {text}")
                out.append(f"Plan of {label}:")
                out.append("")
                out.append("```")
                if r.ok:
                    out += [row[0].decode() for row in r.rows]
                else:
                    out.append(r.describe())
                out += ["```", ""]
        upstream.finish()
        print("\n".join(out), flush=True)


def main():
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    try:
        bench = Bench(cfg)
        bench.measure()
        bench.report()
        if cfg["explain"]:
            bench.explain()
    except Failed as e:
        log(f"analytics.py: {e}")
        return 1
    if bench.failures:
        log("")
        log("!! FAILED: " + str(len(bench.failures)) + " problem(s):")
        for f in bench.failures:
            log(f"!!   {f}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
