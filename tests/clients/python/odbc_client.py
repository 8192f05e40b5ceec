"""psqlODBC through pyodbc, through rowgate; run by tests/bi_drivers.rs.

Usage: odbc_client.py --driver
       odbc_client.py HOST PORT DATABASE USER PASSWORD NATIVE_PORT NATIVE_USER STEP...
       (STEP: catalog, composites)

`--driver` prints the psqlODBC driver it would use (registered with unixODBC
as "PostgreSQL Unicode", or the driver library itself) and exits 1 when
there is none. Otherwise every step runs twice, with a DSN-less connection
string: through rowgate as a policy user, and directly as that user's native
row-level-security role (the oracle). The ODBC catalog functions are what
ODBC BI tools (Excel, Power BI, Tableau) call to list tables and columns.
The script prints one `name=value` line per fact seen through rowgate and
`name.native=value` for what the oracle saw; for facts native PostgreSQL
shows alike (everything but the listings of tables, which rowgate hides and
a native role does not), also `name.same=true|false`. The Rust test asserts
on those lines. It exits non-zero only if it crashes.
"""

import glob
import sys

import pyodbc

# Listings a native role sees whole: not compared with the oracle.
LISTINGS = {"tables", "public_tables", "hr_tables", "tickets_columns"}


def driver():
    """The psqlODBC (Unicode) driver: its unixODBC name, or its library."""
    if "PostgreSQL Unicode" in pyodbc.drivers():
        return "{PostgreSQL Unicode}"
    for path in sorted(glob.glob("/usr/lib/*/odbc/psqlodbcw.so")) + sorted(
        glob.glob("/usr/lib*/psqlodbcw.so")
    ):
        return path
    return None


def sqlstate(run):
    try:
        run()
        return "ok"
    except pyodbc.Error as e:
        return e.args[0] if e.args else str(e)


def catalog(conninfo):
    """SQLTables, SQLColumns, SQLPrimaryKeys, SQLForeignKeys, SQLStatistics;
    a filtered SELECT, a parameterized one, and a refusal."""
    facts = {}
    conn = pyodbc.connect(conninfo, timeout=20)
    try:
        cur = conn.cursor()
        facts["tables"] = ",".join(
            sorted(f"{r.table_schem}.{r.table_name}:{r.table_type}" for r in cur.tables())
        )
        facts["public_tables"] = ",".join(
            sorted(r.table_name for r in cur.tables(schema="public", tableType="TABLE"))
        )
        facts["hr_tables"] = ",".join(sorted(r.table_name for r in cur.tables(schema="hr")))
        facts["merchants_columns"] = ",".join(
            f"{r.column_name}:{r.type_name}:{r.data_type}:{r.nullable}"
            for r in cur.columns(table="merchants")
        )
        facts["tickets_columns"] = ",".join(
            r.column_name for r in cur.columns(table="tickets")
        )
        facts["merchants_primary_key"] = ",".join(
            f"{r.column_name}:{r.pk_name}" for r in cur.primaryKeys("merchants")
        )
        facts["gadgets_foreign_keys"] = ",".join(
            f"{r.fkcolumn_name}->{r.pktable_name}.{r.pkcolumn_name}"
            for r in cur.foreignKeys(foreignTable="gadgets")
        )
        facts["gadgets_statistics"] = ",".join(
            sorted(
                f"{r.index_name}:{r.column_name}:{r.non_unique}"
                for r in cur.statistics("gadgets")
                if r.index_name
            )
        )
        facts["merchants_rows"] = "|".join(
            f"{r.id}:{r.name}"
            for r in cur.execute("SELECT id, name FROM merchants ORDER BY id")
        )
        facts["orders_over"] = str(
            cur.execute("SELECT count(*) FROM orders WHERE amount > ?", 40).fetchval()
        )
        facts["gadgets_rows"] = "|".join(
            f"{r.id}:{r.name}:{r.feeling}:{r.sizes}"
            for r in cur.execute("SELECT id, name, feeling, sizes FROM gadgets ORDER BY id")
        )
        facts["hidden"] = sqlstate(lambda: cur.execute("SELECT * FROM hr.salaries"))
        conn.rollback()
        facts["after_refusal"] = str(
            cur.execute("SELECT count(*) FROM merchants").fetchval()
        )
        conn.commit()
    finally:
        conn.close()
    return facts


def composites(conninfo):
    """SQLColumns of a table with columns of a composite type and of an
    array of it."""
    conn = pyodbc.connect(conninfo, timeout=20)
    try:
        return {
            "gadgets_columns": ",".join(
                f"{r.column_name}:{r.type_name}:{r.data_type}"
                for r in conn.cursor().columns(table="gadgets", schema="public")
            )
        }
    finally:
        conn.close()


STEPS = {"catalog": catalog, "composites": composites}


def conninfo(drv, host, port, database, user, password):
    parts = [f"Driver={drv}", f"Server={host}", f"Port={port}", f"Database={database}",
             f"Uid={user}", "SSLmode=disable"]
    if password:
        parts.append(f"Pwd={password}")
    return ";".join(parts) + ";"


def main():
    drv = driver()
    if sys.argv[1:] == ["--driver"]:
        print(drv or "none")
        sys.exit(0 if drv else 1)
    host, port, database, user, password, native_port, native_user = sys.argv[1:8]
    through, oracle = {}, {}
    for step in sys.argv[8:]:
        through.update(STEPS[step](conninfo(drv, host, port, database, user, password)))
        oracle.update(STEPS[step](conninfo(drv, host, native_port, database, native_user, None)))
    for name, value in through.items():
        print(f"{name}={value}")
        print(f"{name}.native={oracle.get(name)}")
        if name not in LISTINGS:
            print(f"{name}.same={str(value == oracle.get(name)).lower()}")
    print("done=true")


if __name__ == "__main__":
    main()
