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
use crate::domain::{Message, MessageKind};
use crate::personas::{Persona, Personas};
use crate::protocol::ServerEvent;
use crate::push::{Audience, Broadcaster};
use crate::store::{Claim, ClaimedQuestion, DynStore, ReplyOutcome, StoreError};
use crate::voice::cache::{CacheKey, VoiceCache};
use crate::voice::{SpeechPiece, Timeline, VoiceProvider};

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
    /// The voice, when answers are spoken.
    pub voice: Option<Arc<dyn VoiceProvider>>,
    pub voice_cache: Arc<dyn VoiceCache>,
}

/// Raw audio bytes per `spirit_audio` message at most: base64 makes 24 KB of it, leaving
/// room for the pan track and the envelope within API Gateway's 32 KB frame.
pub const AUDIO_CHUNK_BYTES: usize = 18 * 1024;
/// API Gateway's frame.
pub const FRAME_BYTES: usize = 32 * 1024;

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
        // What the last answered mark said: whether the session still owes an answer.
        // `None` before the first claim, and after a turn that marked nothing.
        let mut owed = None;
        loop {
            // The claim takes the session's lock (a transaction that writes, so a commit to
            // flush), and most answers leave nothing behind them: the answered mark reads
            // whether another question waits. Nothing missed: a question accepted after
            // that read has its own queue message, sent once its acceptance committed.
            if owed.take() == Some(false) {
                return Ok(());
            }
            // The claim reads the session under its lock: no read of its own here.
            let claimed = match self
                .store
                .claim_next_question(session_id, deadline.epoch_ms, self.config.history)
                .await?
            {
                Claim::Claimed(claimed) => claimed,
                Claim::Nothing => return Ok(()),
                Claim::InProgress => return Err(TurnError::Busy),
                Claim::Replied { question, reply } => {
                    owed = Some(self.announce_stored(endpoint, &question, reply).await?);
                    continue;
                }
                Claim::Ended => {
                    let dropped = self.store.drop_unanswered(session_id).await?;
                    // One line whether or not any were dropped: a turn that finds its
                    // session ended is worth noting either way.
                    tracing::info!(%session_id, dropped, "the session ended; its questions go unanswered");
                    return Ok(());
                }
            };
            let session = &claimed.session;
            let Some(persona) = self.personas.for_session(&session.persona).cloned() else {
                tracing::error!("no persona is configured");
                return Ok(());
            };
            let left = deadline
                .at
                .saturating_duration_since(Instant::now())
                .saturating_sub(REPLY_MARGIN);
            let budget = self.config.deadline.min(left);
            owed = self
                .answer(
                    endpoint,
                    &persona,
                    &claimed,
                    session.max_participants,
                    budget,
                )
                .await?;
        }
    }

    fn pace(&self) -> Pace {
        Pace {
            symbol_ms: self.config.planchette_symbol_ms,
            gap_ms: self.config.planchette_gap_ms,
        }
    }

    /// Answers one claimed question, start to finish, within `budget`; what its answered
    /// mark said of the session (see [`Store::mark_answered`](crate::store::Store::mark_answered)),
    /// `None` when the answer was not this worker's to announce.
    async fn answer(
        &self,
        endpoint: &str,
        persona: &Persona,
        claimed: &ClaimedQuestion,
        seats: u32,
        budget: Duration,
    ) -> Result<Option<bool>, TurnError> {
        let question = &claimed.message;
        let session_id = question.session_id;
        // `attempts` above 1: the earlier ones died before they stored a reply.
        let attempts = claimed.attempts;
        tracing::info!(question_id = %question.id, attempts, "the spirit takes the question");
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
        let reply_id = Uuid::now_v7();
        let skip_model = if claimed.attempts > MAX_ATTEMPTS {
            Some(super::SpiritError::Refused("too many attempts".into()))
        } else if budget.is_zero() {
            Some(super::SpiritError::Deadline)
        } else {
            None
        };
        let settle = |text: String, outcome: &Result<(), super::SpiritError>| match (
            outcome,
            text.trim().is_empty(),
        ) {
            (Ok(()), false) => (text, false),
            _ => {
                tracing::info!(error = ?outcome.as_ref().err(), "the spirit falls back to a stock line");
                (persona.fallback_line(question.id), true)
            }
        };
        let (content, fallback, path) = match &self.voice {
            // Spoken: the whole answer first, then the voice leads the tokens and the
            // planchette, so each letter is reached as it is heard.
            Some(voice) => {
                let (text, outcome) = match skip_model {
                    Some(err) => (String::new(), Err(err)),
                    None => {
                        let request = self.request_for(persona, claimed, budget);
                        self.collect_answer(persona, &request, budget).await
                    }
                };
                let (content, fallback) = settle(text, &outcome);
                let spoken = Spoken {
                    endpoint,
                    question,
                    reply_id,
                    seats,
                    voice_id: persona
                        .voice_id
                        .clone()
                        .unwrap_or_else(|| persona.id.clone()),
                };
                let path = self.speak(voice.as_ref(), &spoken, &content).await;
                (content, fallback, path)
            }
            None => {
                let (streamed, outcome) = match skip_model {
                    Some(err) => (String::new(), Err(err)),
                    None => {
                        let request = self.request_for(persona, claimed, budget);
                        self.stream_answer(endpoint, persona, question, &request, budget)
                            .await
                    }
                };
                let (content, fallback) = settle(streamed, &outcome);
                let path = planchette::path(&self.board, self.pace(), &content);
                (content, fallback, path)
            }
        };
        let message = match self.store.store_reply(question.id, reply_id, content).await {
            Ok(ReplyOutcome::Stored(message)) => message,
            Ok(ReplyOutcome::AlreadyAnswered) => {
                tracing::info!(question_id = %question.id, "already answered; not announcing twice");
                return Ok(None);
            }
            Err(StoreError::SessionEnded) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        tracing::info!(
            question_id = %question.id,
            fallback,
            elapsed_ms = started.elapsed().as_millis() as u64,
            provider = %self.provider.describe(),
            "the spirit answered"
        );
        self.announce(endpoint, question.id, message, path, fallback)
            .await
            .map(Some)
    }

    /// Pushes an answer to the room, and only then marks its question answered: the next
    /// question's turn may begin only now (see `Store::store_reply`). Whether the session
    /// still owes an answer.
    async fn announce(
        &self,
        endpoint: &str,
        question_id: Uuid,
        message: Message,
        planchette: Vec<PathPoint>,
        fallback: bool,
    ) -> Result<bool, TurnError> {
        let session_id = message.session_id;
        self.broadcaster
            .broadcast(
                endpoint,
                session_id,
                &ServerEvent::SpiritResponse {
                    message,
                    planchette,
                    fallback,
                },
                Audience::Everyone,
            )
            .await;
        Ok(self.store.mark_answered(question_id).await?)
    }

    /// Announces a reply that a worker stored but died before announcing, then settles
    /// its question. The path is paced afresh (a spoken answer's timings died with its
    /// worker), and `fallback` is not known any more, so it says `false`.
    async fn announce_stored(
        &self,
        endpoint: &str,
        claimed: &ClaimedQuestion,
        reply: Message,
    ) -> Result<bool, TurnError> {
        let question_id = claimed.message.id;
        tracing::info!(%question_id, attempts = claimed.attempts, "a stored reply was never announced; announcing it");
        let path = planchette::path(&self.board, self.pace(), &reply.content);
        self.announce(endpoint, question_id, reply, path, false)
            .await
    }

    /// The model's whole answer, cut at the persona's word limit, without streaming it.
    async fn collect_answer(
        &self,
        persona: &Persona,
        request: &SpiritRequest,
        budget: Duration,
    ) -> (String, Result<(), super::SpiritError>) {
        let (tx, mut rx) = mpsc::channel::<String>(64);
        let max_words = persona.max_words.min(super::super::personas::MAX_WORDS_CAP) as usize;
        let producer = async move {
            // Until the provider ends, the deadline passes, or the turn has all the words
            // it takes (no waiting for a slow model's next piece then). `produce` is at the
            // end of the file, where it moves no other line (mutation testing names by line).
            produce(self.provider.as_ref(), request, tx, budget).await
        };
        let consumer = async move {
            let mut text = String::new();
            while let Some(piece) = rx.recv().await {
                text.push_str(&piece);
                // One word past the limit tells the last is whole.
                if text.split_whitespace().count() > max_words {
                    break;
                }
            }
            // Dropping the receiver tells the provider to stop.
            drop(rx);
            super::cut_words(&text, max_words as u32)
        };
        let (outcome, text) = tokio::join!(producer, consumer);
        (text, outcome)
    }

    /// Speaks `content`: `spirit_token`s as the voice reaches each word, their planchette
    /// points at the moments the letters are heard, and the audio in `spirit_audio`
    /// pieces, each listener with its own pan track. A voice that fails before its first
    /// piece leaves the answer exactly as without one (one token, today's pacing); one
    /// that fails later has the rest paced on from the last letter heard. Returns the
    /// whole path.
    async fn speak(
        &self,
        voice: &dyn VoiceProvider,
        spoken: &Spoken<'_>,
        content: &str,
    ) -> Vec<PathPoint> {
        let key = CacheKey {
            voice_id: spoken.voice_id.clone(),
            model: voice.model(),
            format: voice.format(),
            text: content.to_owned(),
        };
        let cached = self.voice_cache.get(&key).await;
        let from_cache = cached.is_some();
        let (tx, mut rx) = mpsc::channel::<SpeechPiece>(16);
        let producer = async move {
            match cached {
                Some(pieces) => {
                    for piece in pieces {
                        if tx.send(piece).await.is_err() {
                            break;
                        }
                    }
                    Ok(())
                }
                None => voice.speak(&spoken.voice_id, content, tx).await,
            }
        };
        let consumer = async {
            let mut delivery = Delivery::new(self, spoken, content, voice.format());
            let mut kept: Vec<SpeechPiece> = Vec::new();
            while let Some(piece) = rx.recv().await {
                delivery.heard(&piece).await;
                if !from_cache {
                    kept.push(piece);
                }
            }
            (delivery, kept)
        };
        let (outcome, (delivery, kept)) = tokio::join!(producer, consumer);
        match &outcome {
            Ok(()) if !from_cache && !kept.is_empty() => self.voice_cache.put(&key, &kept).await,
            Ok(()) => {}
            Err(err) => {
                tracing::warn!(%err, voice = %voice.describe(), "the voice failed; the answer goes on without it")
            }
        }
        delivery.finish().await
    }

    /// The persona and the session's recent conversation (read with the claim), ending
    /// with the question.
    fn request_for(
        &self,
        persona: &Persona,
        claimed: &ClaimedQuestion,
        budget: Duration,
    ) -> SpiritRequest {
        let question = &claimed.message;
        let earlier = &claimed.history;
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
                // One JSON line per question: a name or a question holding a newline and
                // a made-up `Name: …` stays inside its own string, so no one can put
                // words in another's mouth.
                (MessageKind::Question, Some(author)) => add(
                    Speaker::Living,
                    serde_json::json!({"asker": author.display_name, "question": message.content})
                        .to_string(),
                ),
                (MessageKind::Question, None) => add(
                    Speaker::Living,
                    serde_json::json!({"question": message.content}).to_string(),
                ),
                (MessageKind::Spirit, _) => add(Speaker::Spirit, message.content.clone()),
            }
        }
        SpiritRequest {
            persona_id: persona.id.clone(),
            persona_name: persona.name.clone(),
            oracle_lines: persona.oracle.clone(),
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
            // Until the provider ends, the deadline passes, or the turn has all the words
            // it takes (no waiting for a slow model's next piece then). `produce` is at the
            // end of the file, where it moves no other line (mutation testing names by line).
            produce(self.provider.as_ref(), request, tx, budget).await
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

/// Who a spoken answer is for.
struct Spoken<'a> {
    endpoint: &'a str,
    question: &'a Message,
    reply_id: Uuid,
    /// The table's size, for each listener's pan.
    seats: u32,
    voice_id: String,
}

