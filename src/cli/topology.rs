//! `oprun topology print|apply|delete`.

use std::io::Write;
use std::process::{Command, Stdio};

use super::CliError;
use crate::broker::connection::connect;
use crate::broker::permissions::{namespace_users, UserPermissions};
use crate::broker::BrokerError;
use crate::config::{Config, UserPasswords};

/// `oprun topology …`
#[derive(Debug, clap::Subcommand)]
pub enum TopologyCommand {
    /// Print the topology in RabbitMQ definitions format (for rabbitmqctl import_definitions).
    Print,
    /// Declare the topology on the broker (idempotent).
    Apply,
    /// Create the three least-privilege users (N.producer, N.service, N.subscriber) with
    /// passwords from OPRUN_PRODUCER_PASSWORD, OPRUN_SERVICE_PASSWORD, OPRUN_SUBSCRIBER_PASSWORD,
    /// using rabbitmqctl on the broker host.
    Users {
        /// Print the rabbitmqctl commands (passwords as environment references) instead of running them.
        #[arg(long)]
        print: bool,
        /// Delete the three users instead.
        #[arg(long)]
        delete: bool,
        /// The rabbitmqctl executable.
        #[arg(long, default_value = "rabbitmqctl")]
        rabbitmqctl: String,
        #[command(flatten)]
        passwords: UserPasswords,
    },
    /// Delete every queue and exchange of the namespace, messages included.
    Delete {
        /// Required: this deletes the dead-letter queue too.
        #[arg(long)]
        yes: bool,
    },
}

impl TopologyCommand {
    /// Runs the subcommand.
    pub async fn run(self, config: &Config) -> Result<(), CliError> {
        let topology = config.topology()?;
        match self {
            TopologyCommand::Print => {
                let text = serde_json::to_string_pretty(&topology.definitions())
                    .expect("JSON values serialise");
                println!("{text}");
            }
            TopologyCommand::Apply => {
                let connection = connect(&config.amqp_url_list(), "oprun topology").await?;
                topology.declare_on(&connection).await?;
                let _ = connection.close(200, "done".into()).await;
                println!("topology {} declared", topology.namespace());
            }
            TopologyCommand::Users {
                print,
                delete,
                rabbitmqctl,
                passwords,
            } => {
                for user in namespace_users(topology.namespace()) {
                    if print {
                        print_user_commands(&rabbitmqctl, &user, delete);
                    } else if delete {
                        let _ = run_ctl(&rabbitmqctl, &["delete_user", &user.user], None);
                        println!("user {} deleted", user.user);
                    } else {
                        create_user(&rabbitmqctl, &user, &passwords)?;
                        println!("user {} ready", user.user);
                    }
                }
            }
            TopologyCommand::Delete { yes } => {
                if !yes {
                    return Err(CliError::Invalid("refusing to delete without --yes".into()));
                }
                let connection = connect(&config.amqp_url_list(), "oprun topology").await?;
                topology
                    .delete(
                        &connection
                            .create_channel()
                            .await
                            .map_err(BrokerError::from)?,
                    )
                    .await?;
                let _ = connection.close(200, "done".into()).await;
                println!("topology {} deleted", topology.namespace());
            }
        }
        Ok(())
    }
}

/// Creates (or updates the password of) `user` and sets its permissions on vhost `/`.
fn create_user(
    rabbitmqctl: &str,
    user: &UserPermissions,
    passwords: &UserPasswords,
) -> Result<(), CliError> {
    let password = passwords.by_env(user.password_env).ok_or_else(|| {
        CliError::Invalid(format!(
            "{} is not set: refusing to create {} without a password",
            user.password_env, user.user
        ))
    })?;
    // The password goes through stdin, never the command line (visible in `ps`).
    if run_ctl(rabbitmqctl, &["add_user", &user.user], Some(password)).is_err() {
        run_ctl(
            rabbitmqctl,
            &["change_password", &user.user],
            Some(password),
        )?;
    }
    run_ctl(
        rabbitmqctl,
        &[
            "set_permissions",
            "-p",
            "/",
            &user.user,
            &user.configure,
            &user.write,
            &user.read,
        ],
        None,
    )
}

fn run_ctl(rabbitmqctl: &str, args: &[&str], stdin: Option<&str>) -> Result<(), CliError> {
    let mut child = Command::new(rabbitmqctl)
        .arg("-q")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CliError::Invalid(format!("cannot run {rabbitmqctl}: {e}")))?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(format!("{input}\n").as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(CliError::Invalid(format!(
            "{rabbitmqctl} {} failed: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn print_user_commands(rabbitmqctl: &str, user: &UserPermissions, delete: bool) {
    if delete {
        println!("{rabbitmqctl} delete_user '{}'", user.user);
        return;
    }
    println!(
        "printf '%s\\n' \"${}\" | {rabbitmqctl} add_user '{}'",
        user.password_env, user.user
    );
    println!(
        "{rabbitmqctl} set_permissions -p / '{}' '{}' '{}' '{}'",
        user.user, user.configure, user.write, user.read
    );
}
