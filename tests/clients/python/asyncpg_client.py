"""asyncpg through rowgate; run by tests/bi_drivers.rs.

Usage: asyncpg_client.py PROXY_DSN NATIVE_DSN STEP...   (STEP: types, pool, composites)

asyncpg decodes every column in binary and learns user-defined types (enum,
composite, range, arrays of them) with its own catalog queries, after
turning JIT off with `set_config('jit', 'off', false)`. Every step runs
twice: through rowgate as a policy user, and on a direct connection as that
user's native row-level-security role (the oracle). The script prints one
`name=value` line per fact seen through rowgate, `name.native=value` for
what the oracle saw, and `name.same=true|false`; the Rust test asserts on those
lines. It exits non-zero only if it crashes.
"""

import asyncio
import datetime
import json
import sys

import asyncpg


def show(v):
    """A value as one unambiguous line: strings JSON-quoted, NULL bare."""
    if v is None:
        return "NULL"
    if isinstance(v, asyncpg.Record):
        return "(" + ",".join(show(x) for x in v.values()) + ")"
    if isinstance(v, asyncpg.Range):
        if v.isempty:
            return "empty"
        bound = lambda b: "" if b is None else show(b)
        return (
            ("[" if v.lower_inc else "(")
            + bound(v.lower)
            + ","
            + bound(v.upper)
            + ("]" if v.upper_inc else ")")
        )
    if isinstance(v, tuple):
        return "(" + ",".join(show(x) for x in v) + ")"
    if isinstance(v, list):
        return "{" + ",".join(show(x) for x in v) + "}"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (datetime.date, datetime.datetime)):
        return v.isoformat()
    return str(v)


async def sqlstate(coro):
    """Awaits `coro`; "ok" or the SQLSTATE of the error it raised."""
    try:
        await coro
        return "ok"
    except asyncpg.PostgresError as e:
        return e.sqlstate or f"error without SQLSTATE: {e}"


async def connect(dsn):
    return await asyncpg.connect(dsn, server_settings={"jit": "off"}, timeout=20)


async def ids(conn, sql, *args):
    return show([r[0] for r in await conn.fetch(sql, *args)])


async def types(dsn):
    """Enum, range and array columns, as results and as parameters; the
    policy's filters."""
    facts = {}
    conn = await connect(dsn)
    try:
        facts["jit"] = await conn.fetchval("SELECT current_setting('jit')")
        rows = await conn.fetch(
            "SELECT id, feeling, moods, sizes, span, weights, grid, tags "
            "FROM gadgets ORDER BY id"
        )
        facts["gadget_ids"] = ",".join(str(r["id"]) for r in rows)
        for r in rows:
            facts[f"gadget_{r['id']}"] = "|".join(show(v) for v in r.values())
        statement = await conn.prepare(
            "SELECT feeling, moods, sizes, span, weights, grid FROM gadgets"
        )
        facts["gadget_types"] = ",".join(
            f"{a.name}:{a.type.name}:{a.type.kind}" for a in statement.get_attributes()
        )
        # User-defined types as parameters: encoded by the codecs asyncpg
        # built from its introspection.
        facts["by_enum"] = await ids(
            conn, "SELECT id FROM gadgets WHERE feeling = $1 ORDER BY id", "happy")
        facts["by_enum_array"] = await ids(
            conn, "SELECT id FROM gadgets WHERE moods @> $1 ORDER BY id", ["sad"])
        facts["by_range"] = await ids(
            conn, "SELECT id FROM gadgets WHERE sizes && $1 ORDER BY id", asyncpg.Range(2, 3))
        facts["by_custom_range"] = await ids(
            conn, "SELECT id FROM gadgets WHERE weights = $1 ORDER BY id",
            asyncpg.Range(0.5, 2.5, upper_inc=True))
        # The filters of the differential policy, as `king` has them.
        facts["merchants"] = show(
            [tuple(r) for r in await conn.fetch("SELECT id, name FROM merchants ORDER BY id")]
        )
        facts["orders"] = await ids(conn, "SELECT id FROM orders ORDER BY id")
        facts["orders_over"] = await ids(
            conn, "SELECT id FROM orders WHERE amount > $1 ORDER BY id", 40)
        facts["gadget_merchants"] = show(
            [tuple(r) for r in await conn.fetch(
                "SELECT g.name, m.name FROM gadgets g JOIN merchants m ON m.id = g.merchant_id "
                "ORDER BY g.id")]
        )
        facts["hidden"] = await sqlstate(conn.fetch("SELECT * FROM hr.salaries"))
        facts["ungranted"] = await sqlstate(conn.fetch("SELECT * FROM tickets"))
        facts["after_refusal"] = str(await conn.fetchval("SELECT count(*) FROM gadgets"))
        # A cursor in a transaction, as asyncpg streams large results.
        async with conn.transaction():
            streamed = [r["id"] async for r in conn.cursor(
                "SELECT id FROM orders ORDER BY id", prefetch=2)]
        facts["cursor_orders"] = show(streamed)
    finally:
        await conn.close()
    return facts


