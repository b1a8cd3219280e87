//! `oprun catalog`: the operation type registry as data, so that the platform's PHP enum and
//! catalog, the type table of docs/concepts.md and the identity cross-check are generated from the one
//! registry (`domain::operation_type`) instead of being hand copies that drift.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::{json, Value};

use super::CliError;
use crate::domain::{CatalogEntry, OPERATION_CATALOG};

/// Output formats of `oprun catalog`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CatalogFormat {
    /// `{"types": [{type, label, identity_keys, expected_duration_seconds, dedupe_window}]}`.
    Json,
    /// `OperationRunType` (a string-backed enum) and `OperationCatalog`, in namespace
    /// `App\Support` unless `--php-namespace` says otherwise.
    Php,
    /// The type table of docs/concepts.md.
    Markdown,
}

/// Arguments of `oprun catalog`.
#[derive(Debug, clap::Args)]
pub struct CatalogArgs {
    /// What to print.
    #[arg(long, value_enum, default_value = "json")]
    pub format: CatalogFormat,
    /// With `--format php`: write `OperationRunType.php` and `OperationCatalog.php` into this
    /// directory (e.g. the platform's `app/Support`) instead of printing both.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// With `--format php`: the PHP namespace of both classes (the Laravel package ships them as
    /// `OperationRuns\Laravel\Catalog`).
    #[arg(long, default_value = DEFAULT_PHP_NAMESPACE)]
    pub php_namespace: String,
}

/// Where the platform keeps its enum and catalog.
pub const DEFAULT_PHP_NAMESPACE: &str = "App\\Support";
/// The namespace of the Laravel package's copy (clients/laravel/src/Catalog).
pub const LARAVEL_PHP_NAMESPACE: &str = "OperationRuns\\Laravel\\Catalog";

impl CatalogArgs {
    /// Prints (or writes) the catalog in the chosen format.
    pub fn run(self) -> Result<(), CliError> {
        let namespace = self.php_namespace.as_str();
        if !is_php_namespace(namespace) {
            return Err(CliError::Invalid(format!(
                "--php-namespace {namespace:?} is not a PHP namespace (Name\\Name)"
            )));
        }
        if self.format != CatalogFormat::Php && namespace != DEFAULT_PHP_NAMESPACE {
            return Err(CliError::Invalid(
                "--php-namespace goes with --format php".into(),
            ));
        }
        match (self.format, self.out_dir) {
            (CatalogFormat::Php, Some(dir)) => {
                std::fs::write(dir.join("OperationRunType.php"), php_enum(namespace))?;
                std::fs::write(dir.join("OperationCatalog.php"), php_catalog(namespace))?;
            }
            (CatalogFormat::Php, None) => {
                print!("{}\n{}", php_enum(namespace), php_catalog(namespace))
            }
            (_, Some(_)) => {
                return Err(CliError::Invalid("--out-dir goes with --format php".into()))
            }
            (CatalogFormat::Json, None) => println!(
                "{}",
                serde_json::to_string_pretty(&catalog_json()).expect("JSON serialises")
            ),
            (CatalogFormat::Markdown, None) => print!("{}", markdown()),
        }
        Ok(())
    }
}

/// The dedupe window of a type (`active` or `forever`), as the docs and the PHP catalog name it.
fn dedupe_window(entry: &CatalogEntry) -> &'static str {
    entry.dedupe_window.as_str()
}

fn expected_minutes(entry: &CatalogEntry) -> u64 {
    entry.expected_duration.as_secs() / 60
}

/// The registry as JSON.
pub fn catalog_json() -> Value {
    let types: Vec<Value> = OPERATION_CATALOG
        .iter()
        .map(|e| {
            json!({
                "type": e.name,
                "label": e.label,
                "identity_keys": e.identity_keys,
                "expected_duration_seconds": e.expected_duration.as_secs(),
                "dedupe_window": dedupe_window(e),
            })
        })
        .collect();
    json!({ "types": types })
}

/// The type table of docs/concepts.md.
pub fn markdown() -> String {
    let mut out = String::from(
        "| type | label | identity keys (from `context`) | expected duration | dedupe window |\n|---|---|---|---|---|\n",
    );
    for e in &OPERATION_CATALOG {
        let keys: Vec<String> = e.identity_keys.iter().map(|k| format!("`{k}`")).collect();
        writeln!(
            out,
            "| `{}` | {} | {} | {} min | {} |",
            e.name,
            e.label,
            keys.join(", "),
            expected_minutes(e),
            dedupe_window(e)
        )
        .expect("writing to a String");
    }
    out
}

