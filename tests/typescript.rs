//! `web/protocol.d.ts` is generated from the Rust protocol types: every REST body and
//! every WebSocket frame in both directions. This test fails when the checked-in file is
//! stale; `SEANCE_UPDATE_TS=1 cargo test -p seance-tests --test typescript` rewrites it.

use std::path::PathBuf;

use seance::board::{Board, BoardSymbol};
use seance::domain::{Message, MessageKind, Participant, Role, Session, SessionStatus};
use seance::error::{ErrorBody, ErrorDetail};
use seance::personas::PersonaSummary;
use seance::protocol::{ClientFrame, Envelope, ErrorCode, ServerEvent, SpiritState};
use seance::rest::{
    CreateSessionBody, HealthBody, JoinSessionBody, MessagesBody, PersonasBody, SessionTicket,
};
use seance::spirit::planchette::PathPoint;
use seance::voice::PanPoint;
use ts_rs::{Config, TS};

const HEADER: &str = "\
// The séance protocol's types for TypeScript and JSDoc, generated from the server's Rust
// types (ts-rs). Do not edit: `SEANCE_UPDATE_TS=1 cargo test -p seance-tests --test typescript`
// regenerates it, and that test fails when this file and the server disagree.
// Copy it into a frontend as it is. The prose reference is docs/protocol.md.
";

fn declaration<T: TS>(cfg: &Config, out: &mut String) {
    out.push('\n');
    if let Some(docs) = T::docs() {
        out.push_str(&docs);
    }
    out.push_str("export ");
    out.push_str(&T::decl(cfg));
    out.push('\n');
}

fn generate() -> String {
    // Every integer of the protocol fits a JavaScript number.
    let cfg = Config::new().with_large_int("number");
    let mut out = String::from(HEADER);
    out.push_str("\n// WebSocket: what a client sends.\n");
    declaration::<ClientFrame>(&cfg, &mut out);
    out.push_str("\n// WebSocket: what the server sends.\n");
    // The envelope names the event union rather than spelling it out a second time.
    let mut frame = String::new();
    declaration::<Envelope<'static>>(&cfg, &mut frame);
    out.push_str(&frame.replace(&ServerEvent::inline(&cfg), "ServerEvent"));
    declaration::<ServerEvent>(&cfg, &mut out);
    declaration::<ErrorCode>(&cfg, &mut out);
    declaration::<SpiritState>(&cfg, &mut out);
    declaration::<Board>(&cfg, &mut out);
    declaration::<BoardSymbol>(&cfg, &mut out);
    declaration::<PathPoint>(&cfg, &mut out);
    declaration::<PanPoint>(&cfg, &mut out);
    out.push_str("\n// The protocol's records, in REST bodies and WebSocket frames alike.\n");
    declaration::<Session>(&cfg, &mut out);
    declaration::<SessionStatus>(&cfg, &mut out);
    declaration::<Participant>(&cfg, &mut out);
    declaration::<Role>(&cfg, &mut out);
    declaration::<Message>(&cfg, &mut out);
    declaration::<MessageKind>(&cfg, &mut out);
    out.push_str("\n// REST bodies.\n");
    declaration::<CreateSessionBody>(&cfg, &mut out);
    declaration::<JoinSessionBody>(&cfg, &mut out);
    declaration::<SessionTicket>(&cfg, &mut out);
    declaration::<MessagesBody>(&cfg, &mut out);
    declaration::<PersonasBody>(&cfg, &mut out);
    declaration::<PersonaSummary>(&cfg, &mut out);
    declaration::<HealthBody>(&cfg, &mut out);
    declaration::<ErrorBody>(&cfg, &mut out);
    declaration::<ErrorDetail>(&cfg, &mut out);
    out
}

fn checked_in() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../web/protocol.d.ts")
}

#[test]
fn the_typescript_file_matches_the_rust_types() {
    let generated = generate();
    let path = checked_in();
    if std::env::var_os("SEANCE_UPDATE_TS").is_some() {
        std::fs::write(&path, &generated).expect("write web/protocol.d.ts");
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "web/protocol.d.ts is stale: run `SEANCE_UPDATE_TS=1 cargo test -p seance-tests --test typescript` and commit it"
    );
}

#[test]
fn every_type_a_frame_refers_to_is_declared() {
    // A declaration naming a type the file does not declare would not compile in a frontend.
    let generated = generate();
    let declared: Vec<&str> = generated
        .lines()
        .filter_map(|line| line.strip_prefix("export type "))
        .filter_map(|rest| rest.split([' ', '<']).next())
        .collect();
    for name in [
        "ClientFrame",
        "ServerFrame",
        "ServerEvent",
        "SessionTicket",
        "PanPoint",
        "ErrorBody",
    ] {
        assert!(declared.contains(&name), "{name} is not declared");
    }
    for line in generated.lines().filter(|l| l.starts_with("export type ")) {
        for word in line
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .filter(|w| w.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
        {
            if ["Array", "Record", "Partial"].contains(&word) {
                continue;
            }
            assert!(
                declared.contains(&word),
                "`{word}` is used but not declared in web/protocol.d.ts: {line}"
            );
        }
    }
}