async def pool(dsn):
    """A pool of one connection, acquired three times: each release runs
    asyncpg's reset query (`pg_advisory_unlock_all()`, `CLOSE ALL`,
    `UNLISTEN *`, `RESET ALL`) on the same server session."""
    facts = {}
    p = await asyncpg.create_pool(
        dsn, min_size=1, max_size=1, server_settings={"jit": "off"}, timeout=20
    )
    try:
        counts, pids, jit = [], set(), set()
        for _ in range(3):
            async with p.acquire() as conn:
                counts.append(await conn.fetchval("SELECT count(*) FROM merchants"))
                pids.add(await conn.fetchval("SELECT pg_backend_pid()"))
                jit.add(await conn.fetchval("SELECT current_setting('jit')"))
        facts["pool_merchants"] = show(counts)
        facts["pool_sessions"] = str(len(pids))
        facts["pool_jit"] = ",".join(sorted(jit))
    finally:
        await p.close()
    return facts


async def composites(dsn):
    """Columns of a composite type and of an array of it, and a whole row
    of the table: asyncpg needs the composite's attributes to decode them.
    A failure is a fact too: `error: <exception>: <message>`."""
    facts = {}
    conn = await connect(dsn)

    async def attempt(name, run):
        try:
            facts[name] = await run()
        except Exception as e:  # the driver's own errors, not only the server's
            facts[name] = f"error: {type(e).__name__}: {e}"

    async def rows():
        return "|".join(
            f"{r['id']}:{show(r['addr'])}:{show(r['addrs'])}"
            for r in await conn.fetch("SELECT id, addr, addrs FROM gadgets ORDER BY id")
        )

    async def whole_row():
        return show(await conn.fetchval("SELECT g FROM gadgets g WHERE id = 1"))

    async def zip_of_address():
        return await ids(
            conn, "SELECT (addr).zip FROM gadgets WHERE (addr).street = $1", "1 Main St")

    try:
        await attempt("composite_rows", rows)
        await attempt("whole_row_1", whole_row)
        await attempt("zip_of_address", zip_of_address)
    finally:
        await conn.close()
    return facts


STEPS = {"types": types, "pool": pool, "composites": composites}


async def main():
    proxy, native = sys.argv[1], sys.argv[2]
    through, oracle = {}, {}
    for step in sys.argv[3:]:
        through.update(await STEPS[step](proxy))
        oracle.update(await STEPS[step](native))
    for name, value in through.items():
        print(f"{name}={value}")
        print(f"{name}.native={oracle.get(name)}")
        print(f"{name}.same={str(value == oracle.get(name)).lower()}")
    print("done=true")


if __name__ == "__main__":
    asyncio.run(main())
