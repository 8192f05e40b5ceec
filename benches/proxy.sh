#!/usr/bin/env bash
# Throughput of rowgate next to direct PostgreSQL and PgBouncer, with pgbench.
#
# Builds rowgate (release), starts a throwaway PostgreSQL (temp dir, free
# port, trust auth on 127.0.0.1, fsync off), loads the pgbench tables, puts
# PgBouncer (session pooling) and `rowgate serve` (a member whose row filter
# on pgbench_accounts.bid lists every branch) in front of it, and runs a
# select-only pgbench point lookup against each target in each protocol mode
# (simple, extended, prepared). Targets alternate within each round, in a
# rotating order, so machine noise spreads over all of them. Prints the
# median TPS per mode and target with the ratios rowgate/PgBouncer and
# rowgate/direct; the CPU per transaction of the whole stack (pgbench,
# PostgreSQL, proxy), whose ratios hold even on a machine shared with other
# work; and the CPU per transaction of each proxy process alone. Each run
# also shows the share of the machine's CPU other processes took meanwhile.
# Everything it starts is stopped and removed on exit, Ctrl-C included.
#
# Usage: benches/proxy.sh            (about 5 minutes with the defaults)
#        BENCH_QUICK=1 benches/proxy.sh   (3 s runs, 1 round: about 1 minute)
#
# Settings (environment):
#   BENCH_SECONDS   seconds per pgbench run                  (10; quick: 3)
#   BENCH_ROUNDS    rounds of every target per mode          (3; quick: 1)
#   BENCH_SCALE     pgbench scale factor (100,000 rows each) (10)
#   BENCH_CLIENTS   pgbench clients                          (8)
#   BENCH_THREADS   pgbench threads                          (2)
#   BENCH_MODES     protocol modes                           ("simple extended prepared")
#   BENCH_VARIANTS  rowgate variants: fence, nofence, noprep, w1, audit ("fence")
#   BENCH_WARMUP    seconds of warm-up per target            (3; quick: 1)
#   BENCH_POOL_MODE session or transaction: PgBouncer's pool_mode and rowgate's
#                   pool.mode                                (session; in
#                   transaction mode the default modes are simple and
#                   extended: named statements pin a rowgate session and
#                   need PgBouncer 1.21 or later)
#   BENCH_POOL_SIZE upstream connections of either pool in transaction
#                   mode                                     (20)
#   BENCH_IDLE      after the runs, also open this many idle clients on
#                   PgBouncer and on each rowgate, and report the memory
#                   (RSS) each idle client costs the proxy and the upstream
#                   backends they hold                       (0: not measured)
#   BENCH_FILTERED_DIRECT=1  also run `direct:<variant>`: the statement that
#                   rowgate forwards, sent straight to PostgreSQL (what the
#                   rewritten statement costs upstream, without the proxy)
#   ROWGATE_LOG     rowgate's log filter                     (info)
#   ROWGATE_PG_BIN  PostgreSQL's server binaries             (found: pg_config, PATH,
#                                                             /usr/lib/postgresql/*/bin)

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

if [[ -n ${BENCH_QUICK:-} && ${BENCH_QUICK} != 0 ]]; then
  SECONDS_PER_RUN=${BENCH_SECONDS:-3}
  ROUNDS=${BENCH_ROUNDS:-1}
  WARMUP=${BENCH_WARMUP:-1}
else
  SECONDS_PER_RUN=${BENCH_SECONDS:-10}
  ROUNDS=${BENCH_ROUNDS:-3}
  WARMUP=${BENCH_WARMUP:-3}
fi
SCALE=${BENCH_SCALE:-10}
CLIENTS=${BENCH_CLIENTS:-8}
THREADS=${BENCH_THREADS:-2}
POOL_MODE=${BENCH_POOL_MODE:-session}
POOL_SIZE=${BENCH_POOL_SIZE:-20}
IDLE=${BENCH_IDLE:-0}
[[ $POOL_MODE == session || $POOL_MODE == transaction ]] ||
  { echo "proxy.sh: BENCH_POOL_MODE must be session or transaction" >&2; exit 1; }
