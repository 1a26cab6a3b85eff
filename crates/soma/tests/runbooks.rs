//! The runbooks of `docs/runbooks/`: each starts with the project's
//! principle, has command blocks and is linked from the README; every
//! `soma` command line in them is one `soma` parses (flags and values), and
//! every edge route they call is one the gateway serves (its OpenAPI
//! document, method included); and the kill-switch runbook's blocks all
//! run, in one shell session, against a live `soma up` on SQLite. (The
//! PostgreSQL and failed-drill runbooks run against the Patroni stack in
//! `ha_failover.rs`, the drill plan runbook's sections in `drill_capsule.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::runbooks;

const PRINCIPLE: &str = "> **No mocks. No imitations. No bypasses, no fake values to pass a test.** Real servers, real data, exact math.";

#[test]
fn every_runbook_starts_with_the_principle_has_command_blocks_and_is_linked() {
    let names = runbooks::all();
    for expected in [
        "compromised-key.md",
        "drill-plan.md",
        "failed-drill.md",
        "kill-switches.md",
        "lost-postgres-primary.md",
        "tampered-row.md",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "docs/runbooks/{expected} is missing"
        );
    }
    let readme = std::fs::read_to_string(runbooks::root().join("README.md")).unwrap();
    let index = std::fs::read_to_string(runbooks::dir().join("README.md")).unwrap();
    assert_eq!(index.lines().next(), Some(PRINCIPLE), "docs/runbooks/README.md");
    for name in &names {
        let text = std::fs::read_to_string(runbooks::dir().join(name)).unwrap();
        assert_eq!(text.lines().next(), Some(PRINCIPLE), "{name}");
        // `blocks` fails a runbook without a ```sh block.
        let blocks = runbooks::blocks(name);
        // The first block names the variables the others need.
        assert!(
            blocks[0].contains("${SOMA_DATA:?"),
            "{name}: the first block does not check SOMA_DATA"
        );
        assert!(
            readme.contains(&format!("(docs/runbooks/{name})")),
            "README.md does not link docs/runbooks/{name}"
        );
        assert!(
            index.contains(&format!("({name})")),
            "docs/runbooks/README.md does not link {name}"
        );
    }
}

#[test]
fn the_harness_fails_a_runbook_without_blocks_and_stops_at_a_failing_block() {
    assert!(runbooks::sh_blocks("# no commands\n\n```text\nsoma up\n```\n").is_empty());
    let none = std::panic::catch_unwind(|| runbooks::blocks("README.md"));
    assert!(none.is_err(), "an index without blocks must fail as a runbook");
    // Without the variables its first block asks for, a runbook stops
    // there, naming the one missing.
    let output = runbooks::run("kill-switches.md", &[("SOMA_DATA", ""), ("REGION", "local")]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("SOMA_DATA: the data dir of soma up"), "{stderr}");
    assert!(!stderr.contains("block 2/"), "{stderr}");
}

/// A shell word or an operator of a command line, as far as these blocks
/// need: quotes, `$(…)` (nested), `${…}`, `\` line continuations.
#[derive(Debug, PartialEq)]
enum Token {
    /// A word; `dynamic` when it holds an expansion (its value is the
    /// shell's, not the text's).
    Word { text: String, dynamic: bool },
    /// `|`, `;`, `&`, `>`, `<`, `(` or `)`, or the end of a line.
    Operator,
}

