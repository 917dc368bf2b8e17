//! `template.yaml` stays in step with the protocol and the code: every REST route of
//! `docs/protocol.md` is routed to `sessions-api`, every WebSocket route has a route, every crate
//! in `functions/` is a function of the template, and the other way round.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn protocol() -> String {
    std::fs::read_to_string(root().join("docs/protocol.md")).expect("docs/protocol.md")
}

fn template() -> String {
    std::fs::read_to_string(root().join("template.yaml")).expect("template.yaml")
}

/// `GET /health`-style routes from the protocol's REST table.
fn protocol_rest_routes(protocol: &str) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for line in protocol.lines().filter(|l| l.starts_with("| `")) {
        let cell = line.split('|').nth(1).unwrap_or("");
        for route in cell.split(',') {
            let route = route.trim().trim_matches('`');
            let Some((method, path)) = route.split_once(' ') else {
                continue;
            };
            if !["GET", "POST", "PUT", "DELETE", "PATCH"].contains(&method) {
                continue;
            }
            let path = path.split('?').next().unwrap_or(path).trim_matches('`');
            routes.insert((method.to_owned(), path.to_owned()));
        }
    }
    routes
}

/// The WebSocket route keys the protocol names, and the client frame types it lists.
fn protocol_ws_routes(protocol: &str) -> BTreeSet<String> {
    let mut routes = BTreeSet::new();
    let flat = protocol.split_whitespace().collect::<Vec<_>>().join(" ");
    let sentence = flat
        .split("routes on `$request.body.type`:")
        .nth(1)
        .expect("the protocol names its routes")
        .split('.')
        .next()
        .unwrap_or("");
    for token in sentence.split('`').skip(1).step_by(2) {
        routes.insert(token.to_owned());
    }
    let client = protocol
        .split("### Client → server")
        .nth(1)
        .and_then(|s| s.split("### Server → client").next())
        .expect("the client frames table");
    for line in client.lines().filter(|l| l.starts_with("| `")) {
        routes.insert(line.split('`').nth(1).unwrap_or("").to_owned());
    }
    routes
}

/// `Method:` / `Path:` pairs of the template's HttpApi events.
fn template_rest_routes(template: &str) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for line in template.lines().filter(|l| l.contains("Type: HttpApi")) {
        let field = |name: &str| {
            let rest = line.split(&format!("{name}: ")).nth(1)?;
            Some(match rest.strip_prefix('"') {
                Some(quoted) => quoted.split('"').next()?.to_owned(),
                None => rest.split([',', '}']).next()?.trim().to_owned(),
            })
        };
        if let (Some(method), Some(path)) = (field("Method"), field("Path")) {
            routes.insert((method, path));
        }
    }
    routes
}

fn template_values(template: &str, key: &str) -> BTreeSet<String> {
    template
        .lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("{key}: ")))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .collect()
}

#[test]
fn every_rest_route_of_the_protocol_is_routed() {
    let wanted = protocol_rest_routes(&protocol());
    assert!(
        wanted.len() >= 9,
        "read the protocol's REST table: {wanted:?}"
    );
    let routed = template_rest_routes(&template());
    let missing: Vec<_> = wanted.difference(&routed).collect();
    assert!(
        missing.is_empty(),
        "routes of docs/protocol.md missing from template.yaml: {missing:?}"
    );
}

#[test]
fn every_websocket_route_has_a_route_key() {
    let wanted = protocol_ws_routes(&protocol());
    for route in [
        "$connect",
        "$disconnect",
        "$default",
        "send_message",
        "sync",
        "ping",
        "typing",
    ] {
        assert!(
            wanted.contains(route),
            "read {route} from the protocol: {wanted:?}"
        );
    }
    let keys = template_values(&template(), "RouteKey");
    let missing: Vec<_> = wanted.difference(&keys).collect();
    assert!(
        missing.is_empty(),
        "WebSocket routes missing from template.yaml: {missing:?}"
    );
    let extra: Vec<_> = keys.difference(&wanted).collect();
    assert!(
        extra.is_empty(),
        "template.yaml routes the protocol does not name: {extra:?}"
    );
}

#[test]
fn functions_and_template_match_both_ways() {
    let crates: BTreeSet<String> = std::fs::read_dir(root().join("functions"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().join("Cargo.toml").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let binaries = template_values(&template(), "Binary");
    assert_eq!(
        crates, binaries,
        "functions/ crates vs the template's functions"
    );
    let template = template();
    assert_eq!(
        template.matches("BuildMethod: rust-cargolambda").count(),
        crates.len(),
        "every function is built by cargo-lambda"
    );
}

#[test]
fn the_parsers_see_a_missing_route() {
    // The checks above can fail: drop a route and they notice.
    let template = template().replace("Path: /api/personas", "Path: /api/gone");
    let routed = template_rest_routes(&template);
    assert!(!routed.contains(&("GET".to_owned(), "/api/personas".to_owned())));
    let template = self::template().replace("RouteKey: typing", "RouteKey: typed");
    assert!(!template_values(&template, "RouteKey").contains("typing"));
}

#[test]
fn the_licence_file_matches_the_manifest() {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    assert!(manifest.contains("license = \"MIT\""));
    let licence = std::fs::read_to_string(root().join("LICENSE")).expect("a LICENSE file");
    assert!(licence.starts_with("MIT License"));
}

#[test]
fn every_function_has_a_log_group_with_the_retention_parameter() {
    let template = template();
    let functions: Vec<String> = template
        .lines()
        .zip(template.lines().skip(1))
        .filter(|(_, next)| next.trim() == "Type: AWS::Serverless::Function")
        .map(|(line, _)| line.trim().trim_end_matches(':').to_owned())
        .collect();
    assert_eq!(functions.len(), 6, "{functions:?}");
    for function in functions {
        let group = format!("LogGroupName: !Sub \"/aws/lambda/${{{function}}}\"");
        assert!(template.contains(&group), "{function} has no log group");
    }
    assert!(template.contains("RetentionInDays: !Ref LogRetentionDays"));
}
