//! `docs/security.md` is evidence for BSI IT-Grundschutz, so it must not rot: every test it
//! cites (`path/to/file.rs::test_function`) must exist in that file as a test, every link
//! must resolve to a file (and heading), every row of the BSI map must be there with
//! evidence or an explicit `gap:`, and an operator column. The gaps are printed
//! (`cargo test -p ldap-elector-tests --test security_doc -- --nocapture`).

use ldap_elector_tests::repo_root;
use std::collections::{BTreeSet, HashSet};
use std::path::Path;

/// The rows of the BSI map (APP.4.4 and SYS.1.6) the page must cover, in its order.
const BSI_ROWS: &[&str] = &[
    "APP.4.4.A1",
    "APP.4.4.A2",
    "APP.4.4.A3",
    "APP.4.4.A4",
    "APP.4.4.A6",
    "APP.4.4.A7 / SYS.1.6.A5",
    "APP.4.4.A8 / SYS.1.6.A20",
    "APP.4.4.A9",
    "APP.4.4.A10",
    "APP.4.4.A11",
    "APP.4.4.A12",
    "APP.4.4.A13",
    "APP.4.4.A18",
    "APP.4.4.A19",
    "APP.4.4.A21",
    "APP.4.4.A5/A20",
    "SYS.1.6.A1/A2",
    "SYS.1.6.A3",
    "SYS.1.6.A4/A6/A12",
    "SYS.1.6.A7",
    "SYS.1.6.A8",
    "SYS.1.6.A9",
    "SYS.1.6.A11",
    "SYS.1.6.A15",
    "SYS.1.6.A16",
    "SYS.1.6.A17/A18/A19",
    "SYS.1.6.A21/A23",
    "SYS.1.6.A25",
];

const DOC: &str = "docs/security.md";

fn doc() -> String {
    std::fs::read_to_string(repo_root().join(DOC)).expect("docs/security.md exists")
}

/// `(file, function)` for every `` `path.rs::function` `` in `text`.
fn citations(text: &str) -> Vec<(String, String)> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|span| {
            let (file, function) = span.split_once("::")?;
            let is_ident = !function.is_empty() && function.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            (file.ends_with(".rs") && is_ident).then(|| (file.to_string(), function.to_string()))
        })
        .collect()
}

/// Targets of the markdown links `[text](target)` in `text`, web links left out.
fn links(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split_once(')').map(|(target, _)| target.to_string()))
        .filter(|t| !t.starts_with("http://") && !t.starts_with("https://"))
        .collect()
}

/// Whether `function` is a test in `source`: `fn function` under a `#[test]`-like attribute
/// (`#[test]`, `#[tokio::test(..)]`, inside `proptest!`), or a case of a test-generating
/// macro (`function: "case" => ...`).
fn is_test(source: &str, function: &str) -> bool {
    let lines: Vec<&str> = source.lines().collect();
    lines.iter().enumerate().any(|(i, line)| {
        let line = line.trim_start();
        let declared = ["fn ", "async fn ", "pub fn ", "pub async fn "].iter().any(|prefix| {
            line.strip_prefix(prefix).is_some_and(|rest| {
                rest.strip_prefix(function).is_some_and(|after| after.starts_with('(') || after.starts_with('<'))
            })
        });
        if declared {
            // Walk up over attributes, doc comments and blank lines to a test attribute.
            return lines[..i]
                .iter()
                .rev()
                .map(|l| l.trim())
                .take_while(|l| l.starts_with("#[") || l.starts_with("///") || l.is_empty())
                .any(|l| l.starts_with("#[test]") || l.starts_with("#[tokio::test"));
        }
        line.strip_prefix(function).is_some_and(|after| after.starts_with(": \""))
    })
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of the headings of a markdown file (outside code blocks), with GitHub's
/// `-1`, `-2` suffixes for repeated headings.
fn anchors(markdown: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    let mut in_code = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        let Some(heading) = line.strip_prefix('#') else { continue };
        if in_code {
            continue;
        }
        let base = slug(heading.trim_start_matches('#'));
        let mut anchor = base.clone();
        let mut n = 0;
        while !seen.insert(anchor.clone()) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
    }
    seen
}

