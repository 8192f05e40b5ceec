#!/usr/bin/env bash
# rowgate's test command: installs what the tests need and this machine
# lacks (on Debian or Ubuntu, with apt-get and pip; as root or with sudo),
# then runs `cargo test` with any arguments given. Where everything is
# present it only runs `cargo test`.
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
  SUDO=sudo
else
  SUDO=
fi
apt_get() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: something the tests need is missing (see README.md) and this machine has no apt-get: install it, then run cargo test" >&2
    exit 1
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get "$@"
}

have_pg_server() {
  command -v initdb >/dev/null 2>&1 && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null 2>&1
}

if ! have_pg_server; then
  echo "== installing PostgreSQL (server binaries not found)"
  export DEBIAN_FRONTEND=noninteractive
  apt_get update -qq
  apt_get install -y -qq postgresql >/dev/null
fi

# --- client drivers (installed for tests/clients.rs and tests/bi_drivers.rs) ---
# psql and pgbench (beside the server), a JDK and pgJDBC, Node.js with
# node-postgres (tests/clients/node's lock file), psycopg 3 for python3;
# psqlODBC, asyncpg, psycopg2, SQLAlchemy 2 and pyodbc.
clients_apt_updated=
clients_apt() {
  if [ -z "$clients_apt_updated" ]; then
    apt_get update -qq
    clients_apt_updated=1
  fi
  echo "== installing $* (for the client driver tests)"
  apt_get install -y -qq "$@" >/dev/null
}
if ! command -v psql >/dev/null 2>&1 || ! command -v pgbench >/dev/null 2>&1; then
  compgen -G "/usr/lib/postgresql/*/bin/pgbench" >/dev/null 2>&1 || clients_apt postgresql-client
fi
command -v javac >/dev/null 2>&1 || clients_apt default-jdk-headless
[ -f /usr/share/java/postgresql.jar ] || clients_apt libpostgresql-jdbc-java
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || clients_apt nodejs npm
command -v python3 >/dev/null 2>&1 || clients_apt python3 python3-pip
if ! python3 -c "import psycopg" >/dev/null 2>&1; then
  echo "== installing psycopg 3 (for tests/clients.rs)"
  python3 -m pip install -q "psycopg[binary]" \
    || python3 -m pip install -q --break-system-packages "psycopg[binary]" \
    || clients_apt python3-psycopg
fi
# BI drivers for tests/bi_drivers.rs: psqlODBC registered with unixODBC, then
# asyncpg, psycopg2 with SQLAlchemy 2, and pyodbc for python3.
odbcinst -q -d -n "PostgreSQL Unicode" >/dev/null 2>&1 || clients_apt unixodbc odbc-postgresql
if ! python3 -c "import asyncpg, psycopg2, pyodbc, sqlalchemy, sys; sys.exit(int(sqlalchemy.__version__.split('.')[0]) < 2)" >/dev/null 2>&1; then
  echo "== installing asyncpg, psycopg2, SQLAlchemy 2 and pyodbc (for tests/bi_drivers.rs)"
  python3 -m pip install -q asyncpg psycopg2-binary "sqlalchemy>=2" pyodbc \
    || python3 -m pip install -q --break-system-packages asyncpg psycopg2-binary "sqlalchemy>=2" pyodbc
fi
if [ ! -f tests/clients/node/node_modules/pg/package.json ]; then
  echo "== npm ci in tests/clients/node"
  (cd tests/clients/node && npm ci --no-audit --no-fund --loglevel=error)
fi
# --- end client drivers ---

# Without rustup's cargo there is nothing to build with.
if ! command -v cargo >/dev/null 2>&1; then
  echo "test.sh: cargo is missing: install Rust (https://rustup.rs), then run ./test.sh" >&2
  exit 1
fi

echo "== cargo test $*"
cargo test "$@"

# The suites that compare with native RLS and drive real clients, again with
# every proxy pooling its members' connections (pool.mode: transaction).
# Skipped when the arguments name tests of their own (a filter or --test).
for arg in "$@"; do
  case "$arg" in
    --test | --test=* | --lib | --bins | --bin | --bin=* | --doc | --bench | --bench=* | --example | --example=* | --) exit 0 ;;
    -*) ;;
    *) exit 0 ;;
  esac
done
echo "== the same suites in transaction pooling: ROWGATE_TEST_POOL=transaction cargo test $* --test differential --test attacks --test clients --test bi_drivers --test proxy_rls --test leakproof --test fidelity --test data_sources --test writes"
ROWGATE_TEST_POOL=transaction exec cargo test "$@" --test differential --test attacks \
  --test clients --test bi_drivers --test proxy_rls --test leakproof --test fidelity --test data_sources --test writes
