//! The spirit's turn, as the `spirit` function (and the harness's event source) takes it:
//! for each queue message, the session's unanswered questions oldest first, each claimed
//! in the database, then `spirit_thinking`, `spirit_token`s as the model streams (batched
//! by whole words, at most one push per ~100 ms), and one `spirit_response`, stored as the
//! question's one reply. Past the deadline, or when the model fails or refuses, the
//! response is a stock in-character line with `fallback: true`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use super::planchette::{self, Pace, PathBuilder, PathPoint, special_target};
use super::queue::Ticket;
use super::{Speaker, SpiritProvider, SpiritRequest, Turn};
use crate::board::Board;
use crate::config::SpiritConfig;
use crate::domain::{Message, MessageKind, SessionStatus};
use crate::personas::{Persona, Personas};
use crate::protocol::ServerEvent;
use crate::push::{Audience, Broadcaster};
use crate::store::{Claim, ClaimedQuestion, DynStore, ReplyOutcome, StoreError};

/// The shortest time between two `spirit_token` pushes of one answer.
pub const TOKEN_INTERVAL: Duration = Duration::from_millis(100);

/// Kept back from the invocation's deadline for storing the reply and announcing it.
pub const REPLY_MARGIN: Duration = Duration::from_secs(3);

/// A question claimed this many times without a stored reply gets the fallback line at
/// once: whatever killed its earlier attempts is not given another go.
pub const MAX_ATTEMPTS: u32 = 3;

/// Everything the spirit needs, and nothing more: the store, the pushes, the personas,
/// the board and the model.
#[derive(Clone)]
pub struct Spirit {
    pub store: DynStore,
    pub broadcaster: Broadcaster,
    pub personas: Arc<Personas>,
    pub board: Arc<Board>,
    pub provider: Arc<dyn SpiritProvider>,
    pub config: Arc<SpiritConfig>,
    /// The `@connections` endpoint for tickets that name none.
    pub endpoint: Arc<str>,
}

/// Why a queue message should come back (SQS redelivers it after its visibility timeout).
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    #[error("the turn cannot go on now: {0}")]
    Store(#[from] StoreError),
    /// Another invocation holds the session's oldest question (a queue that delivered a
    /// group's messages at once, or a visibility timeout shorter than the function's):
    /// this message comes back later, when that invocation has finished or died.
    #[error("another invocation is answering this session")]
    Busy,
}

impl Spirit {
    /// The `spirit` function's handler: one batch of queue messages, until `deadline_ms`
    /// (the invocation's deadline in milliseconds since the epoch, as the Lambda context
    /// gives it; 0 for none). A message whose turn failed for a reason worth retrying is
    /// reported as a batch item failure, and so is every message after it (a FIFO queue's
    /// order must hold); all others are deleted by the event source mapping.
    pub async fn handle_batch(&self, event: SqsEvent, deadline_ms: u64) -> SqsBatchResponse {
        let deadline = Deadline::from_epoch_ms(deadline_ms);
        let mut response = SqsBatchResponse::default();
        let mut failed = false;
        for record in event.records {
            let message_id = record.message_id.clone().unwrap_or_default();
            if failed {
                response.add_failure(message_id);
                continue;
            }
            let ticket = match record.body.as_deref().map(serde_json::from_str::<Ticket>) {
                Some(Ok(ticket)) => ticket,
                _ => {
                    // Retrying cannot make it readable: let it go.
                    tracing::warn!(%message_id, "unreadable queue message; dropping it");
                    continue;
                }
            };
            if let Err(err) = self.take_turns(&ticket, deadline).await {
                tracing::warn!(%err, %message_id, session_id = %ticket.session_id, "turn failed; the message will come back");
                failed = true;
                response.add_failure(message_id);
            }
        }
        response
    }

    /// Answers the session's unanswered questions, oldest first, until none is left. The
    /// ticket only says where to look: a ticket whose question was answered already (by
    /// an earlier ticket's turn, or before a redelivery) finds nothing and is done.
    pub async fn take_turns(&self, ticket: &Ticket, deadline: Deadline) -> Result<(), TurnError> {
        let session_id = ticket.session_id;
        let endpoint = ticket.endpoint.as_deref().unwrap_or(&self.endpoint);
        loop {
            let session = match self.store.session(session_id).await {
                Ok(session) => session,
                Err(StoreError::SessionNotFound) => return Ok(()),
                Err(err) => return Err(err.into()),
            };
            if session.status == SessionStatus::Ended {
                let dropped = self.store.drop_unanswered(session_id).await?;
                if dropped > 0 {
                    tracing::info!(%session_id, dropped, "the session ended; its questions go unanswered");
                }
                return Ok(());
            }
            let claimed = match self
                .store
                .claim_next_question(session_id, deadline.epoch_ms)
                .await?
            {
                Claim::Claimed(claimed) => claimed,
                Claim::Nothing => return Ok(()),
                Claim::InProgress => return Err(TurnError::Busy),
            };
            let Some(persona) = self.personas.for_session(&session.persona).cloned() else {
                tracing::error!("no persona is configured");
                return Ok(());
            };
            let left = deadline
                .at
                .saturating_duration_since(Instant::now())
                .saturating_sub(REPLY_MARGIN);
            let budget = self.config.deadline.min(left);
            self.answer(endpoint, &persona, &claimed, budget).await?;
        }
    }

