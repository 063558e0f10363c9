//! Load from wrk (Debian's wrk 4.1): a Lua script per request, one wrk run per window, and
//! the results of several runs merged into one count and one latency histogram.
//!
//! wrk prints its own summary, which is rounded. The `done` function that every script
//! here ends with prints exact counts and 1,000 latency quantiles on lines of their own,
//! which [`Wrk::run`] parses.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail, ensure};

use crate::pinned_command;

/// Marks the line of exact counts that the scripts' `done` function prints.
const SUMMARY_MARK: &str = "valet-bench-summary";
/// Marks the line of latency quantiles, in microseconds, that the scripts' `done` function
/// prints.
const LATENCY_MARK: &str = "valet-bench-latency";

/// Prints wrk's counters and the latency quantiles at the middle of 1,000 equal shares of
/// the responses (0.05 %, 0.15 %, ... 99.95 %), so that runs can be merged: each quantile
/// stands for a thousandth of its run's responses.
const DONE_FUNCTION: &str = r#"
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format("valet-bench-summary %d %d %d %d %d %d %d\n",
    summary.requests, summary.duration, errors.connect, errors.read, errors.write,
    errors.status, errors.timeout))
  local quantiles = {}
  for share = 1, QUANTILES do
    quantiles[share] = string.format("%d", latency:percentile((share - 0.5) * 100 / QUANTILES))
  end
  io.write("valet-bench-latency ", table.concat(quantiles, " "), "\n")
end
"#;
/// The number of latency quantiles that each run prints.
const QUANTILES: usize = 1000;

/// One HTTP request that a script sends again and again.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<String>,
}

