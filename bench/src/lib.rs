//! Shared pieces of the benchmarks: `valet serve` processes on loopback, percentiles, the
//! machine's description, and (in submodules) wrk runs and `/metrics` snapshots.

pub mod prometheus;
pub mod rounds;
pub mod wrk;

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// A `valet serve` process on a loopback port, killed when dropped.
pub struct ServerProcess {
    child: Child,
    pid: u32,
    pub address: String,
    stdout: PathBuf,
}

/// How [`ServerProcess::start_with`] runs `valet serve`.
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// CPUs for `taskset -c`, such as `1`; `None` lets the server run on every CPU.
    pub cpus: Option<String>,
    /// The `VALET_LOG` filter; `None` removes `VALET_LOG`, so the server's default applies.
    pub log_filter: Option<String>,
}

impl ServerProcess {
    /// Starts `binary serve` on `database_url` and `port`, logging warnings only, with output
    /// in `work_dir`, and waits up to 10 seconds for `/healthz`.
    pub async fn start(
        binary: &Path,
        database_url: &str,
        port: u16,
        work_dir: &Path,
    ) -> anyhow::Result<Self> {
        let options = ServeOptions {
            cpus: None,
            log_filter: Some("warn".to_owned()),
        };
        Self::start_with(binary, database_url, port, work_dir, &options).await
    }

    /// Starts `binary serve` as [`ServerProcess::start`] does, with the CPUs and log filter
    /// of `options`.
    pub async fn start_with(
        binary: &Path,
        database_url: &str,
        port: u16,
        work_dir: &Path,
        options: &ServeOptions,
    ) -> anyhow::Result<Self> {
        let stdout = work_dir.join(format!("serve-{port}.stdout"));
        let stderr = work_dir.join(format!("serve-{port}.stderr"));
        let mut command = pinned_command(binary, options.cpus.as_deref());
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("VALET_DATABASE_URL", database_url)
            // The benchmarks send forged keys from one loopback address on purpose, and
            // throttling would answer them, and every later request, with 429.
            .env("VALET_MAX_FAILURES_PER_ADDRESS", "0")
            .env("VALET_MAX_FAILURES_PER_KEY", "0");
        match &options.log_filter {
            Some(filter) => command.env("VALET_LOG", filter),
            None => command.env_remove("VALET_LOG"),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout)?)
            .stderr(std::fs::File::create(&stderr)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("could not start {}", binary.display()))?;
        let pid = child.id().context("the server exited at once")?;
        let server = Self {
            child,
            pid,
            address: format!("http://127.0.0.1:{port}"),
            stdout,
        };

        let client = loopback_client()?;
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

    /// Returns the process id. Under `taskset`, which replaces itself with the server, it is
    /// the server's own.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Reads the resident memory (`VmRSS`) of the process from `/proc`, in KiB.
    pub fn resident_memory_kib(&self) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.pid);
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("could not read {path}"))?;
        text.lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .with_context(|| format!("no VmRSS line in {path}"))
    }

    /// Fetches and parses the server's `/metrics`.
    pub async fn metrics(&self, client: &reqwest::Client) -> anyhow::Result<prometheus::Snapshot> {
        prometheus::Snapshot::fetch(client, &self.address).await
    }

    /// Waits up to `timeout` until `valet_cache_trusted` is 1, that is until the change feed
    /// has loaded every key id and the cache may answer.
    pub async fn wait_for_trusted_cache(
        &self,
        client: &reqwest::Client,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.metrics(client).await?.value("valet_cache_trusted") == 1.0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the cache of {} was not trusted within {timeout:?}",
                    self.address
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the process at once.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Builds the command that runs `program`, under `taskset -c CPUS` when `cpus` is set.
pub fn pinned_command(program: &Path, cpus: Option<&str>) -> Command {
    let Some(cpus) = cpus else {
        return Command::new(program);
    };
    let mut command = Command::new("taskset");
    command.args(["-c", cpus]).arg(program);
    command
}

/// Builds an HTTP/1.1 client that keeps one idle connection and never uses a proxy, so
/// requests go straight to the loopback server whatever the environment's proxy settings.
pub fn loopback_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(10))
        .build()?)
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

/// Describes the machine: logical cores, memory and CPU model.
///
/// [`machine`] counts the cores this process may use, which under `taskset -c 0` is one, so
/// the cores here are counted in `/proc/cpuinfo` and only the memory is taken from
/// `machine`.
pub fn machine_summary() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cores = cpuinfo
        .lines()
        .filter(|line| line.starts_with("processor"))
        .count();
    let model = cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map_or("unknown CPU model", |(_, model)| model.trim());
    let memory = machine();
    let memory = memory
        .split_once(", ")
        .map_or(memory.as_str(), |(_, memory)| memory);
    format!("{cores} cores, {memory}, {model}")
}

/// Creates `path` readable by its owner only, for work directories whose wrk scripts hold
/// keys.
pub fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .with_context(|| format!("could not create {}", path.display()))
}

/// Removes a work directory made by [`create_private_dir`]. After a failed run, the
/// servers' logs are copied out first; the rest goes in every case, because wrk scripts
/// hold keys.
pub fn remove_work_dir(work_dir: &Path, failed: bool) {
    if failed {
        keep_logs(work_dir);
    }
    let _ = std::fs::remove_dir_all(work_dir);
}

/// Copies the servers' standard error files, in the work directory or one level below it,
/// next to the work directory.
fn keep_logs(work_dir: &Path) {
    let kept = work_dir.with_extension("logs");
    if std::fs::create_dir_all(&kept).is_err() {
        return;
    }
    let mut folders = vec![work_dir.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(work_dir) {
        folders.extend(
            entries
                .flatten()
                .map(|entry| entry.path())
                .filter(|path| path.is_dir()),
        );
    }
    for folder in folders {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(".stderr") {
                let _ = std::fs::copy(entry.path(), kept.join(name));
            }
        }
    }
    eprintln!("server logs kept in {}", kept.display());
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
