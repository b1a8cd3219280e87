//! The local RabbitMQ and PostgreSQL, as far as a chaos run restarts them. Whichever it took
//! down and has not seen back up, it starts again when dropped, so no run leaves them down
//! (error, panic, interrupt).

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::process::Command;

/// How long one `rabbitmqctl`, `pg_ctlcluster` or `pg_isready` call may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// The local RabbitMQ and PostgreSQL, as far as restarting them goes. Whichever it took down
/// and has not seen back up, it starts again when dropped, so no run leaves them down.
#[derive(Debug)]
pub struct Infra {
    pg_version: String,
    broker_down: AtomicBool,
    database_down: AtomicBool,
}

impl Infra {
    /// The local services; the PostgreSQL version is read from `/etc/postgresql`.
    pub fn detect() -> Self {
        let pg_version = std::fs::read_dir("/etc/postgresql")
            .ok()
            .and_then(|dir| {
                dir.filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok())
                    .max()
            })
            .unwrap_or_else(|| "15".to_owned());
        Self {
            pg_version,
            broker_down: AtomicBool::new(false),
            database_down: AtomicBool::new(false),
        }
    }

    /// `rabbitmqctl stop_app`, `down_for`, `start_app`, `await_startup`.
    pub async fn restart_broker(&self, down_for: Duration) -> Result<(), String> {
        self.broker_down.store(true, Ordering::SeqCst);
        run_tool("rabbitmqctl", &["stop_app"]).await?;
        tokio::time::sleep(down_for).await;
        self.start_broker().await
    }

    /// Stops PostgreSQL (fast: sessions are cut), `down_for`, starts it and waits until it
    /// accepts connections.
    pub async fn restart_database(&self, down_for: Duration) -> Result<(), String> {
        self.database_down.store(true, Ordering::SeqCst);
        run_tool("pg_ctlcluster", &self.pg_args("stop")).await?;
        tokio::time::sleep(down_for).await;
        self.start_database().await
    }

    /// Starts whatever this run took down and checks that both accept connections.
    pub async fn ensure_up(&self) -> Result<(), String> {
        if self.broker_down.load(Ordering::SeqCst) {
            self.start_broker().await?;
        }
        if self.database_down.load(Ordering::SeqCst) {
            self.start_database().await?;
        }
        run_tool("rabbitmqctl", &["await_startup", "--timeout", "60"]).await?;
        run_tool("pg_isready", &["-q", "-h", "127.0.0.1", "-t", "60"]).await
    }

    /// Restarts the broker app if it has lost `rabbit_fifo_dlx_sup`, the supervisor of quorum
    /// queues' at-least-once dead-lettering; true when it had to.
    ///
    /// RabbitMQ 3.10 loses it for good when such a queue is deleted while the app starts (its
    /// workers crash, the supervisor reaches its restart limit and stops): from then on every
    /// declaration of such a queue (`N.commands`) fails with `INTERNAL_ERROR` until the app
    /// restarts. A broker restart of this run, or of someone else's, can be what sets it off.
    /// `None` when the broker cannot be asked.
    pub async fn heal_broker(&self) -> Option<Result<bool, String>> {
        let alive = tool_output(
            "rabbitmqctl",
            &["eval", "is_pid(whereis(rabbit_fifo_dlx_sup))."],
        )
        .await
        .ok()?;
        if alive.trim() == "true" {
            return Some(Ok(false));
        }
        eprintln!(
            "chaos: RabbitMQ has lost rabbit_fifo_dlx_sup (quorum queues with at-least-once \
             dead-lettering cannot be declared): restarting its app"
        );
        Some(self.restart_broker(Duration::ZERO).await.map(|()| true))
    }

    /// The broker's `max_message_size` in bytes, `None` when it cannot be asked.
    pub async fn max_message_size(&self) -> Option<u64> {
        let answer = tool_output(
            "rabbitmqctl",
            &["eval", "application:get_env(rabbit, max_message_size)."],
        )
        .await
        .ok()?;
        parse_env_integer(&answer)
    }

    async fn start_broker(&self) -> Result<(), String> {
        run_tool("rabbitmqctl", &["start_app"]).await?;
        run_tool("rabbitmqctl", &["await_startup", "--timeout", "60"]).await?;
        self.broker_down.store(false, Ordering::SeqCst);
        Ok(())
    }

    async fn start_database(&self) -> Result<(), String> {
        run_tool("pg_ctlcluster", &self.pg_args("start")).await?;
        run_tool("pg_isready", &["-q", "-h", "127.0.0.1", "-t", "60"]).await?;
        self.database_down.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn pg_args<'a>(&'a self, action: &'a str) -> [&'a str; 4] {
        [
            "--skip-systemctl-redirect",
            &self.pg_version,
            "main",
            action,
        ]
    }
}

impl Drop for Infra {
    fn drop(&mut self) {
        // Last resort (an error or a panic skipped `ensure_up`): blocking is fine on the way out.
        let run = |program: &str, args: &[&str]| {
            let status = std::process::Command::new(program)
                .args(args)
                .stdout(Stdio::null())
                .status();
            eprintln!("chaos: cleanup: {program} {}: {status:?}", args.join(" "));
        };
        if self.broker_down.load(Ordering::SeqCst) {
            run("rabbitmqctl", &["start_app"]);
            run("rabbitmqctl", &["await_startup", "--timeout", "60"]);
        }
        if self.database_down.load(Ordering::SeqCst) {
            run("pg_ctlcluster", &self.pg_args("start"));
        }
    }
}

/// The integer of an Erlang `{ok,N}` answer.
fn parse_env_integer(answer: &str) -> Option<u64> {
    answer
        .trim()
        .strip_prefix("{ok,")?
        .strip_suffix('}')?
        .trim()
        .parse()
        .ok()
}

/// Runs an administration tool; its output only matters when it fails.
async fn run_tool(program: &str, args: &[&str]) -> Result<(), String> {
    tool_output(program, args).await.map(drop)
}

/// Runs an administration tool and returns what it printed.
async fn tool_output(program: &str, args: &[&str]) -> Result<String, String> {
    let what = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(TOOL_TIMEOUT, output).await {
        Err(_) => Err(format!("{what}: no answer within {TOOL_TIMEOUT:?}")),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Ok(Ok(out)) if out.status.success() => {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        Ok(Ok(out)) => Err(format!(
            "{what}: {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_brokers_answer_for_max_message_size_is_read() {
        assert_eq!(parse_env_integer("{ok,134217728}\n"), Some(134_217_728));
        assert_eq!(parse_env_integer("undefined\n"), None);
    }
}
