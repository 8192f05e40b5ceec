#!/usr/bin/env bash
# Analytical queries through rowgate next to native row-level security.
#
# Builds rowgate (release), starts a throwaway PostgreSQL (temp dir, free
# port, trust auth on 127.0.0.1, fsync off, 512 MB shared buffers), generates
# a star schema (countries, merchants, customers, products, orders,
# order_items: 5M orders and 15M order items by default), and sets up the
# same row rules twice: as rowgate policies (`rowgate serve` in front of the
# cluster) and as native RLS (one role per user with `CREATE POLICY`). Then
# benches/analytics.py runs two dozen BI-style dashboard queries for each
# user, each timed through rowgate, natively as the RLS role, and unfiltered
# as the superuser, in one interleaved run (the order of the three rotates
# each repetition); checks that rowgate returns exactly the native rows; and
# prints a Markdown table with the medians, the ratio rowgate/native, and
# the geometric means. Everything it starts is stopped and removed on exit,
# Ctrl-C included.
#
# Usage: benches/analytics.sh                 (5M orders, 3 repetitions)
#        BENCH_QUICK=1 benches/analytics.sh   (200k orders, 1 repetition)
#
# The report (Markdown) goes to standard output, progress to standard error:
#        benches/analytics.sh >report.md
#
# Settings (environment):
#   BENCH_ORDERS    orders to generate; order_items are 3x, customers 1/10 (5000000; quick: 200000)
#   BENCH_REPS      timed repetitions per (query, user, target), after one warm-up (3; quick: 1)
#   BENCH_QUERIES   run only these queries (names, space-separated; default all)
#   BENCH_USERS     run only these users (one_merchant one_country all_user analyst)
#   BENCH_TIMEOUT   statement_timeout in seconds for every measured statement (600)
#   BENCH_EXPLAIN=1 also print EXPLAIN (ANALYZE, COSTS OFF) of what rowgate forwards for
#                   the worst (query, user) pairs, and of the native query (rowgate then
#                   logs at debug level, to capture what it forwards)
#   BENCH_EXPLAIN_TOP  how many pairs BENCH_EXPLAIN shows (5)
#   BENCH_HOLD=1    set everything up, print how to connect, and wait for Ctrl-C instead
#                   of measuring
#   ROWGATE_LOG     rowgate's log filter (info; with BENCH_EXPLAIN: info,rowgate=debug)
#   ROWGATE_PG_BIN  PostgreSQL's server binaries (found: pg_config, PATH,
#                   /usr/lib/postgresql/*/bin)

set -euo pipefail

usage() {
  sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0"
}
case "${1:-}" in
  -h | --help)
    usage
    exit 0
    ;;
  "") ;;
  *)
    usage >&2
    exit 2
    ;;
esac

QUICK=false
[[ -n ${BENCH_QUICK:-} && ${BENCH_QUICK} != 0 ]] && QUICK=true
if $QUICK; then
  ORDERS=${BENCH_ORDERS:-200000}
  REPS=${BENCH_REPS:-1}
else
  ORDERS=${BENCH_ORDERS:-5000000}
  REPS=${BENCH_REPS:-3}
fi
TIMEOUT=${BENCH_TIMEOUT:-600}
EXPLAIN=false
[[ -n ${BENCH_EXPLAIN:-} && ${BENCH_EXPLAIN} != 0 ]] && EXPLAIN=true
EXPLAIN_TOP=${BENCH_EXPLAIN_TOP:-5}
HOLD=false
[[ -n ${BENCH_HOLD:-} && ${BENCH_HOLD} != 0 ]] && HOLD=true
if $EXPLAIN; then
  export ROWGATE_LOG=${ROWGATE_LOG:-info,rowgate=debug}
else
  export ROWGATE_LOG=${ROWGATE_LOG:-info}
fi

