//! Side-by-side measurement: targets on one or more servers take turns in short wrk
//! windows, so that other load on a shared machine spreads over all of them alike.

use std::path::PathBuf;
use std::time::Duration;

use crate::loopback_client;
use crate::prometheus::Snapshot;
use crate::wrk::{Load, Wrk};

/// One request under load, with what wrk and the server's `/metrics` counted for it.
pub struct Target {
    pub name: String,
    /// The server's base URL, such as `http://127.0.0.1:8080`, for `/metrics`.
    base_url: String,
    url: String,
    script: PathBuf,
    expected: Expectation,
    /// wrk's counts, summed over the measured windows.
    pub load: Load,
    /// Differences of the server's metrics across each measured window, summed. The
    /// `/metrics` requests themselves fall between windows.
    pub metrics: Snapshot,
    /// Responses per second in each window, in order.
    pub window_rates: Vec<f64>,
}

impl Target {
    /// Describes the load that `script` puts on `path` of the server at `base_url`, and
    /// what each response must be.
    pub fn new(
        name: impl Into<String>,
        base_url: &str,
        path: &str,
        script: PathBuf,
        expected: Expectation,
    ) -> Self {
        Self {
            name: name.into(),
            base_url: base_url.to_owned(),
            url: format!("{base_url}{path}"),
            script,
            expected,
            load: Load::default(),
            metrics: Snapshot::default(),
            window_rates: Vec::new(),
        }
    }

    /// Returns this target's throughput over `other`'s, overall and the lowest and highest
    /// of single rounds.
    pub fn ratio_to(&self, other: &Target) -> Ratio {
        let rounds: Vec<f64> = self
            .window_rates
            .iter()
            .zip(&other.window_rates)
            .map(|(mine, theirs)| mine / theirs)
            .collect();
        Ratio {
            overall: self.load.throughput() / other.load.throughput(),
            lowest: rounds.iter().copied().fold(f64::INFINITY, f64::min),
            highest: rounds.iter().copied().fold(0.0, f64::max),
        }
    }

    /// Formats the cells that every report shows for a target, as a Markdown table row
    /// fragment: requests/s, the ratio to `baseline` overall and its range over rounds,
    /// p50, p99, responses and the store queries that requests caused.
    pub fn table_cells(&self, baseline: &Target) -> String {
        let ms = |duration: Duration| format!("{:.3} ms", duration.as_secs_f64() * 1_000.0);
        let ratio = self.ratio_to(baseline);
        format!(
            "{:.0} | {:.3} | {:.3} to {:.3} | {} | {} | {} | {}",
            self.load.throughput(),
            ratio.overall,
            ratio.lowest,
            ratio.highest,
            ms(self.load.latency_quantile(0.5)),
            ms(self.load.latency_quantile(0.99)),
            self.load.requests,
            self.request_store_queries(),
        )
    }

    /// Returns the store queries sent during the measured windows other than the background
    /// tasks': those that requests caused.
    pub fn request_store_queries(&self) -> f64 {
        self.metrics.sum(STORE_QUERIES) - self.background_store_queries()
    }

    /// Returns the store queries of the change feed and the usage flusher during the
    /// measured windows, which run on timers whatever the load.
    pub fn background_store_queries(&self) -> f64 {
        BACKGROUND_OPERATIONS
            .iter()
            .map(|operation| {
                self.metrics
                    .value(&format!("{STORE_QUERIES}{{operation=\"{operation}\"}}"))
            })
            .sum()
    }

    /// Lists every way in which the measured responses differ from the expectation, from
    /// wrk's error counts and the server's request and verification counters.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let requests = self.load.requests as f64;
        if self.load.socket_errors > 0 {
            problems.push(format!(
                "{} connect, read or write errors or timeouts",
                self.load.socket_errors
            ));
        }

        let route = format!("route=\"{}\"", self.expected.route);
        let status = format!("status=\"{}\"", self.expected.status);
        let mut expected_seen = 0.0;
        for (series, count) in self.metrics.series("valet_http_requests_total") {
            if !series.contains(&route) {
                continue;
            }
            if series.contains(&status) {
                expected_seen += count;
            } else if count > 0.0 {
                problems.push(format!("{count} responses counted as {series}"));
            }
        }
        if expected_seen < requests {
            problems.push(format!(
                "{expected_seen} responses on {route} with {status}, fewer than the {requests} \
                 that wrk completed"
            ));
        }

        for (series, count) in self.metrics.series("valet_verifications_total") {
            let per_request = self
                .expected
                .codes
                .iter()
                .find(|(code, _)| series.contains(&format!("code=\"{code}\"")))
                .map_or(0, |(_, per_request)| *per_request);
            if per_request == 0 && count > 0.0 {
                problems.push(format!("{count} verifications counted as {series}"));
            }
            if count < per_request as f64 * requests {
                problems.push(format!(
                    "{count} verifications counted as {series}, expected {per_request} for \
                     each of {requests} requests"
                ));
            }
        }
        problems
    }
}

