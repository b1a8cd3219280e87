//! Running the servers' administration tools, as their own system user when we are root.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// How long one administration command may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// `program args…`, as `user` when running as root (`runuser`), with `env` set; the output
/// only matters when it fails.
pub async fn run(
    user: Option<&str>,
    env: &[(&str, String)],
    program: &str,
    args: &[&str],
) -> Result<String, String> {
    let what = format!("{program} {}", args.join(" "));
    let mut command = match user {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--", "env"]);
            for (k, v) in env {
                c.arg(format!("{k}={v}"));
            }
            c.arg(program);
            c
        }
        None => {
            let mut c = Command::new(program);
            c.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
            c
        }
    };
    let output = command
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

/// Starts `program args…` (as `user` when root, with `env` set) in a process group of its own,
/// its output appended to `log`, and leaves it running: a server supervisor that outlives the
/// lab (`pg_autoctl run`).
pub fn spawn_detached(
    user: Option<&str>,
    env: &[(&str, String)],
    program: &str,
    args: &[&str],
    log: &std::path::Path,
) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let what = format!("{program} {}", args.join(" "));
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let mut command = match user {
        Some(user) => {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", user, "--", program]);
            c
        }
        None => std::process::Command::new(program),
    };
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map(drop)
        .map_err(|e| format!("{what}: {e}"))
}

/// The blocking variant, for `Drop`: best effort, the result is only reported.
pub fn run_blocking(user: Option<&str>, program: &str, args: &[&str]) {
    let mut command = match user {
        Some(user) => {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", user, "--", program]);
            c
        }
        None => std::process::Command::new(program),
    };
    let status = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !status.as_ref().is_ok_and(|s| s.success()) {
        eprintln!("lab: clean-up: {program} {}: {status:?}", args.join(" "));
    }
}
