//! The WebSocket protocol as an AsyncAPI 3 document, served at `/asyncapi.json` beside
//! `/openapi.json`. Its messages and schemas come from the Rust types themselves
//! ([`ClientFrame`] and [`ServerEvent`] through their `utoipa` schemas): one message per
//! variant, so an event added to the enum appears here without anyone remembering to.

use serde_json::{Map, Value, json};
use utoipa::OpenApi;

use crate::protocol::{ClientFrame, ServerEvent};

#[derive(OpenApi)]
#[openapi(components(schemas(ClientFrame, ServerEvent)))]
struct WireSchemas;

/// The fields [`crate::protocol::Envelope`] adds to every server event.
fn envelope_properties() -> Value {
    json!({
        "session_id": {"type": "string", "format": "uuid", "description": "The session the event belongs to."},
        "timestamp": {"type": "string", "format": "date-time", "description": "When the server sent it (RFC 3339, UTC)."}
    })
}

/// What each message is for, by type; a type missing here still gets its message.
fn summary(kind: &str) -> &'static str {
    match kind {
        "sync" => "Ask for the session's state: the last 20 messages, or those after `after`.",
        "send_message" => "Ask the spirit a question (1–500 characters).",
        "typing" => "Tell the others you are typing (at most one a second is passed on).",
        "ping" => "Keep the socket alive; answered with `pong`.",
        "session_state" => {
            "The session, who is online, messages, the spirit's state and the board; to the one who sent `sync`."
        }
        "user_joined" => "Someone's first connection opened.",
        "user_left" => "Someone's last connection closed.",
        "user_typing" => "Someone else is typing.",
        "message_received" => "A question was accepted; to everyone, the asker too.",
        "spirit_thinking" => {
            "The spirit starts answering a question (again, if it comes twice for one question)."
        }
        "spirit_token" => "The next whole words of the answer and the planchette's path for them.",
        "spirit_audio" => "A piece of the spoken answer, with this listener's own pan track.",
        "spirit_response" => "The whole answer, once per question.",
        "session_ended" => "The host ended the séance; the socket closes next.",
        "error" => "A frame of yours was refused; nothing changed.",
        "pong" => "The answer to `ping`.",
        _ => "",
    }
}

/// Splits a tagged enum's `oneOf` into one `(type, schema)` per variant.
fn variants(schema: &Value) -> Vec<(String, Value)> {
    let Some(alternatives) = schema.get("oneOf").and_then(Value::as_array) else {
        return Vec::new();
    };
    alternatives
        .iter()
        .filter_map(|variant| {
            let kind = variant
                .pointer("/properties/type/enum/0")
                .and_then(Value::as_str)?;
            Some((kind.to_owned(), variant.clone()))
        })
        .collect()
}