if [[ $POOL_MODE == transaction ]]; then
  read -ra MODES <<<"${BENCH_MODES:-simple extended}"
else
  read -ra MODES <<<"${BENCH_MODES:-simple extended prepared}"
fi
read -ra VARIANTS <<<"${BENCH_VARIANTS:-fence}"
FILTERED_DIRECT=false
[[ -n ${BENCH_FILTERED_DIRECT:-} && ${BENCH_FILTERED_DIRECT} != 0 ]] && FILTERED_DIRECT=true
export ROWGATE_LOG=${ROWGATE_LOG:-info}

DB=bench
# The role rowgate connects upstream as; direct and PgBouncer runs use it too.
UPSTREAM_ROLE=rowgate
# The policy user pgbench connects to rowgate as.
MEMBER=member

die() {
  echo "proxy.sh: $*" >&2
  exit 1
}

[[ $IDLE =~ ^[0-9]+$ ]] || die "BENCH_IDLE must be a whole number, not '$IDLE'"
for n in SECONDS_PER_RUN ROUNDS SCALE CLIENTS THREADS WARMUP POOL_SIZE; do
  [[ ${!n} =~ ^[0-9]+$ && ${!n} -gt 0 ]] || die "$n must be a positive whole number, not '${!n}'"
done
((${#MODES[@]} > 0)) || die "BENCH_MODES is empty"
((${#VARIANTS[@]} > 0)) || die "BENCH_VARIANTS is empty"
for m in "${MODES[@]}"; do
  [[ $m == simple || $m == extended || $m == prepared ]] ||
    die "unknown mode '$m' in BENCH_MODES (simple, extended, prepared)"
done

# Thousands of idle clients need as many descriptors, here and in the
# proxies this script starts.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# pgbench and psql take these from the environment; every connection here
# names its host, port, user and database itself.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE PGSERVICE \
  PGSERVICEFILE PGOPTIONS PGSSLMODE PGAPPNAME

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

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
pgbench=$(client_tool pgbench)
psql=$(client_tool psql)
pgbouncer=$(command -v pgbouncer || true)
if [[ -z $pgbouncer ]]; then
  for d in /usr/sbin /usr/local/sbin /usr/local/bin; do
    [[ -x $d/pgbouncer ]] && pgbouncer=$d/pgbouncer && break
  done
fi
[[ -n $pgbouncer ]] || die "pgbouncer was not found; install it (Debian/Ubuntu: apt-get install pgbouncer)"

is_root=false
[[ $(id -u) -eq 0 ]] && is_root=true
if $is_root; then
  id postgres >/dev/null 2>&1 ||
    die "running as root, PostgreSQL and PgBouncer must run as the postgres OS user, and there is none"
fi

# Runs a command as the postgres OS user when we are root (initdb, postgres
# and pgbouncer refuse to run as root). runuser's session starts from PAM's
# default soft limit on descriptors (often 1024), which would cap PgBouncer's
# clients: the command gets the hard limit again, as this script has.
as_pg() {
  if $is_root; then
    runuser -u postgres -- sh -c 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@"' sh "$@"
  else
    "$@"
  fi
}

# ---------------------------------------------------------------- cleanup

work=""
pg_data=""
rowgate_pids=()
background_pids=()

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  local pid
  for pid in "${background_pids[@]}" "${rowgate_pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${background_pids[@]}" "${rowgate_pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n $work && -s $work/pgbouncer.pid ]]; then
    kill "$(cat "$work/pgbouncer.pid")" 2>/dev/null || true
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

# CPU time of process $1 so far, in clock ticks (all its threads).
cpu_ticks() {
  if [[ -r /proc/$1/stat ]]; then
    # Fields after the `(comm)` one: state is 1, utime 12, stime 13.
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }
    awk '{ print $12 + $13 }' <<<"$stat"
  else
    echo 0
  fi
}
clk_tck=$(getconf CLK_TCK 2>/dev/null || echo 100)

# Total and busy clock ticks of the whole machine so far (busy: user, nice,
# system, irq, softirq; guest time is already in user).
machine_ticks() {
  awk '/^cpu / { print $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $2 + $3 + $4 + $7 + $8 }' /proc/stat
}

# Clock ticks spent so far by what this benchmark runs: the PostgreSQL
# cluster (the postmaster with the children it has reaped, and its live
# children), PgBouncer, every rowgate, and the pgbench runs that shell $1
# has reaped. The machine's busy ticks minus these are other processes' noise.
bench_ticks() {
  local shell=$1 postmaster proxies
  postmaster=$(head -n 1 "$pg_data/postmaster.pid")
  proxies=" $(cat "$work/pgbouncer.pid") ${rowgate_pids[*]} "
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } |
    awk -v pm="$postmaster" -v proxies="$proxies" -v shell="$shell" '
      {
        pid = $1
        # The fields after `(comm)`: ppid is 2, utime 12, stime 13, and for
        # the reaped children cutime 14, cstime 15.
        rest = substr($0, match($0, /\) [^)]*$/) + 2)
        split(rest, f, " ")
        if (pid == pm || pid == shell) t += f[12] + f[13] + f[14] + f[15]
        else if (f[2] == pm || index(proxies, " " pid " ")) t += f[12] + f[13]
      }
      END { print t + 0 }'
}

# ---------------------------------------------------------------- build

echo "== building rowgate (release)"
(cd "$root" && cargo build --release --quiet)
rowgate=${CARGO_TARGET_DIR:-$root/target}/release/rowgate
[[ -x $rowgate ]] || die "the build did not produce $rowgate"
echo "== rowgate at $(git -C "$root" describe --always --dirty 2>/dev/null || echo 'an unknown revision')"

# ---------------------------------------------------------------- PostgreSQL

work=$(mktemp -d "${TMPDIR:-/tmp}/rowgate-bench.XXXXXX")
chmod 755 "$work"
if $is_root; then
  chown postgres: "$work"
fi
pg_data=$work/data

echo "== starting PostgreSQL ($("$pg_bin/postgres" --version))"
as_pg "$pg_bin/initdb" -A trust -U postgres -E UTF8 --locale=C --no-sync -D "$pg_data" \
  >"$work/initdb.log" 2>&1 || die "initdb failed: $(cat "$work/initdb.log")"
printf '%s\n' \
  "host all all 127.0.0.1/32 trust" \
  "local all all trust" | as_pg tee "$pg_data/pg_hba.conf" >/dev/null
pg_port=""
# Direct runs hold a backend per client, and session pooling one per client
# of a proxy (idle ones included); in transaction pooling both proxies keep
# their pools open meanwhile.
pg_max_connections=$((CLIENTS + 30))
[[ $POOL_MODE == transaction ]] && pg_max_connections=$((pg_max_connections + 2 * POOL_SIZE))
((pg_max_connections < 100)) && pg_max_connections=100
# (PgBouncer keeps its idle clients' server connections open while
# rowgate's are measured.)
if [[ $POOL_MODE == session ]] && ((2 * IDLE + 30 > pg_max_connections)); then
  pg_max_connections=$((2 * IDLE + 30))
fi
for _ in 1 2 3 4 5; do
  port=$(free_port)
  if as_pg "$pg_bin/pg_ctl" -D "$pg_data" -l "$work/postgres.log" -w -t 60 \
    -o "-p $port -k $work -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=256MB -c max_connections=$pg_max_connections" \
    start >/dev/null 2>&1; then
    pg_port=$port
    break
  fi
done
[[ -n $pg_port ]] || die "PostgreSQL did not start"

echo "== loading pgbench tables (scale $SCALE)"
sql postgres "CREATE DATABASE $DB"
"$pgbench" -h 127.0.0.1 -p "$pg_port" -U postgres -i -q -s "$SCALE" "$DB" >"$work/pgbench-init.log" 2>&1 ||
  die "pgbench -i failed: $(cat "$work/pgbench-init.log")"
sql "$DB" "CREATE ROLE $UPSTREAM_ROLE LOGIN;
           GRANT SELECT ON ALL TABLES IN SCHEMA public TO $UPSTREAM_ROLE;"

# ---------------------------------------------------------------- PgBouncer

echo "== starting PgBouncer ($("$pgbouncer" --version | head -n 1), $POOL_MODE pooling)"
if [[ $POOL_MODE == transaction ]]; then
  bouncer_pool_size=$POOL_SIZE
else
  bouncer_pool_size=$((CLIENTS + 4 + IDLE))
fi
bouncer_port=$(free_port)
printf '"%s" ""\n' "$UPSTREAM_ROLE" >"$work/userlist.txt"
cat >"$work/pgbouncer.ini" <<EOF
[databases]
$DB = host=127.0.0.1 port=$pg_port dbname=$DB

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bouncer_port
unix_socket_dir =
auth_type = trust
auth_file = $work/userlist.txt
pool_mode = $POOL_MODE
default_pool_size = $bouncer_pool_size
max_client_conn = $((CLIENTS * 4 + 16 + IDLE))
logfile = $work/pgbouncer.log
pidfile = $work/pgbouncer.pid
ignore_startup_parameters = extra_float_digits
EOF
as_pg "$pgbouncer" -d -q "$work/pgbouncer.ini" || die "PgBouncer did not start: $(cat "$work/pgbouncer.log" 2>/dev/null)"
wait_for_port "$bouncer_port" PgBouncer

# ---------------------------------------------------------------- rowgate

member_password="bench-$RANDOM$RANDOM"
member_verifier=$(printf '%s\n' "$member_password" | "$rowgate" passwd)

# Writes the policy of the benchmark: $MEMBER may read public.pgbench_accounts
# where `bid` is one of their `branch` values, which list every branch, so
# every lookup finds its row but the filter is applied to each.
write_policy() {
  local file=$1 branches
  branches=$(seq -s ', ' 1 "$SCALE")
  cat >"$file" <<EOF
attributes:
  branch: { type: integer }

users:
  $MEMBER:
    password: "$member_verifier"
    tables: [public.pgbench_accounts]
    attributes: { branch: [$branches] }

tables:
  public.pgbench_accounts:
    filters:
      - { column: bid, attribute: branch }
EOF
}

# Writes proxy.yaml and the policies of rowgate variant $1 into directory $2,
# rowgate listening on port $3, and sets variant_env to the environment its
# `rowgate serve` runs with. A variant is the benchmark policy plus proxy.yaml
# lines and environment: to measure another one, add a case below and name it
# in BENCH_VARIANTS.
#   fence    as shipped: each filtered table becomes a derived table fenced
#            with OFFSET 0, the query's leakproof conditions moved inside it
#   nofence  ROWGATE_UNSAFE_NO_FENCE=1: the bare filtered derived table, which
#            PostgreSQL flattens (unsafe against side channels; measures what
#            the fence costs)
#   noprep   prepare_threshold: 0: no automatic prepared statements, every
#            statement rewritten and forwarded as text (measures what they
#            save)
#   w1       workers: 1: one session thread, as PgBouncer has
#   audit    the audit log on (a record per statement, to a file in the
#            variant's directory): measures what auditing costs
rowgate_variant() {
  local variant=$1 dir=$2 port=$3 extra="" pool_lines=""
  if [[ $POOL_MODE == transaction ]]; then
    pool_lines="pool: { mode: transaction, size: $POOL_SIZE, min_idle: $POOL_SIZE }"
  fi
  variant_env=()
  mkdir -p "$dir/policies"
  write_policy "$dir/policies/bench.yaml"
  case $variant in
    fence) ;;
    nofence) variant_env=(ROWGATE_UNSAFE_NO_FENCE=1) ;;
    noprep) extra="prepare_threshold: 0" ;;
    w1) extra="workers: 1" ;;
    audit) extra="audit: { file: $dir/audit.jsonl }" ;;
    *) die "unknown rowgate variant '$variant' (known: fence, nofence, noprep, w1, audit)" ;;
  esac
  cat >"$dir/proxy.yaml" <<EOF
