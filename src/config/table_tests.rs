//! The option table against what depends on it: ranges enforced as the help shows them, the
//! exported environment variable list, `Debug`, and the Makefile and docs that name options.

use super::cli::{opt, OptDef, Range};
use super::*;

fn outcome(args: &[&str]) -> ParseOutcome {
    let argv: Vec<&str> = std::iter::once("analytics-demo")
        .chain(args.iter().copied())
        .collect();
    parse(&argv, &|_| None)
}

/// The subcommand an option belongs to (`None`: the workload's own).
fn command_of(def: &OptDef) -> Option<&'static str> {
    if super::bench_tests::BENCH_ONLY.contains(&def.name) {
        Some("bench-redis")
    } else if ["run", "since"].contains(&def.name) {
        Some("verify")
    } else if def.name == "admin_url" {
        Some("report")
    } else {
        None
    }
}

/// The `[range: ...]` text of a range, as the table writes it.
fn range_text(r: Range) -> String {
    let min = if r.min_excluded {
        format!(">{}", r.min)
    } else {
        r.min.to_string()
    };
    match r.max {
        Some(max) => format!("{min}..={max}"),
        None => format!("{min}.."),
    }
}

/// Values just outside the range, and its bounds (accepted unless another rule objects).
fn probes(r: Range) -> (Vec<String>, Vec<String>) {
    let mut outside = Vec::new();
    let mut bounds = Vec::new();
    if r.min_excluded {
        outside.push(r.min.to_string());
    } else if r.min > 0 {
        outside.push((r.min - 1).to_string());
        bounds.push(r.min.to_string());
    }
    if let Some(max) = r.max {
        outside.push((u128::from(max) + 1).to_string());
        bounds.push(max.to_string());
    }
    (outside, bounds)
}

#[test]
fn should_enforce_each_range_as_the_help_shows_it() {
    let mut ranged = 0;
    for def in opt::ALL.iter().filter(|d| d.range != Range::ANY) {
        ranged += 1;
        let sub: Vec<&str> = command_of(def).into_iter().collect();
        let help = match outcome(&[&sub[..], &["--help"]].concat()) {
            ParseOutcome::Exit { code: 0, output } => {
                output.split_whitespace().collect::<Vec<_>>().join(" ")
            }
            other => panic!("{sub:?} --help: {other:?}"),
        };
        let shown = format!("[range: {}]", range_text(def.range));
        assert!(
            help.contains(&shown),
            "--help lacks {shown} for {}",
            def.flag()
        );
        let (outside, bounds) = probes(def.range);
        let flag = def.flag();
        let rejected = format!("{} must be ", def.label());
        for v in outside {
            match outcome(&[&sub[..], &[flag.as_str(), v.as_str()]].concat()) {
                ParseOutcome::Exit { code: 2, output } => {
                    assert!(output.contains(&rejected), "{flag} {v}: {output}")
                }
                other => panic!("{flag} {v} accepted: {other:?}"),
            }
        }
        for v in bounds {
            if let ParseOutcome::Exit { output, .. } =
                outcome(&[&sub[..], &[flag.as_str(), v.as_str()]].concat())
            {
                assert!(!output.contains(&rejected), "{flag} {v}: {output}");
            }
        }
    }
    assert!(ranged >= 20, "only {ranged} options have a range");
    // The key names have 12 digits: the range of --keys is what they can number.
    assert_eq!(
        opt::keys.range.max,
        Some(crate::workload::bench_mix::MAX_KEYS)
    );
}

#[test]
fn should_export_every_environment_variable_once() {
    let table: Vec<&str> = opt::ALL.iter().map(|d| d.env).collect();
    assert_eq!(ENV_VARS[..table.len()], table[..]);
    assert_eq!(ENV_VARS[table.len()], LOG_FILTER_ENV);
    assert_eq!(ENV_VARS[table.len() + 1..], super::INDEX_ENV_VARS);
    let mut unique = ENV_VARS.to_vec();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ENV_VARS.len());
}

