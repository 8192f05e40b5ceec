// pgJDBC through rowgate; compiled and run by tests/clients.rs.
//
// Usage: java -cp postgresql.jar:. JdbcClient PROXY_URL USER PASSWORD NATIVE_URL NATIVE_USER
//
// Every step runs twice: through rowgate as a policy user, and on a direct
// connection as that user's native row-level-security role (the oracle).
// Prints one `name=value` line per fact seen through rowgate, and
// `name.same=true|false` telling whether the oracle saw the same; the Rust
// test asserts on those lines. Exits non-zero only if it crashes.

import java.io.StringWriter;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;

import org.postgresql.PGStatement;
import org.postgresql.copy.CopyManager;
import org.postgresql.core.BaseConnection;

public class JdbcClient {
    static Map<String, String> steps(String url, String user, String password) throws Exception {
        Map<String, String> facts = new LinkedHashMap<>();
        Properties props = new Properties();
        props.setProperty("user", user);
        if (password != null) {
            props.setProperty("password", password);
        }
        try (Connection conn = DriverManager.getConnection(url, props)) {
            // More executions than prepareThreshold (5): from then on the
            // driver uses a named server-side statement.
            try (PreparedStatement ps = conn.prepareStatement("SELECT count(*) FROM orders WHERE id > ?")) {
                List<String> counts = new ArrayList<>();
                for (int i = 0; i < 8; i++) {
                    ps.setInt(1, i < 4 ? 0 : 40);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        counts.add(String.valueOf(rs.getLong(1)));
                    }
                }
                facts.put("threshold_counts", String.join(",", counts));
                facts.put("threshold_server_prepared",
                        String.valueOf(ps.unwrap(PGStatement.class).isUseServerPrepare()));
            }

            // A refusal in a prepared statement, then the session again.
            try (PreparedStatement ps = conn.prepareStatement("SELECT amount FROM hr.salaries WHERE merchant_id = ?")) {
                ps.setInt(1, 1);
                ps.executeQuery().close();
                facts.put("refused", "ok");
            } catch (SQLException e) {
                facts.put("refused", e.getSQLState());
            }
            try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("SELECT count(*) FROM merchants")) {
                rs.next();
                facts.put("after_refusal_merchants", String.valueOf(rs.getLong(1)));
            }

            // Several statements in one execute: pgJDBC sends them as one
            // pipeline of Parse/Bind/Execute with a single Sync.
            try (Statement st = conn.createStatement()) {
                List<String> results = new ArrayList<>();
                try {
                    boolean isResult = st.execute("SELECT count(*) FROM merchants; SELECT count(*) FROM orders");
                    while (isResult || st.getUpdateCount() != -1) {
                        if (isResult) {
                            try (ResultSet rs = st.getResultSet()) {
                                rs.next();
                                results.add(String.valueOf(rs.getLong(1)));
                            }
                        }
                        isResult = st.getMoreResults();
                    }
                } catch (SQLException e) {
                    results.add(e.getSQLState());
                }
                facts.put("multi_statement", String.join(",", results));
                try {
                    st.execute("SELECT count(*) FROM merchants; SELECT * FROM hr.salaries; SELECT count(*) FROM orders");
                    facts.put("multi_statement_refused", "ok");
                } catch (SQLException e) {
                    facts.put("multi_statement_refused", e.getSQLState());
                }
            }

            // What ResultSetMetaData says of a join's columns.
            try (Statement st = conn.createStatement();
                 ResultSet rs = st.executeQuery("SELECT m.id, m.name AS merchant, o.amount FROM merchants m JOIN orders o ON o.merchant_id = m.id WHERE false")) {
                java.sql.ResultSetMetaData md = rs.getMetaData();
                org.postgresql.PGResultSetMetaData pg = md.unwrap(org.postgresql.PGResultSetMetaData.class);
                List<String> columns = new ArrayList<>();
                for (int i = 1; i <= md.getColumnCount(); i++) {
                    columns.add(md.getColumnLabel(i) + ":" + md.getColumnTypeName(i) + ":" + pg.getBaseTableName(i)
                            + "." + pg.getBaseColumnName(i) + ":nullable=" + md.isNullable(i));
                }
                facts.put("result_metadata", String.join(",", columns));
            }

