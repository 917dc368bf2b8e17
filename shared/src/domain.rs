//! The séance's nouns and the rules that make a value valid. Every newtype validates on
//! parse, so a value of the type is valid wherever it travels.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A rejected field: which one and why, in a sentence that names it (a 422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FieldError {
    pub field: Option<String>,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.to_owned()),
            message: message.into(),
        }
    }
}

/// Trims `raw` and checks the protocol's text rules: 1..=`max_chars` characters after
/// trimming and no control characters other than newline.
pub fn clean_text(field: &str, raw: &str, max_chars: usize) -> Result<String, FieldError> {
    let trimmed = raw.trim();
    let chars = trimmed.chars().count();
    if chars == 0 {
        return Err(FieldError::new(field, format!("{field} must not be empty")));
    }
    if chars > max_chars {
        return Err(FieldError::new(
            field,
            format!("{field} must be at most {max_chars} characters (got {chars})"),
        ));
    }
    if trimmed.chars().any(|c| c.is_control() && c != '\n') {
        return Err(FieldError::new(
            field,
            format!("{field} must not contain control characters other than newline"),
        ));
    }
    Ok(trimmed.to_owned())
}

macro_rules! text_newtype {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const MAX_CHARS: usize = $max;

            pub fn parse(raw: &str) -> Result<Self, FieldError> {
                clean_text($field, raw, Self::MAX_CHARS).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

text_newtype!(
    /// A session's name: 1–100 characters after trimming.
    SessionName,
    "name",
    100
);
text_newtype!(
    /// A participant's display name: 1–40 characters after trimming.
    DisplayName,
    "display_name",
    40
);

/// A question's text: 1..=`max_chars` characters after trimming (500 by default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct MessageContent(String);

impl MessageContent {
    pub fn parse(raw: &str, max_chars: usize) -> Result<Self, FieldError> {
        clean_text("content", raw, max_chars).map(Self)
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// The host's display name arrives as `host_name`; same rules, its own field name.
pub fn parse_host_name(raw: &str) -> Result<DisplayName, FieldError> {
    clean_text("host_name", raw, DisplayName::MAX_CHARS).map(DisplayName)
}

/// How many may join one session: 2..=`hard_cap` (the protocol's cap is 12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct MaxParticipants(u8);

impl MaxParticipants {
    pub const MIN: i64 = 2;

    pub fn parse(raw: i64, hard_cap: u8) -> Result<Self, FieldError> {
        if raw < Self::MIN || raw > i64::from(hard_cap) {
            return Err(FieldError::new(
                "max_participants",
                format!(
                    "max_participants must be between {} and {hard_cap} (got {raw})",
                    Self::MIN
                ),
            ));
        }
        // In range 2..=hard_cap, so it fits a u8.
        Ok(Self(u8::try_from(raw).unwrap_or(hard_cap)))
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Host,
    Participant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Participant => "participant",
        }
    }

    pub fn from_db(raw: &str) -> Option<Self> {
        match raw {
            "host" => Some(Self::Host),
            "participant" => Some(Self::Participant),
            _ => None,
        }
    }
}

#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    Active,
    Ended,
}

impl SessionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Ended => "ended",
        }
    }

    pub fn from_db(raw: &str) -> Option<Self> {
        match raw {
            "active" => Some(Self::Active),
            "ended" => Some(Self::Ended),
            _ => None,
        }
    }
}

#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    Question,
    Spirit,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Question => "question",
            Self::Spirit => "spirit",
        }
    }

    pub fn from_db(raw: &str) -> Option<Self> {
        match raw {
            "question" => Some(Self::Question),
            "spirit" => Some(Self::Spirit),
            _ => None,
        }
    }
}

/// Where a question stands in the spirit's turn (stored beside it; the spirit's own
/// messages have none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnState {
    /// Accepted, waiting for the spirit.
    Queued,
    /// Claimed by a worker, before the first word.
    Thinking,
    /// The answer is streaming.
    Speaking,
    /// Its one reply is stored.
    Answered,
    /// Never answered: the session ended first.
    Dropped,
}

