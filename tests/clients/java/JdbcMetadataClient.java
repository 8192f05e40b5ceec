// pgJDBC's schema browser through rowgate, as JVM BI tools (DBeaver,
// Metabase, DataGrip) use it; compiled and run by tests/bi_drivers.rs.
//
// Usage: java -cp postgresql.jar:. JdbcMetadataClient PROXY_URL USER PASSWORD NATIVE_URL NATIVE_USER STEP...
// (STEP: metadata, composites, privileges)
//
// Every step runs twice: through rowgate as a policy user, and on a direct
// connection as that user's native row-level-security role (the oracle).
// Prints one `name=value` line per fact seen through rowgate and
// `name.native=value` for what the oracle saw; for facts native PostgreSQL
// shows alike (everything but listings of schemas, tables and privileges,
// which rowgate limits to what the member may read and a native role does
// not), also `name.same=true|false`. The Rust test asserts on those lines.
// Exits non-zero only if it crashes.

import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;

public class JdbcMetadataClient {
    /** Listings a native role sees whole: not compared with the oracle. */
    static final Set<String> LISTINGS = new HashSet<>(Arrays.asList(
            "schemas", "public_tables", "all_tables", "hr_tables", "tickets_columns",
            "public_privileges", "sales_privileges", "hr_privileges"));

    interface Row {
        String of(ResultSet rs) throws SQLException;
    }

    /** The rows of a metadata result set, one string each, in order. */
    static List<String> rows(ResultSet rs, Row row) throws SQLException {
        List<String> out = new ArrayList<>();
        try (ResultSet r = rs) {
            while (r.next()) {
                out.add(row.of(r));
            }
        }
        return out;
    }

    static String sorted(List<String> list) {
        List<String> copy = new ArrayList<>(list);
        Collections.sort(copy);
        return String.join(",", copy);
    }

