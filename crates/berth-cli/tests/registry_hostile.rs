//! `berth registry serve` as a process against clients that exhaust its resources:
//! running out of file descriptors is logged once and survived.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn get_v2(addr: &str) -> Option<String> {
    let mut c = TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    c.write_all(b"GET /v2/ HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut s = String::new();
    c.read_to_string(&mut s).ok()?;
    Some(s)
}

#[test]
fn out_of_descriptors_is_logged_once_and_survived() {
    if !require("prlimit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A connection limit far above the descriptors, so accept itself runs out.
    let stderr = dir.path().join("stderr");
    let berth = Berth::serve_to(
        &dir.path().join("root"),
        "127.0.0.1:0",
        &["--max-connections", "1000"],
        std::fs::File::create(&stderr).unwrap().into(),
    );
    assert!(get_v2(&berth.addr).is_some_and(|r| r.starts_with("HTTP/1.1 200")));
    run(Command::new("prlimit")
        .arg("--pid")
        .arg(berth.child.id().to_string())
        .arg("--nofile=40:40"));

    // More connections than descriptors; the server accepts until it cannot.
    let held: Vec<TcpStream> = (0..80)
        .map(|_| TcpStream::connect(&berth.addr).unwrap())
        .collect();
    // Let it fail to accept for a while (a loop that logged each failure would log
    // dozens of lines in this time).
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(held);

    // Serves again once the descriptors are free.
    let mut answer = None;
    for _ in 0..100 {
        answer = get_v2(&berth.addr);
        if answer
            .as_deref()
            .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let answer = answer.unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");

    // The end of the episode is told after 5 s without a failure, at the next accept.
    std::thread::sleep(Duration::from_secs(6));
    assert!(get_v2(&berth.addr).is_some_and(|r| r.starts_with("HTTP/1.1 200")));
    let log = std::fs::read_to_string(&stderr).unwrap();
    let exhausted = log.matches("out of file descriptors").count();
    assert_eq!(exhausted, 1, "logged once per episode:\n{log}");
    assert_eq!(log.matches("available again").count(), 1, "{log}");
    assert!(!log.contains("accept failed"), "{log}");
}