            // A query timeout: the driver cancels with a CancelRequest.
            try (Statement st = conn.createStatement()) {
                st.setQueryTimeout(1);
                long started = System.nanoTime();
                try {
                    st.executeQuery("SELECT pg_sleep(20)").close();
                    facts.put("query_timeout", "ok");
                } catch (SQLException e) {
                    facts.put("query_timeout", e.getSQLState());
                }
                facts.put("query_timeout_within_5s", String.valueOf(System.nanoTime() - started < 5_000_000_000L));
            }
            try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("SELECT count(*) FROM orders")) {
                rs.next();
                facts.put("after_timeout_orders", String.valueOf(rs.getLong(1)));
            }

            // A fetch size with autocommit off: a portal read in row-limited
            // Executes; every row must arrive, and only visible ones.
            conn.setAutoCommit(false);
            try (PreparedStatement ps = conn.prepareStatement("SELECT id, amount, status FROM orders WHERE id > ? ORDER BY id")) {
                ps.setFetchSize(2);
                ps.setInt(1, 0);
                List<String> rows = new ArrayList<>();
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) {
                        rows.add(rs.getInt(1) + ":" + rs.getBigDecimal(2) + ":" + rs.getString(3));
                    }
                }
                facts.put("fetch_rows", String.valueOf(rows.size()));
                facts.put("fetch_values", String.join("|", rows));
            }
            conn.commit();

            // A read-only transaction, as BI tools open one (BEGIN READ ONLY).
            conn.setReadOnly(true);
            try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("SELECT count(*) FROM merchants")) {
                rs.next();
                facts.put("read_only_merchants", String.valueOf(rs.getLong(1)));
            }
            conn.commit();
            conn.setReadOnly(false);
            conn.setAutoCommit(true);

            // COPY out through the driver's CopyManager, as ETL tools use it.
            StringWriter copied = new StringWriter();
            new CopyManager(conn.unwrap(BaseConnection.class)).copyOut("COPY merchants (id, name) TO STDOUT", copied);
            facts.put("copy_out", copied.toString().trim().replace("\t", ":").replace("\n", "|"));

            // Metadata, as a BI tool's schema browser reads it.
            DatabaseMetaData meta = conn.getMetaData();
            List<String> tables = new ArrayList<>();
            try (ResultSet rs = meta.getTables(null, "public", "%", new String[] {"TABLE"})) {
                while (rs.next()) {
                    tables.add(rs.getString("TABLE_NAME"));
                }
            }
            facts.put("tables", String.join(",", tables));
            List<String> columns = new ArrayList<>();
            try (ResultSet rs = meta.getColumns(null, "public", "merchants", "%")) {
                while (rs.next()) {
                    columns.add(rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME"));
                }
            }
            facts.put("merchant_columns", String.join(",", columns));
            try (ResultSet rs = meta.getPrimaryKeys(null, "public", "orders")) {
                facts.put("orders_primary_key", rs.next() ? rs.getString("COLUMN_NAME") : "none");
            }
        }
        return facts;
    }

    /** preferQueryMode=simple: the driver inlines parameters as literals. */
    static Map<String, String> simpleMode(String url, String user, String password) throws Exception {
        Map<String, String> facts = new LinkedHashMap<>();
        Properties props = new Properties();
        props.setProperty("user", user);
        props.setProperty("preferQueryMode", "simple");
        if (password != null) {
            props.setProperty("password", password);
        }
        try (Connection conn = DriverManager.getConnection(url, props);
             PreparedStatement ps = conn.prepareStatement(
                     "SELECT count(*), min(id) FROM orders WHERE id > ? AND status <> ? AND placed_at > ? AND amount > ?")) {
            ps.setInt(1, 0);
            ps.setString(2, "it's");
            ps.setTimestamp(3, java.sql.Timestamp.valueOf("2024-01-20 00:00:00"));
            ps.setBigDecimal(4, new java.math.BigDecimal("1.25"));
            try (ResultSet rs = ps.executeQuery()) {
                rs.next();
                facts.put("simple_mode", rs.getLong(1) + ":" + rs.getInt(2));
            }
        }
        return facts;
    }

    public static void main(String[] args) throws Exception {
        Map<String, String> through = steps(args[0], args[1], args[2]);
        through.putAll(simpleMode(args[0], args[1], args[2]));
        Map<String, String> oracle = steps(args[3], args[4], null);
        oracle.putAll(simpleMode(args[3], args[4], null));
        for (Map.Entry<String, String> e : through.entrySet()) {
            System.out.println(e.getKey() + "=" + e.getValue());
            System.out.println(e.getKey() + ".same=" + e.getValue().equals(oracle.get(e.getKey())));
        }
        System.out.println("done=true");
    }
}
