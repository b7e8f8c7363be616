//! The results: one row per measurement (medians with min and max), printed as a Markdown
//! table and written as JSON (`--json PATH`).

use std::path::Path;

/// One row of the table.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    scenario: String,
    metric: String,
    samples: Vec<f64>,
    digits: usize,
    target: String,
    met: Option<bool>,
}
impl Row {
    pub(crate) fn new(scenario: &str, metric: &str, samples: Vec<f64>, digits: usize) -> Row {
        Row {
            scenario: scenario.into(),
            metric: metric.into(),
            samples,
            digits,
            target: String::new(),
            met: None,
        }
    }

    pub(crate) fn target(mut self, text: &str, met: impl Fn(f64) -> bool) -> Row {
        self.met = Some(met(self.median()));
        self.target = text.into();
        self
    }

    pub(crate) fn median(&self) -> f64 {
        median(&self.samples)
    }
}
pub(crate) fn median(samples: &[f64]) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
pub(crate) fn fmt(x: f64, digits: usize) -> String {
    if x.is_nan() {
        return "–".into();
    }
    let text = format!("{x:.digits$}");
    // Thousands separators for the integer part.
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i.to_string(), format!(".{f}")),
        None => (text.clone(), String::new()),
    };
    let (sign, digits_only) = match int.strip_prefix('-') {
        Some(d) => ("-", d.to_string()),
        None => ("", int),
    };
    let mut grouped = String::new();
    for (i, c) in digits_only.chars().enumerate() {
        if i > 0 && (digits_only.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{sign}{grouped}{frac}")
}
pub(crate) fn print_table(rows: &[Row]) {
    println!("| scenario | metric | median | min | max | runs | target | met |");
    println!("|---|---|---:|---:|---:|---:|---|---|");
    for r in rows {
        let min = r.samples.iter().copied().fold(f64::INFINITY, f64::min);
        let max = r.samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let met = match r.met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "",
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.metric,
            fmt(r.median(), r.digits),
            fmt(min, r.digits),
            fmt(max, r.digits),
            r.samples.len(),
            r.target,
            met
        );
    }
}

/// The run as JSON: the command, the machine, and every row with its samples.
pub(crate) fn json(command: &str, machine: &str, seconds: f64, rows: &[Row]) -> serde_json::Value {
    let number = |x: f64| {
        if x.is_finite() {
            serde_json::json!(x)
        } else {
            serde_json::Value::Null
        }
    };
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let min = r.samples.iter().copied().fold(f64::INFINITY, f64::min);
            let max = r.samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            serde_json::json!({
                "scenario": r.scenario,
                "metric": r.metric,
                "median": number(r.median()),
                "min": number(min),
                "max": number(max),
                "samples": r.samples.iter().map(|x| number(*x)).collect::<Vec<_>>(),
                "target": (!r.target.is_empty()).then(|| r.target.clone()),
                "met": r.met,
            })
        })
        .collect();
    serde_json::json!({
        "command": command,
        "machine": machine,
        "seconds": seconds,
        "rows": rows,
    })
}

/// Write [`json`] to `path`.
pub(crate) fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_thousands() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(fmt(12345.678, 1), "12,345.7");
        assert_eq!(fmt(-1000.0, 0), "-1,000");
    }

    #[test]
    fn json_rows_carry_samples_min_max_and_targets() {
        let rows =
            [Row::new("s", "messages/s", vec![1.0, 3.0, 2.0], 0).target("≥ 2", |x| x >= 2.0)];
        let v = json("bench sqs", "2 cores", 1.5, &rows);
        let row = &v["rows"][0];
        assert_eq!(row["median"], 2.0);
        assert_eq!(row["min"], 1.0);
        assert_eq!(row["max"], 3.0);
        assert_eq!(row["met"], true);
        assert_eq!(row["target"], "≥ 2");
        assert_eq!(v["command"], "bench sqs");
    }
}
