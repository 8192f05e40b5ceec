//! `rowgate demo`: the embedded default. Starts a throwaway PostgreSQL from
//! the machine's installation, loads the sample warehouse, starts the proxy
//! with the example policies (both embedded in the binary) on 127.0.0.1:6432
//! or the next free port, prints what to try, and on Ctrl-C stops both and
//! removes everything.

use std::net::TcpListener;

use super::{FAILED, OK};
use crate::config::{Config, Upstream, UpstreamTls};
use crate::localpg::{LocalPg, LocalPgError};
use crate::server::Server;

/// The example policy files and the sample warehouse, as shipped in `policies/`.
const FILES: &[(&str, &str)] = &[
    (
        "attributes.yaml",
        include_str!("../../policies/attributes.yaml"),
    ),
    (
        "ecommerce.yaml",
        include_str!("../../policies/ecommerce.yaml"),
    ),
    ("support.yaml", include_str!("../../policies/support.yaml")),
    ("users.yaml", include_str!("../../policies/users.yaml")),
];
const WAREHOUSE: &str = include_str!("../../policies/warehouse.sql");

/// Every sample user's password.
pub const PASSWORD: &str = "rowgate-demo";
/// The database the demo creates.
pub const DATABASE: &str = "warehouse";
/// The port the demo tries first.
pub const PORT: u16 = 6432;

/// Each sample user, and what they should see.
pub const USERS: &[(&str, &str)] = &[
    (
        "king_manager",
        "sees only the merchant King Inc and its 10 orders",
    ),
    (
        "vietnam_manager",
        "sees the 2 merchants of Vietnam and their 20 orders",
    ),
    (
        "apac",
        "sees the 5 APAC countries (inherited from 5 groups), 6 merchants, 60 orders",
    ),
    (
        "ceo",
        "sees every row: own `All` values override the groups",
    ),
    (
        "newcomer",
        "is in sales but has no values: sees no rows at all",
    ),
    ("alice", "sees only the 3 support tickets assigned to alice"),
    (
        "reporter",
        "sees the daily sales summary; hr.salaries is refused",
    ),
    ("analyst", "reads every table with no filters, read-only"),
    (
        "admin",
        "sends statements that pass unchanged (no rewriting, no refusals)",
    ),
];

pub fn run() -> u8 {
    let pg = match LocalPg::start("demo", None) {
        Ok(pg) => pg,
        Err(LocalPgError::NotInstalled) => {
            eprintln!(
                "rowgate demo: PostgreSQL is not installed here: {}",
                crate::localpg::INSTALL_HINT
            );
            return FAILED;
        }
        Err(e) => {
            eprintln!("rowgate demo: cannot start PostgreSQL: {e}");
            return FAILED;
        }
    };
    let code = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(serve(&pg)),
        Err(e) => {
            eprintln!("rowgate demo: cannot start the runtime: {e}");
            FAILED
        }
    };
    pg.stop();
    code
}

async fn serve(pg: &LocalPg) -> u8 {
    if let Err(e) = load_warehouse(pg.port).await {
        eprintln!("rowgate demo: cannot load the sample warehouse: {e}");
        return FAILED;
    }
    let policies = pg.dir.join("policies");
    let written = std::fs::create_dir_all(&policies).and_then(|()| {
        FILES
            .iter()
            .try_for_each(|(name, text)| std::fs::write(policies.join(name), text))
    });
    if let Err(e) = written {
        eprintln!("rowgate demo: cannot write the example policies: {e}");
        return FAILED;
    }
    let port = match (PORT..PORT + 20).find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok()) {
        Some(p) => p,
        None => crate::localpg::free_port().unwrap_or(0),
    };
    let config = Config {
        path: pg.dir.join("proxy.yaml"),
        listen: format!("127.0.0.1:{port}"),
        policies,
        sources: std::collections::BTreeMap::from([(
            crate::config::DEFAULT_DATA_SOURCE.to_string(),
            Upstream {
                host: "127.0.0.1".into(),
                port: pg.port,
                user: "postgres".into(),
                password: None,
                database: None,
                tls: UpstreamTls::Disable,
            },
        )]),
        tls: None,
        tokens: None,
        audit: None,
        pool: Default::default(),
        instance_id: 0,
        peers: Vec::new(),
        search_path: vec![crate::config::DEFAULT_SEARCH_PATH.to_string()],
        catalog: Default::default(),
        metrics: None,
        max_connections: crate::config::DEFAULT_MAX_CONNECTIONS,
        max_message_bytes: crate::config::DEFAULT_MAX_MESSAGE_BYTES,
        prepare_threshold: crate::config::DEFAULT_PREPARE_THRESHOLD,
        workers: None,
    };
    let server = match Server::bind(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rowgate demo: {e}");
            return FAILED;
        }
    };
    let port = server.local_addr().map(|a| a.port()).unwrap_or(port);
    println!("{}", banner(port, pg.port));
    match server.run().await {
        Ok(()) => {
            println!("rowgate demo: stopped; the throwaway PostgreSQL is removed.");
            OK
        }
        Err(e) => {
            eprintln!("rowgate demo: {e}");
            FAILED
        }
    }
}

async fn load_warehouse(port: u16) -> Result<(), tokio_postgres::Error> {
    let admin = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await?;
    let task = tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
        .await?;
    drop(client);
    let _ = task.await;
    let url = format!("host=127.0.0.1 port={port} user=postgres dbname={DATABASE}");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    let task = tokio::spawn(conn);
    client.batch_execute(WAREHOUSE).await?;
    drop(client);
    let _ = task.await;
    Ok(())
}

/// What the demo prints once it serves.
fn banner(port: u16, pg_port: u16) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "\nrowgate demo is running: the proxy listens on 127.0.0.1:{port}{}, in front of a throwaway \
         PostgreSQL on port {pg_port} with the sample warehouse.\n\n",
        if port == PORT { "" } else { " (6432 was taken)" }
    ));
    out.push_str(&format!(
        "Connect as a sample user (every password is {PASSWORD}):\n\n"
    ));
    for (user, sees) in USERS {
        out.push_str(&format!(
            "  psql postgresql://{user}:{PASSWORD}@127.0.0.1:{port}/{DATABASE}\n      {user} {sees}\n"
        ));
    }
    out.push_str(&format!(
        "\nThree things to try:\n\n\
         \x20 1. Filtering: the same query, different rows per user:\n\
         \x20      psql postgresql://king_manager:{PASSWORD}@127.0.0.1:{port}/{DATABASE} -c 'SELECT m.name, count(*) FROM orders o JOIN merchants m ON m.id = o.merchant_id GROUP BY m.name'\n\
         \x20 2. Refusal: a table nobody is granted is refused whole:\n\
         \x20      psql postgresql://reporter:{PASSWORD}@127.0.0.1:{port}/{DATABASE} -c 'SELECT * FROM daily_sales, hr.salaries'\n\
         \x20 3. What rowgate forwards, without a database:\n\
         \x20      rowgate explain -c proxy.example.yaml --user apac 'SELECT * FROM orders'\n\n\
         Press Ctrl-C to stop; everything the demo started is removed.\n"
    ));
    out
}
