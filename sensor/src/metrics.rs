//! Prometheus metrics in the text exposition format, without a metrics library: a handful
//! of atomics per component and a `render` that writes them. Served by `crate::http`.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicI64, AtomicU64, Ordering},
};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Writes one metric family: `# HELP`, `# TYPE` and its samples (`labels` like `kind="x"`).
pub fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

pub fn counter(out: &mut String, name: &str, help: &str, c: &Counter) {
    family(out, name, "counter", help, &[("", c.get() as f64)]);
}

pub fn gauge(out: &mut String, name: &str, help: &str, g: &Gauge) {
    family(out, name, "gauge", help, &[("", g.get() as f64)]);
}

/// Escapes a label value.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_format() {
        let c = Counter::default();
        c.add(3);
        let mut out = String::new();
        counter(&mut out, "x_total", "Things.", &c);
        family(&mut out, "y", "gauge", "Y.", &[("kind=\"a\"", 1.5)]);
        assert_eq!(
            out,
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total 3\n\
             # HELP y Y.\n# TYPE y gauge\ny{kind=\"a\"} 1.5\n"
        );
        assert_eq!(label("a\"b"), "a\\\"b");
    }
}
