//! The boundaries ARCHITECTURE.md states, checked on the sources: a change that breaks one fails
//! here with the file and line. (Comments and doc comments are ignored; string contents are not,
//! so SQL text outside `store/` is caught too.) Also: every relative link and `#anchor` of the
//! documentation resolves.

use std::collections::{HashMap, HashSet};
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

/// The Markdown files whose relative links must resolve: the top-level documents, the READMEs of
/// the lab, the topology and the clients, and everything under `docs/`.
fn documentation_files(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = [
        "README.md",
        "ARCHITECTURE.md",
        "CONTRIBUTING.md",
        "lab/README.md",
        "topology/README.md",
    ]
    .iter()
    .map(|f| root.join(f))
    .filter(|f| f.is_file())
    .collect();
    for client in std::fs::read_dir(root.join("clients")).unwrap() {
        let readme = client.unwrap().path().join("README.md");
        if readme.is_file() {
            files.push(readme);
        }
    }
    markdown_files(&root.join("docs"), &mut files);
    files.sort();
    files
}

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            markdown_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
}

/// The lines of a Markdown text outside fenced code blocks, with their 1-based numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    // The open fence: its character and length (a closing one is at least as long).
    let mut fence: Option<(char, usize)> = None;
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = trimmed
            .chars()
            .next()
            .filter(|&c| c == '`' || c == '~')
            .map(|c| (c, trimmed.chars().take_while(|&d| d == c).count()))
            .filter(|&(_, len)| len >= 3);
        match (fence, marker) {
            (Some((c, len)), Some((d, l))) if c == d && l >= len => fence = None,
            (Some(_), _) => {}
            (None, Some(opening)) => fence = Some(opening),
            (None, None) => lines.push((n + 1, line)),
        }
    }
    lines
}

/// `paragraph` without its inline code spans (a run of n backticks up to the next run of exactly
/// n, across line ends; an unmatched run is literal text). A span's line ends are kept, so line
/// numbers still count.
fn without_code_spans(paragraph: &str) -> String {
    let chars: Vec<char> = paragraph.chars().collect();
    let run_at = |i: usize| chars[i..].iter().take_while(|&&c| c == '`').count();
    let mut out = String::with_capacity(paragraph.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let n = run_at(i);
        let mut j = i + n;
        let close = loop {
            match chars[j..].iter().position(|&c| c == '`') {
                None => break None,
                Some(k) => {
                    let m = run_at(j + k);
                    if m == n {
                        break Some(j + k);
                    }
                    j += k + m;
                }
            }
        };
        match close {
            Some(end) => {
                out.push(' ');
                out.extend(chars[i..end].iter().filter(|&&c| c == '\n'));
                i = end + n;
            }
            None => {
                out.extend(&chars[i..i + n]);
                i += n;
            }
        }
    }
    out
}

/// The targets of the inline links and images (`[text](target)`, `![alt](target)`) and of the
/// link reference definitions (`[label]: target`) of a Markdown text, outside code, with their
/// line numbers.
fn link_targets(text: &str) -> Vec<(usize, String)> {
    // Paragraphs (runs of non-blank prose lines), since a code span may continue on the next line.
    let mut paragraphs: Vec<(usize, String)> = Vec::new();
    let mut previous = 0;
    for (n, line) in prose_lines(text) {
        if line.trim().is_empty() {
            previous = 0;
            continue;
        }
        match paragraphs.last_mut() {
            Some((_, paragraph)) if previous != 0 && n == previous + 1 => {
                paragraph.push('\n');
                paragraph.push_str(line);
            }
            _ => paragraphs.push((n, line.to_owned())),
        }
        previous = n;
    }
    let mut targets = Vec::new();
    for (first, paragraph) in paragraphs {
        let prose = without_code_spans(&paragraph);
        for (offset, line) in prose.lines().enumerate() {
            line_targets(first + offset, line, &mut targets);
        }
    }
    targets
}

