//! A private PostgreSQL cluster: `initdb` and `pg_ctl` of the installed server, in a temporary
//! folder, on a free port, trust authentication for `postgres` on 127.0.0.1.

use std::path::PathBuf;
use std::time::Duration;

use super::{free_port, running_as_root, temp_folder, tool};
use crate::LabError;

/// A PostgreSQL cluster of the lab's own; stopped and removed when dropped.
#[derive(Debug)]
pub struct PrivateDatabase {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    user: Option<&'static str>,
}

impl PrivateDatabase {
    /// Creates the cluster with the newest installed server and starts it.
    pub async fn start() -> Result<Self, LabError> {
        let bin = newest_server_bin()?;
        let dir = temp_folder("oprun-lab-postgres-")?;
        let db = Self {
            dir,
            bin,
            port: free_port()?,
            user: running_as_root().then_some("postgres"),
        };
        if let Some(user) = db.user {
            tool::run(None, &[], "chown", &["-R", user, &db.path("")])
                .await
                .map_err(LabError::Failed)?;
        }
        db.tool(
            "initdb",
            &["-D", &db.path("data"), "-A", "trust", "-U", "postgres"],
        )
        .await?;
        db.start_server().await?;
        Ok(db)
    }

    /// `postgres://postgres@127.0.0.1:PORT/NAME`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Stops the server (fast: sessions are cut), waits `down_for`, starts it again.
    pub async fn restart(&self, down_for: Duration) -> Result<(), LabError> {
        self.stop_server().await?;
        tokio::time::sleep(down_for).await;
        self.start_server().await
    }

    async fn start_server(&self) -> Result<(), LabError> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.path("")
        );
        let log = self.path("server.log");
        self.tool(
            "pg_ctl",
            &[
                "-D",
                &self.path("data"),
                "-l",
                &log,
                "-o",
                &options,
                "-w",
                "start",
            ],
        )
        .await
    }

    async fn stop_server(&self) -> Result<(), LabError> {
        self.tool(
            "pg_ctl",
            &["-D", &self.path("data"), "-m", "fast", "-w", "stop"],
        )
        .await
    }

    async fn tool(&self, name: &str, args: &[&str]) -> Result<(), LabError> {
        let program = self.bin.join(name).to_string_lossy().into_owned();
        tool::run(self.user, &[], &program, args)
            .await
            .map(drop)
            .map_err(LabError::Failed)
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for PrivateDatabase {
    fn drop(&mut self) {
        let pg_ctl = self.bin.join("pg_ctl").to_string_lossy().into_owned();
        tool::run_blocking(
            self.user,
            &pg_ctl,
            &["-D", &self.path("data"), "-m", "immediate", "-w", "stop"],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `/usr/lib/postgresql/<newest>/bin`, where Debian installs the server binaries.
pub(super) fn newest_server_bin() -> Result<PathBuf, LabError> {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter_map(|v| v.parse::<u32>().ok())
                .max()
        })
        .ok_or_else(|| {
            LabError::Failed(
                "no PostgreSQL server under /usr/lib/postgresql (install postgresql)".into(),
            )
        })?;
    Ok(PathBuf::from(format!("/usr/lib/postgresql/{newest}/bin")))
}
