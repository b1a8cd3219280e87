//! The service under test: `oprun serve` child processes (this very binary), each with its own
//! log file. A primary instance runs throughout (killed and restarted); a second one joins for
//! a stretch. An instance that exits without being killed is a finding, not a fault.
//!
//! Jobs are handed off (an executor queue takes them all, see [`crate::sandbox`]), and each role
//! serves `/metrics` on a port of its own, the same across restarts; with the `viewers` or the
//! `operator-actions` injection the primary also serves the run viewer and its API on a port of
//! its own, its tokens signed with a secret the run passes in the environment (never on the
//! command line).

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};

/// `serve` without the reaper (a run waiting for its progress is not stale here); the
/// `--metrics-addr` and `--http-addr` of each role and [`ServeOptions::extra_args`] are added.
const SERVE_ARGS: [&str; 3] = ["serve", "--reaper-interval", "0s"];

/// What the injections change in every `serve` of the run.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Flags added to every instance (the `retention` injection's windows).
    pub extra_args: Vec<String>,
    /// With the `viewers` or `operator-actions` injection: the primary serves the run viewer,
    /// its tokens signed with this secret (`OPRUN_API_SECRET`). The second instance never does
    /// (one viewer to read and act through).
    pub api_secret: Option<String>,
}

/// Which instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Runs from start to end, restarted after each kill.
    Primary,
    /// Runs for a stretch beside the primary.
    Second,
}

struct Instance {
    child: Child,
    name: String,
}

/// The running instances.
pub struct Fleet {
    exe: PathBuf,
    env: Vec<(&'static str, String)>,
    /// The second instance's `AMQP_URL`: the same nodes, starting with the second, so on a
    /// cluster the two instances consume through different nodes.
    second_amqp_url: String,
    log_dir: PathBuf,
    primary: Option<Instance>,
    second: Option<Instance>,
    metrics: [SocketAddr; 2],
    /// The primary's run viewer, when on.
    viewer: Option<SocketAddr>,
    extra_args: Vec<String>,
    started: u32,
    /// SIGKILLs sent.
    pub kills: u32,
    /// Instances that exited on their own: `name: status`.
    pub unexpected_exits: Vec<String>,
}

impl Fleet {
    /// A fleet of `exe serve` against `database_url`, `amqp_url` and `namespace`, logging to
    /// files in `log_dir`, as `options` say; each role's `/metrics` port (and the primary's
    /// viewer port) is one the system has free now.
    pub fn new(
        exe: PathBuf,
        database_url: &str,
        amqp_url: &str,
        namespace: &str,
        log_dir: &Path,
        options: ServeOptions,
    ) -> std::io::Result<Self> {
        // All held at once, so the ports differ.
        let listeners = [
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?,
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?,
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?,
        ];
        let metrics = [listeners[0].local_addr()?, listeners[1].local_addr()?];
        let viewer = match options.api_secret {
            Some(_) => Some(listeners[2].local_addr()?),
            None => None,
        };
        let mut env = vec![
            ("DATABASE_URL", database_url.to_owned()),
            ("AMQP_URL", amqp_url.to_owned()),
            ("OPRUN_NAMESPACE", namespace.to_owned()),
            ("OPRUN_LOG", "warn".to_owned()),
        ];
        if let Some(secret) = options.api_secret {
            env.push(("OPRUN_API_SECRET", secret));
        }
        let mut nodes: Vec<&str> = amqp_url.split(',').collect();
        let first = 1.min(nodes.len());
        nodes.rotate_left(first);
        Ok(Self {
            second_amqp_url: nodes.join(","),
            exe,
            env,
            log_dir: log_dir.to_owned(),
            primary: None,
            second: None,
            metrics,
            viewer,
            extra_args: options.extra_args,
            started: 0,
            kills: 0,
            unexpected_exits: Vec::new(),
        })
    }

    /// The `/metrics` address of `role`'s instances.
    pub fn metrics_addr(&self, role: Role) -> SocketAddr {
        match role {
            Role::Primary => self.metrics[0],
            Role::Second => self.metrics[1],
        }
    }

    /// The primary's run viewer, when it serves one (the same across restarts).
    pub fn viewer_addr(&self) -> Option<SocketAddr> {
        self.viewer
    }

    /// Starts the instance of `role` (if it is not running); returns its name.
    pub fn start(&mut self, role: Role) -> std::io::Result<String> {
        if let Some(running) = self.slot(role) {
            return Ok(running.name.clone());
        }
        self.started += 1;
        let name = format!(
            "{}-{}",
            match role {
                Role::Primary => "primary",
                Role::Second => "second",
            },
            self.started
        );
        let log = File::create(self.log_dir.join(format!("{name}.log")))?;
        let http_addr = match (role, self.viewer) {
            (Role::Primary, Some(addr)) => addr.to_string(),
            _ => "off".to_owned(),
        };
        let child = Command::new(&self.exe)
            .args(SERVE_ARGS)
            .arg("--metrics-addr")
            .arg(self.metrics_addr(role).to_string())
            .arg("--http-addr")
            .arg(http_addr)
            .args(&self.extra_args)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .envs((role == Role::Second).then_some(("AMQP_URL", self.second_amqp_url.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // If this run dies, its instances must not outlive it.
            .kill_on_drop(true)
            .spawn()?;
        let instance = Instance {
            child,
            name: name.clone(),
        };
        match role {
            Role::Primary => self.primary = Some(instance),
            Role::Second => self.second = Some(instance),
        }
        Ok(name)
    }

    /// SIGKILLs the instance of `role` and waits for it; its name, or `None` if none ran.
    pub async fn kill(&mut self, role: Role) -> Option<String> {
        let mut instance = match role {
            Role::Primary => self.primary.take(),
            Role::Second => self.second.take(),
        }?;
        let _ = instance.child.start_kill();
        let _ = instance.child.wait().await;
        self.kills += 1;
        Some(instance.name)
    }

    /// Notices instances that exited on their own (recorded in `unexpected_exits`) and returns
    /// the roles that are no longer running.
    pub fn reap(&mut self) -> Vec<Role> {
        let mut gone = Vec::new();
        for role in [Role::Primary, Role::Second] {
            let slot = match role {
                Role::Primary => &mut self.primary,
                Role::Second => &mut self.second,
            };
            let Some(instance) = slot else { continue };
            if let Ok(Some(status)) = instance.child.try_wait() {
                self.unexpected_exits
                    .push(format!("{} exited by itself: {status}", instance.name));
                *slot = None;
                gone.push(role);
            }
        }
        gone
    }

    /// Stops every instance (SIGKILL; not counted as a fault).
    pub async fn stop_all(&mut self) {
        for mut instance in [self.primary.take(), self.second.take()]
            .into_iter()
            .flatten()
        {
            let _ = instance.child.start_kill();
            let _ = instance.child.wait().await;
        }
    }

    fn slot(&self, role: Role) -> Option<&Instance> {
        match role {
            Role::Primary => self.primary.as_ref(),
            Role::Second => self.second.as_ref(),
        }
    }
}
