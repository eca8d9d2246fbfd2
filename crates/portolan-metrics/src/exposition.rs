//! The Prometheus text exposition (format 0.0.4): counter, gauge and histogram families.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard};

/// A label set: `(name, value)` pairs in the order they are rendered.
pub type Labels = Vec<(&'static str, String)>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain numbers behind: still good to read.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_string())).collect()
}

/// A family of counters or gauges, one value per label set.
#[derive(Debug)]
pub struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    values: Mutex<BTreeMap<Labels, f64>>,
}

impl Family {
    /// A counter family (`…_total`): only ever grows.
    pub const fn counter(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            kind: "counter",
            values: Mutex::new(BTreeMap::new()),
        }
    }

    /// A gauge family: a value that goes up and down.
    pub const fn gauge(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            kind: "gauge",
            values: Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds `v` to the value of `pairs`.
    pub fn add(&self, pairs: &[(&'static str, &str)], v: f64) {
        *lock(&self.values).entry(labels(pairs)).or_insert(0.0) += v;
    }

    /// Adds one to the value of `pairs`.
    pub fn inc(&self, pairs: &[(&'static str, &str)]) {
        self.add(pairs, 1.0);
    }

    /// Sets the value of `pairs`.
    pub fn set(&self, pairs: &[(&'static str, &str)], v: f64) {
        lock(&self.values).insert(labels(pairs), v);
    }

    /// Replaces every value at once (a gauge computed from a whole state, so that label
    /// sets that disappeared stop being reported).
    pub fn replace(&self, values: BTreeMap<Labels, f64>) {
        *lock(&self.values) = values;
    }

    /// The value of `pairs`, 0 when never set.
    pub fn get(&self, pairs: &[(&'static str, &str)]) -> f64 {
        lock(&self.values)
            .get(&labels(pairs))
            .copied()
            .unwrap_or(0.0)
    }

    /// Ensures `pairs` is reported (as 0) before anything happened.
    pub fn touch(&self, pairs: &[(&'static str, &str)]) {
        lock(&self.values).entry(labels(pairs)).or_insert(0.0);
    }

    /// Appends the family in the text format.
    pub fn render(&self, out: &mut String) {
        header(out, self.name, self.help, self.kind);
        for (labels, value) in lock(&self.values).iter() {
            sample(out, self.name, labels, None, *value);
        }
    }
}

/// A histogram family with fixed bucket bounds (seconds), one histogram per label set.
#[derive(Debug)]
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    bounds: &'static [f64],
    values: Mutex<BTreeMap<Labels, Buckets>>,
}

#[derive(Debug, Default, Clone)]
struct Buckets {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// Bounds for durations from a millisecond to a minute.
pub const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

impl Histogram {
    /// A histogram family with the bucket upper bounds `bounds` (ascending).
    pub const fn new(name: &'static str, help: &'static str, bounds: &'static [f64]) -> Histogram {
        Histogram {
            name,
            help,
            bounds,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records one observation for `pairs`.
    pub fn observe(&self, pairs: &[(&'static str, &str)], v: f64) {
        let mut values = lock(&self.values);
        let b = values.entry(labels(pairs)).or_default();
        if b.counts.is_empty() {
            b.counts = vec![0; self.bounds.len()];
        }
        for (count, bound) in b.counts.iter_mut().zip(self.bounds) {
            if v <= *bound {
                *count += 1;
            }
        }
        b.sum += v;
        b.count += 1;
    }

    /// Observations recorded for `pairs`.
    pub fn count(&self, pairs: &[(&'static str, &str)]) -> u64 {
        lock(&self.values)
            .get(&labels(pairs))
            .map_or(0, |b| b.count)
    }

    /// Appends the family in the text format.
    pub fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "histogram");
        let bucket = format!("{}_bucket", self.name);
        let sum = format!("{}_sum", self.name);
        let count = format!("{}_count", self.name);
        for (labels, b) in lock(&self.values).iter() {
            for (n, bound) in b.counts.iter().zip(self.bounds) {
                sample(out, &bucket, labels, Some(&bound.to_string()), *n as f64);
            }
            sample(out, &bucket, labels, Some("+Inf"), b.count as f64);
            sample(out, &sum, labels, None, b.sum);
            sample(out, &count, labels, None, b.count as f64);
        }
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &Labels, le: Option<&str>, value: f64) {
    out.push_str(name);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let mut first = true;
        let le = le.map(|le| ("le", le));
        for (k, v) in labels.iter().map(|(k, v)| (*k, v.as_str())).chain(le) {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(k);
            out.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        out.push('}');
    }
    if value.is_nan() {
        out.push_str(" NaN\n");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { " +Inf\n" } else { " -Inf\n" });
    } else {
        let _ = writeln!(out, " {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let c = Family::counter("x_total", "Things.");
        c.inc(&[("kind", "a\"b")]);
        c.add(&[("kind", "a\"b")], 2.0);
        let h = Histogram::new("d_seconds", "Durations.", &[0.1, 1.0]);
        h.observe(&[], 0.5);
        let mut out = String::new();
        c.render(&mut out);
        h.render(&mut out);
        assert_eq!(
            out,
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{kind=\"a\\\"b\"} 3\n\
             # HELP d_seconds Durations.\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{le=\"0.1\"} 0\nd_seconds_bucket{le=\"1\"} 1\n\
             d_seconds_bucket{le=\"+Inf\"} 1\nd_seconds_sum 0.5\nd_seconds_count 1\n"
        );
    }
}
