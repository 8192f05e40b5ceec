"""psycopg 3 through rowgate; run by tests/clients.rs.

Usage: psycopg_client.py PROXY_CONNINFO NATIVE_CONNINFO

Every step runs twice: through rowgate as a policy user, and on a direct
connection as that user's native row-level-security role (the oracle). The
script prints one `name=value` line per fact seen through rowgate, and
`name.same=true|false` telling whether the oracle saw the same; the Rust test
asserts on those lines. It exits non-zero only if it crashes.
"""

import socket
import struct
import sys
import threading
import time

import psycopg


def sqlstate(run):
    """Runs `run`; "ok" or the SQLSTATE of the error it raised."""
    try:
        run()
        return "ok"
    except psycopg.Error as e:
        return e.sqlstate or f"error without SQLSTATE: {e}"


def prepared(dsn):
    """Server-side prepared statements: threshold 0 prepares at first use."""
    facts = {}
    with psycopg.connect(dsn, prepare_threshold=0, autocommit=True) as conn:
        q = "SELECT count(*) FROM orders WHERE id > %s"
        facts["prepared_counts"] = ",".join(
            str(conn.execute(q, (n,)).fetchone()[0]) for n in (0, 0, 20, 40)
        )
        names = "SELECT name FROM merchants WHERE id = ANY(%s) ORDER BY id"
        for i in range(3):
            rows = conn.execute(names, ([1, 2, 4, 7],), prepare=True).fetchall()
            facts[f"prepared_names_{i}"] = "|".join(r[0] for r in rows)
        facts["prepared_refusal"] = sqlstate(
            lambda: conn.execute(
                "SELECT * FROM hr.salaries WHERE amount > %s", (0,), prepare=True
            )
        )
        facts["prepared_after_refusal"] = str(
            conn.execute(q, (0,), prepare=True).fetchone()[0]
        )
    return facts


def binary(dsn):
    """Binary results, decoded by psycopg's binary loaders."""
    facts = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.cursor(binary=True)
        orders = cur.execute("SELECT * FROM orders ORDER BY id").fetchall()
        facts["binary_orders"] = str(len(orders))
        facts["binary_orders_rows"] = repr(orders)
        merchants = cur.execute(
            "SELECT id, name, tier, created FROM merchants ORDER BY id"
        ).fetchall()
        facts["binary_merchants"] = repr(merchants)
        facts["binary_format"] = str(cur.pgresult.fformat(0))
    return facts


def transactions(dsn):
    """Commit, rollback, and a refusal inside a transaction block."""
    facts = {}
    with psycopg.connect(dsn) as conn:
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM merchants")
        facts["txn_merchants"] = str(cur.fetchone()[0])
        facts["txn_refused"] = sqlstate(
            lambda: cur.execute("SELECT * FROM hr.salaries")
        )
        facts["txn_status_after_refusal"] = conn.info.transaction_status.name
        facts["txn_next_statement"] = sqlstate(lambda: cur.execute("SELECT 1"))
        facts["txn_next_with_param"] = sqlstate(
            lambda: cur.execute("SELECT count(*) FROM orders WHERE id > %s", (0,))
        )
        conn.rollback()
        facts["txn_status_after_rollback"] = conn.info.transaction_status.name
        cur.execute("SELECT count(*) FROM merchants")
        facts["txn_after_rollback"] = str(cur.fetchone()[0])
        conn.commit()
        with conn.transaction():
            cur.execute("SELECT count(*) FROM orders")
            facts["txn_block_orders"] = str(cur.fetchone()[0])
        facts["txn_status_after_commit"] = conn.info.transaction_status.name
        # A server-side cursor (DECLARE ... FETCH) over a filtered read.
        with conn.transaction():
            named = conn.cursor(name="orders_cursor")
            named.itersize = 2
            named.execute("SELECT id FROM orders ORDER BY id")
            facts["named_cursor_ids"] = ",".join(str(r[0]) for r in named)
            named.close()
        # COPY out, of a table and of a query: filtered like a SELECT.
        with cur.copy("COPY merchants (id, name) TO STDOUT") as copy:
            facts["copy_table"] = "|".join(
                f"{r[0]}:{r[1]}" for r in copy.rows()
            )
        with cur.copy("COPY (SELECT id FROM orders WHERE id > 40) TO STDOUT") as copy:
            facts["copy_query"] = ",".join(r[0] for r in copy.rows())
        conn.commit()
        # Writes are refused, for members and analysts alike.
        facts["write_refused"] = sqlstate(
            lambda: cur.execute("DELETE FROM orders WHERE id < 0")
        )
        conn.rollback()
    return facts


def pipeline(dsn):
    """Pipeline mode: many extended-protocol queries before one Sync. After
    an error the server skips to the Sync; psycopg reports what it got."""
    facts = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        events = []
        with conn.pipeline() as p:
            first = conn.execute("SELECT count(*) FROM orders WHERE id > %s", (0,))
            try:
                conn.execute("SELECT amount FROM hr.salaries WHERE merchant_id = %s", (1,))
                conn.execute("SELECT count(*) FROM merchants WHERE id > %s", (0,))
                p.sync()
            except psycopg.Error as e:
                events.append(f"{type(e).__name__}:{e.sqlstate}")
                # The error may come back while a later execute() is queued,
                # before the Sync was sent (it depends on timing): sync now
                # so that the pipeline leaves its aborted state either way.
                try:
                    p.sync()
                except psycopg.errors.PipelineAborted:
                    pass
            events.append(f"first:{first.fetchone()[0]}")
            last = conn.execute("SELECT count(*) FROM merchants WHERE id > %s", (0,))
            p.sync()
            events.append(f"after_sync:{last.fetchone()[0]}")
        facts["pipeline_events"] = ",".join(events)
    return facts


def cancel(dsn):
    """Cancel of one session's query, by psycopg's cancel(): that query
    fails with 57014, another session's query runs on, and a cancel request
    with the right key but a wrong secret does nothing."""
    facts = {}
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(
        dsn, autocommit=True
    ) as b:
        outcome = {}

        def sleep(name, conn, seconds):
            started = time.monotonic()
            outcome[name] = sqlstate(lambda: conn.execute(f"SELECT pg_sleep({seconds})"))
            outcome[name + "_seconds"] = time.monotonic() - started

        sleepers = [
            threading.Thread(target=sleep, args=("a", a, 30)),
            threading.Thread(target=sleep, args=("b", b, 1.5)),
        ]
        for t in sleepers:
            t.start()
        time.sleep(0.4)
        pid = a.info.backend_pid
        with socket.create_connection((a.info.host, a.info.port)) as forged:
            forged.sendall(struct.pack("!iiii", 16, 80877102, pid, 0x5EC12E7))
        time.sleep(0.5)
        facts["forged_cancel_ignored"] = str(sleepers[0].is_alive()).lower()
        a.cancel()
        sleepers[0].join(10)
        facts["cancelled"] = outcome.get("a", "still running")
        facts["cancelled_within_3s"] = str(outcome.get("a_seconds", 99) < 3).lower()
        sleepers[1].join(10)
        facts["other_session"] = outcome.get("b", "still running")
        facts["after_cancel"] = str(a.execute("SELECT count(*) FROM merchants").fetchone()[0])
    return facts


def main():
    proxy, native = sys.argv[1], sys.argv[2]
    for step in (prepared, binary, transactions, pipeline, cancel):
        through = step(proxy)
        oracle = step(native)
        for name, value in through.items():
            print(f"{name}={value}")
            print(f"{name}.same={str(value == oracle.get(name)).lower()}")
    print("done=true")


if __name__ == "__main__":
    main()
