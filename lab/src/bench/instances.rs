//! The service under test: `oprun serve` as child processes of the `oprun` binary under test, so that its
//! memory and CPU are its own and measurable from `/proc`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::Channel;
use tokio::process::{Child, Command};

use crate::sandbox::Sandbox;
use crate::{LabError, OprunBinary};
use operation_runs::broker::Topology;
use operation_runs::config::Config;

/// How long the instances may take to start consuming.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long an instance may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Settings of `oprun serve` the bench passes through (same defaults as `serve`).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeTunables {
    /// Passed to `serve --prefetch`; the baseline consumer uses it too.
    #[arg(long, default_value_t = 500)]
    pub prefetch: u16,
    /// Passed to `serve --batch-size`.
    #[arg(long, default_value_t = 200)]
    pub batch_size: usize,
    /// Passed to `serve --batch-window`, in milliseconds.
    #[arg(long, default_value_t = 5)]
    pub batch_window_ms: u64,
    /// Passed to `serve --relay-batch`.
    #[arg(long, default_value_t = 500)]
    pub relay_batch: i64,
    /// Passed to `serve --db-connections`.
    #[arg(long, default_value_t = 8)]
    pub db_connections: u32,
    /// Passed to `serve --inbox-retention` (default: the service's own).
    #[arg(long)]
    pub inbox_retention: Option<String>,
    /// Passed to `serve --event-retention`.
    #[arg(long)]
    pub event_retention: Option<String>,
    /// Passed to `serve --job-retention`.
    #[arg(long)]
    pub job_retention: Option<String>,
    /// Passed to `serve --run-retention`.
    #[arg(long)]
    pub run_retention: Option<String>,
    /// Passed to `serve --prune-interval`.
    #[arg(long)]
    pub prune_interval: Option<String>,
}

impl ServeTunables {
    /// Short retention for a soak (where not set): 2 minutes for inbox rows, events and jobs,
    /// a pruning pass every 30 s.
    pub fn short_retention_for_soak(&mut self) {
        for (setting, short) in [
            (&mut self.inbox_retention, "2m"),
            (&mut self.event_retention, "2m"),
            (&mut self.job_retention, "2m"),
            (&mut self.prune_interval, "30s"),
        ] {
            setting.get_or_insert_with(|| short.to_owned());
        }
    }

    /// The retention flags to pass to `serve`.
    fn retention_args(&self) -> Vec<String> {
        [
            ("--inbox-retention", &self.inbox_retention),
            ("--event-retention", &self.event_retention),
            ("--job-retention", &self.job_retention),
            ("--run-retention", &self.run_retention),
            ("--prune-interval", &self.prune_interval),
        ]
        .into_iter()
        .filter_map(|(flag, value)| Some([flag.to_owned(), value.clone()?]))
        .flatten()
        .collect()
    }
}

/// What a phase adds to every `serve` of the bench's defaults.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    /// Flags added after the bench's own.
    pub args: Vec<String>,
    /// Serve the viewer and its API at this address, its tokens signed with this secret
    /// (`OPRUN_API_SECRET`, never on the command line); else `--http-addr off`.
    pub viewer: Option<(std::net::SocketAddr, String)>,
}

/// Running `oprun serve` processes.
pub struct Instances {
    children: Vec<Child>,
    metrics: Vec<std::net::SocketAddr>,
}

impl Instances {
    /// Starts `count` instances on the bench database and namespace and waits until each
    /// consumes the commands queue.
    pub async fn start(
        oprun: &OprunBinary,
        count: usize,
        config: &Config,
        sandbox: &Sandbox,
        tunables: &ServeTunables,
        channel: &Channel,
        extra: &Extra,
    ) -> Result<Self, LabError> {
        let http_addr = extra
            .viewer
            .as_ref()
            .map_or_else(|| "off".to_owned(), |(addr, _)| addr.to_string());
        let exe = oprun.path();
        let mut children = Vec::with_capacity(count);
        let mut metrics = Vec::with_capacity(count);
        for _ in 0..count {
            // Each instance's metrics on a port of its own: the bench reads the stage histograms.
            let metrics_addr =
                std::net::SocketAddr::from(([127, 0, 0, 1], crate::private::free_port()?));
            metrics.push(metrics_addr);
            let child = Command::new(exe)
                .arg("serve")
                .args(["--metrics-addr", &metrics_addr.to_string()])
                .args(["--http-addr", &http_addr])
                .args(["--hand-off-jobs", "false"])
                .args(["--reaper-interval", "0s"])
                .args(["--prefetch", &tunables.prefetch.to_string()])
                .args(["--batch-size", &tunables.batch_size.to_string()])
                .args(["--batch-window", &format!("{}ms", tunables.batch_window_ms)])
                .args(["--relay-batch", &tunables.relay_batch.to_string()])
                .args(["--db-connections", &tunables.db_connections.to_string()])
                .args(tunables.retention_args())
                .args(&extra.args)
                .envs(
                    extra
                        .viewer
                        .iter()
                        .map(|(_, secret)| ("OPRUN_API_SECRET", secret)),
                )
                .env("DATABASE_URL", &sandbox.database_url)
                .env("AMQP_URL", config.amqp_url_list())
                .env("OPRUN_NAMESPACE", sandbox.topology.namespace())
                .env("OPRUN_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()?;
            children.push(child);
        }
        let mut instances = Self { children, metrics };
        instances
            .wait_consuming(count as u32, &sandbox.topology, channel)
            .await?;
        Ok(instances)
    }

    async fn wait_consuming(
        &mut self,
        count: u32,
        topology: &Topology,
        channel: &Channel,
    ) -> Result<(), LabError> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            for child in &mut self.children {
                if let Some(status) = child.try_wait()? {
                    return Err(LabError::Invalid(format!(
                        "an oprun serve instance exited at start: {status}"
                    )));
                }
            }
            let queue = channel
                .queue_declare(
                    topology.commands_queue().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            if queue.consumer_count() >= count {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LabError::Invalid(format!(
                    "{} of {count} oprun serve instances consuming after {}s",
                    queue.consumer_count(),
                    START_DEADLINE.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Where each instance serves its metrics.
    pub fn metrics_addrs(&self) -> &[std::net::SocketAddr] {
        &self.metrics
    }

    /// The process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().filter_map(Child::id).collect()
    }

    /// Peak resident memory (`VmHWM`) of each instance so far, in MiB.
    pub fn peak_rss_mb(&self) -> Vec<f64> {
        self.pids()
            .into_iter()
            .map(|pid| vm_hwm_kib(pid).map_or(f64::NAN, |kib| kib as f64 / 1024.0))
            .collect()
    }

    /// SIGTERM, then SIGKILL after a grace period.
    pub async fn stop(mut self) {
        for pid in self.pids() {
            // No signal crate among the dependencies: the `kill` utility sends SIGTERM.
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        for child in &mut self.children {
            if tokio::time::timeout(STOP_GRACE, child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

impl Instances {
    /// Resident memory (`VmRSS`) of each instance now, in MiB.
    pub fn rss_mb(&self) -> Vec<f64> {
        self.pids()
            .into_iter()
            .map(|pid| status_kib(pid, "VmRSS:").map_or(f64::NAN, |kib| kib as f64 / 1024.0))
            .collect()
    }
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// A `kB` field of `/proc/PID/status`.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}
