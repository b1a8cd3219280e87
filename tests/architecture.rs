//! The boundaries ARCHITECTURE.md states, checked on the sources: a change that breaks one fails
//! here with the file and line. (Comments and doc comments are ignored; string contents are not,
//! so SQL text outside `store/` is caught too.)

use std::path::{Path, PathBuf};

/// One rule: code under `scope` (or outside it, when `outside` is set) must not contain any of
/// `forbidden`, except in files under `allowed`. `in_strings`: string literals count too (SQL
/// text is found there); otherwise only code outside literals is searched.
struct Rule {
    name: &'static str,
    scope: &'static str,
    outside: bool,
    forbidden: &'static [&'static str],
    allowed: &'static [&'static str],
    in_strings: bool,
}

const RULES: &[Rule] = &[
    Rule {
        name: "domain/ is pure: no I/O, no broker or database client",
        scope: "src/domain/",
        outside: false,
        forbidden: &[
            "lapin",
            "sqlx",
            "tokio",
            "std::fs",
            "std::net",
            "std::env",
            "std::process",
            "axum",
            "getrandom",
            "rand::",
        ],
        allowed: &[],
        in_strings: false,
    },
    Rule {
        name: "SQL lives only in store/ (locks and probes included)",
        scope: "src/store/",
        outside: true,
        forbidden: &[
            "sqlx::query",
            "query_as(",
            "query_scalar(",
            "raw_sql(",
            "QueryBuilder",
            "SELECT ",
            "INSERT INTO",
            "DELETE FROM",
            "pg_advisory",
        ],
        allowed: &[],
        in_strings: true,
    },
    Rule {
        name: "AMQP (lapin) lives only in broker/ (and the client library, which speaks AMQP)",
        scope: "src/broker/",
        outside: true,
        forbidden: &["lapin"],
        allowed: &["src/client/"],
        in_strings: false,
    },
    Rule {
        name: "AMQP message shapes (properties, headers) are built only in broker/",
        scope: "src/broker/",
        outside: true,
        forbidden: &["BasicProperties::default", "AMQPValue::", "with_headers("],
        allowed: &[],
        in_strings: false,
    },
    Rule {
        name: "only config.rs reads the environment",
        scope: "src/config.rs",
        outside: true,
        forbidden: &["env::var", "var_os(", "std::env::vars", "try_from_env"],
        allowed: &[],
        in_strings: false,
    },
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a line: nothing of a `//` comment (a `//` inside a string ends the check early,
/// which can only hide a violation in that line's tail, never invent one).
fn code_of(line: &str) -> &str {
    let trimmed = line.trim_start();
    if trimmed.starts_with("//") {
        return "";
    }
    match line.find("// ") {
        Some(i) if !line[..i].contains('"') => &line[..i],
        _ => line,
    }
}

/// `code` with the contents of its string literals blanked (escapes honoured; a literal that
/// spans lines is approximated by the line's own quotes).
fn without_strings(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in code.chars() {
        match (in_string, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => {
                in_string = false;
                out.push('"');
            }
            (true, false, _) => {}
            (false, _, '"') => {
                in_string = true;
                out.push('"');
            }
            (false, _, c) => out.push(c),
        }
    }
    out
}

#[test]
fn the_documented_boundaries_hold() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    let mut violations = Vec::new();
    for file in &files {
        let relative = file
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(file).unwrap();
        for rule in RULES {
            let inside = relative.starts_with(rule.scope);
            if inside == rule.outside || rule.allowed.iter().any(|a| relative.starts_with(a)) {
                continue;
            }
            for (n, line) in text.lines().enumerate() {
                let code = if rule.in_strings {
                    code_of(line).to_owned()
                } else {
                    without_strings(code_of(line))
                };
                if let Some(word) = rule.forbidden.iter().find(|w| code.contains(*w)) {
                    violations.push(format!(
                        "{relative}:{}: `{word}` breaks \"{}\"",
                        n + 1,
                        rule.name
                    ));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "{} boundary violation(s):\n{}",
        violations.len(),
        violations.join("\n")
    );
}

#[test]
fn string_literals_are_blanked_for_code_rules() {
    assert_eq!(
        without_strings(r#"f("lapin::x \" y", 1) + lapin::z"#),
        r#"f("", 1) + lapin::z"#
    );
}

#[test]
fn the_product_does_not_depend_on_the_lab_or_its_tools() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let dependencies = manifest
        .split("[dependencies]")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .unwrap();
    for name in ["rand", "proptest", "operation-runs-lab"] {
        assert!(
            !dependencies
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{name} "))
                    || l.trim_start().starts_with(&format!("{name}="))),
            "the product's [dependencies] list {name}; it belongs to the lab or dev-dependencies"
        );
    }
}
