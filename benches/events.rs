//! Event append throughput: `Kiln::emit` through the HistoryActor against a raw,
//! batched Diesel insert of the same rows into the same schema.
//!
//! Every run gets a fresh SQLite file migrated by `Db::open` + `migrate`. After
//! each actor run, every id `emit` answered is checked against the stored row. The
//! rounds interleave the variants and the table reports each variant's median,
//! which keeps a noisy shared machine from favouring whichever ran first.
//!
//! Knobs: `BENCH_EVENTS` (events per run, 20000), `BENCH_ROUNDS` (3),
//! `BENCH_SENDERS` (64).

mod common;

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use futures_util::future::join_all;
use serde_json::json;

use common::{fmt_rate, fmt_us, knob, print_table, Histogram, Service};
use kiln::actors::history::NewEvent;
use kiln::db::models::NewEventRow;
use kiln::db::schema::events;
use kiln::db::Db;

const ORG: &str = "default";
const KIND: &str = "bench.appended";
/// Rows per transaction in the raw baseline: the HistoryActor's `batch_max`.
const RAW_BATCH: usize = 512;

/// The `i`th event of sender `s`: the same shape in every variant.
fn event(s: usize, i: usize) -> NewEvent {
    NewEvent::new(KIND, json!({ "sender": s, "seq": i, "note": "benchmark payload of a typical size" }))
        .repo("bench")
        .task(&format!("t{s:04}"))
}

