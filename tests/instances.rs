//! Several instances behind a TCP load balancer: a cancel request may reach
//! another instance than the one holding the session. Each instance's cancel
//! keys carry its `instance_id`; an instance sends a request for another on
//! to that one's address in `peers`. Three instances on the loopback: a
//! cancel sent to each of the other two cancels the running statement.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::raw;

const POLICY: &str = "tests/fixtures/proxy/policy.yaml";

/// The key of a BackendKeyData message among the startup messages.
fn key(startup: &[raw::Msg]) -> (i32, i32) {
    let k = startup
        .iter()
        .find(|m| m.tag == b'K')
        .expect("BackendKeyData");
    let pid = i32::from_be_bytes(k.body[0..4].try_into().unwrap());
    let secret = i32::from_be_bytes(k.body[4..8].try_into().unwrap());
    (pid, secret)
}

/// A CancelRequest for `key`, sent to 127.0.0.1:`port`.
fn cancel(port: u16, key: (i32, i32)) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut msg = Vec::new();
    msg.extend_from_slice(&16i32.to_be_bytes());
    msg.extend_from_slice(&80_877_102i32.to_be_bytes());
    msg.extend_from_slice(&key.0.to_be_bytes());
    msg.extend_from_slice(&key.1.to_be_bytes());
    s.write_all(&msg).unwrap();
}

#[test]
fn a_cancel_sent_to_any_instance_reaches_the_session() {
    let c = common::cluster();
    let db = c.create_database("instances");
    let ports = [
        common::free_port(),
        common::free_port(),
        common::free_port(),
    ];
    let peers = format!(
        "peers: [{}]\n",
        ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let instances: Vec<common::Proxy> = ports
        .iter()
        .enumerate()
        .map(|(id, &port)| {
            common::Proxy::start_at(
                port,
                Path::new(POLICY),
                &format!("instance_id: {id}\n{peers}"),
            )
        })
        .collect();
    for (holder, _) in ports.iter().enumerate() {
        for (via, &via_port) in ports.iter().enumerate() {
            if via == holder {
                continue;
            }
            let mut client = raw::Client::connect(ports[holder]).unwrap();
            let startup = client.login("member", &db, Some("member-pw"), &[]).unwrap();
            let k = key(&startup);
            assert_eq!(k.0 >> 24, holder as i32, "the key names its instance");
            let mut buf = bytes::BytesMut::new();
            postgres_protocol::message::frontend::query("SELECT pg_sleep(30)", &mut buf).unwrap();
            client.send(&buf).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            let started = Instant::now();
            cancel(via_port, k);
            let messages = client.until_ready().unwrap();
            let error = messages
                .iter()
                .find(|m| m.tag == b'E')
                .unwrap_or_else(|| panic!("not cancelled via instance {via}: {messages:?}"));
            assert_eq!(error.field(b'C').as_deref(), Some("57014"));
            assert!(started.elapsed() < Duration::from_secs(20));
            // The session goes on.
            let again = client.query("SELECT 1").unwrap();
            assert!(again.iter().any(|m| m.tag == b'D'));
            client.terminate();
        }
    }
    // A key of an instance no peer address names is dropped, harmlessly.
    let mut client = raw::Client::connect(ports[0]).unwrap();
    client.login("member", &db, Some("member-pw"), &[]).unwrap();
    cancel(ports[0], (99 << 24, 1));
    assert!(client
        .query("SELECT 1")
        .unwrap()
        .iter()
        .any(|m| m.tag == b'D'));
    drop(instances);
}
