//! docs/API.md against the code: its table of problem `type` URNs and its table of metric
//! names must list exactly what the sources under `src/` produce. The sources are read as
//! text, wherever they sit under `src/`, so files may move between folders.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const URN: &str = "urn:plexus:problem:";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every file under `dir` whose name ends with one of `exts`, recursively.
fn files(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, exts, out);
        } else if exts
            .iter()
            .any(|e| path.to_string_lossy().ends_with(&format!(".{e}")))
        {
            out.push(path);
        }
    }
}

/// The Rust sources of `src/`, each with its path relative to the package.
fn sources() -> Vec<(String, String)> {
    let mut paths = Vec::new();
    files(&root().join("src"), &["rs"], &mut paths);
    paths.sort();
    let sources: Vec<(String, String)> = paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("a readable source file");
            let rel = p
                .strip_prefix(root())
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            (rel, text)
        })
        .collect();
    assert!(sources.len() > 10, "the sources under src/ were not found");
    sources
}

fn api_md() -> String {
    std::fs::read_to_string(root().join("docs/API.md")).expect("docs/API.md exists")
}

/// The string literal starting at `text[at..]` after optional whitespace, if there is one.
fn literal_at(text: &str, at: usize) -> Option<&str> {
    let rest = text[at..].trim_start();
    let rest = rest.strip_prefix('"')?;
    rest.find('"').map(|end| &rest[..end])
}

fn slug_chars(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
        .unwrap_or(s.len());
    &s[..end]
}

fn metric_chars(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Problem slugs in the code, each with a file that produces it: whole
/// `urn:plexus:problem:SLUG` literals, and, in a file that builds the URN from a slug
/// (`urn:plexus:problem:{…}`), the slug literals given beside a status
/// (`StatusCode::NAME, "slug"`) or as a `slug: "…"` field.
fn code_problems() -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    for (file, text) in sources() {
        let mut builds_from_slug = false;
        for (at, _) in text.match_indices(URN) {
            let rest = &text[at + URN.len()..];
            let slug = slug_chars(rest);
            if rest.starts_with('{') {
                builds_from_slug = true;
            } else if !slug.is_empty() && !rest.starts_with('…') {
                found.entry(slug.to_owned()).or_insert_with(|| file.clone());
            }
        }
        if !builds_from_slug {
            continue;
        }
        for (at, _) in text.match_indices("StatusCode::") {
            let after = &text[at + "StatusCode::".len()..];
            let name_len = after
                .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
                .unwrap_or(after.len());
            let after = after[name_len..].trim_start();
            let Some(after) = after.strip_prefix(',') else {
                continue;
            };
            if let Some(slug) = literal_at(after, 0)
                && !slug.is_empty()
                && slug_chars(slug) == slug
            {
                found.entry(slug.to_owned()).or_insert_with(|| file.clone());
            }
        }
        for (at, _) in text.match_indices("slug: ") {
            if let Some(slug) = literal_at(&text, at + "slug: ".len())
                && !slug.is_empty()
                && slug_chars(slug) == slug
            {
                found.entry(slug.to_owned()).or_insert_with(|| file.clone());
            }
        }
    }
    found
}

/// Metric names in the code, each with a file that records it: the first argument of the
/// `metrics` macros, and the families of hand-written exposition text (`# TYPE name kind`).
fn code_metrics() -> BTreeMap<String, String> {
    const MACROS: [&str; 6] = [
        "counter!(",
        "gauge!(",
        "histogram!(",
        "describe_counter!(",
        "describe_gauge!(",
        "describe_histogram!(",
    ];
    let mut found = BTreeMap::new();
    for (file, text) in sources() {
        for mac in MACROS {
            for (at, _) in text.match_indices(mac) {
                // `describe_counter!(` also contains `counter!(`: both name the same literal.
                if let Some(name) = literal_at(&text, at + mac.len())
                    && !name.is_empty()
                    && metric_chars(name) == name
                {
                    found.entry(name.to_owned()).or_insert_with(|| file.clone());
                }
            }
        }
        for (at, _) in text.match_indices("# TYPE ") {
            let name = metric_chars(&text[at + "# TYPE ".len()..]);
            if !name.is_empty() {
                found.entry(name.to_owned()).or_insert_with(|| file.clone());
            }
        }
    }
    found
}