listen: 127.0.0.1:$port
policies: policies
upstream:
  host: 127.0.0.1
  port: $pg_port
  user: $UPSTREAM_ROLE
  tls: disable
max_connections: $((CLIENTS * 4 + 16 + IDLE))
$extra
$pool_lines
EOF
}

declare -A rowgate_port=() rowgate_pid=()
variant_env=()
for v in "${VARIANTS[@]}"; do
  dir=$work/rowgate-$v
  port=$(free_port)
  rowgate_variant "$v" "$dir" "$port"
  "$rowgate" check -c "$dir/proxy.yaml" >"$work/rowgate-$v-check.log" 2>&1 ||
    die "rowgate check rejects variant $v: $(cat "$work/rowgate-$v-check.log")"
  echo "== starting rowgate ($v${variant_env[*]:+, ${variant_env[*]}})"
  env "${variant_env[@]}" "$rowgate" serve -c "$dir/proxy.yaml" >/dev/null 2>"$work/rowgate-$v.log" &
  rowgate_pids+=("$!")
  rowgate_pid[$v]=$!
  rowgate_port[$v]=$port
  wait_for_port "$port" "rowgate ($v)" "$!"
done

# ---------------------------------------------------------------- pgbench

cat >"$work/select.sql" <<'EOF'
\set aid random(1, 100000 * :scale)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
EOF