/// What one variant measured.
struct Measured {
    events: usize,
    elapsed: Duration,
    /// Latency of each `emit` call (empty for the raw baseline).
    latency: Histogram,
    batches: u64,
    errors: usize,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

/// Raw baseline: a plain connection with the service's pragmas, the rows built
/// exactly as the HistoryActor's store builds them, `RAW_BATCH` per transaction.
fn raw_insert(total: usize, senders: usize) -> Measured {
    let tmp = tempfile::Builder::new().prefix("kiln-bench-raw-").tempdir().expect("tempdir");
    let path = tmp.path().join("kiln.db");
    {
        let db = Db::open(&path, 5000, 1).expect("open db");
        db.migrate().expect("migrate");
    }
    let mut conn = SqliteConnection::establish(&path.to_string_lossy()).expect("connect");
    conn.batch_execute(
        "PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL; PRAGMA journal_mode = WAL;",
    )
    .expect("pragmas");
    // The same events in the same interleaving as the 64-sender actor run.
    let all: Vec<NewEvent> = (0..total).map(|n| event(n % senders, n / senders)).collect();
    let start = Instant::now();
    for chunk in all.chunks(RAW_BATCH) {
        let at = kiln::util::now_ms();
        let rows: Vec<NewEventRow> = chunk
            .iter()
            .map(|e| NewEventRow {
                organization: ORG,
                repo: e.repo.as_deref(),
                task: e.task.as_deref(),
                kind: e.kind,
                at,
                data: e.data.to_string(),
                session: e.session.as_deref(),
            })
            .collect();
        conn.immediate_transaction(|c| diesel::insert_into(events::table).values(&rows).execute(c))
            .expect("insert batch");
    }
    let elapsed = start.elapsed();
    let stored: i64 = events::table.count().get_result(&mut conn).expect("count");
    assert_eq!(stored as usize, total, "raw insert stored every row");
    Measured { events: total, elapsed, latency: Histogram::default(), batches: total.div_ceil(RAW_BATCH) as u64, errors: 0 }
}

/// `senders` concurrent tasks, each appending `per_call` events per `emit` until
/// `total` events are in. Checks that every event was persisted once.
async fn actor_append(total: usize, senders: usize, per_call: usize, env: &[(&str, &str)]) -> Measured {
    let mut env = env.to_vec();
    env.push(("KILN_SERVER__WORKERS", "1"));
    let service = Service::start(&env).await;
    let kiln = service.kiln.clone();
    // Start the HistoryActor before the clock starts.
    kiln.emit(ORG, vec![]).await.expect("history starts");
    let batches_before = kiln.metrics.event_batches.load(std::sync::atomic::Ordering::Relaxed);
    let stored_before = count_events(&kiln).await;

    let start = Instant::now();
    let runs = (0..senders).map(|s| {
        let kiln = kiln.clone();
        // Sender s appends its share: total / senders, plus one of the remainder.
        let share = total / senders + usize::from(s < total % senders);
        async move {
            let mut latency = Histogram::default();
            let (mut ids, mut errors, mut i) = (Vec::with_capacity(share), 0, 0);
            while i < share {
                let n = per_call.min(share - i);
                let batch: Vec<NewEvent> = (i..i + n).map(|k| event(s, k)).collect();
                let t = Instant::now();
                match kiln.emit(ORG, batch).await {
                    // Remember which event each id was answered for.
                    Ok(got) => ids.extend(got.into_iter().zip(i..i + n).map(|(id, k)| (id, s, k))),
                    Err(e) => {
                        errors += 1;
                        eprintln!("emit failed: {e}");
                    }
                }
                latency.record_duration(t.elapsed());
                i += n;
            }
            (latency, ids, errors)
        }
    });
    let results = join_all(runs).await;
    let elapsed = start.elapsed();

    let mut latency = Histogram::default();
    let mut answered = Vec::with_capacity(total);
    let mut errors = 0;
    for (h, got, e) in results {
        latency.merge(&h);
        answered.extend(got);
        errors += e;
    }
    let batches = kiln.metrics.event_batches.load(std::sync::atomic::Ordering::Relaxed) - batches_before;
    check_ids(&kiln, &answered).await;
    let stored = count_events(&kiln).await - stored_before;
    if errors == 0 {
        assert_eq!(answered.len(), total, "every event was acknowledged");
    }
    assert_eq!(stored as usize, answered.len(), "every acknowledged event is in the database");
    service.stop().await;
    Measured { events: total, elapsed, latency, batches, errors }
}

/// Every answered id is distinct and names the row holding the event it was
/// answered for (same sender and sequence number).
async fn check_ids(kiln: &kiln::actors::Kiln, answered: &[(i64, usize, usize)]) {
    let rows: Vec<(i64, String)> = kiln
        .db
        .read(|c| events::table.filter(events::kind.eq(KIND)).select((events::id, events::data)).load(c))
        .await
        .expect("read events");
    let by_id: std::collections::HashMap<i64, serde_json::Value> =
        rows.into_iter().map(|(id, data)| (id, serde_json::from_str(&data).expect("event data"))).collect();
    let mut seen = std::collections::HashSet::with_capacity(answered.len());
    for &(id, s, k) in answered {
        assert!(seen.insert(id), "id {id} was answered twice");
        let data = by_id.get(&id).unwrap_or_else(|| panic!("id {id} was answered but is not stored"));
        assert_eq!((data["sender"].as_u64(), data["seq"].as_u64()), (Some(s as u64), Some(k as u64)), "id {id} holds another event");
    }
}

async fn count_events(kiln: &kiln::actors::Kiln) -> i64 {
    kiln.db.read(|c| events::table.count().get_result(c)).await.expect("count events")
}

fn median_by_rate(mut runs: Vec<Measured>) -> Measured {
    runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    let mid = runs.len() / 2;
    runs.swap_remove(mid)
}

fn main() {
    let total = knob("BENCH_EVENTS", 20_000);
    let rounds = knob("BENCH_ROUNDS", 3).max(1);
    let senders = knob("BENCH_SENDERS", 64).max(1);
    let single = (total / 40).max(1);
    println!("# Event append throughput ({})", common::machine_line());
    println!(
        "{total} events per run ({single} for the single sender), {rounds} rounds, median shown; \
         batch_max 512 (the default) unless the variant says otherwise\n"
    );

    type Variant = (String, Box<dyn Fn() -> Measured>);
    let actor = move |total, senders, per_call, env: &'static [(&'static str, &'static str)]| -> Box<dyn Fn() -> Measured> {
        Box::new(move || actix_rt::System::new().block_on(actor_append(total, senders, per_call, env)))
    };
    const SMALL_BATCHES: &[(&str, &str)] = &[("KILN_EVENTS__BATCH_MAX", "16")];
    let variants: Vec<Variant> = vec![
        (format!("raw diesel, {RAW_BATCH} rows/txn"), Box::new(move || raw_insert(total, senders))),
        (format!("HistoryActor, {senders} senders x 1 event/emit"), actor(total, senders, 1, &[])),
        (format!("HistoryActor, {senders} senders x 100 events/emit"), actor(total, senders, 100, &[])),
        ("HistoryActor, 1 sender x 1 event/emit".to_string(), actor(single, 1, 1, &[])),
        (format!("HistoryActor, {senders} x 1, batch_max=16"), actor(total, senders, 1, SMALL_BATCHES)),
    ];
    let mut measured: Vec<Vec<Measured>> = variants.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (i, (name, run)) in variants.iter().enumerate() {
            let m = run();
            eprintln!("round {}: {name}: {} events/s", round + 1, fmt_rate(m.rate()));
            measured[i].push(m);
        }
    }
    let medians: Vec<Measured> = measured.into_iter().map(median_by_rate).collect();
    let raw = medians[0].rate();
    let rows: Vec<Vec<String>> = variants
        .iter()
        .zip(&medians)
        .map(|((name, _), m)| {
            let lat = |q| if m.latency.count == 0 { "-".to_string() } else { fmt_us(m.latency.quantile(q)) };
            vec![
                name.clone(),
                m.events.to_string(),
                format!("{:.3} s", m.elapsed.as_secs_f64()),
                fmt_rate(m.rate()),
                format!("{:.3}", m.rate() / raw),
                format!("{:.1}", m.events as f64 / m.batches.max(1) as f64),
                lat(0.5),
                lat(0.99),
                m.errors.to_string(),
            ]
        })
        .collect();
    println!();
    print_table(
        &["variant", "events", "time", "events/s", "ratio to raw", "events/txn", "emit p50", "emit p99", "errors"],
        &rows,
    );
    println!(
        "\nratio (actor / raw): {:.3} with {senders} x 1, {:.3} with {senders} x 100",
        medians[1].rate() / raw,
        medians[2].rate() / raw
    );
}
