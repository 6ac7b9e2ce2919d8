//! `analytics-demo report --run-name NAME`: a run of several instances as one, from
//! PostgreSQL: every instance's final summary (written at its end), the rates added up
//! against the run's targets, the latency histograms merged (exact: each instance stored its
//! recorded values), and the start skew on PostgreSQL's clock.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::config::SecretUrl;
use crate::control::aggregate::percentiles;
use crate::pg::PgConfig;

const DB_TIMEOUT: Duration = Duration::from_secs(30);

/// One instance's row.
struct Instance {
    run_id: i64,
    index: Option<i32>,
    host: Option<String>,
    load_started_at: Option<f64>,
    ended_at: Option<f64>,
    end_state: Option<String>,
    summary: Option<Value>,
}

/// Prints the run's report; exit 0, 1 when no instance of that name exists, 2 when
/// PostgreSQL cannot be read.
pub fn main(name: String, url: SecretUrl, pg: PgConfig, as_json: bool) -> i32 {
    let shown = url.to_string();
    let n = name.clone();
    let got = crate::http::block_on(move || async move { load(&n, &pg).await });
    let (count, start_at, instances) = match got {
        Ok(Ok(x)) => x,
        Ok(Err(e)) | Err(e) => {
            eprintln!("error: cannot read run '{name}' from {shown}: {e}");
            return 2;
        }
    };
    if instances.is_empty() {
        eprintln!("error: no instance of run '{name}' in {shown}");
        return 1;
    }
    let report = aggregate(&name, count, start_at, &instances);
    if as_json {
        println!("{report}");
    } else {
        print!("{}", render(&report));
    }
    0
}

async fn load(
    name: &str,
    pg: &PgConfig,
) -> Result<(Option<i32>, Option<f64>, Vec<Instance>), String> {
    let c = crate::pg::connect(pg, DB_TIMEOUT, None)
        .await
        .map_err(|e| e.to_string())?;
    let run = crate::pg::within(
        DB_TIMEOUT,
        c.query_opt(
            "SELECT instance_count, extract(epoch FROM start_at)::float8 FROM scaled_runs \
             WHERE run_name = $1",
            &[&name],
        ),
    )
    .await
    .map_err(|e| e.to_string())?;
    let rows = crate::pg::within(
        DB_TIMEOUT,
        c.query(
            "SELECT r.run_id, r.instance_index, i.host, \
             extract(epoch FROM r.load_started_at)::float8, extract(epoch FROM r.ended_at)::float8, \
             r.end_state, r.summary::text \
             FROM runs r LEFT JOIN run_instances i \
               ON i.run_name = r.run_name AND i.run_id = r.run_id \
             WHERE r.run_name = $1 ORDER BY r.instance_index, r.started_at",
            &[&name],
        ),
    )
    .await
    .map_err(|e| e.to_string())?;
    let instances = rows
        .iter()
        .map(|r| Instance {
            run_id: r.get(0),
            index: r.get(1),
            host: r.get(2),
            load_started_at: r.get(3),
            ended_at: r.get(4),
            end_state: r.get(5),
            summary: r
                .get::<_, Option<String>>(6)
                .and_then(|t| serde_json::from_str(&t).ok()),
        })
        .collect();
    Ok((
        run.as_ref().map(|r| r.get(0)),
        run.as_ref().and_then(|r| r.get(1)),
        instances,
    ))
}