    static String scalar(Connection conn, String sql) throws SQLException {
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            rs.next();
            return rs.getString(1);
        }
    }

    static Connection connect(String url, String user, String password) throws SQLException {
        Properties props = new Properties();
        props.setProperty("user", user);
        if (password != null) {
            props.setProperty("password", password);
        }
        return DriverManager.getConnection(url, props);
    }

    /** The current schema, set in the URL and by setSchema; the schema
     * browser's listings; values of user-defined types. */
    static Map<String, String> metadata(String url, String user, String password) throws Exception {
        Map<String, String> facts = new LinkedHashMap<>();

        // currentSchema in the URL: pgJDBC sends it as the search_path
        // startup parameter.
        try (Connection conn = connect(url + "&currentSchema=public", user, password)) {
            facts.put("url_schema", conn.getSchema());
            facts.put("url_schema_merchants", scalar(conn, "SELECT count(*) FROM merchants"));
        }

        try (Connection conn = connect(url, user, password)) {
            // setSchema: pgJDBC runs SET SESSION search_path TO 'public'.
            facts.put("schema_before", conn.getSchema());
            try {
                conn.setSchema("public");
                facts.put("set_schema", conn.getSchema());
            } catch (SQLException e) {
                facts.put("set_schema", e.getSQLState() + ": " + e.getMessage());
            }
            facts.put("set_schema_merchants", scalar(conn, "SELECT count(*) FROM merchants"));

            DatabaseMetaData meta = conn.getMetaData();
            facts.put("schemas", sorted(rows(meta.getSchemas(), rs -> rs.getString("TABLE_SCHEM"))));
            facts.put("public_tables", sorted(rows(meta.getTables(null, "public", "%", new String[] {"TABLE"}),
                    rs -> rs.getString("TABLE_NAME"))));
            facts.put("all_tables", sorted(rows(meta.getTables(null, null, "%", new String[] {"TABLE"}),
                    rs -> rs.getString("TABLE_SCHEM") + "." + rs.getString("TABLE_NAME"))));
            facts.put("hr_tables", sorted(rows(meta.getTables(null, "hr", "%", null),
                    rs -> rs.getString("TABLE_NAME"))));
            facts.put("merchants_columns", String.join(",", rows(meta.getColumns(null, "public", "merchants", "%"),
                    rs -> rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME"))));
            facts.put("tickets_columns", String.join(",", rows(meta.getColumns(null, "public", "tickets", "%"),
                    rs -> rs.getString("COLUMN_NAME"))));
            facts.put("gadgets_primary_key", String.join(",", rows(meta.getPrimaryKeys(null, "public", "gadgets"),
                    rs -> rs.getString("COLUMN_NAME") + ":" + rs.getString("PK_NAME"))));
            facts.put("gadgets_imported_keys", String.join(",", rows(meta.getImportedKeys(null, "public", "gadgets"),
                    rs -> rs.getString("FKCOLUMN_NAME") + "->" + rs.getString("PKTABLE_SCHEM") + "."
                            + rs.getString("PKTABLE_NAME") + "." + rs.getString("PKCOLUMN_NAME"))));
            facts.put("gadgets_indexes", sorted(rows(meta.getIndexInfo(null, "public", "gadgets", false, false),
                    rs -> rs.getString("INDEX_NAME") + ":" + rs.getString("COLUMN_NAME") + ":"
                            + rs.getBoolean("NON_UNIQUE"))));

            // Values of the user-defined types, as getString shows them.
            facts.put("gadgets_rows", String.join("|", rows(
                    conn.createStatement().executeQuery(
                            "SELECT id, feeling, moods, addr, sizes, weights FROM gadgets ORDER BY id"),
                    rs -> rs.getInt(1) + ":" + rs.getString(2) + ":" + rs.getString(3) + ":" + rs.getString(4)
                            + ":" + rs.getString(5) + ":" + rs.getString(6))));
            facts.put("merchants_rows", String.join("|", rows(
                    conn.createStatement().executeQuery("SELECT id, name FROM merchants ORDER BY id"),
                    rs -> rs.getInt(1) + ":" + rs.getString(2))));
        }
        return facts;
    }

    /** getColumns of a table with columns of a composite type and of an
     * array of it. */
    static Map<String, String> composites(String url, String user, String password) throws Exception {
        Map<String, String> facts = new LinkedHashMap<>();
        try (Connection conn = connect(url, user, password)) {
            facts.put("gadgets_columns", String.join(",", rows(
                    conn.getMetaData().getColumns(null, "public", "gadgets", "%"),
                    rs -> rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME") + ":"
                            + rs.getInt("DATA_TYPE") + ":" + rs.getString("IS_NULLABLE"))));
        }
        return facts;
    }

    /** getTablePrivileges: one row per table, grantee and privilege. */
    static Map<String, String> privileges(String url, String user, String password) throws Exception {
        Map<String, String> facts = new LinkedHashMap<>();
        try (Connection conn = connect(url, user, password)) {
            DatabaseMetaData meta = conn.getMetaData();
            for (String schema : new String[] {"public", "sales", "hr"}) {
                facts.put(schema + "_privileges", sorted(rows(meta.getTablePrivileges(null, schema, "%"),
                        rs -> rs.getString("TABLE_NAME") + ":" + rs.getString("GRANTEE") + ":"
                                + rs.getString("PRIVILEGE"))));
            }
        }
        return facts;
    }

    static Map<String, String> step(String name, String url, String user, String password) throws Exception {
        switch (name) {
            case "metadata":
                return metadata(url, user, password);
            case "composites":
                return composites(url, user, password);
            case "privileges":
                return privileges(url, user, password);
            default:
                throw new IllegalArgumentException("no step " + name);
        }
    }

    public static void main(String[] args) throws Exception {
        Map<String, String> through = new LinkedHashMap<>();
        Map<String, String> oracle = new LinkedHashMap<>();
        for (int i = 5; i < args.length; i++) {
            through.putAll(step(args[i], args[0], args[1], args[2]));
            oracle.putAll(step(args[i], args[3], args[4], null));
        }
        for (Map.Entry<String, String> e : through.entrySet()) {
            String name = e.getKey();
            System.out.println(name + "=" + e.getValue());
            System.out.println(name + ".native=" + oracle.get(name));
            if (!LISTINGS.contains(name)) {
                System.out.println(name + ".same=" + e.getValue().equals(oracle.get(name)));
            }
        }
        System.out.println("done=true");
    }
}