DB=analytics
# The role rowgate connects upstream as: reads every table, bypasses RLS.
UPSTREAM_ROLE=rowgate
# The policy users; each has a native RLS role named rls_<user>.
USERS=(one_merchant one_country all_user analyst)
# The merchant whose manager one_merchant is; one_country manages its country.
MERCHANT_ID=42
MERCHANTS=2000
PRODUCTS=10000
COUNTRIES=30

die() {
  echo "analytics.sh: $*" >&2
  exit 1
}
say() {
  echo "== $*" >&2
}

for n in ORDERS REPS TIMEOUT EXPLAIN_TOP; do
  [[ ${!n} =~ ^[0-9]+$ && ${!n} -gt 0 ]] || die "$n must be a positive whole number, not '${!n}'"
done
((ORDERS >= 10000)) || die "BENCH_ORDERS must be at least 10000"
CUSTOMERS=$((ORDERS / 10))

# psql takes these from the environment; every connection here names its
# host, port, user and database itself.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE PGSERVICE \
  PGSERVICEFILE PGOPTIONS PGSSLMODE PGAPPNAME

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
started=$(date +%s)

# ---------------------------------------------------------------- tools

# PostgreSQL's server binaries: ROWGATE_PG_BIN, `pg_config --bindir`, PATH,
# or the newest /usr/lib/postgresql/*/bin (as the test harness looks).
find_pg_bin() {
  local -a candidates=() path_dirs=()
  local d
  [[ -n ${ROWGATE_PG_BIN:-} ]] && candidates+=("$ROWGATE_PG_BIN")
  if command -v pg_config >/dev/null 2>&1; then
    candidates+=("$(pg_config --bindir)")
  fi
  IFS=: read -ra path_dirs <<<"$PATH"
  candidates+=("${path_dirs[@]}")
  while IFS= read -r d; do
    candidates+=("$d")
  done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -t/ -k5,5nr)
  for d in "${candidates[@]}"; do
    if [[ -x $d/initdb && -x $d/pg_ctl && -x $d/postgres ]]; then
      echo "$d"
      return 0
    fi
  done
  return 1
}

# A client program from the server's directory, else from PATH.
client_tool() {
  if [[ -x $pg_bin/$1 ]]; then
    echo "$pg_bin/$1"
  else
    command -v "$1" || die "$1 was not found (Debian/Ubuntu: apt-get install postgresql-client)"
  fi
}

pg_bin=$(find_pg_bin) ||
  die "PostgreSQL's server binaries (initdb, pg_ctl, postgres) were not found; install them (Debian/Ubuntu: apt-get install postgresql) or point ROWGATE_PG_BIN at their directory"
psql=$(client_tool psql)

command -v python3 >/dev/null 2>&1 || die "python3 was not found (Debian/Ubuntu: apt-get install python3 python3-pip)"
if ! python3 -c "import psycopg" >/dev/null 2>&1; then
  say "installing psycopg 3 for python3"
  python3 -m pip install -q "psycopg[binary]" >&2 ||
    python3 -m pip install -q --break-system-packages "psycopg[binary]" >&2 ||
    die "could not install psycopg 3: python3 -m pip install 'psycopg[binary]'"
  python3 -c "import psycopg" >/dev/null 2>&1 || die "psycopg 3 does not import after installing it"
fi

is_root=false
[[ $(id -u) -eq 0 ]] && is_root=true
if $is_root; then
  id postgres >/dev/null 2>&1 ||
    die "running as root, PostgreSQL must run as the postgres OS user, and there is none"
fi