impl Request {
    /// Builds a `GET` with `headers`.
    pub fn get(headers: Vec<(&'static str, String)>) -> Self {
        Self {
            method: "GET",
            headers,
            body: None,
        }
    }

    /// Builds a `POST` of `body` as JSON with `headers`.
    pub fn post_json(mut headers: Vec<(&'static str, String)>, body: String) -> Self {
        headers.push(("Content-Type", "application/json".to_owned()));
        Self {
            method: "POST",
            headers,
            body: Some(body),
        }
    }
}

/// Writes a wrk script that sends `request` on every connection. The path comes from the
/// URL given to wrk.
///
/// The script may contain a key; write it only under a private work directory.
pub fn write_script(path: &Path, request: &Request) -> anyhow::Result<()> {
    let mut script = request_settings(request)?;
    script.push_str(&done_function());
    std::fs::write(path, script).with_context(|| format!("could not write {}", path.display()))
}

fn done_function() -> String {
    DONE_FUNCTION.replace("QUANTILES", &QUANTILES.to_string())
}

/// Writes a wrk script that sends `request` with a body taken in turn from the lines of
/// `bodies`, one line per request, in place of `request.body`.
pub fn write_rotating_script(path: &Path, request: &Request, bodies: &Path) -> anyhow::Result<()> {
    let request = Request {
        body: None,
        ..request.clone()
    };
    let mut script = request_settings(&request)?;
    // The requests are formatted once in `init`, so each request costs wrk one table read.
    writeln!(
        script,
        r#"local requests = {{}}
local next_index = 0
init = function(args)
  for line in io.lines({}) do
    requests[#requests + 1] = wrk.format(nil, nil, nil, line)
  end
end
request = function()
  next_index = next_index % #requests + 1
  return requests[next_index]
end"#,
        lua_string(&bodies.display().to_string())
    )?;
    script.push_str(&done_function());
    std::fs::write(path, script).with_context(|| format!("could not write {}", path.display()))
}

/// Writes the Lua lines that set wrk's method, headers and body to those of `request`.
fn request_settings(request: &Request) -> anyhow::Result<String> {
    let mut script = String::new();
    writeln!(script, "wrk.method = {}", lua_string(request.method))?;
    for (name, value) in &request.headers {
        let (name, value) = (lua_string(name), lua_string(value));
        writeln!(script, "wrk.headers[{name}] = {value}")?;
    }
    if let Some(body) = &request.body {
        writeln!(script, "wrk.body = {}", lua_string(body))?;
    }
    Ok(script)
}

/// Quotes `text` as a Lua string literal.
fn lua_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for byte in text.bytes() {
        match byte {
            b'"' | b'\\' => {
                quoted.push('\\');
                quoted.push(char::from(byte));
            }
            0x20..=0x7e => quoted.push(char::from(byte)),
            _ => {
                let _ = write!(quoted, "\\{byte:03}");
            }
        }
    }
    quoted.push('"');
    quoted
}

/// How to run wrk: one thread with `connections` keep-alive connections, each with one
/// request in flight, optionally pinned to `cpus`.
#[derive(Clone, Debug)]
pub struct Wrk {
    pub connections: usize,
    pub cpus: Option<String>,
}

impl Wrk {
    /// Runs `script` against `url` for `duration` (whole seconds) and returns wrk's counts.
    pub async fn run(&self, url: &str, script: &Path, duration: Duration) -> anyhow::Result<Load> {
        ensure!(
            duration.as_secs() >= 1,
            "a wrk run lasts at least 1 s, not {duration:?}"
        );
        let output = pinned_command(Path::new("wrk"), self.cpus.as_deref())
            .args(["--threads", "1", "--timeout", "5s"])
            .arg("--connections")
            .arg(self.connections.to_string())
            .arg("--duration")
            .arg(format!("{}s", duration.as_secs()))
            .arg("--script")
            .arg(script)
            .arg(url)
            .output()
            .await
            .context("could not run wrk; install it (Debian: apt-get install wrk)")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "wrk failed with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Load::parse(&stdout)
    }
}

/// What wrk counted in one or more runs.
#[derive(Clone, Debug, Default)]
pub struct Load {
    /// Complete responses, whatever their status.
    pub requests: u64,
    /// Time under load, summed over the runs.
    pub elapsed: Duration,
    /// Connect, read and write errors and timeouts.
    pub socket_errors: u64,
    /// Responses with a status other than 2xx or 3xx.
    pub error_statuses: u64,
    /// Latencies in whole microseconds, from sending a request to the end of its response,
    /// each with the number of responses it stands for.
    latencies: Vec<(u64, f64)>,
}

impl Load {
    /// Parses the lines that the scripts' `done` function prints.
    fn parse(stdout: &str) -> anyhow::Result<Self> {
        let summary = stdout
            .lines()
            .find_map(|line| line.strip_prefix(SUMMARY_MARK))
            .context("wrk printed no summary: the script's done function did not run")?;
        let numbers: Vec<u64> = summary
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .context("invalid wrk summary")?;
        let [requests, micros, connect, read, write, status, timeout] = numbers[..] else {
            bail!(
                "invalid wrk summary: expected 7 numbers, found {}",
                numbers.len()
            );
        };

        let quantiles: Vec<u64> = stdout
            .lines()
            .find_map(|line| line.strip_prefix(LATENCY_MARK))
            .context("wrk printed no latency quantiles")?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .context("invalid latency quantile")?;
        let weight = requests as f64 / quantiles.len().max(1) as f64;
        let latencies = quantiles
            .into_iter()
            .map(|micros| (micros, weight))
            .collect();

        Ok(Self {
            requests,
            elapsed: Duration::from_micros(micros),
            socket_errors: connect + read + write + timeout,
            error_statuses: status,
            latencies,
        })
    }

    /// Adds the counts of another run.
    pub fn merge(&mut self, other: &Load) {
        self.requests += other.requests;
        self.elapsed += other.elapsed;
        self.socket_errors += other.socket_errors;
        self.error_statuses += other.error_statuses;
        self.latencies.extend_from_slice(&other.latencies);
    }

    /// Returns complete responses per second.
    pub fn throughput(&self) -> f64 {
        if self.elapsed.is_zero() {
            return 0.0;
        }
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// Returns the `q`-quantile (0.0 to 1.0) of the latencies of every merged run, each
    /// run's quantiles weighted by its number of responses.
    pub fn latency_quantile(&self, q: f64) -> Duration {
        let mut latencies = self.latencies.clone();
        latencies.sort_unstable_by_key(|(micros, _)| *micros);
        let total: f64 = latencies.iter().map(|(_, weight)| weight).sum();
        let mut seen = 0.0;
        for (micros, weight) in &latencies {
            seen += weight;
            if seen >= q * total {
                return Duration::from_micros(*micros);
            }
        }
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lua_string_escapes_quotes_and_controls() {
        assert_eq!(lua_string("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(lua_string("{\"key\": 1}\n"), r#""{\"key\": 1}\010""#);
    }

    #[test]
    fn load_parses_done_output() {
        let stdout = "Running 2s test\nvalet-bench-summary 10 2000000 0 1 0 2 0\n\
                      valet-bench-latency 100 100 150 150 900\n";
        let load = Load::parse(stdout).unwrap();
        assert_eq!(load.requests, 10);
        assert_eq!(load.elapsed, Duration::from_secs(2));
        assert_eq!(load.socket_errors, 1);
        assert_eq!(load.error_statuses, 2);
        assert_eq!(load.throughput(), 5.0);
        assert_eq!(load.latency_quantile(0.4), Duration::from_micros(100));
        assert_eq!(load.latency_quantile(0.5), Duration::from_micros(150));
        assert_eq!(load.latency_quantile(0.99), Duration::from_micros(900));
    }

    #[test]
    fn load_merge_weighs_runs_by_responses() {
        let mut total =
            Load::parse("valet-bench-summary 3 1000000 0 0 0 0 0\nvalet-bench-latency 5\n")
                .unwrap();
        let other = "valet-bench-summary 1 1000000 0 0 0 0 0\nvalet-bench-latency 7\n";
        total.merge(&Load::parse(other).unwrap());
        assert_eq!(total.requests, 4);
        assert_eq!(total.throughput(), 2.0);
        assert_eq!(total.latency_quantile(0.75), Duration::from_micros(5));
        assert_eq!(total.latency_quantile(0.76), Duration::from_micros(7));
        assert!(Load::parse("no marks").is_err());
    }
}