/// A spoken answer going out: the words heard so far become tokens, and the audio goes
/// out a piece behind, so the last can say it is the last.
struct Delivery<'a> {
    spirit: &'a Spirit,
    spoken: &'a Spoken<'a>,
    chars: Vec<char>,
    /// How many of `chars` have gone out as tokens.
    sent: usize,
    timeline: Timeline,
    builder: PathBuilder<'a>,
    path: Vec<PathPoint>,
    token_seq: u64,
    audio_seq: u64,
    format: String,
    /// Audio and the points heard with it, not yet sent.
    held: Option<(Vec<u8>, Vec<PathPoint>)>,
    special: Option<&'static str>,
}

impl<'a> Delivery<'a> {
    fn new(spirit: &'a Spirit, spoken: &'a Spoken<'a>, content: &str, format: String) -> Self {
        Self {
            spirit,
            spoken,
            chars: content.chars().collect(),
            sent: 0,
            timeline: Timeline::default(),
            builder: PathBuilder::new(&spirit.board, spirit.pace()),
            path: Vec::new(),
            token_seq: 0,
            audio_seq: 0,
            format,
            held: None,
            special: special_target(content),
        }
    }

    /// One piece of audio arrived: the words it completes go out, then the audio before it.
    async fn heard(&mut self, piece: &SpeechPiece) {
        if let Some(alignment) = &piece.alignment {
            self.timeline.extend(alignment);
        }
        let heard = self.timeline.heard.len().min(self.chars.len());
        // Whole words only: up to the last space heard, or everything once all is heard.
        let upto = if heard == self.chars.len() {
            heard
        } else {
            self.chars[..heard]
                .iter()
                .rposition(|c| c.is_whitespace())
                .map_or(self.sent, |i| i + 1)
        };
        let points = if upto > self.sent && self.special.is_none() {
            let timed: Vec<(char, u64)> = (self.sent..upto)
                .map(|i| (self.chars[i], self.timeline.heard[i].1))
                .collect();
            let points = self.builder.push_timed(&timed);
            self.token((self.sent, upto), points.clone()).await;
            self.sent = upto;
            points
        } else {
            Vec::new()
        };
        if let Some((audio, earlier)) = self.held.take() {
            self.audio(audio, &earlier, false).await;
        }
        self.held = Some((piece.audio.clone(), points));
    }