/// The link targets of one line of prose (code spans already removed).
fn line_targets(n: usize, prose: &str, targets: &mut Vec<(usize, String)>) {
    let trimmed = prose.trim_start();
    if let Some(rest) = trimmed.strip_prefix('[') {
        if let Some((label, definition)) = rest.split_once("]:") {
            if !label.contains(']') {
                if let Some(target) = definition.split_whitespace().next() {
                    targets.push((n, target.trim_matches(['<', '>']).to_owned()));
                }
                return;
            }
        }
    }
    let mut rest = prose;
    while let Some(start) = rest.find("](") {
        let after = &rest[start + 2..];
        // The destination runs to the `)` that balances the opening one.
        let mut depth = 0usize;
        let end = after
            .char_indices()
            .find(|&(_, c)| match c {
                '(' => {
                    depth += 1;
                    false
                }
                ')' if depth == 0 => true,
                ')' => {
                    depth -= 1;
                    false
                }
                _ => false,
            })
            .map_or(after.len(), |(i, _)| i);
        let destination = after[..end].trim();
        let target = match destination.strip_prefix('<') {
            Some(angled) => angled.split('>').next().unwrap_or(""),
            // A title may follow the destination after a space.
            None => destination.split_whitespace().next().unwrap_or(""),
        };
        targets.push((n, target.to_owned()));
        rest = &after[end.min(after.len())..];
    }
}

/// The `#anchors` GitHub gives the headings of a Markdown text: the heading's text (link
/// targets dropped) lowercased, each space a `-`, every character other than letters, digits,
/// `-` and `_` removed; a repeated slug gets `-1`, `-2`, … Explicit `id="…"` / `name="…"`
/// attributes of inline HTML count too.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut anchors = HashSet::new();
    for (_, line) in prose_lines(text) {
        for attribute in ["id=\"", "name=\""] {
            for (i, _) in line.match_indices(attribute) {
                let value = &line[i + attribute.len()..];
                if let Some(end) = value.find('"') {
                    anchors.insert(value[..end].to_owned());
                }
            }
        }
        let indent = line.len() - line.trim_start_matches(' ').len();
        let hashes = line[indent..].chars().take_while(|&c| c == '#').count();
        let heading = &line[indent + hashes..];
        if indent > 3
            || !(1..=6).contains(&hashes)
            || !(heading.is_empty() || heading.starts_with(' '))
        {
            continue;
        }
        // A closing sequence of `#`s is not part of the text.
        let heading = heading.trim();
        let heading = match heading.trim_end_matches('#') {
            shorter if shorter.is_empty() || shorter.ends_with(' ') => shorter.trim_end(),
            _ => heading,
        };
        // `[text](target)` reads as `text`.
        let mut visible = String::new();
        let mut rest = heading;
        while let Some(start) = rest.find("](") {
            visible.push_str(&rest[..start]);
            rest = rest[start + 2..]
                .split_once(')')
                .map_or("", |(_, after)| after);
        }
        visible.push_str(rest);
        let slug: String = visible
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                '-' | '_' => Some(c),
                c if c.is_alphanumeric() => Some(c),
                _ => None,
            })
            .collect();
        let count = seen.entry(slug.clone()).or_insert(0);
        anchors.insert(if *count == 0 {
            slug
        } else {
            format!("{slug}-{count}")
        });
        *count += 1;
    }
    anchors
}

