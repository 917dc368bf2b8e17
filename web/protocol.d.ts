// The séance protocol's types for TypeScript and JSDoc, generated from the server's Rust
// types (ts-rs). Do not edit: `SEANCE_UPDATE_TS=1 cargo test -p seance-tests --test typescript`
// regenerates it, and that test fails when this file and the server disagree.
// Copy it into a frontend as it is. The prose reference is docs/protocol.md.

// WebSocket: what a client sends.

/**
 * A frame from a client, parsed and checked. [`parse_frame`] reads frames (it tells each
 * mistake apart); the serde attributes describe the same shape for the TypeScript and
 * AsyncAPI documents.
 */
export type ClientFrame = { "type": "sync", 
/**
 * The last message you have: the server sends those after it.
 */
after?: string, } | { "type": "send_message", content: string, } | { "type": "typing" } | { "type": "ping" };

// WebSocket: what the server sends.

/**
 * Every frame the server sends: an event with its session and time.
 */
export type ServerFrame = { session_id: string, timestamp: string, } & (ServerEvent);

/**
 * An event pushed to clients; [`Envelope`] adds `session_id` and `timestamp`.
 */
export type ServerEvent = { "type": "session_state", session: Session, participants: Array<Participant>, messages: Array<Message>, 
/**
 * With `sync.after`: whether more messages follow the ones sent.
 */
has_more: boolean, spirit: SpiritState, board: Board, } | { "type": "user_joined", participant: Participant, } | { "type": "user_left", participant: Participant, } | { "type": "user_typing", participant: Participant, } | { "type": "message_received", message: Message, } | { "type": "spirit_thinking", question_id: string, } | { "type": "spirit_token", question_id: string, seq: number, 
/**
 * The next piece of the answer (whole words; pieces after the first start with a space).
 */
text: string, 
/**
 * The planchette's path for this piece; `at_ms` counts from the start of the answer.
 */
planchette: Array<PathPoint>, } | { "type": "spirit_response", 
/**
 * Kind `spirit`, `in_reply_to` the question.
 */
message: Message, 
/**
 * The whole path.
 */
planchette: Array<PathPoint>, 
/**
 * True when the model failed and this is a stock in-character line.
 */
fallback: boolean, } | { "type": "spirit_audio", 
/**
 * The id the answer's `spirit_response` message will have.
 */
message_id: string, question_id: string, 
/**
 * 0, 1, 2…; reassemble by `message_id` and `seq`.
 */
seq: number, 
/**
 * True on the last piece of this answer's audio.
 */
last: boolean, 
/**
 * The encoding, e.g. `mp3_44100_128` or `wav_11025_16`.
 */
format: string, 
/**
 * This piece's bytes, base64; concatenated in `seq` order they are the whole file.
 */
audio_base64: string, 
/**
 * Where this listener hears the voice during this piece's stretch of the answer.
 */
pan_track: Array<PanPoint>, } | { "type": "session_ended", } | { "type": "error", code: ErrorCode, message: string, request_type?: string, retry_after_ms?: number, } | { "type": "pong", };

export type ErrorCode = "invalid_json" | "unknown_type" | "invalid_message" | "rate_limited" | "spirit_busy" | "session_ended" | "unavailable" | "internal";

export type SpiritState = "idle" | "thinking" | "speaking";

export type Board = { symbols: Array<BoardSymbol>, };

export type BoardSymbol = { symbol: string, x: number, y: number, };

export type PathPoint = { symbol: string, x: number, y: number, 
/**
 * Milliseconds from the start of the answer; never decreasing.
 */
at_ms: number, };

export type PanPoint = { 
/**
 * Milliseconds from the start of the answer (the same clock as the planchette).
 */
at_ms: number, 
/**
 * -1 full left … 1 full right.
 */
pan: number, 
/**
 * 0 … 1.
 */
gain: number, };

// The protocol's records, in REST bodies and WebSocket frames alike.

/**
 * A séance session as the protocol shows it.
 */
export type Session = { id: string, name: string, 
/**
 * A persona id from `GET /api/personas`.
 */
persona: string, status: SessionStatus, 
/**
 * How many have joined (host included), online or not.
 */
participant_count: number, max_participants: number, created_at: string, };

export type SessionStatus = "active" | "ended";

/**
 * Someone who joined a session. The seat is theirs for the whole session.
 */
export type Participant = { id: string, display_name: string, role: Role, seat: number, };

export type Role = "host" | "participant";

/**
 * A question from a participant or an answer from the spirit.
 */
export type Message = { id: string, session_id: string, kind: MessageKind, 
/**
 * The participant who asked; null for the spirit.
 */
author: Participant | null, content: string, 
/**
 * For a spirit answer, the question it answers.
 */
in_reply_to: string | null, created_at: string, };

export type MessageKind = "question" | "spirit";

// REST bodies.

export type CreateSessionBody = { 
/**
 * 1–100 characters after trimming; no control characters.
 */
name: string, 
/**
 * 1–40 characters after trimming; no control characters.
 */
host_name: string, 
/**
 * A persona id from `GET /api/personas`; the default persona when left out.
 */
persona?: string | null, 
/**
 * 2–12; 8 when left out.
 */
max_participants?: number | null, };

export type JoinSessionBody = { 
/**
 * 1–40 characters after trimming; no control characters.
 */
display_name: string, };

/**
 * The answer to create and join: the session, who you are in it, and how to connect.
 */
export type SessionTicket = { session: Session, participant: Participant, 
/**
 * HS256 JWT for `Authorization: Bearer` and the WebSocket's `?token=`.
 */
token: string, 
/**
 * The WebSocket address, without the token: append `?token=<jwt>`.
 */
websocket_url: string, };

export type MessagesBody = { 
/**
 * Oldest first.
 */
messages: Array<Message>, 
/**
 * Pass as `before` to read the previous page; null when there is none.
 */
next_before: string | null, };

export type PersonasBody = { personas: Array<PersonaSummary>, };

/**
 * What `GET /api/personas` shows: never the steering itself.
 */
export type PersonaSummary = { id: string, name: string, description: string, era: string | null, };

export type HealthBody = { 
/**
 * `healthy` or `degraded`.
 */
status: string, 
/**
 * `connected` or `disconnected`.
 */
database: string, 
/**
 * `connected`, `disconnected`, or `embedded` when the harness runs without Redis.
 */
redis: string, 
/**
 * `postgres` or `sqlite`.
 */
database_backend: string, 
/**
 * Which model answers for the spirit, e.g. `oracle (offline)` or `gemini (gemini-flash-latest)`.
 */
spirit: string, 
/**
 * Who speaks the answers: `none`, `offline (hummed letters)` or `elevenlabs (model)`.
 */
voice: string, timestamp: string, };

/**
 * The protocol's error body: `{"error": {"code", "message"}}`, plus `field` on a 422.
 */
export type ErrorBody = { error: ErrorDetail, };

export type ErrorDetail = { 
/**
 * Stable snake_case code, e.g. `invalid_field`.
 */
code: string, 
/**
 * A human sentence; for a 422 it names the field.
 */
message: string, 
/**
 * The offending field of a 422.
 */
field?: string, };