impl TurnState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Thinking => "thinking",
            Self::Speaking => "speaking",
            Self::Answered => "answered",
            Self::Dropped => "dropped",
        }
    }

    pub fn from_db(raw: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Thinking,
            Self::Speaking,
            Self::Answered,
            Self::Dropped,
        ]
        .into_iter()
        .find(|state| state.as_str() == raw)
    }

    /// Still owed an answer (these count towards `spirit_busy`).
    pub fn is_unanswered(self) -> bool {
        matches!(self, Self::Queued | Self::Thinking | Self::Speaking)
    }
}

/// A séance session as the protocol shows it.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Session {
    pub id: Uuid,
    pub name: String,
    /// A persona id from `GET /api/personas`.
    pub persona: String,
    pub status: SessionStatus,
    /// How many have joined (host included), online or not.
    pub participant_count: u32,
    pub max_participants: u32,
    pub created_at: DateTime<Utc>,
}

/// Someone who joined a session. The seat is theirs for the whole session.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Participant {
    pub id: Uuid,
    pub display_name: String,
    pub role: Role,
    pub seat: u32,
}

/// A question from a participant or an answer from the spirit.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Message {
    pub id: Uuid,
    pub session_id: Uuid,
    pub kind: MessageKind,
    /// The participant who asked; null for the spirit.
    pub author: Option<Participant>,
    pub content: String,
    /// For a spirit answer, the question it answers.
    pub in_reply_to: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_trimmed_and_bounded() {
        assert_eq!(
            DisplayName::parse("  Ada  ").map(|n| n.to_string()),
            Ok("Ada".to_owned())
        );
        let err = DisplayName::parse("   ").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("display_name"));
        assert!(err.message.contains("display_name"));
        assert!(DisplayName::parse(&"a".repeat(40)).is_ok());
        assert!(DisplayName::parse(&"a".repeat(41)).is_err());
        // Characters, not bytes: 40 multi-byte letters are fine.
        assert!(DisplayName::parse(&"é".repeat(40)).is_ok());
    }

    #[test]
    fn control_characters_other_than_newline_are_rejected() {
        assert!(SessionName::parse("line one\nline two").is_ok());
        assert!(SessionName::parse("bell\u{7}").is_err());
        assert!(SessionName::parse("tab\there").is_err());
        assert!(SessionName::parse("nul\0").is_err());
    }

    #[test]
    fn host_name_errors_name_host_name() {
        let err = parse_host_name("").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("host_name"));
    }

    #[test]
    fn max_participants_is_bounded() {
        assert!(MaxParticipants::parse(1, 12).is_err());
        assert_eq!(MaxParticipants::parse(2, 12).map(|m| m.get()), Ok(2));
        assert_eq!(MaxParticipants::parse(12, 12).map(|m| m.get()), Ok(12));
        assert!(MaxParticipants::parse(13, 12).is_err());
        assert!(MaxParticipants::parse(-5, 12).is_err());
    }

    /// The stored names are the database's (its CHECK constraints and older rows): each
    /// reads back as what was written, and nothing else reads as anything.
    #[test]
    fn stored_names_read_back() {
        for (role, name) in [(Role::Host, "host"), (Role::Participant, "participant")] {
            assert_eq!(role.as_str(), name);
            assert_eq!(Role::from_db(name), Some(role));
        }
        for (status, name) in [
            (SessionStatus::Active, "active"),
            (SessionStatus::Ended, "ended"),
        ] {
            assert_eq!(status.as_str(), name);
            assert_eq!(SessionStatus::from_db(name), Some(status));
        }
        for (kind, name) in [
            (MessageKind::Question, "question"),
            (MessageKind::Spirit, "spirit"),
        ] {
            assert_eq!(kind.as_str(), name);
            assert_eq!(MessageKind::from_db(name), Some(kind));
        }
        let states = [
            (TurnState::Queued, "queued", true),
            (TurnState::Thinking, "thinking", true),
            (TurnState::Speaking, "speaking", true),
            (TurnState::Answered, "answered", false),
            (TurnState::Dropped, "dropped", false),
        ];
        for (state, name, unanswered) in states {
            assert_eq!(state.as_str(), name);
            assert_eq!(TurnState::from_db(name), Some(state));
            assert_eq!(state.is_unanswered(), unanswered, "{name}");
        }
        assert_eq!(Role::from_db("Host"), None);
        assert_eq!(SessionStatus::from_db(""), None);
        assert_eq!(MessageKind::from_db("answer"), None);
        assert_eq!(TurnState::from_db("xyzzy"), None);
    }
}
