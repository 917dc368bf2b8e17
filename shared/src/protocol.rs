//! The WebSocket frames of the protocol: what clients send, what the server pushes, and
//! the socket's error codes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::board::Board;
use crate::domain::{Message, Participant, Session};
use crate::spirit::planchette::PathPoint;

/// A frame from a client, parsed and checked. [`parse_frame`] reads frames (it tells each
/// mistake apart); the serde attributes describe the same shape for the TypeScript and
/// AsyncAPI documents.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Sync {
        /// The last message you have: the server sends those after it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "typescript", ts(optional))]
        after: Option<Uuid>,
    },
    SendMessage {
        content: String,
    },
    Typing,
    Ping,
}

impl ClientFrame {
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Sync { .. } => "sync",
            Self::SendMessage { .. } => "send_message",
            Self::Typing => "typing",
            Self::Ping => "ping",
        }
    }
}

#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidJson,
    UnknownType,
    InvalidMessage,
    RateLimited,
    SpiritBusy,
    SessionEnded,
    /// The séance's database or connection store cannot be reached for a moment; nothing
    /// was done; try again (`retry_after_ms` says when).
    Unavailable,
    Internal,
}

/// Why a frame was refused: becomes an `error` event to the sender only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    pub request_type: Option<String>,
    pub retry_after_ms: Option<u64>,
}

impl FrameError {
    pub fn new(code: ErrorCode, message: impl Into<String>, request_type: Option<&str>) -> Self {
        Self {
            code,
            message: message.into(),
            request_type: request_type.map(str::to_owned),
            retry_after_ms: None,
        }
    }

    pub fn event(&self) -> ServerEvent {
        ServerEvent::Error {
            code: self.code,
            message: self.message.clone(),
            request_type: self.request_type.clone(),
            retry_after_ms: self.retry_after_ms,
        }
    }
}

/// Parses one text frame. `max_bytes` is the frame limit.
pub fn parse_frame(text: &str, max_bytes: usize) -> Result<ClientFrame, FrameError> {
    if text.len() > max_bytes {
        return Err(FrameError::new(
            ErrorCode::InvalidMessage,
            format!(
                "the frame is {} bytes; the limit is {max_bytes}",
                text.len()
            ),
            None,
        ));
    }
    let value: Value = serde_json::from_str(text).map_err(|_| {
        FrameError::new(ErrorCode::InvalidJson, "the frame is not valid JSON", None)
    })?;
    let Some(object) = value.as_object() else {
        return Err(FrameError::new(
            ErrorCode::InvalidJson,
            "a frame must be a JSON object with a type",
            None,
        ));
    };
    let Some(kind) = object.get("type").and_then(Value::as_str) else {
        return Err(FrameError::new(
            ErrorCode::UnknownType,
            "the frame has no string `type`",
            None,
        ));
    };
    let invalid = |message: &str| FrameError::new(ErrorCode::InvalidMessage, message, Some(kind));
    match kind {
        "sync" => {
            let after = match object.get("after") {
                None | Some(Value::Null) => None,
                Some(Value::String(raw)) => {
                    Some(Uuid::parse_str(raw).map_err(|_| invalid("after must be a message id"))?)
                }
                Some(_) => return Err(invalid("after must be a message id")),
            };
            Ok(ClientFrame::Sync { after })
        }
        "send_message" => match object.get("content") {
            Some(Value::String(content)) => Ok(ClientFrame::SendMessage {
                content: content.clone(),
            }),
            Some(_) => Err(invalid("content must be a string")),
            None => Err(invalid("content is required")),
        },
        "typing" => Ok(ClientFrame::Typing),
        "ping" => Ok(ClientFrame::Ping),
        other => Err(FrameError::new(
            ErrorCode::UnknownType,
            format!("unknown frame type `{other}`"),
            Some(other),
        )),
    }
}

#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SpiritState {
    Idle,
    Thinking,
    Speaking,
}