fn tokens(line: &str) -> Vec<Token> {
    let chars: Vec<char> = line.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut word = String::new();
    let mut dynamic = false;
    let mut in_word = false;
    let flush = |out: &mut Vec<Token>, word: &mut String, dynamic: &mut bool, in_word: &mut bool| {
        if *in_word {
            out.push(Token::Word {
                text: std::mem::take(word),
                dynamic: *dynamic,
            });
        }
        *dynamic = false;
        *in_word = false;
    };
    // Skips a `$(…)` or `${…}` starting at `i` (at the `$`); returns the index after it.
    let skip_expansion = |i: usize| -> usize {
        let (open, close) = if chars.get(i + 1) == Some(&'(') {
            ('(', ')')
        } else {
            ('{', '}')
        };
        let mut depth = 0;
        let mut j = i + 1;
        while j < chars.len() {
            if chars[j] == open {
                depth += 1;
            } else if chars[j] == close {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' => {
                flush(&mut out, &mut word, &mut dynamic, &mut in_word);
                i += 1;
            }
            '\'' => {
                in_word = true;
                let end = chars[i + 1..]
                    .iter()
                    .position(|c| *c == '\'')
                    .map_or(chars.len(), |p| i + 1 + p);
                word.extend(&chars[i + 1..end]);
                i = end + 1;
            }
            '"' => {
                in_word = true;
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '$' && matches!(chars.get(i + 1), Some('(' | '{')) {
                        dynamic = true;
                        i = skip_expansion(i);
                    } else {
                        if chars[i] == '$' {
                            dynamic = true;
                        }
                        if chars[i] == '\\' {
                            i += 1;
                        }
                        if let Some(c) = chars.get(i) {
                            word.push(*c);
                        }
                        i += 1;
                    }
                }
                i += 1;
            }
            '$' if matches!(chars.get(i + 1), Some('(' | '{')) => {
                in_word = true;
                dynamic = true;
                i = skip_expansion(i);
            }
            '$' => {
                in_word = true;
                dynamic = true;
                word.push(c);
                i += 1;
            }
            '|' | ';' | '&' | '>' | '<' | '(' | ')' => {
                flush(&mut out, &mut word, &mut dynamic, &mut in_word);
                out.push(Token::Operator);
                i += 1;
            }
            _ => {
                in_word = true;
                word.push(c);
                i += 1;
            }
        }
    }
    flush(&mut out, &mut word, &mut dynamic, &mut in_word);
    out.push(Token::Operator);
    out
}

/// The logical lines of a block (`\` continuations joined), with each
/// `$(…)` opened as a line of its own, so that a command inside one is seen.
fn logical_lines(block: &str) -> Vec<String> {
    let joined = block.replace("\\\n", " ");
    let mut lines = Vec::new();
    for line in joined.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        lines.push(line.to_owned());
        let mut rest = line;
        while let Some(at) = rest.find("$(") {
            rest = &rest[at + 2..];
            lines.push(rest.to_owned());
        }
    }
    lines
}

/// Every `soma …` command (and `scripts/ops/run_failover_drill.sh …`, which
/// is `soma drill run …`) of a block, its arguments with each expansion
/// replaced by a placeholder.
fn soma_commands(block: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    for line in logical_lines(block) {
        let tokens = tokens(&line);
        let mut at_command = true;
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i] {
                Token::Operator => at_command = true,
                Token::Word { text, .. }
                    if at_command && (text == "soma" || text.ends_with("/run_failover_drill.sh")) =>
                {
                    let mut args: Vec<String> = if text == "soma" {
                        Vec::new()
                    } else {
                        vec!["drill".into(), "run".into()]
                    };
                    i += 1;
                    while let Some(Token::Word { text, dynamic }) = tokens.get(i) {
                        args.push(if *dynamic {
                            "placeholder".to_owned()
                        } else {
                            text.clone()
                        });
                        i += 1;
                    }
                    commands.push(args);
                    at_command = true;
                    continue;
                }
                Token::Word { text, .. } => {
                    // `VAR=value cmd` keeps the command position.
                    at_command = at_command && text.contains('=') && !text.starts_with('-');
                }
            }
            i += 1;
        }
    }
    commands
}

/// Every edge call of a block: (HTTP method, path without its query), the
/// path's expansions as `{}`.
fn edge_routes(block: &str) -> Vec<(String, String)> {
    let mut routes = Vec::new();
    for line in logical_lines(block) {
        if !line.starts_with("curl ")
            && !line.contains("| curl")
            && !line.contains("$(curl")
            && !line.contains(" curl ")
        {
            continue;
        }
        let Some(at) = line.find("$EDGE/") else {
            continue;
        };
        let method = if line.contains("-X PATCH") {
            "patch"
        } else if line.contains(" -d ") || line.contains("-X POST") {
            "post"
        } else {
            "get"
        };
        // The path up to its end (a quote, a space, its query), each
        // `${VAR…}` or `$VAR` in it a parameter.
        let mut normalized = String::new();
        let mut chars = line[at + "$EDGE".len()..].chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '"' | '?' | ' ' | '\'' => break,
                '$' if chars.peek() == Some(&'{') => {
                    for c in chars.by_ref() {
                        if c == '}' {
                            break;
                        }
                    }
                    normalized.push_str("{}");
                }
                '$' => {
                    while chars
                        .peek()
                        .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
                    {
                        chars.next();
                    }
                    normalized.push_str("{}");
                }
                _ => normalized.push(c),
            }
        }
        routes.push((method.to_owned(), normalized));
    }
    routes
}