# Runs a command as the postgres OS user when we are root (initdb and
# postgres refuse to run as root).
as_pg() {
  if $is_root; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# ---------------------------------------------------------------- cleanup

work=""
pg_data=""
rowgate_pid=""
python_pid=""

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [[ -n $python_pid ]]; then
    kill "$python_pid" 2>/dev/null || true
    wait "$python_pid" 2>/dev/null || true
  fi
  if [[ -n $rowgate_pid ]]; then
    kill "$rowgate_pid" 2>/dev/null || true
    wait "$rowgate_pid" 2>/dev/null || true
  fi
  if [[ -n $pg_data && -f $pg_data/postmaster.pid ]]; then
    as_pg "$pg_bin/pg_ctl" -D "$pg_data" stop -m immediate >/dev/null 2>&1 || true
  fi
  if [[ -n $work && -d $work ]]; then
    # On failure (not on Ctrl-C or TERM), what the servers said last.
    if ((status != 0 && status != 130 && status != 143)); then
      local log
      for log in "$work"/*.log; do
        [[ -f $log ]] || continue
        echo "---- last lines of $(basename "$log")" >&2
        tail -n 20 "$log" >&2
      done
    fi
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers

used_ports=" "

# A TCP port on 127.0.0.1 that nothing listens on and this script has not
# handed out yet.
free_port() {
  local port _
  for _ in $(seq 1 200); do
    port=$((20000 + RANDOM % 40000))
    [[ $used_ports == *" $port "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      used_ports+="$port "
      echo "$port"
      return 0
    fi
  done
  die "no free TCP port found"
}

# Waits until something accepts connections on 127.0.0.1:$1; $2 names it,
# $3 (optional) is a process that must stay alive meanwhile.
wait_for_port() {
  local port=$1 what=$2 pid=${3:-} _
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
      die "$what exited during startup"
    fi
    sleep 0.1
  done
  die "$what does not accept connections on port $port"
}

# psql as the superuser, against database $1, with the statements $2.
sql() {
  "$psql" -X -q -v ON_ERROR_STOP=1 -At -h 127.0.0.1 -p "$pg_port" -U postgres -d "$1" -c "$2"
}

# A text value as an SQL string literal.
quote() {
  printf "'%s'" "${1//\'/\'\'}"
}

# ---------------------------------------------------------------- build

say "building rowgate (release)"
(cd "$root" && cargo build --release --quiet) >&2
rowgate=${CARGO_TARGET_DIR:-$root/target}/release/rowgate
[[ -x $rowgate ]] || die "the build did not produce $rowgate"
revision=$(git -C "$root" describe --always --dirty 2>/dev/null || echo 'an unknown revision')
say "rowgate at $revision"

# ---------------------------------------------------------------- PostgreSQL

work=$(mktemp -d "${TMPDIR:-/tmp}/rowgate-analytics.XXXXXX")
chmod 755 "$work"
if $is_root; then
  chown postgres: "$work"
fi
pg_data=$work/data

pg_version=$("$pg_bin/postgres" --version)
say "starting PostgreSQL ($pg_version)"
as_pg "$pg_bin/initdb" -A trust -U postgres -E UTF8 --locale=C --no-sync -D "$pg_data" \
  >"$work/initdb.log" 2>&1 || die "initdb failed: $(cat "$work/initdb.log")"
printf '%s\n' \
  "host all all 127.0.0.1/32 trust" \
  "local all all trust" | as_pg tee "$pg_data/pg_hba.conf" >/dev/null
# wal_level=minimal lets the tables created and filled in one transaction
# skip the WAL; the rest is the issue's setup (fsync off, 512MB shared
# buffers, parallel workers per gather at their default).
pg_port=""
for _ in 1 2 3 4 5; do
  port=$(free_port)
  if as_pg "$pg_bin/pg_ctl" -D "$pg_data" -l "$work/postgres.log" -w -t 60 \
    -o "-p $port -k $work -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=512MB -c max_connections=100 -c wal_level=minimal -c max_wal_senders=0 -c max_wal_size=8GB -c checkpoint_timeout=30min -c timezone=UTC" \
    start >/dev/null 2>&1; then
    pg_port=$port
    break
  fi
done
[[ -n $pg_port ]] || die "PostgreSQL did not start"

# ---------------------------------------------------------------- data

say "generating the star schema: $ORDERS orders, $((ORDERS * 3)) order items, $CUSTOMERS customers, $MERCHANTS merchants, $PRODUCTS products, $COUNTRIES countries"
gen_started=$(date +%s)
sql postgres "CREATE DATABASE $DB"
# One session, so that setseed() makes every run generate the same data.
# Each table is created and filled in one transaction (no WAL with
# wal_level=minimal); keys and indexes are built afterwards, in bulk.
# Orders are spread evenly over the two years before now, ids in time
# order, so every created_at is distinct (ORDER BY created_at is total).
"$psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pg_port" -U postgres -d "$DB" \
  -v orders="$ORDERS" -v customers="$CUSTOMERS" -v merchants="$MERCHANTS" \
  -v products="$PRODUCTS" >"$work/generate.log" 2>&1 <<'EOF' || die "generating the data failed: $(cat "$work/generate.log")"
SET maintenance_work_mem = '1GB';
SET work_mem = '256MB';
SELECT setseed(0.42);

BEGIN;
CREATE TABLE countries (id int NOT NULL, name text NOT NULL, region text NOT NULL);
INSERT INTO countries (id, name, region)
SELECT row_number() OVER (), v.name, v.region
FROM (VALUES
  ('Vietnam', 'APAC'), ('Singapore', 'APAC'), ('Thailand', 'APAC'), ('Malaysia', 'APAC'),
  ('Indonesia', 'APAC'), ('Philippines', 'APAC'), ('Japan', 'APAC'), ('South Korea', 'APAC'),
  ('India', 'APAC'), ('Australia', 'APAC'), ('New Zealand', 'APAC'), ('France', 'EMEA'),
  ('Germany', 'EMEA'), ('Spain', 'EMEA'), ('Italy', 'EMEA'), ('Netherlands', 'EMEA'),
  ('Belgium', 'EMEA'), ('Sweden', 'EMEA'), ('Poland', 'EMEA'), ('United Kingdom', 'EMEA'),
  ('Ireland', 'EMEA'), ('South Africa', 'EMEA'), ('Egypt', 'EMEA'), ('United States', 'AMER'),
  ('Canada', 'AMER'), ('Mexico', 'AMER'), ('Brazil', 'AMER'), ('Argentina', 'AMER'),
  ('Chile', 'AMER'), ('Colombia', 'AMER')) AS v (name, region);
COMMIT;

BEGIN;
CREATE TABLE merchants (id int NOT NULL, name text NOT NULL, country_id int NOT NULL,
                        category text NOT NULL, created_at timestamptz NOT NULL);
INSERT INTO merchants
SELECT i, 'Merchant ' || lpad(i::text, 4, '0'), 1 + floor(random() * 30)::int,
       (ARRAY['fashion', 'electronics', 'food', 'home', 'sports', 'beauty'])[1 + floor(random() * 6)::int],
       now() - interval '5 years' + random() * interval '3 years'
FROM generate_series(1, :merchants) AS i;
COMMIT;

BEGIN;
CREATE TABLE customers (id int NOT NULL, email text NOT NULL, name text NOT NULL,
                        country_id int NOT NULL, created_at timestamptz NOT NULL);
INSERT INTO customers
SELECT i, 'Customer' || i || '@Example.com', 'Customer ' || i, 1 + floor(random() * 30)::int,
       now() - interval '4 years' + random() * interval '4 years'
FROM generate_series(1, :customers) AS i;
COMMIT;

BEGIN;
CREATE TABLE products (id int NOT NULL, name text NOT NULL, category text NOT NULL,
                       list_price numeric(10, 2) NOT NULL);
INSERT INTO products
SELECT i, 'Product ' || i,
       (ARRAY['shirts', 'shoes', 'phones', 'laptops', 'snacks', 'drinks', 'furniture', 'kitchen',
              'bikes', 'outdoor', 'skincare', 'makeup', 'books', 'toys', 'garden', 'tools',
              'audio', 'cameras', 'watches', 'bags'])[1 + (i % 20)],
       round((1 + random() * 299)::numeric, 2)
FROM generate_series(1, :products) AS i;
COMMIT;

BEGIN;
CREATE TABLE orders (id int NOT NULL, merchant_id int NOT NULL, customer_id int NOT NULL,
                     status text NOT NULL, amount numeric(12, 2) NOT NULL,
                     created_at timestamptz NOT NULL);
INSERT INTO orders
SELECT i, 1 + floor(random() * :merchants)::int, 1 + floor(random() * :customers)::int,
       CASE WHEN r < 0.70 THEN 'paid' WHEN r < 0.85 THEN 'shipped' WHEN r < 0.92 THEN 'pending'
            WHEN r < 0.97 THEN 'refunded' ELSE 'cancelled' END,
       round((5 + random() * 495)::numeric, 2),
       date_trunc('minute', now()) - interval '1 minute'
         - (:orders - i) * (interval '730 days' / :orders)
FROM (SELECT i, random() AS r FROM generate_series(1, :orders) AS i) AS g;
COMMIT;

-- 1 to 5 items per order, 3 on average (exactly 3x when orders is a
-- multiple of 5).
BEGIN;
CREATE TABLE order_items (id bigint NOT NULL, order_id int NOT NULL, product_id int NOT NULL,
                          quantity int NOT NULL, price numeric(10, 2) NOT NULL);
INSERT INTO order_items
SELECT o * 5::bigint + k, o, 1 + floor(random() * :products)::int, 1 + floor(random() * 4)::int,
       round((1 + random() * 299)::numeric, 2)
FROM generate_series(1, :orders) AS o, generate_series(1, 1 + o % 5) AS k;
COMMIT;

ALTER TABLE countries ADD PRIMARY KEY (id);
CREATE UNIQUE INDEX countries_name ON countries (name);
ALTER TABLE merchants ADD PRIMARY KEY (id);
ALTER TABLE merchants ADD FOREIGN KEY (country_id) REFERENCES countries;
CREATE INDEX merchants_name ON merchants (name);
CREATE INDEX merchants_country_id ON merchants (country_id);
ALTER TABLE customers ADD PRIMARY KEY (id);
ALTER TABLE customers ADD FOREIGN KEY (country_id) REFERENCES countries;
CREATE INDEX customers_email ON customers (email);
CREATE INDEX customers_country_id ON customers (country_id);
ALTER TABLE products ADD PRIMARY KEY (id);
CREATE INDEX products_category ON products (category);
ALTER TABLE orders ADD PRIMARY KEY (id);
CREATE INDEX orders_merchant_id ON orders (merchant_id);
CREATE INDEX orders_customer_id ON orders (customer_id);
CREATE INDEX orders_created_at ON orders (created_at);
ALTER TABLE order_items ADD PRIMARY KEY (id);
CREATE INDEX order_items_order_id ON order_items (order_id);
CREATE INDEX order_items_product_id ON order_items (product_id);
-- Foreign keys of the two large tables are declared NOT VALID: checking
-- them costs minutes and changes nothing the queries read.
ALTER TABLE orders ADD FOREIGN KEY (merchant_id) REFERENCES merchants NOT VALID;
ALTER TABLE orders ADD FOREIGN KEY (customer_id) REFERENCES customers NOT VALID;
ALTER TABLE order_items ADD FOREIGN KEY (order_id) REFERENCES orders NOT VALID;
ALTER TABLE order_items ADD FOREIGN KEY (product_id) REFERENCES products NOT VALID;
VACUUM (ANALYZE);
EOF
gen_seconds=$(($(date +%s) - gen_started))
sizes=$(sql "$DB" "SELECT pg_size_pretty(pg_database_size('$DB'))")
say "generated in ${gen_seconds}s; the database takes $sizes"

# The users' attribute values: one_merchant manages merchant $MERCHANT_ID,
# in its country, which one_country manages.
merchant_name=$(sql "$DB" "SELECT name FROM merchants WHERE id = $MERCHANT_ID")
country_name=$(sql "$DB" "SELECT c.name FROM merchants m JOIN countries c ON c.id = m.country_id WHERE m.id = $MERCHANT_ID")
[[ -n $merchant_name && -n $country_name ]] || die "merchant $MERCHANT_ID or its country is missing"

# ---------------------------------------------------------------- native RLS

# The same rules as the rowgate policy below, per native role. Each
# references filter is `column IN (SELECT key FROM referenced)`, which reads
# the referenced table through that role's own policy on it, as rowgate's
# `references` does. order_items is the exception: its filter would read
# all of a role's visible orders, millions of ids, which PostgreSQL cannot
# hash within work_mem and then runs as a subplan scanned once per row (for
# hours); `EXISTS (SELECT 1 FROM orders WHERE id = order_id)` selects the
# same rows (order_id is NOT NULL) with one index probe per row.
# Arguments: the role, the country filter and the merchant filter (SQL
# conditions, `true` for All).
native_role() {
  local role=$1 country=$2 merchant=$3
  cat <<EOF
CREATE ROLE $role LOGIN;
GRANT SELECT ON countries, merchants, customers, products, orders, order_items TO $role;
CREATE POLICY $role ON countries FOR SELECT TO $role USING ($country);
CREATE POLICY $role ON merchants FOR SELECT TO $role
  USING ($merchant AND country_id IN (SELECT id FROM countries));
CREATE POLICY $role ON customers FOR SELECT TO $role
  USING (country_id IN (SELECT id FROM countries));
CREATE POLICY $role ON products FOR SELECT TO $role USING (true);
CREATE POLICY $role ON orders FOR SELECT TO $role
  USING (merchant_id IN (SELECT id FROM merchants));
CREATE POLICY $role ON order_items FOR SELECT TO $role
  USING (EXISTS (SELECT 1 FROM orders WHERE orders.id = order_items.order_id));
EOF
}

say "creating the native RLS roles and the upstream role"
{
  echo "BEGIN;"
  # rowgate's upstream role reads every table and bypasses RLS.
  echo "CREATE ROLE $UPSTREAM_ROLE LOGIN BYPASSRLS;"
  echo "GRANT SELECT ON ALL TABLES IN SCHEMA public TO $UPSTREAM_ROLE;"
  native_role rls_one_merchant "name IN ($(quote "$country_name"))" "name IN ($(quote "$merchant_name"))"
  native_role rls_one_country "name IN ($(quote "$country_name"))" "true"
  native_role rls_all_user "true" "true"
  # The analyst reads everything: no policies apply to it.
  echo "CREATE ROLE rls_analyst LOGIN BYPASSRLS;"
  echo "GRANT SELECT ON ALL TABLES IN SCHEMA public TO rls_analyst;"
  for t in countries merchants customers products orders order_items; do
    echo "ALTER TABLE $t ENABLE ROW LEVEL SECURITY;"
  done
  echo "COMMIT;"
} >"$work/native.sql"
"$psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pg_port" -U postgres -d "$DB" \
  -f "$work/native.sql" >"$work/native.log" 2>&1 || die "creating the native roles failed: $(cat "$work/native.log")"

# ---------------------------------------------------------------- rowgate

password="bench-$RANDOM$RANDOM"
verifier=$(printf '%s\n' "$password" | "$rowgate" passwd)
rowgate_port=$(free_port)
mkdir -p "$work/rowgate/policies"
yaml_text() {
  local v=${1//\\/\\\\}
  printf '"%s"' "${v//\"/\\\"}"
}
cat >"$work/rowgate/policies/analytics.yaml" <<EOF
attributes:
  country: { type: text }
  merchant: { type: text }

groups:
  dashboards:
    tables: [public.countries, public.merchants, public.customers, public.products,
             public.orders, public.order_items]

users:
  one_merchant:
    password: "$verifier"
    groups: [dashboards]
    attributes: { merchant: [$(yaml_text "$merchant_name")], country: [$(yaml_text "$country_name")] }
  one_country:
    password: "$verifier"
    groups: [dashboards]
    attributes: { merchant: All, country: [$(yaml_text "$country_name")] }
  all_user:
    password: "$verifier"
    groups: [dashboards]
    attributes: { merchant: All, country: All }
  analyst:
    password: "$verifier"
    role: analyst

tables:
  public.countries:
    filters:
      - { column: name, attribute: country }
  public.merchants:
    filters:
      - { column: name, attribute: merchant }
      - { column: country_id, references: public.countries(id) }
  public.customers:
    filters:
      - { column: country_id, references: public.countries(id) }
  public.products: {}
  public.orders:
    filters:
      - { column: merchant_id, references: public.merchants(id) }
  public.order_items:
    filters:
      - { column: order_id, references: public.orders(id) }
EOF
cat >"$work/rowgate/proxy.yaml" <<EOF
listen: 127.0.0.1:$rowgate_port
policies: policies
upstream:
  host: 127.0.0.1
  port: $pg_port
  user: $UPSTREAM_ROLE
  tls: disable
EOF
"$rowgate" check -c "$work/rowgate/proxy.yaml" >"$work/rowgate-check.log" 2>&1 ||
  die "rowgate check rejects the benchmark's policy: $(cat "$work/rowgate-check.log")"
say "starting rowgate (ROWGATE_LOG=$ROWGATE_LOG)"
"$rowgate" serve -c "$work/rowgate/proxy.yaml" >/dev/null 2>"$work/rowgate.log" &
rowgate_pid=$!
wait_for_port "$rowgate_port" rowgate "$rowgate_pid"

if $HOLD; then
  say "ready; Ctrl-C stops and removes everything"
  echo "  unfiltered: $psql -h 127.0.0.1 -p $pg_port -U postgres $DB" >&2
  for u in "${USERS[@]}"; do
    echo "  $u through rowgate: PGPASSWORD=$password $psql -h 127.0.0.1 -p $rowgate_port -U $u $DB" >&2
    echo "  $u native RLS:      $psql -h 127.0.0.1 -p $pg_port -U rls_$u $DB" >&2
  done
  echo "  forwarded SQL:      rowgate explain -c $work/rowgate/proxy.yaml --user USER 'SQL'" >&2
  while kill -0 "$rowgate_pid" 2>/dev/null; do
    sleep 1
  done
  die "rowgate exited"
fi

# ---------------------------------------------------------------- measure

cat >"$work/config.json" <<EOF
{
  "pg_port": $pg_port,
  "rowgate_port": $rowgate_port,
  "database": "$DB",
  "password": "$password",
  "upstream_role": "$UPSTREAM_ROLE",
  "users": ["one_merchant", "one_country", "all_user", "analyst"],
  "only_users": "${BENCH_USERS:-}",
  "only_queries": "${BENCH_QUERIES:-}",
  "merchant_id": $MERCHANT_ID,
  "reps": $REPS,
  "timeout_seconds": $TIMEOUT,
  "explain": $($EXPLAIN && echo true || echo false),
  "explain_top": $EXPLAIN_TOP,
  "rowgate": "$rowgate",
  "proxy_yaml": "$work/rowgate/proxy.yaml",
  "rowgate_log": "$work/rowgate.log",
  "generation_seconds": $gen_seconds,
  "database_size": "$sizes",
  "orders": $ORDERS,
  "postgres_version": "$pg_version",
  "revision": "$revision",
  "started": $started,
  "load_start": "$(cut -d' ' -f1-3 /proc/loadavg)"
}
EOF
# In the background, so that a TERM or Ctrl-C reaches the trap at once (bash
# runs traps only once a foreground command has finished); cleanup ends it.
status=0
python3 "$root/benches/analytics.py" "$work/config.json" &
python_pid=$!
wait "$python_pid" || status=$?
python_pid=""
kill -0 "$rowgate_pid" 2>/dev/null || die "rowgate exited during the run"
say "total time $(($(date +%s) - started))s"
exit "$status"
