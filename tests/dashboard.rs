//! The built-in dashboard (`GET /`): the embedded page is small and self-contained, it is served
//! as HTML, and every `/api/status` field it reads exists in a live instance's answer.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use analytics_demo::dashboard::{CLUSTER_STATUS_FIELDS, INDEX_HTML, STATUS_FIELDS};
use common::{wait_until, App, PgServer, RedisCluster, RedisServer};

#[test]
fn page_is_small_and_self_contained() {
    assert!(
        INDEX_HTML.len() < 48 * 1024,
        "dashboard page is {} bytes; keep it light",
        INDEX_HTML.len()
    );
    let lower = INDEX_HTML.to_ascii_lowercase();
    for needle in ["http://", "https://", "//cdn", "<link", "@import", "src="] {
        assert!(
            !lower.contains(needle),
            "the page must not load anything from elsewhere (found {needle:?})"
        );
    }
    for id in [
        "events-rate",
        "queries-rate",
        "events-total",
        "lat-p99",
        "mis-p99",
        "qerr-p99",
        "skipped-10s",
        "hit-ratio",
        "hit-natural",
        "adhoc",
        "errors-table",
        "w-pending",
        "r-target",
        "timeline",
        "cluster-card",
        "c-covered",
        "c-nodes",
        "c-redirects",
        "c-outages",
    ] {
        assert!(
            INDEX_HTML.contains(&format!("id=\"{id}\"")),
            "element #{id} missing"
        );
    }
    assert!(INDEX_HTML.contains("no switches yet"));
    assert!(INDEX_HTML.contains("api/status"));
}

/// Looks a dotted path (with `name[]` for "every element of the array") up in `v`.
fn has_path(v: &serde_json::Value, path: &str) -> bool {
    let Some((head, rest)) = path.split_once('.') else {
        return v.get(path).is_some();
    };
    match head.strip_suffix("[]") {
        Some(arr) => match v.get(arr).and_then(|a| a.as_array()) {
            Some(items) => !items.is_empty() && items.iter().all(|i| has_path(i, rest)),
            None => false,
        },
        None => v.get(head).is_some_and(|inner| has_path(inner, rest)),
    }
}

#[test]
fn served_at_root_and_status_has_every_field_the_page_reads() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let mut app = App::spawn_healthy(
        &["--events-per-second", "50", "--queries-per-second", "100"],
        &[
            ("REDIS_URL", redis.url().as_str()),
            ("DATABASE_URL", pg.url().as_str()),
        ],
        Duration::from_secs(60),
    );

    // Raw request: check the content type too.
    let mut s = TcpStream::connect(app.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp:.200}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("content-type: text/html; charset=utf-8"),
        "{resp:.300}"
    );
    assert!(resp.contains("id=\"events-rate\""));

    // Let a few one-second windows close so `history` has points.
    std::thread::sleep(Duration::from_millis(2500));
    let (code, body) = app.get("/api/status");
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_fields(&status, STATUS_FIELDS, &body);
    // A standalone target: the page keeps its cluster card hidden.
    assert_eq!(status["redis"]["mode"], "standalone", "{body}");
    assert!(status["redis"]["cluster"].is_null(), "{body}");
    app.terminate();
}

fn assert_fields(status: &serde_json::Value, fields: &[&str], body: &str) {
    let missing: Vec<_> = fields.iter().filter(|p| !has_path(status, p)).collect();
    assert!(
        missing.is_empty(),
        "fields read by the page but absent from /api/status: {missing:?}\n{body}"
    );
}

/// On a Redis Cluster, `/api/status` has what the page's cluster card reads: the mode, every
/// primary with its slots and PING state, the slot coverage and the redirection totals.
#[test]
fn status_on_a_cluster_has_every_field_the_cluster_card_reads() {
    let cluster = RedisCluster::start(3);
    let pg = PgServer::start();
    let mut app = App::spawn_healthy(
        &[
            "--events-per-second",
            "50",
            "--queries-per-second",
            "100",
            "--redis-mode",
            "cluster",
            "--shards",
            "1",
            "--no-pin",
        ],
        &[
            ("REDIS_URL", cluster.seeds().as_str()),
            ("DATABASE_URL", pg.url().as_str()),
        ],
        Duration::from_secs(60),
    );
    // The control core's health check reads the map once a second.
    let mut body = String::new();
    let checked = wait_until(Duration::from_secs(30), || {
        body = app.get("/api/status").1;
        serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|s| {
            s["redis"]["cluster"]["nodes"]
                .as_array()
                .is_some_and(|n| n.len() == 3)
                && !s["history"].as_array().is_some_and(Vec::is_empty)
        })
    });
    assert!(
        checked,
        "no cluster state with 3 nodes in /api/status:\n{body}"
    );
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_fields(&status, STATUS_FIELDS, &body);
    assert_fields(&status, CLUSTER_STATUS_FIELDS, &body);
    let redis = &status["redis"];
    assert_eq!(redis["mode"], "cluster", "{body}");
    let nodes = redis["cluster"]["nodes"].as_array().unwrap();
    let slots: u64 = nodes.iter().filter_map(|n| n["slots"].as_u64()).sum();
    assert_eq!(slots, 16384, "{body}");
    let mut listed: Vec<String> = nodes
        .iter()
        .map(|n| n["node"].as_str().unwrap_or_default().to_string())
        .collect();
    listed.sort();
    let mut ours: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    ours.sort();
    assert_eq!(listed, ours, "{body}");
    app.terminate();
}
