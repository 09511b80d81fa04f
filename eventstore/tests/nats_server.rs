//! The nats-server test guard: a JetStream server on free ports, gone with its storage on drop.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::TcpStream;

use eventstore::nats_server::NatsServer;

/// The server's INFO line, read straight off the client port.
fn info(url: &str) -> serde_json::Value {
    let address = url.trim_start_matches("nats://");
    let stream = TcpStream::connect(address).unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    serde_json::from_str(line.trim_start_matches("INFO ").trim()).unwrap()
}

#[test]
fn a_jetstream_server_runs_on_free_ports_and_is_gone_with_its_storage_after_drop() {
    let one = NatsServer::start();
    let two = NatsServer::start();
    assert_ne!(one.url, two.url, "each guard has its own ports");

    let info = info(&one.url);
    assert_eq!(info["version"], "2.15.1", "the pinned release runs");
    assert_eq!(info["jetstream"], true);
    assert_eq!(info["host"], "127.0.0.1", "loopback only");
    assert!(one.store_dir().join("jetstream").is_dir());

    let (address, dir) = (
        one.url.trim_start_matches("nats://").to_owned(),
        one.dir().to_owned(),
    );
    drop(one);
    assert!(!dir.exists(), "the storage outlived the guard");
    assert!(
        TcpStream::connect(&address).is_err(),
        "the server outlived the guard"
    );
    assert!(
        TcpStream::connect(two.url.trim_start_matches("nats://")).is_ok(),
        "the other server is untouched"
    );
}

#[test]
fn the_servers_run_with_the_repositorys_jetstream_settings() {
    let server = NatsServer::start();
    let config = std::fs::read_to_string(server.dir().join("nats.conf")).unwrap();
    assert!(config.contains("sync_interval: always"), "{config}");
    let varz: serde_json::Value = {
        let address = server.monitoring_url.trim_start_matches("http://");
        let mut stream = TcpStream::connect(address).unwrap();
        std::io::Write::write_all(
            &mut stream,
            b"GET /varz HTTP/1.0\r\nHost: localhost\r\n\r\n",
        )
        .unwrap();
        let mut response = String::new();
        std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
        let body = response.split("\r\n\r\n").nth(1).unwrap();
        serde_json::from_str(body).unwrap()
    };
    let jetstream = &varz["jetstream"]["config"];
    assert_eq!(jetstream["sync_always"], true, "{jetstream:?}");
    let store = jetstream["store_dir"].as_str().unwrap();
    assert!(
        store.starts_with(server.store_dir().to_str().unwrap()),
        "{store}"
    );
}