/// Prints every target's [`Target::problems`] and fails when there is any.
pub fn check_responses(targets: &[Target]) -> anyhow::Result<()> {
    let mut failed = false;
    for target in targets {
        for problem in target.problems() {
            eprintln!("{}: {problem}", target.name);
            failed = true;
        }
    }
    anyhow::ensure!(
        !failed,
        "some responses were not the expected ones; the figures above are not valid"
    );
    Ok(())
}

/// The metric that counts store queries, by operation.
const STORE_QUERIES: &str = "valet_store_queries_total";
/// Operations of the change feed, which polls the store whatever the load, of the flusher
/// that writes `last_used_at` every 30 s, and of the signing key reload every 30 s.
const BACKGROUND_OPERATIONS: [&str; 5] = [
    "snapshot_ids",
    "poll_changes",
    "prune_changes",
    "record_usage",
    "signing_keys",
];

/// What every response of a target must be, checked against the server's counters.
#[derive(Clone, Debug)]
pub struct Expectation {
    /// The route pattern that `valet_http_requests_total` counts the request under.
    pub route: &'static str,
    pub status: u16,
    /// Verifications per request by code, such as `("VALID", 2)` for a verify call,
    /// which checks the caller's key too. Every other code must stay at zero.
    pub codes: Vec<(&'static str, u64)>,
}

/// A throughput ratio over all rounds, with its range over single rounds.
#[derive(Clone, Copy, Debug)]
pub struct Ratio {
    pub overall: f64,
    pub lowest: f64,
    pub highest: f64,
}

/// How long each target is loaded.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// Unmeasured load on each target before the first round.
    pub warm_up: Duration,
    /// Measured load on each target in each round.
    pub window: Duration,
    pub rounds: usize,
}

/// Warms every target up, then loads them in turn for `schedule.rounds` rounds and adds
/// each window's counts and metric differences to its target.
pub async fn measure(targets: &mut [Target], wrk: &Wrk, schedule: &Schedule) -> anyhow::Result<()> {
    let client = loopback_client()?;
    for target in targets.iter() {
        eprintln!("{}: warming up for {:?}", target.name, schedule.warm_up);
        wrk.run(&target.url, &target.script, schedule.warm_up)
            .await?;
    }
    for round in 1..=schedule.rounds {
        eprintln!(
            "round {round} of {}: {:?} per target",
            schedule.rounds, schedule.window
        );
        for target in targets.iter_mut() {
            let before = Snapshot::fetch(&client, &target.base_url).await?;
            let load = wrk
                .run(&target.url, &target.script, schedule.window)
                .await?;
            let after = Snapshot::fetch(&client, &target.base_url).await?;
            target.metrics.add(&after.since(&before));
            target.window_rates.push(load.throughput());
            target.load.merge(&load);
        }
    }
    Ok(())
}

/// Command-line settings shared by the wrk benchmarks.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub schedule: Schedule,
    pub wrk: Wrk,
    /// CPUs for the servers under `taskset -c`.
    pub server_cpus: Option<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            schedule: Schedule {
                warm_up: Duration::from_secs(2),
                window: Duration::from_secs(2),
                rounds: 8,
            },
            wrk: Wrk {
                connections: 32,
                cpus: None,
            },
            server_cpus: None,
        }
    }
}

impl LoadOptions {
    /// Usage of the flags that [`LoadOptions::apply`] reads.
    pub const USAGE: &str = "[--rounds N] [--seconds N] [--connections N] \
                             [--server-cpus LIST] [--load-cpus LIST]";

    /// Applies `--flag value` if it is one of [`LoadOptions::USAGE`]'s, and returns whether
    /// it was.
    pub fn apply(&mut self, flag: &str, value: &str) -> anyhow::Result<bool> {
        let number = |max: u64| -> anyhow::Result<u64> {
            let parsed: u64 = value
                .parse()
                .map_err(|_| anyhow::anyhow!("invalid {flag} {value}: expected a number"))?;
            anyhow::ensure!(
                (1..=max).contains(&parsed),
                "invalid {flag} {value}: use 1 to {max}, which keeps the run bounded"
            );
            Ok(parsed)
        };
        match flag {
            "--rounds" => self.schedule.rounds = number(20)? as usize,
            "--seconds" => self.schedule.window = Duration::from_secs(number(10)?),
            "--connections" => self.wrk.connections = number(1024)? as usize,
            "--server-cpus" => self.server_cpus = Some(value.to_owned()),
            "--load-cpus" => self.wrk.cpus = Some(value.to_owned()),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Describes the load for a report.
    pub fn describe(&self) -> String {
        let schedule = &self.schedule;
        format!(
            "wrk 4.1 with 1 thread and {} keep-alive connections, each with one request in \
             flight, on CPUs {}; servers on CPUs {}. Each target is warmed up for {:?}, then \
             measured in {} rounds of {:?}, the targets taking turns.",
            self.wrk.connections,
            self.wrk.cpus.as_deref().unwrap_or("any"),
            self.server_cpus.as_deref().unwrap_or("any"),
            schedule.warm_up,
            schedule.rounds,
            schedule.window,
        )
    }
}
