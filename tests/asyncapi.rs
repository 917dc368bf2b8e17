//! `/asyncapi.json` against the server itself: a whole séance is played over real
//! WebSockets and every frame the server sends must be a message of the document and
//! match its schema; every event of the document must have been seen (so a new event
//! needs a line here); every frame the server accepts is a `send` message of the document.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use seance::protocol::{ClientFrame, parse_frame};
use seance_tests::ws::WsClient;
use seance_tests::{Backend, spawn_app};
use serde_json::{Value, json};

/// A small JSON Schema check: `$ref`, `oneOf`/`anyOf`/`allOf`, `type` (one or a list),
/// `enum`, `properties` (no others allowed), `required` and `items`. Returns what is wrong.
fn violations(doc: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let target = doc
            .pointer(reference.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("dangling $ref {reference}"));
        return violations(doc, target, value, at);
    }
    let mut out = Vec::new();
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema.get(key).and_then(Value::as_array) {
            let matching = options
                .iter()
                .filter(|option| violations(doc, option, value, at).is_empty())
                .count();
            if matching == 0 || (key == "oneOf" && matching > 1) {
                out.push(format!(
                    "{at}: {matching} of the {key} alternatives match {value}"
                ));
            }
        }
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for part in all {
            out.extend(violations(doc, part, value, at));
        }
    }
    if let Some(kind) = schema.get("type") {
        let kinds: Vec<&str> = match kind {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let actual = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        let fits = kinds
            .iter()
            .any(|k| *k == actual || (*k == "number" && actual == "integer"));
        if !fits {
            out.push(format!("{at}: {actual} where the schema says {kinds:?}"));
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        out.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let (Some(properties), Some(object)) = (
        schema.get("properties").and_then(Value::as_object),
        value.as_object(),
    ) {
        for (key, field) in object {
            match properties.get(key) {
                Some(field_schema) => {
                    out.extend(violations(doc, field_schema, field, &format!("{at}.{key}")))
                }
                None => out.push(format!("{at}: `{key}` is not in the schema")),
            }
        }
        for key in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !object.contains_key(key) {
                out.push(format!("{at}: required `{key}` is missing"));
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            out.extend(violations(doc, items, item, &format!("{at}[{i}]")));
        }
    }
    out
}

fn messages_of(doc: &Value, action: &str) -> BTreeSet<String> {
    doc["operations"]
        .as_object()
        .expect("operations")
        .values()
        .filter(|op| op["action"] == action)
        .flat_map(|op| op["messages"].as_array().cloned().unwrap_or_default())
        .map(|reference| {
            let path = reference["$ref"].as_str().expect("$ref");
            let message = doc.pointer(path.trim_start_matches('#')).expect("message");
            let message = match message.get("$ref").and_then(Value::as_str) {
                Some(inner) => doc.pointer(inner.trim_start_matches('#')).expect("message"),
                None => message,
            };
            message["name"].as_str().expect("name").to_owned()
        })
        .collect()
}

fn check_frame(doc: &Value, frame: &Value) -> String {
    let kind = frame["type"]
        .as_str()
        .expect("every frame has a type")
        .to_owned();
    let payload = &doc["components"]["messages"][&kind]["payload"];
    assert!(
        payload.is_object(),
        "the server sent `{kind}`, which /asyncapi.json does not describe"
    );
    let wrong = violations(doc, payload, frame, &kind);
    assert!(
        wrong.is_empty(),
        "{kind} does not match its schema: {wrong:#?}"
    );
    kind
}

#[tokio::test]
async fn every_frame_of_a_seance_matches_the_asyncapi_document() {
    let app = spawn_app(Backend::Sqlite).await;
    let response = app.get("/asyncapi.json").await;
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.expect("json");
    assert_eq!(doc["asyncapi"], "3.0.0");

    let created = app.create_session(Some(4)).await;
    let session_id = created["session"]["id"].as_str().unwrap().to_owned();
    let host_token = created["token"].as_str().unwrap().to_owned();
    let mut host = WsClient::connect(&app.ws_url(&created)).await.unwrap();
    let mut frames = vec![host.sync(None).await];
    let joined = app.join_ticket(&session_id, "Bea").await;
    let mut guest = WsClient::connect(&app.ws_url(&joined)).await.unwrap();
    frames.push(guest.sync(None).await);
    frames.push(host.expect("user_joined").await);
    guest.send_json(json!({"type": "typing"})).await;
    frames.push(host.expect("user_typing").await);
    guest
        .send_json(json!({"type": "send_message", "content": "Is anyone there?"}))
        .await;
    // message_received, spirit_thinking, spirit_token, spirit_audio (the harness's offline
    // voice) and spirit_response.
    frames.extend(host.collect_until("spirit_response", 1).await);
    let first_answer = frames.last().unwrap()["message"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    frames.push(host.sync(Some(&first_answer)).await);
    guest.send_json(json!({"type": "dance"})).await;
    frames.push(guest.expect("error").await);
    guest
        .send_json(json!({"type": "send_message", "content": 7}))
        .await;
    frames.push(guest.expect("error").await);
    guest.send_json(json!({"type": "ping"})).await;
    frames.push(guest.expect("pong").await);
    guest.close().await;
    frames.push(host.expect("user_left").await);
    let ended = app
        .post_with_token(&format!("/api/sessions/{session_id}/end"), &host_token)
        .await;
    assert_eq!(ended.status(), 204);
    frames.push(host.expect("session_ended").await);

    let seen: BTreeSet<String> = frames
        .iter()
        .map(|frame| check_frame(&doc, frame))
        .collect();
    let described = messages_of(&doc, "receive");
    assert_eq!(
        seen, described,
        "every event the document describes was sent and checked (add a step here for a new one)"
    );
}

/// A frame of each kind the server accepts. The match has no wildcard: a new kind of
/// client frame does not compile until it has a sample here.
fn sample(frame: &ClientFrame) -> &'static str {
    match frame {
        ClientFrame::Sync { .. } => {
            r#"{"type":"sync","after":"01900000-0000-7000-8000-000000000000"}"#
        }
        ClientFrame::SendMessage { .. } => r#"{"type":"send_message","content":"Who is there?"}"#,
        ClientFrame::Typing => r#"{"type":"typing"}"#,
        ClientFrame::Ping => r#"{"type":"ping"}"#,
    }
}

#[tokio::test]
async fn every_frame_the_server_accepts_is_a_send_message_of_the_document() {
    let app = spawn_app(Backend::Sqlite).await;
    let doc: Value = app.get("/asyncapi.json").await.json().await.expect("json");
    let kinds = [
        ClientFrame::Sync { after: None },
        ClientFrame::SendMessage {
            content: String::new(),
        },
        ClientFrame::Typing,
        ClientFrame::Ping,
    ];
    let mut accepted = BTreeSet::new();
    for kind in &kinds {
        let text = sample(kind);
        let frame = parse_frame(text, 32 * 1024).expect("the sample parses");
        assert_eq!(frame.type_name(), kind.type_name());
        let value: Value = serde_json::from_str(text).unwrap();
        let payload = &doc["components"]["messages"][kind.type_name()]["payload"];
        assert!(
            payload.is_object(),
            "{} is not in the document",
            kind.type_name()
        );
        let wrong = violations(&doc, payload, &value, kind.type_name());
        assert!(wrong.is_empty(), "{wrong:#?}");
        accepted.insert(kind.type_name().to_owned());
    }
    assert_eq!(accepted, messages_of(&doc, "send"));
    // And the document's schema refuses what the server refuses.
    let bad = json!({"type": "send_message", "content": 7});
    assert!(
        !violations(
            &doc,
            &doc["components"]["messages"]["send_message"]["payload"],
            &bad,
            "bad"
        )
        .is_empty()
    );
}
