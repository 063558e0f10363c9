//! Shared pieces of the benchmarks: `valet serve` processes on loopback and percentiles.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// A `valet serve` process on a loopback port, killed when dropped.
pub struct ServerProcess {
    child: Child,
    pub address: String,
    stdout: PathBuf,
}

impl ServerProcess {
    /// Starts `binary serve` on `database_url` and `port`, with output in `work_dir`, and
    /// waits up to 10 seconds for `/healthz`.
    pub async fn start(
        binary: &Path,
        database_url: &str,
        port: u16,
        work_dir: &Path,
    ) -> anyhow::Result<Self> {
        let stdout = work_dir.join(format!("serve-{port}.stdout"));
        let stderr = work_dir.join(format!("serve-{port}.stderr"));
        let child = Command::new(binary)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("VALET_DATABASE_URL", database_url)
            .env("VALET_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout)?)
            .stderr(std::fs::File::create(&stderr)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("could not start {}", binary.display()))?;
        let server = Self {
            child,
            address: format!("http://127.0.0.1:{port}"),
            stdout,
        };

        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let healthy = client
                .get(format!("{}/healthz", server.address))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if healthy {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!("{} did not become healthy within 10 s", server.address);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Returns the bootstrap admin key that the server printed, if it printed one.
    pub fn bootstrap_key(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.stdout).ok()?;
        text.split_whitespace()
            .find(|word| word.starts_with("vk_live_"))
            .map(str::to_owned)
    }

    /// Returns the process id, while the process runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops the process at once.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Returns a loopback port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Returns the `q`-quantile (0.0 to 1.0) of `sorted` by the nearest-rank method.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Describes this machine: logical cores and total memory, from `/proc/meminfo`.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("MemTotal:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .unwrap_or(0);
    format!(
        "{cores} cores, {:.1} GiB memory",
        memory_kib as f64 / 1_048_576.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_uses_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&sorted, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&sorted, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&sorted, 1.0), Duration::from_millis(100));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }
}
