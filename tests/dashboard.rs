//! The built-in dashboard (`GET /`): the embedded page is small and self-contained, it is served
//! as HTML, every field its script reads exists in the typed `/api/status` document
//! (`control::api::Status`), and a live instance's `/health`, `/api/status` and `/report` read
//! back into their typed documents unchanged.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use analytics_demo::control::api::{
    self, HistoryPoint, Status, StatusMigration, StatusRedis, SwitchBrief,
};
use analytics_demo::control::health::{ClusterHealth, NodeOutage, NodeStatus};
use analytics_demo::dashboard::INDEX_HTML;
use common::{wait_until, App, PgServer, RedisCluster, RedisServer};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

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

/// The page's script.
fn script() -> &'static str {
    let start = INDEX_HTML.find("<script>").expect("<script>");
    let end = INDEX_HTML.find("</script>").expect("</script>");
    &INDEX_HTML[start..end]
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$'
}

/// The identifier starting at byte I.
fn ident_at(js: &str, i: usize) -> &str {
    let len = js.as_bytes()[i..]
        .iter()
        .take_while(|c| is_ident(**c))
        .count();
    &js[i..i + len]
}

/// The first byte after I that is not white space (0 at the end).
fn next_char(js: &str, i: usize) -> (u8, u8) {
    let mut rest = js.as_bytes()[i..]
        .iter()
        .skip_while(|c| c.is_ascii_whitespace());
    (
        rest.next().copied().unwrap_or(0),
        rest.next().copied().unwrap_or(0),
    )
}

/// Every `object.name` the script reads: not a method call, not an assignment target, not a
/// property of a JavaScript global (`Math.max`, `document.body`), and not camelCase (the DOM's
/// and JavaScript's names are; the documents' are snake_case). With the member reads that
/// start at the document itself (`d.a.b` in `render(d)`), as paths.
fn page_reads(js: &str) -> (BTreeSet<String>, BTreeSet<Vec<String>>) {
    let b = js.as_bytes();
    let (mut names, mut paths) = (BTreeSet::new(), BTreeSet::new());
    for i in 1..b.len() - 1 {
        if b[i] != b'.' || !(is_ident(b[i - 1]) || b")]".contains(&b[i - 1])) {
            continue;
        }
        if !(b[i + 1].is_ascii_alphabetic() || b[i + 1] == b'_') {
            continue;
        }
        let object_start = (0..i).rev().take_while(|j| is_ident(b[*j])).last();
        let object = object_start.map_or("", |s| &js[s..i]);
        if object == "document" || object.starts_with(|c: char| c.is_ascii_uppercase()) {
            continue;
        }
        let name = ident_at(js, i + 1);
        let after = next_char(js, i + 1 + name.len());
        let call = after.0 == b'(';
        let assigned = after.0 == b'=' && after.1 != b'=';
        if call || assigned || name.chars().any(|c| c.is_ascii_uppercase()) {
            continue;
        }
        names.insert(name.to_string());
        // A chain from the document: `d.` at a word start.
        let at_root = object == "d" && object_start.is_some_and(|s| s == 0 || !is_ident(b[s - 1]));
        if at_root {
            let mut path = vec![name.to_string()];
            let mut j = i + 1 + name.len();
            while b.get(j) == Some(&b'.') {
                let next = ident_at(js, j + 1);
                let after = next_char(js, j + 1 + next.len());
                if next.is_empty()
                    || after.0 == b'('
                    || next.chars().any(|c| c.is_ascii_uppercase())
                {
                    break;
                }
                path.push(next.to_string());
                j += 1 + next.len();
            }
            paths.insert(path);
        }
    }
    (names, paths)
}

/// Keys of the object literals the script builds itself (`{ values: ..., color: ... }`).
fn literal_keys(js: &str) -> BTreeSet<String> {
    let b = js.as_bytes();
    let mut keys = BTreeSet::new();
    for i in 0..b.len() {
        if b[i] != b'{' && b[i] != b',' {
            continue;
        }
        let start = i + 1 + b[i + 1..].iter().take_while(|c| **c == b' ').count();
        let key = ident_at(js, start);
        if !key.is_empty() && next_char(js, start + key.len()).0 == b':' {
            keys.insert(key.to_string());
        }
    }
    keys
}

/// Properties of the page's own arrays and elements it reads (none is a document field).
const JS_PROPERTIES: &[&str] = &["length", "style", "hidden"];

/// Every key of every object in V.
fn all_keys(v: &Value, keys: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, inner) in m {
                keys.insert(k.clone());
                all_keys(inner, keys);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| all_keys(i, keys)),
        _ => {}
    }
}

/// PATH exists in V (in every element of an array on the way).
fn has_path(v: &Value, path: &[String]) -> bool {
    match (v, path.split_first()) {
        (_, None) => true,
        (Value::Array(items), Some(_)) => {
            !items.is_empty() && items.iter().all(|i| has_path(i, path))
        }
        (_, Some((head, rest))) => v.get(head).is_some_and(|inner| has_path(inner, rest)),
    }
}

