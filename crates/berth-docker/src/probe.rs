//! Checks of the daemon for `berth doctor`: its version, and whether it reaches a
//! registry on berth's 127.0.0.1 (the registry proxy's path).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bollard::Docker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Result, derr};

/// The daemon's version and API version (`20.10.24 (API 1.41)`).
pub async fn daemon_version(docker: &Docker) -> Result<String> {
    let v = docker.version().await.map_err(derr)?;
    Ok(format!(
        "{} (API {}, {})",
        v.version.unwrap_or_else(|| "?".into()),
        v.api_version.unwrap_or_else(|| "?".into()),
        v.os.zip(v.arch)
            .map(|(o, a)| format!("{o}/{a}"))
            .unwrap_or_default()
    ))
}

/// Whether the daemon, from its own network namespace, reaches a registry on this
/// process's 127.0.0.1: a throwaway listener on a free loopback port, and the daemon
/// asked to resolve an image on it (as the registry proxy's pre-flight does). Success is
/// the daemon's connection arriving; the answer it gets does not matter. Fails when
/// the daemon runs in another namespace, a container or on another machine.
pub async fn daemon_reaches_loopback(docker: &Docker) -> std::result::Result<String, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("listen on 127.0.0.1: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("listen on 127.0.0.1: {e}"))?;
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let server = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let _ = conn
                    .write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    )
                    .await;
            });
        }
    });
    let reference = format!("{addr}/berth-doctor/probe:latest");
    let asked = tokio::time::timeout(
        Duration::from_secs(30),
        docker.inspect_registry_image(&reference, None),
    )
    .await;
    server.abort();
    let said = match asked {
        Ok(Ok(_)) => "resolved".to_owned(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer in 30s".to_owned(),
    };
    if seen.load(Ordering::SeqCst) > 0 {
        Ok(format!("the daemon connected to berth's {addr}"))
    } else {
        Err(format!(
            "the daemon never connected to berth's {addr} ({said}): it runs in another \
             network namespace, a container or on another machine"
        ))
    }
}
