//! `oprun-lab pg-ha up|down|status` (behind `scripts/pg-ha`): a local PostgreSQL HA pair,
//! pg_auto_failover's monitor and two data nodes with synchronous replication and automatic
//! failover ([`crate::private::PgHaPair`], decision 0093), beside the machine's own PostgreSQL,
//! which it never touches.

use std::path::PathBuf;
use std::time::Instant;

use crate::private::pg_ha::{default_dir, DEFAULT_PORT};
use crate::private::PgHaPair;
use crate::LabError;

/// Arguments of `oprun-lab pg-ha`.
#[derive(Debug, clap::Args)]
pub struct PgHaArgs {
    #[command(subcommand)]
    action: PgHaAction,
    /// The pair's folder (data directories, logs, pg_autoctl's state); default
    /// `$TMPDIR/oprun-pg-ha`.
    #[arg(long, env = "OPRUN_PG_HA_DIR", global = true)]
    dir: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum PgHaAction {
    /// Create (or start) the monitor and the two nodes and wait for a primary and a
    /// synchronous secondary; prints the nodes' state, then `DATABASE_URL=` in libpq's
    /// multi-host form.
    Up {
        /// The monitor's port; the nodes take the next two. Only read when the pair is created.
        #[arg(long, default_value_t = DEFAULT_PORT)]
        base_port: u16,
        /// The database of the printed URL.
        #[arg(long, default_value = "postgres")]
        database: String,
    },
    /// Stop the nodes and the monitor and remove the folder.
    Down,
    /// Each node's address and state, and which is primary.
    Status,
    /// A planned failover (`pg_autoctl perform failover`): prints how long until a primary
    /// and a secondary are back, and the new primary.
    Failover,
}

impl PgHaArgs {
    /// Runs the action.
    pub async fn run(self) -> Result<(), LabError> {
        let dir = self.dir.unwrap_or_else(default_dir);
        match self.action {
            PgHaAction::Up {
                base_port,
                database,
            } => {
                let started = Instant::now();
                let pair = PgHaPair::up(&dir, base_port).await?;
                println!("{}", pair.status().await?);
                eprintln!(
                    "pg-ha: up in {:.1} s ({})",
                    started.elapsed().as_secs_f64(),
                    dir.display()
                );
                println!("DATABASE_URL={}", pair.url(&database));
            }
            PgHaAction::Down => match PgHaPair::open(&dir)? {
                Some(pair) => {
                    pair.down().await?;
                    eprintln!("pg-ha: stopped and removed {}", dir.display());
                }
                None => eprintln!("pg-ha: none in {}", dir.display()),
            },
            PgHaAction::Status => println!("{}", opened(&dir)?.status().await?),
            PgHaAction::Failover => {
                let pair = opened(&dir)?;
                let before = pair.primary().await?;
                let started = Instant::now();
                let primary = pair.failover().await?;
                println!(
                    "failover: {} -> {} 127.0.0.1:{} in {:.1} s",
                    before.map_or_else(|| "none".to_owned(), |n| n.name),
                    primary.name,
                    primary.port,
                    started.elapsed().as_secs_f64()
                );
            }
        }
        Ok(())
    }
}

/// The pair in `dir`, or an error saying to bring one up.
fn opened(dir: &std::path::Path) -> Result<PgHaPair, LabError> {
    PgHaPair::open(dir)?
        .ok_or_else(|| LabError::Failed(format!("no pair in {} (scripts/pg-ha up)", dir.display())))
}