    fn pace(&self) -> Pace {
        Pace {
            symbol_ms: self.config.planchette_symbol_ms,
            gap_ms: self.config.planchette_gap_ms,
        }
    }

    /// Answers one claimed question, start to finish, within `budget`.
    async fn answer(
        &self,
        endpoint: &str,
        persona: &Persona,
        claimed: &ClaimedQuestion,
        budget: Duration,
    ) -> Result<(), TurnError> {
        let question = &claimed.message;
        let session_id = question.session_id;
        if claimed.attempts > 1 {
            tracing::info!(question_id = %question.id, attempts = claimed.attempts, "answering again after an attempt that stored no reply");
        }
        self.broadcaster
            .broadcast(
                endpoint,
                session_id,
                &ServerEvent::SpiritThinking {
                    question_id: question.id,
                },
                Audience::Everyone,
            )
            .await;
        let started = Instant::now();
        let (streamed, outcome) = if claimed.attempts > MAX_ATTEMPTS {
            (
                String::new(),
                Err(super::SpiritError::Refused("too many attempts".into())),
            )
        } else if budget.is_zero() {
            (String::new(), Err(super::SpiritError::Deadline))
        } else {
            let request = self.request_for(persona, question, budget).await;
            self.stream_answer(endpoint, persona, question, &request, budget)
                .await
        };
        let (content, fallback) = match (&outcome, streamed.trim().is_empty()) {
            (Ok(()), false) => (streamed, false),
            _ => {
                tracing::info!(error = ?outcome.as_ref().err(), "the spirit falls back to a stock line");
                (fallback_line(&persona.id, question.id), true)
            }
        };
        let path = planchette::path(&self.board, self.pace(), &content);
        let message = match self.store.store_reply(question.id, content).await {
            Ok(ReplyOutcome::Stored(message)) => message,
            Ok(ReplyOutcome::AlreadyAnswered) => {
                tracing::info!(question_id = %question.id, "already answered; not announcing twice");
                return Ok(());
            }
            Err(StoreError::SessionEnded) => return Ok(()),
            Err(err) => return Err(err.into()),
        };
        tracing::info!(
            question_id = %question.id,
            fallback,
            elapsed_ms = started.elapsed().as_millis() as u64,
            provider = %self.provider.describe(),
            "the spirit answered"
        );
        self.broadcaster
            .broadcast(
                endpoint,
                session_id,
                &ServerEvent::SpiritResponse {
                    message,
                    planchette: path,
                    fallback,
                },
                Audience::Everyone,
            )
            .await;
        Ok(())
    }

    /// The persona and the session's recent conversation, ending with the question.
    async fn request_for(
        &self,
        persona: &Persona,
        question: &Message,
        budget: Duration,
    ) -> SpiritRequest {
        let history = self.config.history;
        let earlier = if history == 0 {
            Vec::new()
        } else {
            self.store
                .messages_before(question.session_id, Some(question.id), history)
                .await
                .map(|page| page.messages)
                .unwrap_or_default()
        };
        let mut turns: Vec<Turn> = Vec::new();
        let mut add = |speaker: Speaker, text: String| match turns.last_mut() {
            Some(last) if last.speaker == speaker => {
                last.text.push('\n');
                last.text.push_str(&text);
            }
            // A conversation starts with the living.
            None if speaker == Speaker::Spirit => {}
            _ => turns.push(Turn { speaker, text }),
        };
        for message in earlier.iter().chain(std::iter::once(question)) {
            match (message.kind, &message.author) {
                (MessageKind::Question, Some(author)) => {
                    add(
                        Speaker::Living,
                        format!("{}: {}", author.display_name, message.content),
                    );
                }
                (MessageKind::Question, None) => add(Speaker::Living, message.content.clone()),
                (MessageKind::Spirit, _) => add(Speaker::Spirit, message.content.clone()),
            }
        }
        SpiritRequest {
            persona_id: persona.id.clone(),
            persona_name: persona.name.clone(),
            system: persona.system_instruction(),
            conversation: turns,
            question: question.content.clone(),
            temperature: persona.temperature,
            max_output_tokens: self.config.max_output_tokens,
            budget,
        }
    }

