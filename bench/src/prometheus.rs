//! Snapshots of a server's `/metrics` text, and the differences between two of them.

use std::collections::BTreeMap;

/// Every sample of one `/metrics` response, by series: the metric name with its labels as
/// written, such as `valet_store_queries_total{operation="find_key"}`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    samples: BTreeMap<String, f64>,
}

impl Snapshot {
    /// Parses the Prometheus or OpenMetrics text format, skipping comments and lines that are
    /// not a series followed by a number.
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.rsplit_once(' '))
            .filter_map(|(series, value)| Some((series.to_owned(), value.parse().ok()?)))
            .collect();
        Self { samples }
    }

    /// Fetches and parses `/metrics` of the server at `base_url`.
    pub async fn fetch(client: &reqwest::Client, base_url: &str) -> anyhow::Result<Self> {
        let text = client
            .get(format!("{base_url}/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(Self::parse(&text))
    }

    /// Returns the value of `series`, or 0 when the server has not reported it yet.
    pub fn value(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }

    /// Returns every series of the metric `name` with its value, such as each operation of
    /// `valet_store_queries_total`.
    pub fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        self.samples
            .iter()
            .filter(move |(series, _)| {
                series
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
            })
            .map(|(series, value)| (series.as_str(), *value))
    }

    /// Returns the sum of every series of the metric `name`.
    pub fn sum(&self, name: &str) -> f64 {
        self.series(name).map(|(_, value)| value).sum()
    }

    /// Returns `self` minus `earlier`, series by series, for counters read before and after
    /// a load.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let samples = self
            .samples
            .iter()
            .map(|(series, value)| (series.clone(), value - earlier.value(series)))
            .collect();
        Snapshot { samples }
    }

    /// Adds `other` to `self`, series by series, to sum differences over several windows.
    pub fn add(&mut self, other: &Snapshot) {
        for (series, value) in &other.samples {
            *self.samples.entry(series.clone()).or_default() += value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE valet_store_queries counter\n\
        valet_store_queries_total{operation=\"find_key\"} 3\n\
        valet_store_queries_total{operation=\"poll_changes\"} 40\n\
        valet_store_queries_total_extra 7\n\
        valet_cache_trusted 1\n\
        # EOF\n";

    #[test]
    fn snapshot_reads_series_and_sums() {
        let snapshot = Snapshot::parse(TEXT);
        assert_eq!(snapshot.value("valet_cache_trusted"), 1.0);
        assert_eq!(
            snapshot.value("valet_store_queries_total{operation=\"find_key\"}"),
            3.0
        );
        assert_eq!(snapshot.sum("valet_store_queries_total"), 43.0);
        assert_eq!(snapshot.value("valet_missing"), 0.0);
    }

    #[test]
    fn snapshot_differences_add_up() {
        let before = Snapshot::parse(TEXT);
        let after = Snapshot::parse(&TEXT.replace(" 40\n", " 45\n"));
        let mut total = after.since(&before);
        total.add(&after.since(&before));
        assert_eq!(total.sum("valet_store_queries_total"), 10.0);
        assert_eq!(total.value("valet_cache_trusted"), 0.0);
    }
}