/// Every relative link of `files` (paths under `root`) whose file does not exist or whose
/// `#anchor` names no heading of the Markdown file it points at, as `file:line: target (why)`.
fn broken_links(root: &Path, files: &[PathBuf]) -> Vec<String> {
    let mut broken = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        let relative = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        for (n, target) in link_targets(&text) {
            let external = target.contains("://") || target.starts_with("mailto:");
            if target.is_empty() || external {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let path = path.replace("%20", " ");
            let resolved = if path.is_empty() {
                file.clone()
            } else if let Some(from_root) = path.strip_prefix('/') {
                root.join(from_root)
            } else {
                file.parent().unwrap().join(&path)
            };
            if !resolved.exists() {
                broken.push(format!("{relative}:{n}: {target} (no such file)"));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            // A folder's page is its README; anchors of other files (source lines) are GitHub's.
            let page = if resolved.is_dir() {
                resolved.join("README.md")
            } else {
                resolved
            };
            if page.extension().is_some_and(|e| e == "md") && page.is_file() {
                let headings = anchors(&std::fs::read_to_string(&page).unwrap());
                if !headings.contains(anchor) {
                    broken.push(format!("{relative}:{n}: {target} (no such heading)"));
                }
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_and_anchor_in_the_docs_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = documentation_files(root);
    assert!(files
        .iter()
        .any(|f| f.ends_with("docs/decisions/README.md")));
    let broken = broken_links(root, &files);
    assert!(
        broken.is_empty(),
        "{} broken link(s):\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[test]
fn the_link_check_finds_missing_files_and_anchors_and_ignores_code() {
    let dir = std::env::temp_dir().join(format!("oprun-link-check-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let other = "# Other page\n\n## Run `oprun serve` (the service)\n\n## Twice\n\n## Twice\n";
    std::fs::write(dir.join("sub/other.md"), other).unwrap();
    let page = "# Page: one, two\n\n\
        [ok](sub/other.md#run-oprun-serve-the-service) [ok](#page-one-two) [ok](sub/other.md#twice-1)\n\
        [missing file](sub/none.md) ![missing image](sub/none.png) and [missing anchor](#nowhere)\n\
        `[in code](sub/none.md)` [external](https://example.org/none) [third twice](sub/other.md#twice-2)\n\
        a code span `across\n[a line end](sub/none.md)` ends here\n\
        ```\n[in a block](sub/none.md)\n```\n\
        [label]: sub/other.md#other\n";
    std::fs::write(dir.join("page.md"), page).unwrap();
    let broken = broken_links(&dir, &[dir.join("page.md")]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        broken,
        [
            "page.md:4: sub/none.md (no such file)",
            "page.md:4: sub/none.png (no such file)",
            "page.md:4: #nowhere (no such heading)",
            "page.md:5: sub/other.md#twice-2 (no such heading)",
            "page.md:11: sub/other.md#other (no such heading)",
        ]
    );
}

/// `text`'s lines that name where a behaviour was asked for (the word issue and a number)
/// instead of describing it, as `file:line`.
fn issue_mentions(relative: &str, text: &str) -> Vec<String> {
    let pattern = regex::Regex::new(r"\b[Ii]ssues? [0-9]+").unwrap();
    text.lines()
        .enumerate()
        .filter(|(_, line)| pattern.is_match(line))
        .map(|(n, line)| format!("{relative}:{}: {}", n + 1, line.trim()))
        .collect()
}

#[test]
fn sources_tests_and_the_lab_describe_behaviour_not_issue_numbers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "tests", "lab/src", "examples"] {
        rust_files(&root.join(dir), &mut files);
    }
    files.sort();
    assert!(files.len() > 100, "found only {} sources", files.len());
    let mentions: Vec<String> = files
        .iter()
        .flat_map(|file| {
            let relative = file
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            issue_mentions(&relative, &std::fs::read_to_string(file).unwrap())
        })
        .collect();
    assert!(
        mentions.is_empty(),
        "name the behaviour instead:\n{}",
        mentions.join("\n")
    );
}

#[test]
fn the_issue_number_check_finds_a_mention_in_a_comment_and_ignores_other_numbers() {
    // Written apart so that this file does not name an issue itself.
    let (one, many) = ("issue", "Issues");
    let text = format!(
        "// the relay ({one} 9, item 2)\nlet issues = 3; // 40 issues\n//! {many} 5 and 9\n"
    );
    assert_eq!(
        issue_mentions("x.rs", &text),
        vec![
            format!("x.rs:1: // the relay ({one} 9, item 2)"),
            format!("x.rs:3: //! {many} 5 and 9")
        ]
    );
}

/// The modules a Rust file's code names: `crate::a::b` and `crate::{a, b::c}` give the path
/// below `crate` (first segment and the one after it), `super::x` gives its sibling `x`.
fn named_modules(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let ident = |s: &str| {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect::<String>()
    };
    for (prefix, from_super) in [("crate::", false), ("super::", true)] {
        let mut rest = code;
        while let Some(i) = rest.find(prefix) {
            let before_ok = i == 0
                || !rest[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':');
            rest = &rest[i + prefix.len()..];
            if !before_ok {
                continue;
            }
            let heads: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group[..group.find('}').unwrap_or(group.len())]
                    .split(',')
                    .map(str::trim)
                    .collect(),
                None => vec![rest],
            };
            for head in heads {
                let first = ident(head);
                if first.is_empty() || first == "self" {
                    continue;
                }
                let second = head[first.len()..]
                    .strip_prefix("::")
                    .map(ident)
                    .unwrap_or_default();
                let mut path = vec![if from_super {
                    "super".to_owned()
                } else {
                    String::new()
                }];
                path.push(first);
                if !second.is_empty() {
                    path.push(second);
                }
                out.push(path);
            }
        }
    }
    out
}

/// A cycle in `edges` (module → modules it names), as the modules along it, if there is one.
fn a_cycle(edges: &HashMap<String, HashSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &HashMap<String, HashSet<String>>,
        path: &mut Vec<String>,
        done: &mut HashSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|n| n == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        let mut next: Vec<&String> = edges.get(node).into_iter().flatten().collect();
        next.sort();
        for n in next {
            if let Some(cycle) = visit(n, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut nodes: Vec<&String> = edges.keys().collect();
    nodes.sort();
    let mut done = HashSet::new();
    nodes
        .into_iter()
        .find_map(|n| visit(n, edges, &mut Vec::new(), &mut done))
}

/// Every import loop of the product: between its top-level modules (`broker`, `config`, …), and
/// between the files of one folder (`http/api.rs` and `http/viewer.rs`, say).
fn module_loops(src: &Path) -> Vec<Vec<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut top: HashMap<String, HashSet<String>> = HashMap::new();
    let mut siblings: HashMap<String, HashMap<String, HashSet<String>>> = HashMap::new();
    for file in &files {
        let relative = file.strip_prefix(src).unwrap().with_extension("");
        let parts: Vec<String> = relative
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main") {
            continue;
        }
        let folder = parts[..parts.len() - 1].join("/");
        let me = parts.last().unwrap().clone();
        let text = std::fs::read_to_string(file).unwrap();
        let code: String = text
            .lines()
            .map(|l| without_strings(code_of(l)) + "\n")
            .collect();
        for path in named_modules(&code) {
            if path[0].is_empty() {
                if path[1] != parts[0] {
                    top.entry(parts[0].clone())
                        .or_default()
                        .insert(path[1].clone());
                } else if parts.len() == 2 && path.len() == 3 && path[2] != me {
                    // `crate::http::viewer` from `http/api.rs`: a sibling.
                    siblings
                        .entry(folder.clone())
                        .or_default()
                        .entry(me.clone())
                        .or_default()
                        .insert(path[2].clone());
                }
            } else if me != "mod" && parts.len() >= 2 && path[1] != me {
                siblings
                    .entry(folder.clone())
                    .or_default()
                    .entry(me.clone())
                    .or_default()
                    .insert(path[1].clone());
            }
        }
    }
    let mut loops: Vec<Vec<String>> = a_cycle(&top).into_iter().collect();
    for (folder, edges) in &siblings {
        // Only names of files or folders of this folder are siblings (not items of `mod.rs`).
        let edges: HashMap<String, HashSet<String>> = edges
            .iter()
            .map(|(from, to)| {
                let to = to
                    .iter()
                    .filter(|t| {
                        let dir = src.join(folder);
                        dir.join(format!("{t}.rs")).exists() || dir.join(t).is_dir()
                    })
                    .cloned()
                    .collect();
                (from.clone(), to)
            })
            .collect();
        if let Some(cycle) = a_cycle(&edges) {
            loops.push(cycle.into_iter().map(|m| format!("{folder}/{m}")).collect());
        }
    }
    loops
}

#[test]
fn the_products_modules_import_each_other_in_one_direction() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let loops = module_loops(&src);
    assert!(
        loops.is_empty(),
        "import loops (each module names the next): {}",
        loops
            .iter()
            .map(|l| l.join(" → "))
            .collect::<Vec<_>>()
            .join("; ")
    );
}

#[test]
fn the_loop_check_finds_a_loop_between_modules_and_between_files() {
    let dir = std::env::temp_dir().join(format!("oprun-loops-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("http")).unwrap();
    std::fs::write(dir.join("config.rs"), "use crate::http::Limits;\n").unwrap();
    std::fs::write(dir.join("http/mod.rs"), "pub mod api;\npub mod viewer;\n").unwrap();
    std::fs::write(
        dir.join("http/api.rs"),
        "use super::viewer::authenticate;\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("http/viewer.rs"),
        "use crate::{config::Settings, http::api};\n// use crate::nothing;\nlet s = \"crate::x\";\n",
    )
    .unwrap();
    let loops = module_loops(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    let shown: Vec<String> = loops.iter().map(|l| l.join(" → ")).collect();
    assert!(
        shown.contains(&"config → http → config".to_owned()),
        "{shown:?}"
    );
    assert!(
        shown.contains(&"http/api → http/viewer → http/api".to_owned()),
        "{shown:?}"
    );
    assert_eq!(shown.len(), 2, "{shown:?}");
}

/// The tables that grow with the runs: a migration must not hold back their writes while it
/// scans them.
const LARGE_TABLES: &[&str] = &[
    "operation_runs",
    "operation_run_events",
    "processed_commands",
];

/// The first migration written to run online; the ones before are applied and cannot change.
const ONLINE_SINCE: u64 = 20261202000004;

/// What in one migration file would block writes to a large table while it scans it: an index
/// built without `CONCURRENTLY` (or not alone in a `-- no-transaction` file), a constraint added
/// without `NOT VALID`.
fn offline_statements(sql: &str) -> Vec<String> {
    let no_transaction = sql.trim_start().starts_with("-- no-transaction");
    let code: String = sql
        .lines()
        .map(|l| l.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join(" ");
    let statements: Vec<String> = code
        .split(';')
        .map(|s| {
            s.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .to_lowercase()
        })
        .filter(|s| !s.is_empty())
        .collect();
    let on_large = |s: &str, prefix: &str| {
        LARGE_TABLES.iter().any(|t| {
            s.contains(&format!("{prefix}{t} "))
                || s.ends_with(&format!("{prefix}{t}"))
                || s.contains(&format!("{prefix}{t}("))
        })
    };
    let mut offline = Vec::new();
    for s in &statements {
        let index = s.starts_with("create index") || s.starts_with("create unique index");
        if index && on_large(s, " on ") {
            let online = s.contains(" concurrently ") && no_transaction && statements.len() == 1;
            if !online {
                offline.push(s.clone());
            }
        }
        if s.starts_with("alter table")
            && on_large(s, "alter table ")
            && s.contains("add constraint")
        {
            let checked_later = s.contains(" not valid");
            if !checked_later {
                offline.push(s.clone());
            }
        }
    }
    offline
}

#[test]
fn migrations_build_indexes_on_existing_tables_online() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut offline = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let version: u64 = name.split('_').next().unwrap().parse().unwrap();
        if version < ONLINE_SINCE {
            continue;
        }
        let sql = std::fs::read_to_string(&path).unwrap();
        for s in offline_statements(&sql) {
            offline.push(format!("{name}: {s}"));
        }
    }
    assert!(
        offline.is_empty(),
        "statements that block writes to a large table while they scan it (build the index \
         CONCURRENTLY alone in a `-- no-transaction` file; add a constraint NOT VALID and \
         VALIDATE it in the next file): {offline:#?}"
    );
}

#[test]
fn the_online_check_finds_a_locking_index_and_an_unchecked_constraint() {
    let locking = "CREATE INDEX a ON operation_runs (id);";
    assert_eq!(offline_statements(locking).len(), 1);
    let two = "-- no-transaction\nCREATE INDEX CONCURRENTLY a ON operation_runs (id);\n\
               CREATE INDEX CONCURRENTLY b ON operation_runs (type);";
    assert_eq!(
        offline_statements(two).len(),
        2,
        "a file of two runs in one transaction"
    );
    let online = "-- no-transaction\n-- why\nCREATE INDEX CONCURRENTLY IF NOT EXISTS a\n    ON operation_runs (id) WHERE status = 'queued';";
    assert!(offline_statements(online).is_empty());
    let constraint = "ALTER TABLE operation_runs ADD CONSTRAINT c CHECK (outcome <> 'x');";
    assert_eq!(offline_statements(constraint).len(), 1);
    let not_valid = "ALTER TABLE operation_runs ADD CONSTRAINT c CHECK (outcome <> 'x') NOT VALID;";
    assert!(offline_statements(not_valid).is_empty());
    let small = "CREATE INDEX a ON operation_run_actions (run_id); -- a new table";
    assert!(offline_statements(small).is_empty());
}
