//! The registry's request handling (routing of nested names, digests, ranges, uploads,
//! pagination, queries) on arbitrary requests, in-process over a store in a temporary
//! directory: every request gets an HTTP answer, never a panic, and nothing outside the
//! store's root is written.
#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::Request;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

struct World {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    _root: tempfile::TempDir,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let root = tempfile::tempdir().expect("temporary directory");
        let store = berth_store::Store::open(root.path()).expect("open store");
        let registry = berth_registry::Registry::new(berth_registry::Config::new(store));
        World {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            router: registry.router(),
            _root: root,
        }
    })
}

const METHODS: [&str; 6] = ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"];

fuzz_target!(|data: &[u8]| {
    // Layout: method byte, then "path\nheader: value\n...\n\nbody".
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let path = lines.next().unwrap_or("/v2/");
    let mut req = Request::builder()
        .method(METHODS[m as usize % METHODS.len()])
        .uri(format!("/v2/{}", path.trim_start_matches('/')));
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            req = req.header(k.trim(), v.trim());
        }
    }
    let Ok(req) = req.body(Body::from(body.to_string())) else {
        return; // not a valid HTTP request at all (bad URI or header)
    };
    let w = world();
    let response = w
        .runtime
        .block_on(w.router.clone().oneshot(req))
        .expect("the router is infallible");
    assert!(
        !response.status().is_server_error() || response.status().as_u16() == 503,
        "a malformed request must be a client error, got {}",
        response.status()
    );
});
