//! A private RabbitMQ cluster: three [`RabbitNode`]s of the installed server sharing an Erlang
//! cookie of their own, joined with `rabbitmqctl join_cluster`.
//!
//! Two lives: `scripts/cluster up` (`oprun-lab cluster up`) keeps one in a fixed folder on fixed
//! ports until `down` ([`PrivateCluster::up`]); a chaos run that finds none starts one of its own
//! in a temporary folder on free ports, removed when dropped ([`PrivateCluster::start_temporary`]).
//!
//! The folder holds `nodes` (one line per node: name, AMQP port, distribution port), `cookie`,
//! and a folder per node (see [`super::node`]) with a `joined` marker once it is a member.

use std::path::{Path, PathBuf};

use futures_util::future::join_all;

use super::node::{NodeSpec, RabbitNode};
use super::{free_port, temp_folder};
use crate::LabError;

/// Nodes in a cluster: a quorum queue on three survives the loss of one.
pub const NODES: usize = 3;
/// The first node's AMQP port of `scripts/cluster up`; the others follow (5791, 5792, 5793),
/// away from the machine's own 5672.
pub const DEFAULT_AMQP_PORT: u16 = 5791;
/// A node's distribution port is its AMQP port plus this (25791..25793): clear of the machine's
/// node (25672) and of the CLI tools' range (35672..35682).
const DIST_PORT_OFFSET: u16 = 20_000;

/// The folder of `scripts/cluster up`: `oprun-cluster` under the system's temporary directory.
pub fn default_dir() -> PathBuf {
    std::env::temp_dir().join("oprun-cluster")
}

/// Three RabbitMQ nodes forming one cluster.
#[derive(Debug)]
pub struct PrivateCluster {
    dir: PathBuf,
    nodes: Vec<RabbitNode>,
    /// Stop the nodes and remove the folder when dropped (a run's own cluster).
    temporary: bool,
}

impl PrivateCluster {
    /// Brings the cluster in `dir` up: creates it (ports from `first_amqp_port`, a new cookie)
    /// if the folder holds none, starts whichever nodes are not running, joins the ones not
    /// yet members to the first. Idempotent: a running cluster is left as it is.
    pub async fn up(dir: &Path, first_amqp_port: u16, settings: &str) -> Result<Self, LabError> {
        let cluster = match Self::open(dir)? {
            Some(cluster) => cluster,
            None => {
                let ports = (0..NODES as u16)
                    .map(|i| {
                        let amqp = first_amqp_port.checked_add(i).ok_or_else(|| {
                            LabError::Invalid(format!("--base-port {first_amqp_port} too high"))
                        })?;
                        let dist = amqp.checked_add(DIST_PORT_OFFSET).ok_or_else(|| {
                            LabError::Invalid(format!("--base-port {first_amqp_port} too high"))
                        })?;
                        Ok((amqp, dist))
                    })
                    .collect::<Result<Vec<_>, LabError>>()?;
                Self::create(dir, "oprunc", &ports, false)?
            }
        };
        cluster.start_all(settings).await?;
        Ok(cluster)
    }