    /// Runs the provider under the deadline and streams whole words as `spirit_token`s.
    /// Returns the words sent (at most the persona's limit) and how the provider ended.
    async fn stream_answer(
        &self,
        endpoint: &str,
        persona: &Persona,
        question: &Message,
        request: &SpiritRequest,
        budget: Duration,
    ) -> (String, Result<(), super::SpiritError>) {
        let (tx, mut rx) = mpsc::channel::<String>(64);
        let producer = async move {
            match tokio::time::timeout(budget, self.provider.stream(request, tx)).await {
                Ok(result) => result,
                Err(_) => Err(super::SpiritError::Deadline),
            }
        };
        let consumer = async {
            let broadcaster = &self.broadcaster;
            let mut builder = PathBuilder::new(&self.board, self.pace());
            let max_words = persona.max_words.min(super::super::personas::MAX_WORDS_CAP) as usize;
            let mut pending = String::new();
            let mut sent_words: Vec<String> = Vec::new();
            let mut seq: u64 = 0;
            let mut last_push = Instant::now()
                .checked_sub(TOKEN_INTERVAL)
                .unwrap_or_else(Instant::now);
            let mut open = true;
            // A lone first word that may be the whole answer (YES, NO, GOODBYE) waits for the
            // next word or the end, so it can go to that word's target.
            let mut holding = false;
            while open && sent_words.len() < max_words {
                let wait = (last_push + TOKEN_INTERVAL).saturating_duration_since(Instant::now());
                let flushable = !holding && complete_end(&pending).is_some();
                tokio::select! {
                    piece = rx.recv() => match piece {
                        Some(piece) => {
                            pending.push_str(&piece);
                            holding = false;
                        }
                        None => open = false,
                    },
                    () = tokio::time::sleep(wait), if flushable => {}
                }
                if open && Instant::now() < last_push + TOKEN_INTERVAL {
                    continue;
                }
                // Whole words only, unless the stream has ended.
                let mut batch: Vec<String> = if open {
                    match complete_end(&pending) {
                        Some(end) => {
                            let words = pending[..end]
                                .split_whitespace()
                                .map(str::to_owned)
                                .collect();
                            pending.drain(..end);
                            words
                        }
                        None => Vec::new(),
                    }
                } else {
                    std::mem::take(&mut pending)
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect()
                };
                batch.truncate(max_words - sent_words.len());
                if open
                    && sent_words.is_empty()
                    && batch.len() == 1
                    && special_target(&batch[0]).is_some()
                {
                    pending.insert_str(0, &batch[0]);
                    holding = true;
                    continue;
                }
                if batch.is_empty() {
                    continue;
                }
                let mut text = String::new();
                for word in &batch {
                    if !sent_words.is_empty() || !text.is_empty() {
                        text.push(' ');
                    }
                    text.push_str(word);
                }
                sent_words.extend(batch);
                let points: Vec<PathPoint> = match special_target(&text) {
                    Some(target) if !open && seq == 0 && sent_words.len() == 1 => {
                        builder.target(target)
                    }
                    _ => builder.push(&text),
                };
                if seq == 0 {
                    // Only what `session_state.spirit` shows; the answer goes on without it.
                    if let Err(err) = self.store.mark_speaking(question.id).await {
                        tracing::debug!(%err, "could not mark the question speaking");
                    }
                }
                broadcaster
                    .broadcast(
                        endpoint,
                        question.session_id,
                        &ServerEvent::SpiritToken {
                            question_id: question.id,
                            seq,
                            text,
                            planchette: points,
                        },
                        Audience::Everyone,
                    )
                    .await;
                seq += 1;
                last_push = Instant::now();
            }
            // Dropping the receiver tells the provider to stop (the word limit was reached).
            drop(rx);
            sent_words.join(" ")
        };
        let (outcome, text) = tokio::join!(producer, consumer);
        (text, outcome)
    }
}

/// Where the complete words of `text` end: its last whitespace that follows a word.
fn complete_end(text: &str) -> Option<usize> {
    let end = text.rfind(char::is_whitespace)?;
    if text[..end].trim().is_empty() {
        None
    } else {
        Some(end)
    }
}

/// When the invocation ends: as an `Instant` to wait on, and in milliseconds since the
/// epoch to hold a claim until.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub at: Instant,
    pub epoch_ms: i64,
}

impl Deadline {
    /// From the Lambda context's deadline (milliseconds since the epoch); 0 (unknown)
    /// allows a quarter of an hour, Lambda's longest timeout.
    pub fn from_epoch_ms(deadline_ms: u64) -> Self {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let deadline_ms = if deadline_ms == 0 {
            now_ms + 15 * 60 * 1000
        } else {
            deadline_ms
        };
        Self {
            at: Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(now_ms)),
            epoch_ms: i64::try_from(deadline_ms).unwrap_or(i64::MAX),
        }
    }
}

/// A stock line in the persona's voice, for when the model fails.
pub fn fallback_line(persona_id: &str, question_id: Uuid) -> String {
    let lines: &[&str] = match persona_id {
        "madame-veyra" => &[
            "The mists cloud my sight",
            "The veil is thick tonight, dear ones",
        ],
        "captain-hollow" => &["Fog on the water", "Heavy seas, ask again"],
        "the-archivist" => &["Record unavailable", "That volume is missing"],
        _ => &["The spirits are silent", "The veil is thick tonight"],
    };
    let index = (question_id.as_u128() % lines.len() as u128) as usize;
    lines[index].to_owned()
}
