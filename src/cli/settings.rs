//! `oprun config --format markdown`: the table of every setting (a flag with an environment
//! fallback), printed from the clap definitions themselves, so that the flag, its variable, its
//! default and its meaning are written once, in `config.rs`. docs/configuration.md holds the
//! output; a test fails when the two differ.

use clap::CommandFactory;

use super::Cli;

/// `oprun config --format markdown`
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// Only `markdown` today: the table of docs/configuration.md.
    #[arg(long, value_enum, default_value = "markdown")]
    format: ConfigFormat,
}

/// Output formats of `oprun config`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ConfigFormat {
    /// A Markdown table: flag, environment, default, meaning.
    Markdown,
}

impl ConfigArgs {
    /// Prints the table.
    pub fn run(self) -> Result<(), super::CliError> {
        match self.format {
            ConfigFormat::Markdown => print!("{}", markdown()),
        }
        Ok(())
    }
}

/// One setting: where it is accepted and what it says about itself.
struct Setting {
    id: String,
    flags: Vec<String>,
    env: String,
    default: String,
    meaning: String,
}

/// The settings table: every argument with an environment variable, in the order the commands
/// declare them, each once with every command that takes it.
pub fn markdown() -> String {
    let mut settings: Vec<Setting> = Vec::new();
    collect(&Cli::command(), "", &mut settings);
    let mut out = String::from("| flag | environment | default | meaning |\n|---|---|---|---|\n");
    for s in settings {
        let flags: Vec<String> = s.flags.iter().map(|f| format!("`{f}`")).collect();
        out.push_str(&format!(
            "| {} | `{}` | {} | {} |\n",
            flags.join(", "),
            s.env,
            s.default,
            s.meaning
        ));
    }
    out
}

fn collect(command: &clap::Command, path: &str, settings: &mut Vec<Setting>) {
    for arg in command.get_arguments() {
        let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        if arg.is_hide_set() {
            continue;
        }
        let flag = if path.is_empty() {
            format!("--{long}")
        } else {
            format!("{path} --{long}")
        };
        let id = arg.get_id().to_string();
        if let Some(known) = settings
            .iter_mut()
            .find(|s| s.id == id && s.env == env.to_string_lossy())
        {
            known.flags.push(flag);
            continue;
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| format!("`{}`", v.to_string_lossy()))
            .collect();
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        let (default, meaning) = split_default(&help, defaults);
        settings.push(Setting {
            id,
            flags: vec![flag],
            env: env.to_string_lossy().into_owned(),
            default,
            meaning,
        });
    }
    for sub in command.get_subcommands() {
        let name = if path.is_empty() {
            sub.get_name().to_owned()
        } else {
            format!("{path} {}", sub.get_name())
        };
        collect(sub, &name, settings);
    }
}

/// The default column: clap's default, or, for a setting without one, the help's sentence that
/// starts `Default:` (what happens when it is absent); the meaning is the rest, on one line.
fn split_default(help: &str, defaults: Vec<String>) -> (String, String) {
    let one_line = help
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|");
    if !defaults.is_empty() {
        return (defaults.join(", "), one_line);
    }
    match one_line.split_once("Default: ") {
        Some((before, after)) => {
            let (default, rest) = after
                .split_once(". ")
                .unwrap_or((after.trim_end_matches('.'), ""));
            let meaning = format!("{} {}", before.trim(), rest.trim())
                .trim()
                .to_owned();
            (default.to_owned(), meaning)
        }
        None => ("none".to_owned(), one_line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_configuration_table_is_the_markdown_output() {
        let doc = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/configuration.md"
        ));
        assert!(
            doc.contains(&markdown()),
            "docs/configuration.md's table differs from `oprun config --format markdown`:\n{}",
            markdown()
        );
    }

    #[test]
    fn every_setting_appears_once_with_every_command_that_takes_it() {
        let table = markdown();
        let rows: Vec<&str> = table
            .lines()
            .filter(|l| l.contains("`OPRUN_INBOX_RETENTION`"))
            .collect();
        assert_eq!(rows.len(), 1, "{table}");
        for flag in [
            "`serve --inbox-retention`",
            "`prune --inbox-retention`",
            "`dlq replay --inbox-retention`",
        ] {
            assert!(rows[0].contains(flag), "{}", rows[0]);
        }
        assert!(
            table.contains("| `--database-url` | `DATABASE_URL` |"),
            "{table}"
        );
    }

    #[test]
    fn the_old_time_flags_are_not_documented() {
        use crate::config::OldNames;
        use clap::CommandFactory;
        let table = markdown();
        for old in crate::config::ServeSettings::OLD_NAMES {
            assert!(!table.contains(&format!("--{}`", old.flag)), "{}", old.flag);
        }
        let mut cli = crate::cli::Cli::command();
        let help = cli
            .find_subcommand_mut("serve")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(help.contains("--batch-window <BATCH_WINDOW>"), "{help}");
        assert!(!help.contains("-ms") && !help.contains("-secs"), "{help}");
    }
}