/// A status document with one of everything: every list has an element, the cluster is there.
fn full_status() -> Status {
    Status {
        redis: StatusRedis {
            cluster: Some(ClusterHealth {
                nodes: vec![NodeStatus::default()],
                node_outages: vec![NodeOutage::default()],
                ..ClusterHealth::default()
            }),
            ..StatusRedis::default()
        },
        migration: StatusMigration {
            switches: vec![SwitchBrief::default()],
        },
        history: vec![HistoryPoint::default()],
        ..Status::default()
    }
}

/// Every field the page's script reads is one the typed status document serializes: a field
/// renamed or dropped from `api::Status` (or misspelt in the page) fails here.
#[test]
fn page_reads_only_fields_of_the_status_document() {
    let doc = serde_json::to_value(full_status()).expect("status serializes");
    let mut keys = BTreeSet::new();
    all_keys(&doc, &mut keys);
    let js = script();
    let own = literal_keys(js);
    let (reads, paths) = page_reads(js);
    // The scan sees the page: dozens of fields, most of them from the document's root.
    assert!(reads.len() > 40 && paths.len() > 20, "{reads:?} {paths:?}");
    let unknown: Vec<_> = reads
        .iter()
        .filter(|n| !keys.contains(*n) && !own.contains(*n) && !JS_PROPERTIES.contains(&n.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "the page reads {unknown:?}, which /api/status does not have:\n{doc}"
    );
    let missing: Vec<String> = paths
        .iter()
        .filter(|p| !has_path(&doc, p))
        .map(|p| format!("d.{}", p.join(".")))
        .collect();
    assert!(
        missing.is_empty(),
        "the page reads {missing:?}, which /api/status does not have:\n{doc}"
    );
}

/// BODY read into its typed document, which writes it back as it was: the same fields, the
/// same types.
fn read_back<T: Serialize + DeserializeOwned>(body: &str) -> T {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let doc: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {body}"));
    let again = serde_json::to_value(&doc).expect("serializes");
    assert_eq!(
        again, v,
        "the typed document does not write back what was read"
    );
    doc
}

#[test]
fn served_at_root_and_every_document_reads_back_into_its_type() {
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

    // Until one-second windows have closed, so `history` has points.
    let mut body = String::new();
    let closed = wait_until(Duration::from_secs(30), || {
        body = app.get("/api/status").1;
        serde_json::from_str::<Status>(&body).is_ok_and(|s| s.history.len() >= 2)
    });
    assert!(closed, "no history in /api/status:\n{body}");
    let status: Status = read_back(&body);
    // A standalone target: the page keeps its cluster card hidden.
    assert_eq!(status.redis.mode, api::TargetMode::Standalone, "{body}");
    assert!(status.redis.cluster.is_none(), "{body}");
    // /health and /report read back into theirs too.
    let (code, body) = app.get("/health");
    assert_eq!(code, 200, "{body}");
    let health: api::Health = read_back(&body);
    assert_eq!(health.load, api::Load::Running, "{body}");
    assert_eq!(
        (health.status.as_ref(), health.redis.status.as_ref()),
        ("ok", "up")
    );
    assert_eq!(health.run_id, status.run_id);
    let (code, body) = app.get("/report");
    assert_eq!(code, 200, "{body}");
    let report: api::Report = read_back(&body);
    assert_eq!(report.run.run_id, status.run_id);
    assert!(report.migration.switches.is_empty() && report.redis_cluster.is_none());
    app.terminate();
}

/// On a Redis Cluster, `/api/status` has what the page's cluster card reads: the mode, every
/// primary with its slots and PING state, the slot coverage and the redirection totals.
#[test]
fn status_on_a_cluster_reads_back_with_its_cluster_part() {
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
        serde_json::from_str::<Status>(&body).is_ok_and(|s| {
            s.redis.cluster.is_some_and(|c| c.nodes.len() == 3) && !s.history.is_empty()
        })
    });
    assert!(
        checked,
        "no cluster state with 3 nodes in /api/status:\n{body}"
    );
    let status: Status = read_back(&body);
    let redis = &status.redis;
    assert_eq!(redis.mode, api::TargetMode::Cluster, "{body}");
    for kind in ["moved", "ask"] {
        assert!(redis.redirects_total.contains_key(kind), "{body}");
    }
    let nodes = &redis.cluster.as_ref().expect("cluster").nodes;
    let slots: u32 = nodes.iter().map(|n| n.slots).sum();
    assert_eq!(slots, 16384, "{body}");
    let mut listed: Vec<String> = nodes.iter().map(|n| n.node.clone()).collect();
    listed.sort();
    let mut ours: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    ours.sort();
    assert_eq!(listed, ours, "{body}");
    let health: api::Health = read_back(&app.get("/health").1);
    assert!(health.redis_cluster.is_some_and(|c| c.nodes.len() == 3));
    let body = app.get("/report").1;
    let report: api::Report = read_back(&body);
    let part = report.redis_cluster.expect("the report's cluster part");
    assert_eq!(part.slots_covered, Some(16384), "{body}");
    app.terminate();
}