    /// A cluster of a run's own: a temporary folder, free ports; removed when dropped.
    pub async fn start_temporary(settings: &str) -> Result<Self, LabError> {
        let dir = temp_folder("oprun-lab-cluster-")?;
        let suffix = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.rsplit('-').next())
            .unwrap_or("x")
            .to_owned();
        let mut taken = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..NODES {
            let mut pick = || loop {
                match free_port() {
                    Ok(p) if taken.contains(&p) => continue,
                    Ok(p) => {
                        taken.push(p);
                        return Ok(p);
                    }
                    Err(e) => return Err(e),
                }
            };
            ports.push((pick()?, pick()?));
        }
        let cluster = Self::create(&dir, &format!("oprunc{suffix}n"), &ports, true)?;
        cluster.start_all(settings).await?;
        Ok(cluster)
    }

    /// The cluster described in `dir`, if there is one (running or not).
    pub fn open(dir: &Path) -> Result<Option<Self>, LabError> {
        let Ok(listing) = std::fs::read_to_string(dir.join("nodes")) else {
            return Ok(None);
        };
        let cookie = std::fs::read_to_string(dir.join("cookie"))?
            .trim()
            .to_owned();
        let nodes = listing
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let bad = || LabError::Failed(format!("{}: bad line {line:?}", dir.display()));
                let [node, amqp, dist] = fields[..] else {
                    return Err(bad());
                };
                let short = node.split('@').next().unwrap_or(node);
                Ok(RabbitNode::new(NodeSpec {
                    dir: dir.join(short),
                    node: node.to_owned(),
                    amqp_port: amqp.parse().map_err(|_| bad())?,
                    dist_port: dist.parse().map_err(|_| bad())?,
                    cookie: Some(cookie.clone()),
                }))
            })
            .collect::<Result<Vec<_>, LabError>>()?;
        Ok(Some(Self {
            dir: dir.to_owned(),
            nodes,
            temporary: false,
        }))
    }

    fn create(
        dir: &Path,
        prefix: &str,
        ports: &[(u16, u16)],
        temporary: bool,
    ) -> Result<Self, LabError> {
        std::fs::create_dir_all(dir)?;
        let cookie = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
        std::fs::write(dir.join("cookie"), &cookie)?;
        let nodes: Vec<RabbitNode> = ports
            .iter()
            .enumerate()
            .map(|(i, &(amqp_port, dist_port))| {
                let short = format!("{prefix}{}", i + 1);
                RabbitNode::new(NodeSpec {
                    dir: dir.join(&short),
                    node: format!("{short}@localhost"),
                    amqp_port,
                    dist_port,
                    cookie: Some(cookie.clone()),
                })
            })
            .collect();
        let listing: String = nodes
            .iter()
            .zip(ports)
            .map(|(n, (amqp, dist))| format!("{} {amqp} {dist}\n", n.name()))
            .collect();
        std::fs::write(dir.join("nodes"), listing)?;
        Ok(Self {
            dir: dir.to_owned(),
            nodes,
            temporary,
        })
    }

    /// Starts the nodes not running (the first before the others, which join it once).
    async fn start_all(&self, settings: &str) -> Result<(), LabError> {
        let (first, others) = self.nodes.split_first().expect("three nodes");
        start_node(first, settings).await?;
        for started in join_all(others.iter().map(|n| start_node(n, settings))).await {
            started?;
        }
        for node in others {
            let marker = node.dir().join("joined");
            if marker.exists() {
                continue;
            }
            eprintln!("cluster: joining {} to {}", node.name(), first.name());
            node.ctl(&["stop_app"]).await?;
            node.ctl(&["join_cluster", first.name()]).await?;
            node.ctl(&["start_app"]).await?;
            node.await_startup().await?;
            std::fs::write(marker, "")?;
        }
        Ok(())
    }

    /// Stops every node and removes the folder.
    pub fn down(mut self) {
        self.stop_and_remove();
        self.temporary = false;
    }

    fn stop_and_remove(&self) {
        for node in &self.nodes {
            node.shutdown_blocking();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// The nodes, in order.
    pub fn nodes(&self) -> &[RabbitNode] {
        &self.nodes
    }

    /// Every node's AMQP URL, in order.
    pub fn amqp_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RabbitNode::amqp_url).collect()
    }

    /// Its folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `rabbitmqctl args…` on the first node that answers.
    pub async fn ctl_any(&self, args: &[&str]) -> Result<String, LabError> {
        let mut last = LabError::Failed("the cluster has no nodes".into());
        for node in &self.nodes {
            match node.ctl(args).await {
                Ok(out) => return Ok(out),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The index of the node leading quorum queue `queue` (vhost `/`), asked of any node.
    pub async fn leader_of(&self, queue: &str) -> Result<usize, LabError> {
        let listing = self
            .ctl_any(&[
                "list_queues",
                "name",
                "leader",
                "--quiet",
                "--no-table-headers",
            ])
            .await?;
        let leader = parse_leader(&listing, queue).ok_or_else(|| {
            LabError::Failed(format!("no leader listed for queue {queue}: {listing:?}"))
        })?;
        self.nodes
            .iter()
            .position(|n| n.name() == leader)
            .ok_or_else(|| {
                LabError::Failed(format!(
                    "{queue} is led by {leader}, not a node of this cluster"
                ))
            })
    }

    /// One line per node (name, URL, running or not) and the members the cluster reports.
    pub async fn status(&self) -> String {
        let mut lines = Vec::new();
        for node in &self.nodes {
            let state = if node.is_running().await {
                "running"
            } else {
                "not running"
            };
            lines.push(format!("{} {} {state}", node.name(), node.amqp_url()));
        }
        match self
            .ctl_any(&["cluster_status", "--formatter", "json"])
            .await
        {
            Ok(json) => match members(&json) {
                Some((disk, running)) => {
                    lines.push(format!("members: {}", disk.join(" ")));
                    lines.push(format!("running: {}", running.join(" ")));
                }
                None => lines.push(format!("cluster_status: {}", json.trim())),
            },
            Err(e) => lines.push(format!("cluster_status: {e}")),
        }
        lines.join("\n")
    }
}

/// Starts `node` unless it runs, writing its files first if it has none.
async fn start_node(node: &RabbitNode, settings: &str) -> Result<(), LabError> {
    if node.is_running().await {
        return Ok(());
    }
    if !node.dir().join("rabbitmq.conf").exists() {
        node.prepare(settings).await?;
    }
    eprintln!("cluster: starting {}", node.name());
    node.launch().await
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if self.temporary {
            self.stop_and_remove();
        }
    }
}

/// The leader of `queue` in `rabbitmqctl list_queues name leader` output (tab-separated).
fn parse_leader<'a>(listing: &'a str, queue: &str) -> Option<&'a str> {
    listing.lines().find_map(|line| {
        let mut fields = line.split('\t');
        (fields.next()? == queue).then_some(())?;
        fields.next().map(str::trim).filter(|l| !l.is_empty())
    })
}

/// The disc nodes and running nodes of `rabbitmqctl cluster_status --formatter json`.
fn members(json: &str) -> Option<(Vec<String>, Vec<String>)> {
    let value: serde_json::Value = serde_json::from_str(json.trim()).ok()?;
    let names = |key: &str| -> Option<Vec<String>> {
        Some(
            value
                .get(key)?
                .as_array()?
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
        )
    };
    Some((names("disk_nodes")?, names("running_nodes")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_is_read_from_the_listing() {
        let listing =
            "a.commands\toprunc2@localhost\na.commands.dlq\toprunc1@localhost\nclassic\t\n";
        assert_eq!(
            parse_leader(listing, "a.commands"),
            Some("oprunc2@localhost")
        );
        assert_eq!(
            parse_leader(listing, "a.commands.dlq"),
            Some("oprunc1@localhost")
        );
        assert_eq!(parse_leader(listing, "classic"), None);
        assert_eq!(parse_leader(listing, "missing"), None);
    }

    #[test]
    fn members_are_read_from_cluster_status() {
        let json = r#"{"disk_nodes":["a@localhost","b@localhost"],"running_nodes":["a@localhost"],"ram_nodes":[]}"#;
        assert_eq!(
            members(json),
            Some((
                vec!["a@localhost".to_owned(), "b@localhost".to_owned()],
                vec!["a@localhost".to_owned()]
            ))
        );
    }
}