targets=(direct)
if $FILTERED_DIRECT; then
  for v in "${VARIANTS[@]}"; do
    targets+=("direct:$v")
  done
fi
targets+=(pgbouncer)
for v in "${VARIANTS[@]}"; do
  targets+=("rowgate:$v")
done

# The process whose CPU a target spends on top of PostgreSQL's, if any.
proxy_pid() {
  case $1 in
    direct*) echo "" ;;
    pgbouncer) cat "$work/pgbouncer.pid" ;;
    rowgate:*) echo "${rowgate_pid[${1#rowgate:}]}" ;;
  esac
}

# Runs pgbench against target $1 in mode $2 for $3 seconds; prints
# "tps proxy_us stack_us others_percent": the CPU per transaction of the
# proxy process and of the whole stack (pgbench, PostgreSQL, proxies), and
# the share of the machine's CPU that processes outside the benchmark took
# meanwhile.
run_pgbench() {
  local target=$1 mode=$2 seconds=$3 out port user password="" pid script=$work/select.sql
  case $target in
    direct) port=$pg_port user=$UPSTREAM_ROLE ;;
    direct:*) port=$pg_port user=$UPSTREAM_ROLE script=$work/forwarded-${target#direct:}.sql ;;
    pgbouncer) port=$bouncer_port user=$UPSTREAM_ROLE ;;
    rowgate:*)
      port=${rowgate_port[${target#rowgate:}]} user=$MEMBER password=$member_password
      ;;
  esac
  pid=$(proxy_pid "$target")
  local cpu0 cpu1 m0 m1 b0 b1 shell=$BASHPID
  cpu0=0
  [[ -n $pid ]] && cpu0=$(cpu_ticks "$pid")
  b0=$(bench_ticks "$shell")
  m0=$(machine_ticks)
  if ! out=$(PGPASSWORD=$password "$pgbench" -h 127.0.0.1 -p "$port" -U "$user" -n \
    -M "$mode" -c "$CLIENTS" -j "$THREADS" -T "$seconds" -s "$SCALE" \
    -f "$script" "$DB" 2>&1); then
    echo "$out" >&2
    die "pgbench against $target ($mode) failed"
  fi
  m1=$(machine_ticks)
  sleep 0.2 # the backends exit after pgbench does; let the postmaster reap them
  b1=$(bench_ticks "$shell")
  cpu1=0
  [[ -n $pid ]] && cpu1=$(cpu_ticks "$pid")
  local tps txns failed
  tps=$(awk '/^tps = / { print $3; exit }' <<<"$out")
  txns=$(awk -F': ' '/^number of transactions actually processed/ { print $2; exit }' <<<"$out")
  failed=$(awk -F': ' '/^number of failed transactions/ { split($2, a, " "); print a[1]; exit }' <<<"$out")
  if [[ -z $tps || -z $txns || $txns == 0 || ${failed:-0} != 0 ]]; then
    echo "$out" >&2
    die "pgbench against $target ($mode) did not complete cleanly"
  fi
  awk -v tps="$tps" -v txns="$txns" -v c0="$cpu0" -v c1="$cpu1" -v hz="$clk_tck" \
    -v m0="$m0" -v m1="$m1" -v b0="$b0" -v b1="$b1" 'BEGIN {
      split(m0, a, " "); split(m1, b, " ")
      others = (b[1] > a[1]) ? 100 * ((b[2] - a[2]) - (b1 - b0)) / (b[1] - a[1]) : 0
      printf "%s %.1f %.1f %.0f\n", tps, (c1 - c0) / hz * 1e6 / txns, (b1 - b0) / hz * 1e6 / txns,
        (others > 0 ? others : 0)
    }'
}

# Shows, from PostgreSQL's side, what rowgate variant $1 forwards for the
# lookup of one marker aid: the filter must be in the statement. A session
# runs the lookup three times (rowgate prepares a statement it sees again,
# unless the variant turns that off), then reads what PostgreSQL holds: its
# prepared statements, or else the statement it ran last. Keeps the
# statement, the parameter or marker made `:aid` again, as the script of
# the `direct:$1` target.
check_forwarded() {
  local v=$1 seen lookup bg prepared="" marker=987654321
  lookup="SELECT abalance FROM pgbench_accounts WHERE aid = $marker"
  seen=$(PGPASSWORD=$member_password "$psql" -X -A -t -q -h 127.0.0.1 -p "${rowgate_port[$v]}" \
    -U "$MEMBER" -d "$DB" -c "$lookup" -c "$lookup" -c "$lookup" \
    -c "SELECT statement FROM pg_prepared_statements WHERE name LIKE 'rowgate_auto_%'" 2>&1) ||
    die "psql through rowgate ($v) failed: $seen"
  seen=$(tail -n 1 <<<"$seen")
  if [[ $seen == PREPARE* ]]; then
    # The text of the message that prepared it: `PREPARE name (int4) AS
    # <statement>; EXECUTE name(<aid>)`.
    seen=${seen#* AS }
    seen=${seen%%; EXECUTE *}
    prepared=$seen
    seen=${seen//\$1/$marker}
  else
    # Nothing prepared (or, in transaction pooling, prepared under a shared
    # name no member sees): catch the statement running, under pgbench,
    # with a session per transaction (-C), which rowgate never prepares.
    printf '%s;\n' "$lookup" >"$work/marker.sql"
    PGPASSWORD=$member_password "$pgbench" -h 127.0.0.1 -p "${rowgate_port[$v]}" -U "$MEMBER" -n \
      -M simple -C -c 2 -j 1 -T 3 -f "$work/marker.sql" "$DB" >"$work/check-$v.log" 2>&1 &
    bg=$!
    background_pids+=("$bg")
    seen=""
    for _ in $(seq 1 25); do
      sleep 0.1
      seen=$(sql postgres "SELECT query FROM pg_stat_activity
                           WHERE usename = '$UPSTREAM_ROLE' AND query LIKE '%pgbench_accounts%' LIMIT 1")
      [[ -n $seen ]] && break
    done
    wait "$bg" || die "pgbench through rowgate ($v) failed: $(cat "$work/check-$v.log")"
    background_pids=()
  fi
  [[ $seen == *"bid IN ("* && $seen == *"$marker"* ]] ||
    die "PostgreSQL does not see the row filter in what rowgate ($v) forwards: '$seen'"
  if [[ -n $prepared ]]; then
    echo "== PostgreSQL runs for rowgate ($v) the prepared statement: $prepared"
  else
    echo "== PostgreSQL receives from rowgate ($v): $seen"
  fi
  printf '%s\n%s\n' '\set aid random(1, 100000 * :scale)' "${seen//$marker/:aid}" >"$work/forwarded-$v.sql"
}

for v in "${VARIANTS[@]}"; do
  check_forwarded "$v"
done

echo "== warming up every target (${WARMUP}s each)"
for t in "${targets[@]}"; do
  run_pgbench "$t" "${MODES[-1]}" "$WARMUP" >/dev/null
done

runs=$((${#MODES[@]} * ROUNDS * ${#targets[@]}))
echo "== $runs runs of ${SECONDS_PER_RUN}s: $CLIENTS clients, $THREADS threads, scale $SCALE; load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-9s %5s  %-16s %10s %14s %14s %9s\n' mode round target tps "proxy µs/txn" "stack µs/txn" "others %"
results=$work/results
: >"$results"
for mode in "${MODES[@]}"; do
  for ((round = 1; round <= ROUNDS; round++)); do
    n=${#targets[@]}
    for ((i = 0; i < n; i++)); do
      t=${targets[$(((i + round - 1) % n))]}
      measured=$(run_pgbench "$t" "$mode" "$SECONDS_PER_RUN")
      read -r tps cpu stack others <<<"$measured"
      [[ $t == direct* ]] && cpu=-
      printf '%-9s %5d  %-16s %10.0f %14s %14s %9s\n' "$mode" "$round" "$t" "$tps" "$cpu" "$stack" "$others"
      echo "$mode $t $tps $cpu $others $stack" >>"$results"
    done
  done
done

# ---------------------------------------------------------------- report

# The median of field $3 (1-based) for mode $1 and target $2.
median() {
  awk -v m="$1" -v t="$2" -v f="$3" '$1 == m && $2 == t { print $f }' "$results" |
    sort -g |
    awk '{ a[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

echo "== done; load average $(cut -d' ' -f1-3 /proc/loadavg)"
noise=$(awk '{ print $5 }' "$results" | sort -g |
  awk '{ a[NR] = $1 } END { printf "median %s%%, max %s%%", a[int((NR + 1) / 2)], a[NR] }')
echo "== processes outside the benchmark took $noise of the machine's CPU during the runs"
# Prints, per mode, the median of field $1 for every target, each rowgate
# column followed by its ratios to PgBouncer and to direct: rowgate/other
# when $2 is `rate`, other/rowgate when it is `cost` (so that above 1 is
# rowgate ahead either way).
table() {
  local field=$1 kind=$2 mode t value direct bouncer header line
  header=$(printf '%-9s' mode)
  for t in "${targets[@]}"; do
    header+=$(printf ' %15s' "$t")
    [[ $t == rowgate:* ]] && header+=$(printf ' %10s %7s' /pgbouncer /direct)
  done
  echo "$header"
  for mode in "${MODES[@]}"; do
    direct=$(median "$mode" direct "$field")
    bouncer=$(median "$mode" pgbouncer "$field")
    line=$(printf '%-9s' "$mode")
    for t in "${targets[@]}"; do
      value=$(median "$mode" "$t" "$field")
      line+=$(printf ' %15.0f' "$value")
      if [[ $t == rowgate:* ]]; then
        line+=$(awk -v r="$value" -v b="$bouncer" -v d="$direct" -v k="$kind" '
          function q(x, y) { return y > 0 ? x / y : 0 }
          BEGIN {
            if (k == "rate") printf " %10.2f %7.2f", q(r, b), q(r, d)
            else printf " %10.2f %7.2f", q(b, r), q(d, r)
          }')
      fi
    done
    echo "$line"
  done
}

echo
echo "Median TPS over $ROUNDS round(s) of ${SECONDS_PER_RUN}s; $CLIENTS clients, $THREADS threads, scale $SCALE, $(nproc) CPUs"
table 3 rate

echo
echo "Median CPU per transaction of the whole stack (µs: pgbench, PostgreSQL and the proxy); its"
echo "ratios are the TPS ratios at equal CPU, which other processes on the machine do not skew"
table 6 cost

echo
echo "Median CPU per transaction of the proxy process alone (µs)"
header=$(printf '%-9s %15s' mode pgbouncer)
for v in "${VARIANTS[@]}"; do
  header+=$(printf ' %15s' "rowgate:$v")
done
echo "$header"
for mode in "${MODES[@]}"; do
  line=$(printf '%-9s %15.1f' "$mode" "$(median "$mode" pgbouncer 4)")
  for v in "${VARIANTS[@]}"; do
    line+=$(printf ' %15.1f' "$(median "$mode" "rowgate:$v" 4)")
  done
  echo "$line"
done

# ---------------------------------------------------------------- idle clients

# VmRSS of process $1, in KiB.
rss_kib() {
  awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

# Opens $IDLE clients on port $1 as user $2 (password $3), each running one
# statement, then holds them; prints "<proxy RSS increase KiB> <upstream
# backends>" measured while they are all open.
measure_idle() {
  local port=$1 user=$2 password=$3 pid=$4 before after backends fifo
  before=$(rss_kib "$pid")
  fifo=$work/idle.fifo
  rm -f "$fifo"
  mkfifo "$fifo"
  python3 - "$port" "$user" "$password" "$DB" "$IDLE" >"$fifo" 2>"$work/idle.log" <<'PY' &
import sys, time, psycopg
port, user, password, db, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
conns = []
for i in range(n):
    c = psycopg.connect(host="127.0.0.1", port=port, user=user, password=password or None,
                        dbname=db, autocommit=True, connect_timeout=60)
    c.execute("SELECT 1").fetchall()
    conns.append(c)
print("open", flush=True)
time.sleep(3600)
PY
  local bg=$!
  background_pids+=("$bg")
  if ! read -r _ <"$fifo"; then
    kill "$bg" 2>/dev/null || true
    echo "proxy.sh: the idle clients did not connect: $(tail -n 1 "$work/idle.log")" >&2
    return 1
  fi
  sleep 1
  after=$(rss_kib "$pid")
  backends=$(sql postgres "SELECT count(*) FROM pg_stat_activity WHERE usename = '$UPSTREAM_ROLE'")
  kill "$bg" 2>/dev/null || true
  wait "$bg" 2>/dev/null || true
  background_pids=()
  echo "$((after - before)) $backends"
  sleep 2
}

if ((IDLE > 0)); then
  echo
  echo "Idle clients: $IDLE, each having run one statement, held open at once ($POOL_MODE pooling)"
  printf '%-16s %14s %14s %18s\n' target "RSS +MiB" "KiB/client" "upstream backends"
  grew=""
  read -r grew backends < <(measure_idle "$bouncer_port" "$UPSTREAM_ROLE" "" "$(cat "$work/pgbouncer.pid")") || true
  if [[ -n $grew ]]; then
    awk -v g="$grew" -v n="$IDLE" -v b="$backends" \
      'BEGIN { printf "%-16s %14.1f %14.1f %18d\n", "pgbouncer", g / 1024, g / n, b }'
  else
    printf '%-16s %s\n' pgbouncer "could not hold them open (its descriptor limit: see its log)"
  fi
  for v in "${VARIANTS[@]}"; do
    read -r grew backends < <(measure_idle "${rowgate_port[$v]}" "$MEMBER" "$member_password" "${rowgate_pid[$v]}")
    awk -v t="rowgate:$v" -v g="$grew" -v n="$IDLE" -v b="$backends" \
      'BEGIN { printf "%-16s %14.1f %14.1f %18d\n", t, g / 1024, g / n, b }'
  done
fi