#[test]
fn the_command_line_reader_sees_commands_in_substitutions_and_continuations() {
    let block = "TOKEN=$(soma token --data-dir \"$SOMA_DATA\" --tenant drill --scope \"a b\")\n\
                 soma verify ledger --checkpoint \"$DIR/x\" \\\n  --public-key k.pem | jq .\n\
                 scripts/ops/run_failover_drill.sh --target postgres --plan p.json\n\
                 curl -fsS -H \"authorization: Bearer $T\" -d '{}' \"$EDGE/v1/tools/${TOOL:-x}/releases/$VERSION:verify\" | jq .\n";
    assert_eq!(
        soma_commands(block),
        vec![
            vec![
                "token",
                "--data-dir",
                "placeholder",
                "--tenant",
                "drill",
                "--scope",
                "a b"
            ],
            vec![
                "verify",
                "ledger",
                "--checkpoint",
                "placeholder",
                "--public-key",
                "k.pem"
            ],
            vec!["drill", "run", "--target", "postgres", "--plan", "p.json"],
        ]
    );
    assert_eq!(
        edge_routes(block),
        vec![("post".to_owned(), "/v1/tools/{}/releases/{}:verify".to_owned())]
    );
}

#[test]
fn every_soma_command_and_edge_route_of_the_runbooks_exists() {
    let table = soma_gateway::routes::RouteTable::from_descriptors(&soma_proto::SERVICE_NAMES).unwrap();
    let document = soma_gateway::openapi::openapi(
        &table,
        &soma_gateway::openapi::OpenApiInfo {
            title: "SomaStack".to_owned(),
            version: "0".to_owned(),
            server_url: None,
        },
    );
    // The served routes, each parameter as `{}`.
    let mut served = BTreeSet::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        let mut normalized = String::new();
        let mut in_parameter = false;
        for c in path.chars() {
            match c {
                '{' => {
                    in_parameter = true;
                    normalized.push_str("{}");
                }
                '}' => in_parameter = false,
                _ if in_parameter => {}
                _ => normalized.push(c),
            }
        }
        for method in operations.as_object().unwrap().keys() {
            served.insert((method.clone(), normalized.clone()));
        }
    }

    let mut commands = 0;
    let mut routes = 0;
    for name in runbooks::all() {
        for block in runbooks::blocks(&name) {
            for args in soma_commands(&block) {
                commands += 1;
                // `--help` after the arguments: clap checks every
                // subcommand, flag and value up to it, then prints help.
                let output = std::process::Command::new(common::cli::SOMA)
                    .args(&args)
                    .arg("--help")
                    .output()
                    .unwrap();
                assert!(
                    output.status.success(),
                    "{name}: soma {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            for route in edge_routes(&block) {
                routes += 1;
                assert!(
                    served.contains(&route),
                    "{name}: {} {} is not an edge route",
                    route.0,
                    route.1
                );
            }
        }
    }
    println!("{commands} soma command lines and {routes} edge calls checked");
    assert!(
        commands > 30 && routes > 20,
        "{commands} commands, {routes} routes: the reader misses them"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kill_switch_runbook_runs_against_a_live_stack() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut up = common::spawn_soma_up(&data, &[]);
    common::cli::wait_for_edge(&data).await;
    let data_text = data.to_str().unwrap().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        runbooks::run(
            "kill-switches.md",
            &[("SOMA_DATA", data_text.as_str()), ("REGION", "local")],
        )
    })
    .await
    .unwrap();
    runbooks::assert_ran("kill-switches.md", &output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let blocks = runbooks::blocks("kill-switches.md").len();
    assert!(stderr.contains(&format!("block {blocks}/{blocks}")), "{stderr}");
    up.kill().await.unwrap();
}
