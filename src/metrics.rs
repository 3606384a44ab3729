//! Process-wide counters, served as Prometheus text on `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub requests_1xx: AtomicU64,
    pub requests_2xx: AtomicU64,
    pub requests_3xx: AtomicU64,
    pub requests_4xx: AtomicU64,
    pub requests_5xx: AtomicU64,
    pub events_appended: AtomicU64,
    pub event_batches: AtomicU64,
    pub stream_subscribers: AtomicU64,
    pub stream_overflows: AtomicU64,
}

impl Metrics {
    /// Counts one finished HTTP request by its status class.
    pub fn record_request(&self, status: u16) {
        let counter = match status {
            100..=199 => &self.requests_1xx,
            200..=299 => &self.requests_2xx,
            300..=399 => &self.requests_3xx,
            400..=499 => &self.requests_4xx,
            _ => &self.requests_5xx,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every metric; `live_actors` comes from
    /// the registry, `tasks` (every status with its count, zeros included) from
    /// the database.
    pub fn render(&self, live_actors: usize, tasks: &[(&str, i64)]) -> String {
        let mut out = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        out.push_str("# HELP kiln_http_requests_total HTTP requests answered, by status class (1xx: WebSocket upgrades).\n");
        out.push_str("# TYPE kiln_http_requests_total counter\n");
        for (class, c) in [
            ("1xx", &self.requests_1xx),
            ("2xx", &self.requests_2xx),
            ("3xx", &self.requests_3xx),
            ("4xx", &self.requests_4xx),
            ("5xx", &self.requests_5xx),
        ] {
            let _ = writeln!(out, "kiln_http_requests_total{{class=\"{class}\"}} {}", get(c));
        }
        let rows: [(&str, &str, &str, u64); 5] = [
            ("kiln_events_appended_total", "counter", "Events persisted by HistoryActors.", get(&self.events_appended)),
            ("kiln_event_batches_total", "counter", "Event batches written (one transaction each).", get(&self.event_batches)),
            ("kiln_stream_subscribers", "gauge", "Event-stream WebSocket subscribers connected now.", get(&self.stream_subscribers)),
            ("kiln_stream_overflows_total", "counter", "Subscribers closed because they fell behind.", get(&self.stream_overflows)),
            ("kiln_live_actors", "gauge", "Actors alive in the registry.", live_actors as u64),
        ];
        for (name, kind, help, value) in rows {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
        out.push_str("# HELP kiln_tasks Tasks by status, over every organization.\n# TYPE kiln_tasks gauge\n");
        for (status, n) in tasks {
            let _ = writeln!(out, "kiln_tasks{{status=\"{status}\"}} {n}");
        }
        out
    }
}