/// The table rows of docs/API.md (lines starting with `|`), header and rule rows left out.
fn table_rows(doc: &str) -> Vec<Vec<String>> {
    doc.lines()
        .filter(|l| l.trim_start().starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .filter(|cells| !cells.iter().all(|c| c.chars().all(|ch| "-: ".contains(ch))))
        .collect()
}

/// Problem slugs of the doc: every `urn:plexus:problem:SLUG` in a table row's first cell.
fn doc_problems(doc: &str) -> Vec<String> {
    table_rows(doc)
        .into_iter()
        .filter_map(|cells| {
            let first = cells.first()?.trim_matches('`');
            let slug = slug_chars(first.strip_prefix(URN)?);
            (!slug.is_empty()).then(|| slug.to_owned())
        })
        .collect()
}

/// Metric names of the doc: every table row whose first cell is a `plexus_…` name.
fn doc_metrics(doc: &str) -> Vec<String> {
    table_rows(doc)
        .into_iter()
        .filter_map(|cells| {
            let first = cells.first()?.trim_matches('`');
            first
                .starts_with("plexus_")
                .then(|| metric_chars(first).to_owned())
        })
        .collect()
}

/// Equal sets, or a message naming each missing and each extra row.
fn compare(
    what: &str,
    code: &BTreeMap<String, String>,
    doc: &[String],
    show: impl Fn(&str) -> String,
) {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for name in doc {
        if !seen.insert(name.clone()) {
            problems.push(format!("{} has two rows in docs/API.md", show(name)));
        }
    }
    for (name, file) in code {
        if !seen.contains(name) {
            problems.push(format!(
                "{} is produced in {file} but has no row in docs/API.md's {what} table",
                show(name)
            ));
        }
    }
    for name in &seen {
        if !code.contains_key(name) {
            problems.push(format!(
                "{} has a row in docs/API.md's {what} table but nothing under src/ produces it",
                show(name)
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/API.md and the code disagree:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn every_problem_type_has_one_row_and_every_row_a_problem_type() {
    let code = code_problems();
    assert!(
        code.len() >= 5,
        "found only {code:?} in src/: has the way problem types are written changed? \
         Teach code_problems() the new form"
    );
    compare("problem type", &code, &doc_problems(&api_md()), |s| {
        format!("{URN}{s}")
    });
}

#[test]
fn every_metric_has_one_row_and_every_row_a_metric() {
    let code = code_metrics();
    assert!(
        code.len() >= 5,
        "found only {code:?} in src/: has the way metrics are recorded changed? \
         Teach code_metrics() the new form"
    );
    compare("metric", &code, &doc_metrics(&api_md()), |s| s.to_owned());
}

#[test]
fn nothing_cites_files_outside_the_repository() {
    // Spelled in pieces so that this file does not cite them itself.
    let needles = [
        concat!("DESIGN", " §"),
        concat!("STACK", " trap"),
        concat!("..", "/shared"),
        concat!("(issue", " "),
        concat!("Issue", " 1"),
        concat!(" issue", " 1"),
    ];
    let mut paths = Vec::new();
    for dir in ["src", "tests", "docs"] {
        files(
            &root().join(dir),
            &["rs", "md", "toml", "lua", "sh", "txt"],
            &mut paths,
        );
    }
    paths.push(root().join("README.md"));
    let mut hits = Vec::new();
    for path in paths {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            for needle in needles {
                if line.contains(needle) {
                    hits.push(format!(
                        "{}:{}: cites {needle:?}",
                        path.strip_prefix(root()).unwrap_or(&path).display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "point to docs/API.md or docs/ARCHITECTURE.md instead:\n  {}",
        hits.join("\n  ")
    );
}