    /// Everything not heard goes out paced on; the held audio goes out as the last.
    async fn finish(mut self) -> Vec<PathPoint> {
        if self.sent < self.chars.len() {
            let points = match self.special {
                Some(target) => self.builder.target(target),
                None => {
                    let rest: String = self.chars[self.sent..].iter().collect();
                    self.builder.push(&rest)
                }
            };
            self.token((self.sent, self.chars.len()), points.clone())
                .await;
            self.sent = self.chars.len();
            if let Some((_, held_points)) = &mut self.held {
                held_points.extend(points);
            }
        }
        if let Some((audio, points)) = self.held.take() {
            self.audio(audio, &points, true).await;
        }
        self.path
    }

    async fn token(&mut self, (from, to): (usize, usize), points: Vec<PathPoint>) {
        let words: Vec<String> = self.chars[from..to]
            .iter()
            .collect::<String>()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if words.is_empty() {
            self.path.extend(points);
            return;
        }
        let mut text = words.join(" ");
        if from > 0 {
            text.insert(0, ' ');
        }
        if self.token_seq == 0
            && let Err(err) = self
                .spirit
                .store
                .mark_speaking(self.spoken.question.id)
                .await
        {
            tracing::debug!(%err, "could not mark the question speaking");
        }
        self.path.extend(points.iter().cloned());
        self.spirit
            .broadcaster
            .broadcast(
                self.spoken.endpoint,
                self.spoken.question.session_id,
                &ServerEvent::SpiritToken {
                    question_id: self.spoken.question.id,
                    seq: self.token_seq,
                    text,
                    planchette: points,
                },
                Audience::Everyone,
            )
            .await;
        self.token_seq += 1;
    }