/// Whether `name` is a PHP namespace: identifiers joined by backslashes.
fn is_php_namespace(name: &str) -> bool {
    !name.is_empty()
        && name.split('\\').all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// The head of each generated file: what generated it and its namespace.
fn php_header(namespace: &str) -> String {
    let flag = if namespace == DEFAULT_PHP_NAMESPACE {
        String::new()
    } else {
        format!(" --php-namespace '{namespace}'")
    };
    format!(
        "<?php\n\ndeclare(strict_types=1);\n\n// Generated by `oprun catalog --format php{flag}`; do not edit: regenerate after a catalog change.\n\nnamespace {namespace};\n\n"
    )
}

/// The PHP enum name of a type: its Rust variant (`InventorySync`).
fn case_name(entry: &CatalogEntry) -> String {
    format!("{:?}", entry.run_type)
}

fn php_string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `enum OperationRunType: string`.
pub fn php_enum(namespace: &str) -> String {
    let mut out = php_header(namespace);
    out.push_str("enum OperationRunType: string\n{\n");
    for e in &OPERATION_CATALOG {
        writeln!(out, "    case {} = {};", case_name(e), php_string(e.name)).expect("String");
    }
    out.push_str("}\n");
    out
}

/// `final class OperationCatalog`: label, identity keys, expected duration and dedupe window per type.
pub fn php_catalog(namespace: &str) -> String {
    let mut out = php_header(namespace);
    out.push_str("final class OperationCatalog\n{\n");
    let mut table = |constant: &str, value: &dyn Fn(&CatalogEntry) -> String| {
        writeln!(out, "    public const {constant} = [").expect("String");
        for e in &OPERATION_CATALOG {
            writeln!(out, "        {} => {},", php_string(e.name), value(e)).expect("String");
        }
        out.push_str("    ];\n\n");
    };
    table("LABELS", &|e| php_string(e.label));
    table("IDENTITY_KEYS", &|e| {
        let keys: Vec<String> = e.identity_keys.iter().map(|k| php_string(k)).collect();
        format!("[{}]", keys.join(", "))
    });
    table("EXPECTED_DURATION_SECONDS", &|e| {
        e.expected_duration.as_secs().to_string()
    });
    table("DEDUPE_WINDOW", &|e| php_string(dedupe_window(e)));
    out.push_str(
        "    public static function label(OperationRunType $type): string\n    {\n        return self::LABELS[$type->value];\n    }\n\n    /** @return list<string> */\n    public static function identityKeys(OperationRunType $type): array\n    {\n        return self::IDENTITY_KEYS[$type->value];\n    }\n\n    public static function expectedDurationSeconds(OperationRunType $type): int\n    {\n        return self::EXPECTED_DURATION_SECONDS[$type->value];\n    }\n\n    /** `active` (one run per identity while queued or running) or `forever`. */\n    public static function dedupeWindow(OperationRunType $type): string\n    {\n        return self::DEDUPE_WINDOW[$type->value];\n    }\n}\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_type_table_is_the_markdown_output() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/concepts.md"));
        assert!(
            readme.contains(&markdown()),
            "docs/concepts.md's type table differs from `oprun catalog --format markdown`:\n{}",
            markdown()
        );
    }

    #[test]
    fn the_json_output_lists_every_type_with_its_facts() {
        let json = catalog_json();
        let types = json["types"].as_array().unwrap();
        assert_eq!(types.len(), OPERATION_CATALOG.len());
        let scheduled = types
            .iter()
            .find(|t| t["type"] == "backup_schedule.scheduled")
            .unwrap();
        assert_eq!(
            scheduled["identity_keys"],
            json!(["backup_schedule_id", "scheduled_for"])
        );
        assert_eq!(scheduled["expected_duration_seconds"], 1800);
        assert_eq!(scheduled["label"], "Backup (scheduled)");
    }

    #[test]
    fn the_php_enum_has_a_case_per_type() {
        let php = php_enum(DEFAULT_PHP_NAMESPACE);
        assert!(php.contains("namespace App\\Support;"));
        assert!(php.contains("case InventorySync = 'inventory.sync';"));
        assert!(php.contains("case BackupScheduleRunNow = 'backup_schedule.run_now';"));
        assert_eq!(php.matches("    case ").count(), OPERATION_CATALOG.len());
        assert!(php_catalog(DEFAULT_PHP_NAMESPACE).contains("'restore.execute' => 3600,"));
    }
}
