//! The `harmony` binary as an operator runs it.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn harmony() -> Command {
    Command::new(env!("CARGO_BIN_EXE_harmony"))
}

#[test]
fn serve_opens_the_log_answers_healthz_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = harmony()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("HARMONY_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let address = loop {
        let line = received
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the server announces its address");
        if let Some(at) = line.find("listening on http://") {
            break line[at + "listening on ".len()..].trim().to_owned();
        }
    };
    let body: serde_json::Value = reqwest::blocking::get(format!("{address}/healthz"))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(body["status"], "ok");
    assert!(
        dir.path().join("log").is_dir(),
        "the event log lives under --data-dir"
    );

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let (exited, exit) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = exited.send(child.wait());
    });
    let status = exit
        .recv_timeout(Duration::from_secs(30))
        .expect("the server stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn bench_json_prints_one_object_with_every_figure() {
    let scratch = tempfile::tempdir().unwrap();
    let output = harmony()
        .args(["bench", "eventstore", "--quick", "--json", "--dir"])
        .arg(scratch.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("stdout is one JSON object");
    assert_eq!(report["suite"], "eventstore");
    assert_eq!(report["backend"], "sled");
    let names: Vec<&str> = report["figures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "append_w1",
            "append_w16",
            "append_w256",
            "append_batch100",
            "replay"
        ]
    );
    for figure in report["figures"].as_array().unwrap() {
        assert!(figure["value"].as_f64().unwrap() > 0.0, "{figure}");
        assert!(figure["raw"].as_f64().unwrap() > 0.0, "{figure}");
        assert!(figure["ratio"].as_f64().is_some(), "{figure}");
    }
    assert!(
        !String::from_utf8_lossy(&output.stderr).is_empty(),
        "progress goes to standard error"
    );
}

#[test]
fn bad_arguments_are_refused_with_a_message_and_a_failure_exit() {
    let output = harmony().args(["bench", "everything"]).output().unwrap();
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("invalid value 'everything'"), "{message}");
    let output = harmony()
        .args(["serve", "--listen", "not-an-address"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--listen"));
}