    /// One piece of audio, in messages that each fit one frame; the pan track (from the
    /// planchette points heard with it) rides on the first.
    async fn audio(&mut self, audio: Vec<u8>, points: &[PathPoint], last: bool) {
        use base64::Engine;
        if audio.is_empty() && !last {
            return;
        }
        let seats = self.spoken.seats;
        let sources: Vec<(u64, f64, f64)> = points.iter().map(|p| (p.at_ms, p.x, p.y)).collect();
        let track_len = serde_json::to_string(&crate::voice::pan::track(0, seats, &sources))
            .map_or(0, |t| t.len());
        // Room for the track (with a margin for other seats' numbers) and the envelope.
        let room = FRAME_BYTES.saturating_sub(track_len + track_len / 4 + 1024);
        let chunk = AUDIO_CHUNK_BYTES.min(room / 4 * 3).max(1024);
        let pieces: Vec<&[u8]> = if audio.is_empty() {
            vec![&[][..]]
        } else {
            audio.chunks(chunk).collect()
        };
        let count = pieces.len();
        for (i, bytes) in pieces.into_iter().enumerate() {
            let audio_base64 = base64::engine::general_purpose::STANDARD.encode(bytes);
            let with_track = i == 0;
            let seq = self.audio_seq;
            self.spirit
                .broadcaster
                .broadcast_each(self.spoken.endpoint, self.spoken.question.session_id, |c| {
                    ServerEvent::SpiritAudio {
                        message_id: self.spoken.reply_id,
                        question_id: self.spoken.question.id,
                        seq,
                        last: last && i + 1 == count,
                        format: self.format.clone(),
                        audio_base64: audio_base64.clone(),
                        pan_track: if with_track {
                            crate::voice::pan::track(c.participant.seat, seats, &sources)
                        } else {
                            Vec::new()
                        },
                    }
                })
                .await;
            self.audio_seq += 1;
        }
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

/// Runs the provider under the deadline, and returns as soon as the turn has all it takes
/// (its receiver dropped at the word limit) rather than when the provider next tries to
/// send: a slow model must not hold up, or turn into the fallback, an answer whose words
/// are all in.
async fn produce(
    provider: &dyn SpiritProvider,
    request: &SpiritRequest,
    out: mpsc::Sender<String>,
    budget: Duration,
) -> Result<(), super::SpiritError> {
    let taken = out.clone();
    tokio::select! {
        result = tokio::time::timeout(budget, provider.stream(request, out)) => {
            result.unwrap_or(Err(super::SpiritError::Deadline))
        }
        () = taken.closed() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now_ms() -> i64 {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        i64::try_from(since_epoch.as_millis()).unwrap()
    }

    #[test]
    fn an_unknown_deadline_allows_a_quarter_of_an_hour() {
        let before = now_ms();
        let deadline = Deadline::from_epoch_ms(0);
        let after = now_ms();
        let quarter = 15 * 60 * 1000;
        assert!(
            (before + quarter..=after + quarter).contains(&deadline.epoch_ms),
            "{} is not a quarter of an hour after {before}",
            deadline.epoch_ms
        );
        let left = deadline.at.saturating_duration_since(Instant::now());
        assert!(
            left > Duration::from_secs(15 * 60 - 5) && left <= Duration::from_secs(15 * 60),
            "{left:?}"
        );
    }

    #[test]
    fn a_known_deadline_is_kept_as_given() {
        let given = now_ms() + 42_000;
        let deadline = Deadline::from_epoch_ms(u64::try_from(given).unwrap());
        assert_eq!(deadline.epoch_ms, given);
        let left = deadline.at.saturating_duration_since(Instant::now());
        assert!(
            left > Duration::from_secs(37) && left <= Duration::from_secs(42),
            "{left:?}"
        );
        // One already past leaves nothing, and does not wrap around.
        let past = Deadline::from_epoch_ms(1_000);
        assert_eq!(past.epoch_ms, 1_000);
        assert!(past.at <= Instant::now());
    }

    #[test]
    fn complete_words_end_at_the_last_whitespace_after_a_word() {
        assert_eq!(complete_end("THE SEA"), Some(3));
        assert_eq!(complete_end("THE SEA "), Some(7));
        assert_eq!(complete_end("ab\ncd"), Some(2));
        // Nothing whole yet: no whitespace, or only whitespace before it.
        assert_eq!(complete_end("SEA"), None);
        assert_eq!(complete_end("  SEA"), None);
        assert_eq!(complete_end(""), None);
        assert_eq!(complete_end("   "), None);
    }
}
