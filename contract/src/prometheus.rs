//! A tiny Prometheus registry: lock-free counters, gauges and fixed-bucket histograms and a
//! pure [`render`] into the text exposition format 0.0.4. Shared by the elector and the
//! webhook (each serves `/metrics` with its own HTTP server); small on purpose instead of a
//! client library with its own global registry.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Path of the metrics endpoint.
pub const METRICS_PATH: &str = "/metrics";
/// Content type of the text exposition format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One sample line: `name{labels} value` (`suffix` is appended to the family name, e.g.
/// `_bucket`, `_sum`, `_count`).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub suffix: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// A metric family as scraped: name, help, type and its samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

impl Family {
    pub fn new(name: &'static str, help: &'static str, kind: Kind) -> Self {
        Family { name, help, kind, samples: Vec::new() }
    }

    /// The family with one unlabelled sample.
    pub fn single(name: &'static str, help: &'static str, kind: Kind, value: f64) -> Self {
        Family { name, help, kind, samples: vec![Sample { suffix: "", labels: Vec::new(), value }] }
    }
}

/// The text exposition format 0.0.4 of `families`, in the given order.
pub fn render(families: &[Family]) -> String {
    let mut out = String::new();
    for f in families {
        let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(f.help));
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
        for s in &f.samples {
            out.push_str(f.name);
            out.push_str(s.suffix);
            if !s.labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in s.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                }
                out.push('}');
            }
            out.push(' ');
            out.push_str(&format_value(s.value));
            out.push('\n');
        }
    }
    out
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Prometheus float syntax: integers without a fraction, `+Inf`, `-Inf`, `NaN`.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (an `f64` kept as bits).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Counters by one label's value, e.g. `reason`. Values appear in the output once counted.
#[derive(Debug)]
pub struct LabeledCounter {
    label: &'static str,
    counts: Mutex<BTreeMap<String, u64>>,
}

impl LabeledCounter {
    pub fn new(label: &'static str) -> Self {
        LabeledCounter { label, counts: Mutex::new(BTreeMap::new()) }
    }

    /// Starts `values` at 0 so they are scraped before their first increment (rate() and
    /// alerts see the series from the start).
    pub fn with_values(label: &'static str, values: &[&str]) -> Self {
        let c = LabeledCounter::new(label);
        if let Ok(mut m) = c.counts.lock() {
            m.extend(values.iter().map(|v| (v.to_string(), 0)));
        }
        c
    }

    pub fn inc(&self, value: &str) {
        // A poisoned lock only means another thread panicked mid-increment: keep counting.
        let mut m = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(value.to_string()).or_insert(0) += 1;
    }

    pub fn get(&self, value: &str) -> u64 {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).get(value).copied().unwrap_or(0)
    }

    pub fn family(&self, name: &'static str, help: &'static str) -> Family {
        let m = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let samples = m
            .iter()
            .map(|(v, n)| Sample { suffix: "", labels: vec![(self.label, v.clone())], value: *n as f64 })
            .collect();
        Family { name, help, kind: Kind::Counter, samples }
    }
}

/// Counters by two labels' values, e.g. `kind` and `outcome`.
#[derive(Debug)]
pub struct LabeledCounter2 {
    labels: (&'static str, &'static str),
    counts: Mutex<BTreeMap<(String, String), u64>>,
}

impl LabeledCounter2 {
    pub fn new(a: &'static str, b: &'static str) -> Self {
        LabeledCounter2 { labels: (a, b), counts: Mutex::new(BTreeMap::new()) }
    }

    pub fn inc(&self, a: &str, b: &str) {
        let mut m = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((a.to_string(), b.to_string())).or_insert(0) += 1;
    }

    pub fn get(&self, a: &str, b: &str) -> u64 {
        let m = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&(a.to_string(), b.to_string())).copied().unwrap_or(0)
    }

    pub fn family(&self, name: &'static str, help: &'static str) -> Family {
        let m = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let samples = m
            .iter()
            .map(|((a, b), n)| Sample {
                suffix: "",
                labels: vec![(self.labels.0, a.clone()), (self.labels.1, b.clone())],
                value: *n as f64,
            })
            .collect();
        Family { name, help, kind: Kind::Counter, samples }
    }
}

/// Latency buckets in seconds: 1 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A histogram over fixed upper bounds (cumulative on render).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative counts per bucket, plus the overflow (+Inf) bucket last.
    buckets: Vec<AtomicU64>,
    sum_bits: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_bits: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        let i = self.bounds.iter().position(|b| v <= *b).unwrap_or(self.bounds.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        let _ = self
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| Some((f64::from_bits(bits) + v).to_bits()));
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn family(&self, name: &'static str, help: &'static str) -> Family {
        let mut samples = Vec::with_capacity(self.bounds.len() + 3);
        let mut cumulative = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let le = self.bounds.get(i).map_or_else(|| "+Inf".to_string(), |b| format_value(*b));
            samples.push(Sample { suffix: "_bucket", labels: vec![("le", le)], value: cumulative as f64 });
        }
        samples.push(Sample {
            suffix: "_sum",
            labels: Vec::new(),
            value: f64::from_bits(self.sum_bits.load(Ordering::Relaxed)),
        });
        // The count is the +Inf bucket, so the two never disagree within one scrape.
        samples.push(Sample { suffix: "_count", labels: Vec::new(), value: cumulative as f64 });
        Family { name, help, kind: Kind::Histogram, samples }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format_exactly() {
        let c = LabeledCounter::with_values("reason", &["acquired"]);
        c.inc("lease \"lost\"");
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(3.0);
        let families = vec![
            Family::single("x_is_leader", "1 when leading.\nSecond line", Kind::Gauge, 1.0),
            c.family("x_transitions_total", "Transitions."),
            h.family("x_latency_seconds", "Latency."),
            Family::new("x_empty", "No samples.", Kind::Gauge),
        ];
        let expected = "\
# HELP x_is_leader 1 when leading.\\nSecond line
# TYPE x_is_leader gauge
x_is_leader 1
# HELP x_transitions_total Transitions.
# TYPE x_transitions_total counter
x_transitions_total{reason=\"acquired\"} 0
x_transitions_total{reason=\"lease \\\"lost\\\"\"} 1
# HELP x_latency_seconds Latency.
# TYPE x_latency_seconds histogram
x_latency_seconds_bucket{le=\"0.1\"} 1
x_latency_seconds_bucket{le=\"1\"} 2
x_latency_seconds_bucket{le=\"+Inf\"} 3
x_latency_seconds_sum 3.55
x_latency_seconds_count 3
# HELP x_empty No samples.
# TYPE x_empty gauge
";
        assert_eq!(render(&families), expected);
    }

    #[test]
    fn values_use_prometheus_float_syntax() {
        assert_eq!(format_value(2.0), "2");
        assert_eq!(format_value(-3.0), "-3");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(1.7e18), "1700000000000000000");
    }

    #[test]
    fn two_label_counters_and_gauges_count() {
        let c = LabeledCounter2::new("kind", "outcome");
        c.inc("Pod", "injected");
        c.inc("Pod", "injected");
        assert_eq!(c.get("Pod", "injected"), 2);
        assert_eq!(c.get("Service", "injected"), 0);
        assert_eq!(
            render(&[c.family("r_total", "R.")]),
            "# HELP r_total R.\n# TYPE r_total counter\nr_total{kind=\"Pod\",outcome=\"injected\"} 2\n"
        );
        let g = Gauge::default();
        g.set(-1.5);
        assert_eq!(g.get(), -1.5);
    }
}
