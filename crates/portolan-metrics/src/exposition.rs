//! Counter, gauge and histogram families, kept here and encoded by `prometheus-client`
//! in the Prometheus text format or OpenMetrics ([`crate::scrape`]).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard};

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

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
    counter: bool,
    values: Mutex<BTreeMap<Labels, f64>>,
}

impl Family {
    /// A counter family: only ever grows. Its name ends with `_total`.
    pub const fn counter(name: &'static str, help: &'static str) -> Family {
        assert!(ends_with_total(name), "a counter's name ends with `_total`");
        Family {
            name,
            help,
            counter: true,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    /// A gauge family: a value that goes up and down.
    pub const fn gauge(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            counter: false,
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

    /// Encodes the family (a counter's `_total` is added back by the encoder).
    pub fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let (name, kind) = if self.counter {
            let name = self.name.strip_suffix("_total").unwrap_or(self.name);
            (name, MetricType::Counter)
        } else {
            (self.name, MetricType::Gauge)
        };
        let mut metric = encoder.encode_descriptor(name, self.help, None, kind)?;
        for (labels, value) in lock(&self.values).iter() {
            let mut sample = metric.encode_family(labels)?;
            match (self.counter, integral(*value)) {
                (true, Some(n)) if n >= 0 => {
                    sample.encode_counter::<NoLabelSet, _, f64>(&n.unsigned_abs(), None)?
                }
                (true, _) => sample.encode_counter::<NoLabelSet, _, f64>(value, None)?,
                (false, Some(n)) => sample.encode_gauge(&n)?,
                (false, None) => sample.encode_gauge(value)?,
            }
        }
        Ok(())
    }
}

/// `v` as an integer when it is one (counts, timestamps, sizes), so that it is written
/// `3` rather than `3.0`.
fn integral(v: f64) -> Option<i64> {
    // 2^53: every integer below is exact in an f64.
    (v.fract() == 0.0 && v.abs() < 9_007_199_254_740_992.0).then_some(v as i64)
}

/// Whether `name` ends with `_total`, in a `const fn`.
const fn ends_with_total(name: &str) -> bool {
    let (name, suffix) = (name.as_bytes(), b"_total");
    if name.len() < suffix.len() {
        return false;
    }
    let mut i = 0;
    while i < suffix.len() {
        if name[name.len() - suffix.len() + i] != suffix[i] {
            return false;
        }
        i += 1;
    }
    true
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
    /// Observations per bucket (not cumulative), the last one past every bound.
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
            b.counts = vec![0; self.bounds.len() + 1];
        }
        // The first bucket whose bound is at least `v`, else the last (`+Inf`).
        let bucket = self.bounds.partition_point(|bound| *bound < v);
        if let Some(count) = b.counts.get_mut(bucket) {
            *count += 1;
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

    /// Encodes the family.
    pub fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let mut metric =
            encoder.encode_descriptor(self.name, self.help, None, MetricType::Histogram)?;
        for (labels, b) in lock(&self.values).iter() {
            let buckets: Vec<(f64, u64)> = self
                .bounds
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .zip(b.counts.iter().copied())
                .collect();
            metric
                .encode_family(labels)?
                .encode_histogram::<NoLabelSet>(b.sum, b.count, &buckets, None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape::{Exposition, Format};

    fn exposition() -> Exposition {
        let c = Family::counter("x_total", "Things.");
        c.inc(&[("kind", "a\"b")]);
        c.add(&[("kind", "a\"b")], 2.0);
        let g = Family::gauge("g", "Level.");
        g.set(&[], 0.25);
        let h = Histogram::new("d_seconds", "Durations.", &[0.1, 1.0]);
        h.observe(&[], 0.5);
        h.observe(&[], 7.0);
        Exposition::new(move |e| {
            c.encode(e)?;
            g.encode(e)?;
            h.encode(e)
        })
    }

    #[test]
    fn encodes_the_text_format() {
        assert_eq!(
            exposition().render(Format::Text),
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{kind=\"a\\\"b\"} 3\n\
             # HELP g Level.\n# TYPE g gauge\ng 0.25\n\
             # HELP d_seconds Durations.\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{le=\"0.1\"} 0\nd_seconds_bucket{le=\"1\"} 1\n\
             d_seconds_bucket{le=\"+Inf\"} 2\nd_seconds_sum 7.5\nd_seconds_count 2\n"
        );
    }

    #[test]
    fn encodes_openmetrics() {
        assert_eq!(
            exposition().render(Format::OpenMetrics),
            "# HELP x Things.\n# TYPE x counter\nx_total{kind=\"a\\\"b\"} 3\n\
             # HELP g Level.\n# TYPE g gauge\ng 0.25\n\
             # HELP d_seconds Durations.\n# TYPE d_seconds histogram\n\
             d_seconds_sum 7.5\nd_seconds_count 2\n\
             d_seconds_bucket{le=\"0.1\"} 0\nd_seconds_bucket{le=\"1.0\"} 1\n\
             d_seconds_bucket{le=\"+Inf\"} 2\n# EOF\n"
        );
    }

    #[test]
    fn counts_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::new("d", "D.", &[1.0, 2.0]);
        for v in [1.0, 1.5, 2.0, 2.5, -1.0] {
            h.observe(&[("k", "v")], v);
        }
        assert_eq!(h.count(&[("k", "v")]), 5);
        let text = Exposition::new(move |e| h.encode(e)).render(Format::Text);
        assert!(text.contains("d_bucket{k=\"v\",le=\"1\"} 2\n"), "{text}");
        assert!(text.contains("d_bucket{k=\"v\",le=\"2\"} 4\n"), "{text}");
        assert!(text.contains("d_bucket{k=\"v\",le=\"+Inf\"} 5\n"), "{text}");
    }
}