/// An event pushed to clients; [`Envelope`] adds `session_id` and `timestamp`.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerEvent {
    SessionState {
        session: Session,
        participants: Vec<Participant>,
        messages: Vec<Message>,
        /// With `sync.after`: whether more messages follow the ones sent.
        has_more: bool,
        spirit: SpiritState,
        board: Board,
    },
    UserJoined {
        participant: Participant,
    },
    UserLeft {
        participant: Participant,
    },
    UserTyping {
        participant: Participant,
    },
    MessageReceived {
        message: Message,
    },
    SpiritThinking {
        question_id: Uuid,
    },
    SpiritToken {
        question_id: Uuid,
        seq: u64,
        /// The next piece of the answer (whole words; pieces after the first start with a space).
        text: String,
        /// The planchette's path for this piece; `at_ms` counts from the start of the answer.
        planchette: Vec<PathPoint>,
    },
    SpiritResponse {
        /// Kind `spirit`, `in_reply_to` the question.
        message: Message,
        /// The whole path.
        planchette: Vec<PathPoint>,
        /// True when the model failed and this is a stock in-character line.
        fallback: bool,
    },
    /// A piece of the spirit's spoken answer: the audio bytes are the same for everyone,
    /// the pan track is this listener's own.
    SpiritAudio {
        /// The id the answer's `spirit_response` message will have.
        message_id: Uuid,
        question_id: Uuid,
        /// 0, 1, 2…; reassemble by `message_id` and `seq`.
        seq: u64,
        /// True on the last piece of this answer's audio.
        last: bool,
        /// The encoding, e.g. `mp3_44100_128` or `wav_11025_16`.
        format: String,
        /// This piece's bytes, base64; concatenated in `seq` order they are the whole file.
        audio_base64: String,
        /// Where this listener hears the voice during this piece's stretch of the answer.
        pan_track: Vec<crate::voice::PanPoint>,
    },
    SessionEnded {},
    Error {
        code: ErrorCode,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "typescript", ts(optional))]
        request_type: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "typescript", ts(optional))]
        retry_after_ms: Option<u64>,
    },
    Pong {},
}

/// Every frame the server sends: an event with its session and time.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS), ts(rename = "ServerFrame"))]
#[derive(Debug, Serialize)]
pub struct Envelope<'a> {
    #[serde(flatten)]
    pub event: &'a ServerEvent,
    pub session_id: Uuid,
    pub timestamp: DateTime<Utc>,
}

/// The JSON text of an event for one session, stamped now.
pub fn encode(session_id: Uuid, event: &ServerEvent) -> String {
    let envelope = Envelope {
        event,
        session_id,
        timestamp: Utc::now(),
    };
    // Serializing these plain structs cannot fail; fall back to a valid error frame anyway.
    serde_json::to_string(&envelope).unwrap_or_else(|_| {
        format!(
            r#"{{"type":"error","code":"internal","message":"could not encode an event","session_id":"{session_id}","timestamp":"{}"}}"#,
            Utc::now().to_rfc3339()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> ErrorCode {
        parse_frame(text, 32 * 1024).unwrap_err().code
    }

    #[test]
    fn frames_parse() {
        let id = Uuid::new_v4();
        assert_eq!(
            parse_frame(r#"{"type":"ping"}"#, 100),
            Ok(ClientFrame::Ping)
        );
        assert_eq!(
            parse_frame(r#"{"type":"typing"}"#, 100),
            Ok(ClientFrame::Typing)
        );
        assert_eq!(
            parse_frame(r#"{"type":"sync"}"#, 100),
            Ok(ClientFrame::Sync { after: None })
        );
        assert_eq!(
            parse_frame(&format!(r#"{{"type":"sync","after":"{id}"}}"#), 100),
            Ok(ClientFrame::Sync { after: Some(id) })
        );
        assert_eq!(
            parse_frame(r#"{"type":"send_message","content":"hi"}"#, 100),
            Ok(ClientFrame::SendMessage {
                content: "hi".into()
            })
        );
    }

    #[test]
    fn bad_frames_get_the_right_code() {
        assert_eq!(code("not json"), ErrorCode::InvalidJson);
        assert_eq!(code("[1,2]"), ErrorCode::InvalidJson);
        assert_eq!(code("{}"), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":5}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
        assert_eq!(
            code(r#"{"type":"send_message"}"#),
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            code(r#"{"type":"send_message","content":7}"#),
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            code(r#"{"type":"sync","after":"nope"}"#),
            ErrorCode::InvalidMessage
        );
        let err = parse_frame(r#"{"type":"dance"}"#, 100).unwrap_err();
        assert_eq!(err.request_type.as_deref(), Some("dance"));
        let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(200));
        assert_eq!(
            parse_frame(&big, 100).unwrap_err().code,
            ErrorCode::InvalidMessage
        );
    }

    #[test]
    fn events_carry_type_session_and_time() {
        let sid = Uuid::new_v4();
        let text = encode(sid, &ServerEvent::Pong {});
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["type"], "pong");
        assert_eq!(value["session_id"], sid.to_string());
        assert!(value["timestamp"].is_string());
        let err = FrameError::new(ErrorCode::RateLimited, "slow down", Some("send_message"));
        let value: Value = serde_json::from_str(&encode(sid, &err.event())).unwrap();
        assert_eq!(value["code"], "rate_limited");
        assert_eq!(value["request_type"], "send_message");
    }
}