/// The AsyncAPI 3.0 document of the WebSocket API.
pub fn document() -> Value {
    let openapi = WireSchemas::openapi();
    let mut schemas: Map<String, Value> = openapi
        .components
        .as_ref()
        .map(|components| {
            components
                .schemas
                .iter()
                .filter_map(|(name, schema)| {
                    serde_json::to_value(schema)
                        .ok()
                        .map(|value| (name.clone(), value))
                })
                .collect()
        })
        .unwrap_or_default();
    let client = schemas.remove("ClientFrame").unwrap_or(Value::Null);
    let server = schemas.remove("ServerEvent").unwrap_or(Value::Null);

    let mut messages = Map::new();
    let mut channel_messages = Map::new();
    let mut operations = Map::new();
    let mut add = |kind: String, mut payload: Value, action: &str| {
        let schema_name = format!(
            "{}_{kind}",
            if action == "send" { "client" } else { "server" }
        );
        if action == "receive" {
            if let (Some(properties), Value::Object(extra)) = (
                payload.get_mut("properties").and_then(Value::as_object_mut),
                envelope_properties(),
            ) {
                properties.extend(extra);
            }
            if let Some(list) = payload.get_mut("required").and_then(Value::as_array_mut) {
                list.extend([json!("session_id"), json!("timestamp")]);
            }
        }
        schemas.insert(schema_name.clone(), payload);
        messages.insert(
            kind.clone(),
            json!({
                "name": kind,
                "title": kind,
                "summary": summary(&kind),
                "contentType": "application/json",
                "payload": {"$ref": format!("#/components/schemas/{schema_name}")}
            }),
        );
        channel_messages.insert(
            kind.clone(),
            json!({"$ref": format!("#/components/messages/{kind}")}),
        );
        let verb = if action == "send" { "send" } else { "receive" };
        operations.insert(
            format!("{verb}_{kind}"),
            json!({
                "action": action,
                "summary": summary(&kind),
                "channel": {"$ref": "#/channels/session"},
                "messages": [{"$ref": format!("#/channels/session/messages/{kind}")}]
            }),
        );
    };
    for (kind, payload) in variants(&client) {
        add(kind, payload, "send");
    }
    for (kind, payload) in variants(&server) {
        add(kind, payload, "receive");
    }

    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Séance WebSocket API",
            "version": "1",
            "description": "The séance's WebSocket frames in both directions. Open `websocket_url` (from creating or joining a session over REST) with the token as `?token=<jwt>` or as a subprotocol beside `seance`, then send `sync`. `send` operations are what a client sends; `receive` operations are what the server pushes. Frames without `type` (`{\"message\": \"Endpoint request timed out\", …}`) are API Gateway's own and should be ignored. The REST routes are in /openapi.json; the prose reference is docs/protocol.md.",
            "license": {"name": "MIT"}
        },
        "defaultContentType": "application/json",
        "servers": {
            "harness": {
                "host": "127.0.0.1:3000",
                "protocol": "ws",
                "pathname": "/ws",
                "description": "The local harness (`cargo run -p local-dev`)."
            },
            "aws": {
                "host": "{apiId}.execute-api.{region}.amazonaws.com",
                "protocol": "wss",
                "pathname": "/{stage}",
                "description": "API Gateway's WebSocket API, as template.yaml deploys it.",
                "variables": {
                    "apiId": {"description": "The WebSocket API's id (the stack's WebSocketUrl output)."},
                    "region": {"default": "us-east-1"},
                    "stage": {"default": "dev"}
                }
            }
        },
        "channels": {
            "session": {
                "address": null,
                "title": "One participant's socket in one séance",
                "description": "Everything flows over one socket per participant connection; the token chooses the session.",
                "messages": channel_messages,
                "bindings": {
                    "ws": {
                        "query": {
                            "type": "object",
                            "properties": {
                                "token": {"type": "string", "description": "The session token (a JWT) from create or join, unless it is sent as a subprotocol."}
                            }
                        }
                    }
                }
            }
        },
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": schemas
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_becomes_a_message_with_its_schema() {
        let doc = document();
        assert_eq!(doc["asyncapi"], "3.0.0");
        let messages = doc["components"]["messages"].as_object().unwrap();
        for kind in ["sync", "send_message", "typing", "ping"] {
            assert!(messages.contains_key(kind), "{kind}");
            assert_eq!(doc["operations"][format!("send_{kind}")]["action"], "send");
        }
        for kind in ["session_state", "spirit_audio", "error", "pong"] {
            assert!(messages.contains_key(kind), "{kind}");
            let schema = &doc["components"]["schemas"][format!("server_{kind}")];
            assert!(schema["properties"]["session_id"].is_object(), "{kind}");
            let required = schema["required"].as_array().unwrap();
            assert!(required.contains(&json!("timestamp")), "{kind}");
        }
        // Every reference resolves inside the document.
        let text = doc.to_string();
        for reference in text.split("\"$ref\":\"#/").skip(1) {
            let path = reference.split('"').next().unwrap();
            let pointer = format!("/{path}");
            assert!(doc.pointer(&pointer).is_some(), "dangling $ref {path}");
        }
    }
}
