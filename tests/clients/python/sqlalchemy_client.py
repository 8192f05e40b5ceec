"""SQLAlchemy 2 on psycopg2 through rowgate; run by tests/bi_drivers.rs.

Usage: sqlalchemy_client.py PROXY_URL NATIVE_URL

What a BI tool built on SQLAlchemy does (Superset's schema browser and
dataset editor): `sqlalchemy.inspect(engine)` for schemas, tables, columns,
keys and indexes, then reads through the engine. Every step runs twice:
through rowgate as a policy user, and on a direct connection as that user's
native row-level-security role (the oracle). The script prints one
`name=value` line per fact seen through rowgate and `name.native=value` for
what the oracle saw; for facts native PostgreSQL shows alike (everything but
the listings of schemas and tables, which rowgate hides and a native role
does not), also `name.same=true|false`. The Rust test asserts on those
lines. It exits non-zero only if it crashes.
"""

import sys
import warnings

import sqlalchemy
from sqlalchemy import MetaData, Table, func, select, text

# Listings a native role sees whole (every table's name) and a member only
# as far as it is granted: not compared with the oracle.
LISTINGS = {"schemas", "public_tables", "sales_tables", "hr_tables", "has_tickets",
            "has_salaries", "has_gadgets"}


def columns(inspector, table, schema=None):
    return ",".join(
        f"{c['name']}:{c['type']!r}:{'null' if c['nullable'] else 'notnull'}"
        for c in inspector.get_columns(table, schema=schema)
    )


def steps(url):
    facts = {}
    engine = sqlalchemy.create_engine(url, pool_pre_ping=True)
    try:
        inspector = sqlalchemy.inspect(engine)
        facts["default_schema"] = inspector.default_schema_name
        facts["schemas"] = ",".join(inspector.get_schema_names())
        facts["public_tables"] = ",".join(sorted(inspector.get_table_names()))
        facts["sales_tables"] = ",".join(sorted(inspector.get_table_names(schema="sales")))
        facts["hr_tables"] = ",".join(sorted(inspector.get_table_names(schema="hr")))
        facts["has_tickets"] = str(inspector.has_table("tickets"))
        facts["has_salaries"] = str(inspector.has_table("salaries", schema="hr"))
        facts["has_gadgets"] = str(inspector.has_table("gadgets"))
        facts["views"] = ",".join(inspector.get_view_names())
        with warnings.catch_warnings():
            # "Did not recognize type 'address'": SQLAlchemy has no type for
            # a composite; it reflects it as NullType, natively too.
            warnings.simplefilter("ignore", sqlalchemy.exc.SAWarning)
            facts["gadgets_columns"] = columns(inspector, "gadgets")
            facts["merchants_columns"] = columns(inspector, "merchants")
            facts["returns_columns"] = columns(inspector, "Returns", schema="sales")
        facts["gadgets_pk"] = repr(inspector.get_pk_constraint("gadgets"))
        facts["merchants_pk"] = repr(inspector.get_pk_constraint("merchants"))
        facts["gadgets_fks"] = repr(inspector.get_foreign_keys("gadgets"))
        facts["orders_fks"] = repr(inspector.get_foreign_keys("orders"))
        facts["gadgets_indexes"] = repr(
            sorted(inspector.get_indexes("gadgets"), key=lambda i: i["name"])
        )
        facts["merchants_indexes"] = repr(inspector.get_indexes("merchants"))
        facts["gadgets_unique"] = repr(inspector.get_unique_constraints("gadgets"))
        facts["enums"] = repr(inspector.get_enums())

        # Reads through the engine: reflected tables, Core selects, text.
        meta = MetaData()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sqlalchemy.exc.SAWarning)
            merchants = Table("merchants", meta, autoload_with=engine)
            gadgets = Table("gadgets", meta, autoload_with=engine)
        orders = Table("orders", meta, autoload_with=engine)
        with engine.connect() as conn:
            facts["merchants_rows"] = "|".join(
                f"{r.id}:{r.name}"
                for r in conn.execute(select(merchants).order_by(merchants.c.id))
            )
            facts["orders_count"] = str(
                conn.execute(select(func.count()).select_from(orders)).scalar()
            )
            facts["orders_by_merchant"] = "|".join(
                f"{r[0]}:{r[1]}:{r[2]}"
                for r in conn.execute(
                    select(merchants.c.name, func.count(orders.c.id), func.sum(orders.c.amount))
                    .join(orders, orders.c.merchant_id == merchants.c.id)
                    .group_by(merchants.c.name)
                    .order_by(merchants.c.name)
                )
            )
            facts["gadgets_rows"] = "|".join(
                f"{r.id}:{r.name}:{r.feeling}:{r.sizes}"
                for r in conn.execute(select(gadgets).order_by(gadgets.c.id))
            )
            facts["orders_over"] = str(
                conn.execute(
                    text("SELECT count(*) FROM orders WHERE amount > :n"), {"n": 40}
                ).scalar()
            )
            try:
                conn.execute(text("SELECT * FROM hr.salaries"))
                facts["hidden"] = "ok"
            except sqlalchemy.exc.DBAPIError as e:
                facts["hidden"] = getattr(e.orig, "pgcode", None) or str(e.orig)
                conn.rollback()
            facts["after_refusal"] = str(
                conn.execute(select(func.count()).select_from(merchants)).scalar()
            )
    finally:
        engine.dispose()
    return facts


def main():
    proxy, native = sys.argv[1], sys.argv[2]
    through = steps(proxy)
    oracle = steps(native)
    for name, value in through.items():
        print(f"{name}={value}")
        print(f"{name}.native={oracle.get(name)}")
        if name not in LISTINGS:
            print(f"{name}.same={str(value == oracle.get(name)).lower()}")
    print(f"sqlalchemy_version={sqlalchemy.__version__}")
    print("done=true")


if __name__ == "__main__":
    main()