fn histogram() -> Histogram<u64> {
    // Bounds are constants within hdrhistogram's limits (as the control core's).
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Adds `[[value, count], ...]` to `h`.
fn merge(h: &mut Histogram<u64>, pairs: &Value) {
    for p in pairs.as_array().into_iter().flatten() {
        if let (Some(v), Some(n)) = (p[0].as_u64(), p[1].as_u64()) {
            h.saturating_record_n(v, n);
        }
    }
}

fn aggregate(name: &str, count: Option<i32>, start_at: Option<f64>, all: &[Instance]) -> Value {
    let mut q = histogram();
    let mut e = histogram();
    let (mut events, mut queries) = (0u64, 0u64);
    let (mut ev_rate, mut q_rate, mut ev_target, mut q_target) = (0.0, 0.0, 0u64, 0u64);
    let mut by_outcome: BTreeMap<String, u64> = BTreeMap::new();
    let (mut skipped, mut failed_queries, mut rows_written, mut rows_dropped) =
        (0u64, 0u64, 0u64, 0u64);
    let mut per_instance = Vec::new();
    let mut finished = 0;
    for i in all {
        let s = i.summary.as_ref().map(|v| &v["summary"]);
        if let (Some(v), Some(s)) = (&i.summary, s) {
            finished += 1;
            merge(&mut q, &v["query_latency_us"]);
            merge(&mut e, &v["event_latency_us"]);
            events += s["events"].as_u64().unwrap_or(0);
            queries += s["queries"].as_u64().unwrap_or(0);
            ev_rate += s["events_per_second"].as_f64().unwrap_or(0.0);
            q_rate += s["queries_per_second"].as_f64().unwrap_or(0.0);
            ev_target += s["events_target_per_second"].as_u64().unwrap_or(0);
            q_target += s["queries_target_per_second"].as_u64().unwrap_or(0);
            for (k, n) in s["events_by_outcome"].as_object().into_iter().flatten() {
                *by_outcome.entry(k.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
            skipped += s["skipped"]
                .as_object()
                .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
            failed_queries += s["query_outcomes"]["error"].as_u64().unwrap_or(0);
            rows_written += s["db_rows_written"].as_u64().unwrap_or(0);
            rows_dropped += s["db_rows_dropped"].as_u64().unwrap_or(0);
        }
        per_instance.push(json!({
            "instance_index": i.index,
            "run_id": i.run_id,
            "host": i.host,
            "start_offset_ms": match (i.load_started_at, start_at) {
                (Some(l), Some(s)) => Some((l - s) * 1000.0),
                _ => None,
            },
            "ended": i.ended_at.is_some(),
            "end_state": i.end_state,
            "events_per_second": s.map(|s| s["events_per_second"].clone()),
            "queries_per_second": s.map(|s| s["queries_per_second"].clone()),
            "query_p99_ms": s.map(|s| s["query_latency_ms"]["p99"].clone()),
        }));
    }
    let starts: Vec<f64> = all.iter().filter_map(|i| i.load_started_at).collect();
    let skew_ms = match (
        starts.iter().copied().reduce(f64::min),
        starts.iter().copied().reduce(f64::max),
    ) {
        (Some(a), Some(b)) => Some((b - a) * 1000.0),
        _ => None,
    };
    let off = |rate: f64, target: u64| (target > 0).then(|| (rate / target as f64 - 1.0) * 100.0);
    json!({
        "run_name": name,
        "instances_expected": count,
        "instances_found": all.len(),
        "instances_finished": finished,
        "start_at_unix": start_at,
        "start_skew_ms": skew_ms,
        "events": events,
        "events_per_second": ev_rate,
        "events_target_per_second": ev_target,
        "events_rate_off_percent": off(ev_rate, ev_target),
        "events_by_outcome": by_outcome,
        "queries": queries,
        "queries_per_second": q_rate,
        "queries_target_per_second": q_target,
        "queries_rate_off_percent": off(q_rate, q_target),
        "queries_failed": failed_queries,
        "skipped": skipped,
        "db_rows_written": rows_written,
        "db_rows_dropped": rows_dropped,
        "query_latency_ms": percentiles(&q),
        "event_latency_ms": percentiles(&e),
        "instances": per_instance,
    })
}

fn render(r: &Value) -> String {
    let f = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.1}"));
    let mut s = format!(
        "run {}: {} of {} instances found, {} finished; start skew {} ms\n",
        r["run_name"].as_str().unwrap_or("?"),
        r["instances_found"],
        r["instances_expected"],
        r["instances_finished"],
        f(&r["start_skew_ms"]),
    );
    s.push_str(&format!(
        "events   {} ({} /s, target {} /s, {} %); by outcome {}\n",
        r["events"],
        f(&r["events_per_second"]),
        r["events_target_per_second"],
        f(&r["events_rate_off_percent"]),
        r["events_by_outcome"]
    ));
    s.push_str(&format!(
        "queries  {} ({} /s, target {} /s, {} %); failed {}; skipped operations {}\n",
        r["queries"],
        f(&r["queries_per_second"]),
        r["queries_target_per_second"],
        f(&r["queries_rate_off_percent"]),
        r["queries_failed"],
        r["skipped"]
    ));
    let (q, e) = (&r["query_latency_ms"], &r["event_latency_ms"]);
    s.push_str(&format!(
        "latency from schedule, all instances merged: queries p50 {} / p99 {} / p99.9 {} ms; events p50 {} / p99 {} ms\n",
        f(&q["p50"]), f(&q["p99"]), f(&q["p999"]), f(&e["p50"]), f(&e["p99"])
    ));
    s.push_str(&format!(
        "postgres rows written {}, dropped {}\n",
        r["db_rows_written"], r["db_rows_dropped"]
    ));
    for i in r["instances"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "  instance {} (run {}, {}): start {} ms after the agreed instant, {} ev/s, {} q/s, query p99 {} ms, {}\n",
            i["instance_index"],
            i["run_id"],
            i["host"].as_str().unwrap_or("?"),
            f(&i["start_offset_ms"]),
            f(&i["events_per_second"]),
            f(&i["queries_per_second"]),
            f(&i["query_p99_ms"]),
            i["end_state"].as_str().unwrap_or("not ended")
        ));
    }
    s
}