#[test]
fn should_show_every_option_but_secrets_in_debug() {
    let shown = format!("{:?}", outcome(&["--admin-allow-unauthenticated-loopback"]));
    assert!(
        shown.contains("admin_allow_unauthenticated_loopback: true"),
        "{shown}"
    );
    let shown = format!("{:?}", Secret::new("hunter2"));
    assert_eq!(shown, "\"***\"");
    let url = SecretUrl::new("postgres://u:hunter2@h/db");
    assert_eq!(
        format!("{url} {url:?}"),
        "postgres://u:***@h/db \"postgres://u:***@h/db\""
    );
    assert_eq!(&*url, "postgres://u:hunter2@h/db");
}

/// The words of a Makefile variable defined with `NAME := ...` (continuation lines included).
fn make_list(makefile: &str, name: &str) -> Vec<String> {
    let start = makefile
        .find(&format!("\n{name} :="))
        .unwrap_or_else(|| panic!("Makefile has no {name} :="));
    let mut words = Vec::new();
    for line in makefile[start + 1..].lines() {
        let body = line.split_once(":=").map_or(line, |(_, v)| v);
        words.extend(
            body.trim_end_matches('\\')
                .split_whitespace()
                .map(str::to_string),
        );
        if !line.ends_with('\\') {
            break;
        }
    }
    words
}

#[test]
fn should_know_every_variable_the_makefile_passes_to_the_app() {
    let makefile = include_str!("../../Makefile");
    let mut passed = make_list(makefile, "APP_ENV_VARS");
    assert!(passed.len() >= 10, "{passed:?}");
    // Set by APP_ENV itself.
    passed.extend(["EVENTS_PER_SECOND", "QUERIES_PER_SECOND", "BIND_ADDRESS"].map(String::from));
    for var in &passed {
        assert!(
            ENV_VARS.contains(&var.as_str()),
            "the Makefile passes {var}, which the program does not read"
        );
    }
}

/// The backquoted words of a docs table cell, split on ` / `.
fn cell_items(cell: &str) -> Vec<&str> {
    cell.split(" / ")
        .filter_map(|item| item.trim().strip_prefix('`')?.strip_suffix('`'))
        .collect()
}

/// The docs that hold the option tables: the workload's and the subcommands' options, and
/// `bench-redis`'s.
const OPTION_DOCS: [(&str, &str); 2] = [
    (
        "docs/configuration.md",
        include_str!("../../docs/configuration.md"),
    ),
    (
        "docs/benchmarks.md",
        include_str!("../../docs/benchmarks.md"),
    ),
];

#[test]
fn should_match_the_docs_option_tables() {
    let docs = OPTION_DOCS.map(|(_, text)| text).concat();
    let mut documented = Vec::new();
    for line in docs.lines() {
        let cells: Vec<&str> = line.split(" | ").collect();
        if cells.len() < 4 || !line.starts_with("| `") {
            continue;
        }
        let (vars, flags) = (cell_items(&cells[0][2..]), cell_items(cells[1]));
        if vars.is_empty()
            || vars.len() != flags.len()
            || !flags.iter().all(|f| f.starts_with("--"))
        {
            continue;
        }
        for (var, flag) in vars.iter().zip(&flags) {
            let def = opt::ALL
                .iter()
                .find(|d| d.env == *var)
                .unwrap_or_else(|| panic!("the docs document {var}, which no option reads"));
            assert_eq!(def.flag(), *flag, "docs: flag of {var}");
            documented.push(*var);
        }
    }
    for def in opt::ALL {
        assert!(
            documented.contains(&def.env) || docs.contains(&format!("`{}`", def.env)),
            "{} never name {}",
            OPTION_DOCS.map(|(path, _)| path).join(" and "),
            def.env
        );
    }
}