/// Problems with `target`, a link in `from` (a path relative to the repository).
fn broken_link(from: &Path, target: &str) -> Option<String> {
    let (path, anchor) = match target.split_once('#') {
        Some((path, anchor)) => (path, Some(anchor)),
        None => (target, None),
    };
    let file = if path.is_empty() { repo_root().join(from) } else { repo_root().join(from).parent()?.join(path) };
    if !file.exists() {
        return Some(format!("link {target}: {} does not exist", file.display()));
    }
    let anchor = anchor?;
    let text = std::fs::read_to_string(&file).ok()?;
    (!anchors(&text).contains(anchor)).then(|| format!("link {target}: no heading with anchor #{anchor}"))
}

#[test]
fn every_cited_test_exists_and_every_link_resolves() {
    let text = doc();
    let cited = citations(&text);
    assert!(cited.len() > 40, "only {} test citations found: is the format `file.rs::name`?", cited.len());
    let mut problems = BTreeSet::new();
    for (file, function) in &cited {
        match std::fs::read_to_string(repo_root().join(file)) {
            Err(e) => problems.insert(format!("`{file}::{function}`: cannot read {file}: {e}")),
            Ok(source) if !is_test(&source, function) => {
                problems.insert(format!("`{file}::{function}`: no test `fn {function}` in {file}"))
            }
            Ok(_) => false,
        };
    }
    for target in links(&text) {
        problems.extend(broken_link(Path::new(DOC), &target));
    }
    println!(
        "{DOC}: {} citations of {} distinct tests, {} links",
        cited.len(),
        cited.iter().collect::<HashSet<_>>().len(),
        links(&text).len()
    );
    assert!(
        problems.is_empty(),
        "{DOC} cites what does not exist:\n{}",
        problems.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn every_bsi_row_has_evidence_or_an_explicit_gap_and_an_operator_column() {
    let text = doc();
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("| APP.") || l.starts_with("| SYS.")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let [id, _topic, _level, evidence, operator] = cells[..] else {
            problems.push(format!("row does not have 5 cells: {line}"));
            continue;
        };
        rows.push(id.to_string());
        if citations(evidence).is_empty() && links(evidence).is_empty() && !evidence.contains("gap:") {
            problems.push(format!("{id}: neither a test, a document nor an explicit `gap:`"));
        }
        if operator.is_empty() {
            problems.push(format!("{id}: the operator's responsibility is empty (write `—` if there is none)"));
        }
    }
    assert_eq!(rows, BSI_ROWS, "the BSI map's rows, in order");
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The gaps, listed: allowed, but never silent.
    let mut gaps = Vec::new();
    for line in text.lines().filter(|l| l.starts_with('|')) {
        let row = line.trim_matches('|').split('|').next().unwrap_or_default().trim();
        for gap in line.split("gap:").skip(1) {
            let gap = gap.split(['|']).next().unwrap_or_default();
            let gap = gap.split(". ").next().unwrap_or_default().trim().trim_end_matches('.');
            gaps.push(format!("{row}: {gap}"));
        }
    }
    println!("{} explicit gaps in {DOC}:", gaps.len());
    for gap in &gaps {
        println!("  gap  {gap}");
    }
}

#[test]
fn the_checker_itself_finds_tests_anchors_and_broken_citations() {
    let source = "#[test]\nfn a_test() {}\n\n/// doc\n#[tokio::test(flavor = \"multi_thread\")]\nasync fn b_test() {}\nfn helper() {}\n    c_case: \"c\" => X;\n";
    assert!(is_test(source, "a_test") && is_test(source, "b_test") && is_test(source, "c_case"));
    assert!(!is_test(source, "helper") && !is_test(source, "a_tes") && !is_test(source, "missing"));
    assert_eq!(slug(" Install, upgrade (BSI APP.4.4.A2, SYS.1.6.A2)"), "install-upgrade-bsi-app44a2-sys16a2");
    assert_eq!(slug(" Pod security (SYS.1.6.A17–A23)"), "pod-security-sys16a17a23");
    assert!(anchors("# A\n## A\n```\n# not a heading\n```\n").contains("a-1"));
    assert_eq!(
        citations("`x/y.rs::name_1` and `not a citation` and `z.md::n`"),
        vec![("x/y.rs".to_string(), "name_1".to_string())]
    );
    assert_eq!(links("[a](../b.md#c) [w](https://x) [s](#t)"), vec!["../b.md#c", "#t"]);
    assert!(broken_link(Path::new(DOC), "design.md#no-such-heading").is_some());
    assert!(broken_link(Path::new(DOC), "design.md#the-election").is_none());
}
