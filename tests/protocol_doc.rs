//! `docs/protocol.md` stays true to the code: every event the server can send, every frame
//! it accepts and every error code is described there, each event with every field it
//! carries, and the page names nothing the code does not have. The enums are read from
//! `shared/src/protocol.rs` itself, so a new variant or field fails this test until the
//! page describes it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn snake(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The variants of `pub enum {name}` in the Rust source, snake_cased, each with the
/// names of its fields.
fn variants(source: &str, name: &str) -> BTreeMap<String, BTreeSet<String>> {
    let body = source
        .split(&format!("pub enum {name} {{"))
        .nth(1)
        .unwrap_or_else(|| panic!("enum {name} in protocol.rs"));
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in body.lines() {
        if line.starts_with('}') {
            break;
        }
        let trimmed = line.trim();
        if trimmed.starts_with("//")
            || trimmed.starts_with('#')
            || trimmed.starts_with('}')
            || trimmed.is_empty()
        {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if indent == 4 {
            let ident: String = trimmed
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            let variant = snake(&ident);
            out.insert(variant.clone(), BTreeSet::new());
            current = trimmed.ends_with('{').then_some(variant);
        } else if indent == 8
            && let Some(variant) = &current
            && let Some((field, _)) = trimmed.split_once(':')
        {
            out.get_mut(variant)
                .unwrap()
                .insert(field.trim().to_owned());
        }
    }
    out
}

/// The first cells (between backticks) of the table rows under `heading`.
fn table_rows(doc: &str, heading: &str) -> BTreeMap<String, String> {
    let section = doc
        .split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("{heading} in docs/protocol.md"));
    let section = section.split("\n#").next().unwrap_or(section);
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| (l.split('`').nth(1).unwrap().to_owned(), l.to_owned()))
        .collect()
}

#[test]
fn every_server_event_and_its_fields_are_described() {
    let code = variants(&read("shared/src/protocol.rs"), "ServerEvent");
    let rows = table_rows(&read("docs/protocol.md"), "### Server → client");
    assert!(code.len() >= 12, "read the enum: {code:?}");
    for (event, fields) in &code {
        let row = rows
            .get(event)
            .unwrap_or_else(|| panic!("`{event}` is not in the page's server table"));
        for field in fields {
            assert!(
                row.contains(&format!("`{field}`")),
                "`{event}`'s field `{field}` is not described: {row}"
            );
        }
    }
    let documented: BTreeSet<&String> = rows.keys().collect();
    let sent: BTreeSet<&String> = code.keys().collect();
    assert_eq!(
        documented, sent,
        "the page names events the server does not send"
    );
}

#[test]
fn every_client_frame_and_error_code_is_described() {
    let source = read("shared/src/protocol.rs");
    let doc = read("docs/protocol.md");
    let frames = variants(&source, "ClientFrame");
    let rows = table_rows(&doc, "### Client → server");
    assert_eq!(
        frames.keys().collect::<BTreeSet<_>>(),
        rows.keys().collect::<BTreeSet<_>>(),
        "client frames in the code and on the page"
    );
    for (frame, fields) in &frames {
        for field in fields {
            assert!(
                rows[frame].contains(&format!("`{field}`")),
                "{frame}.{field}"
            );
        }
    }
    let codes = variants(&source, "ErrorCode");
    let sentence = doc
        .split("Error codes:")
        .nth(1)
        .and_then(|s| s.split('.').next())
        .expect("the page lists the error codes");
    let listed: BTreeSet<String> = sentence
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert_eq!(codes.keys().cloned().collect::<BTreeSet<_>>(), listed);
}

#[test]
fn the_readers_see_a_change() {
    // The checks above can fail: a variant or field the page lacks is noticed.
    let source = "pub enum ServerEvent {\n    NewThing {\n        extra_field: u8,\n    },\n    Pong {},\n}\n";
    let found = variants(source, "ServerEvent");
    assert!(found["new_thing"].contains("extra_field"));
    assert!(found.contains_key("pong"));
    let doc = "### Server → client\n\n| `pong` | – | x |\n";
    assert!(!table_rows(doc, "### Server → client").contains_key("new_thing"));
}

#[test]
fn nothing_in_the_repository_reaches_outside_it() {
    // A clone from a public host has only this repository.
    let mut offenders = Vec::new();
    let mut stack = vec![root()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !["target", ".git", ".seance", "node_modules"].contains(&name.as_str()) {
                    stack.push(path);
                }
                continue;
            }
            if !["rs", "md", "toml", "yaml", "yml", "sh", "json"]
                .iter()
                .any(|ext| name.ends_with(&format!(".{ext}")))
                && !["run", ".env.example"].contains(&name.as_str())
            {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            // Built so this file does not name it itself.
            let outside = format!("{}/shared", "..");
            // From a folder of the repository that path is the repository's own `shared/`;
            // from its root it is outside.
            let inside = path
                .parent()
                .map(|dir| dir.join(&outside))
                .and_then(|target| target.canonicalize().ok())
                .is_some_and(|target| target.starts_with(root().canonicalize().unwrap()));
            if text.contains(&outside) && !inside {
                offenders.push(path.display().to_string());
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "files that reach outside the repository: {offenders:?}"
    );
}
