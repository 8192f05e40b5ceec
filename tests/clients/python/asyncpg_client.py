"""asyncpg through rowgate; run by tests/bi_drivers.rs.

Usage: asyncpg_client.py PROXY_DSN NATIVE_DSN

asyncpg decodes every column in binary and learns user-defined types (enum,
composite, range, arrays of them) with its own catalog queries, after
turning JIT off with `set_config('jit', 'off', false)`. Every step runs
twice: through rowgate as a policy user, and on a direct connection as that
user's native row-level-security role (the oracle). The script prints one
`name=value` line per fact seen through rowgate, and `name.same=true|false`
telling whether the oracle saw the same; the Rust test asserts on those
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
    if isinstance(v, (list, tuple)):
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


async def steps(dsn):
    facts = {}
    conn = await asyncpg.connect(dsn, server_settings={"jit": "off"}, timeout=20)
    try:
        facts["jit"] = await conn.fetchval("SELECT current_setting('jit')")
        rows = await conn.fetch(
            "SELECT id, feeling, moods, addr, addrs, sizes, span, weights, grid, tags "
            "FROM gadgets ORDER BY id"
        )
        facts["gadget_ids"] = ",".join(str(r["id"]) for r in rows)
        for r in rows:
            facts[f"gadget_{r['id']}"] = "|".join(show(v) for v in r.values())
        facts["gadget_types"] = ",".join(
            f"{a.name}:{a.type.name}:{a.type.kind}"
            for a in (
                await conn.prepare(
                    "SELECT feeling, moods, addr, addrs, sizes, span, weights FROM gadgets"
                )
            ).get_attributes()
        )
        # User-defined types as parameters: encoded by the codecs asyncpg
        # built from its introspection.
        facts["by_enum"] = show(
            [r[0] for r in await conn.fetch(
                "SELECT id FROM gadgets WHERE feeling = $1 ORDER BY id", "happy")]
        )
        facts["by_enum_array"] = show(
            [r[0] for r in await conn.fetch(
                "SELECT id FROM gadgets WHERE moods @> $1 ORDER BY id", ["sad"])]
        )
        facts["by_range"] = show(
            [r[0] for r in await conn.fetch(
                "SELECT id FROM gadgets WHERE sizes && $1 ORDER BY id",
                asyncpg.Range(2, 3))]
        )
        facts["by_custom_range"] = show(
            [r[0] for r in await conn.fetch(
                "SELECT id FROM gadgets WHERE weights @> $1::float8 ORDER BY id", 1.0)]
        )
        facts["zip_of_address"] = show(
            [r[0] for r in await conn.fetch(
                "SELECT (addr).zip FROM gadgets WHERE (addr).street = $1", "1 Main St")]
        )
        # The filters of the differential policy, as `king` has them.
        facts["merchants"] = show(
            [tuple(r) for r in await conn.fetch("SELECT id, name FROM merchants ORDER BY id")]
        )
        facts["orders"] = show(
            [r[0] for r in await conn.fetch("SELECT id FROM orders ORDER BY id")]
        )
        facts["gadget_merchants"] = show(
            [tuple(r) for r in await conn.fetch(
                "SELECT g.name, m.name FROM gadgets g JOIN merchants m ON m.id = g.merchant_id "
                "ORDER BY g.id")]
        )
        facts["hidden"] = await sqlstate(conn.fetch("SELECT * FROM hr.salaries"))
        facts["after_refusal"] = str(await conn.fetchval("SELECT count(*) FROM gadgets"))
        # A cursor in a transaction, as asyncpg streams large results.
        async with conn.transaction():
            ids = [r["id"] async for r in conn.cursor(
                "SELECT id FROM orders ORDER BY id", prefetch=2)]
        facts["cursor_orders"] = show(ids)
    finally:
        await conn.close()
    return facts


async def main():
    proxy, native = sys.argv[1], sys.argv[2]
    through = await steps(proxy)
    oracle = await steps(native)
    for name, value in through.items():
        print(f"{name}={value}")
        print(f"{name}.same={str(value == oracle.get(name)).lower()}")
    print("done=true")


if __name__ == "__main__":
    asyncio.run(main())
