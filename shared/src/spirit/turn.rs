//! The spirit's turn: for each queued question, `spirit_thinking`, then `spirit_token`s as
//! the model streams (batched by whole words, at most one push per ~100 ms), then one
//! `spirit_response`, stored with `in_reply_to`. Past the deadline, or when the model
//! fails or refuses, the response is a stock in-character line with `fallback: true`.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use super::planchette::{self, Pace, PathBuilder, PathPoint, special_target};
use super::queue::QueuedQuestion;
use super::{Speaker, SpiritRequest, Turn};
use crate::app::App;
use crate::domain::{Message, MessageKind};
use crate::personas::Persona;
use crate::protocol::{ServerEvent, SpiritState};
use crate::push::Audience;
use crate::store::NewMessage;

/// The shortest time between two `spirit_token` pushes of one answer.
pub const TOKEN_INTERVAL: Duration = Duration::from_millis(100);

/// What to do once a question is queued.
pub enum AfterQueueing {
    /// This caller holds the answerer lock: answer until the queue is empty.
    Answer,
    /// Someone else is answering this session.
    Nothing,
    /// The queue could not take it: answer this one question directly, rather than leave
    /// it thinking forever.
    AnswerAlone(QueuedQuestion),
}

/// Queues an accepted (stored and announced) question.
pub async fn enqueue(app: &App, question: QueuedQuestion) -> AfterQueueing {
    match app.spirit_queue.enqueue(&question).await {
        Ok(true) => AfterQueueing::Answer,
        Ok(false) => AfterQueueing::Nothing,
        Err(err) => {
            tracing::warn!(%err, "spirit queue unavailable; answering without it");
            AfterQueueing::AnswerAlone(question)
        }
    }
}

/// Does what [`enqueue`] said, once the accept lock is released.
pub async fn take_turn(app: &App, endpoint: &str, session_id: Uuid, next: AfterQueueing) {
    match next {
        AfterQueueing::Answer => answer_until_empty(app, endpoint, session_id).await,
        AfterQueueing::Nothing => {}
        AfterQueueing::AnswerAlone(question) => answer(app, endpoint, &question).await,
    }
}

async fn answer_until_empty(app: &App, endpoint: &str, session_id: Uuid) {
    loop {
        let head = match app.spirit_queue.head(session_id).await {
            Ok(head) => head,
            Err(err) => {
                tracing::warn!(%err, "spirit queue unavailable mid-turn");
                return;
            }
        };
        let Some(question) = head else {
            let _ = app.spirit_queue.finish(session_id, Uuid::nil()).await;
            return;
        };
        answer(app, endpoint, &question).await;
        match app.spirit_queue.finish(session_id, question.id).await {
            Ok(true) => continue,
            Ok(false) => return,
            Err(err) => {
                tracing::warn!(%err, "spirit queue unavailable after an answer");
                return;
            }
        }
    }
}

fn pace(app: &App) -> Pace {
    Pace {
        symbol_ms: app.config.spirit.planchette_symbol_ms,
        gap_ms: app.config.spirit.planchette_gap_ms,
    }
}

/// Answers one question, start to finish.
pub async fn answer(app: &App, endpoint: &str, question: &QueuedQuestion) {
    let session_id = question.session_id;
    let broadcaster = app.broadcaster();
    let Some(persona) = app.personas.for_session(&question.persona).cloned() else {
        tracing::error!("no persona is configured");
        return;
    };
    let _ = app
        .spirit_queue
        .set_state(session_id, SpiritState::Thinking)
        .await;
    broadcaster
        .broadcast(
            endpoint,
            session_id,
            &ServerEvent::SpiritThinking {
                question_id: question.id,
            },
            Audience::Everyone,
        )
        .await;

    let request = request_for(app, &persona, question).await;
    let started = Instant::now();
    let (streamed, outcome) = stream_answer(app, endpoint, &persona, question, &request).await;
    let (content, fallback) = match (&outcome, streamed.trim().is_empty()) {
        (Ok(()), false) => (streamed, false),
        _ => {
            tracing::info!(error = ?outcome.as_ref().err(), "the spirit falls back to a stock line");
            (fallback_line(&persona.id, question.id), true)
        }
    };
    let path = planchette::path(&app.board, pace(app), &content);
    let stored = app
        .store
        .add_message(NewMessage {
            id: None,
            session_id,
            kind: MessageKind::Spirit,
            author: None,
            content: content.clone(),
            in_reply_to: Some(question.id),
        })
        .await;
    let message = match stored {
        Ok(message) => message,
        Err(err) => {
            tracing::warn!(%err, "the spirit's answer could not be stored");
            Message {
                id: Uuid::now_v7(),
                session_id,
                kind: MessageKind::Spirit,
                author: None,
                content,
                in_reply_to: Some(question.id),
                created_at: chrono::Utc::now(),
            }
        }
    };
    tracing::info!(
        question_id = %question.id,
        fallback,
        elapsed_ms = started.elapsed().as_millis() as u64,
        provider = %app.spirit.describe(),
        "the spirit answered"
    );
    // Done with this one: a sync from now on sees an idle spirit, until the next begins.
    let _ = app
        .spirit_queue
        .set_state(session_id, SpiritState::Idle)
        .await;
    broadcaster
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
}

/// The persona and the session's recent conversation, ending with the question.
async fn request_for(app: &App, persona: &Persona, question: &QueuedQuestion) -> SpiritRequest {
    let history = app.config.spirit.history;
    let earlier = if history == 0 {
        Vec::new()
    } else {
        app.store
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
    for message in earlier {
        match (message.kind, message.author) {
            (MessageKind::Question, Some(author)) => {
                add(
                    Speaker::Living,
                    format!("{}: {}", author.display_name, message.content),
                );
            }
            (MessageKind::Question, None) => add(Speaker::Living, message.content),
            (MessageKind::Spirit, _) => add(Speaker::Spirit, message.content),
        }
    }
    add(
        Speaker::Living,
        format!("{}: {}", question.author.display_name, question.content),
    );
    SpiritRequest {
        persona_id: persona.id.clone(),
        persona_name: persona.name.clone(),
        system: persona.system_instruction(),
        conversation: turns,
        question: question.content.clone(),
        temperature: persona.temperature,
        max_output_tokens: app.config.spirit.max_output_tokens,
        budget: app.config.spirit.deadline,
    }
}

/// Runs the provider under the deadline and streams whole words as `spirit_token`s.
/// Returns the words sent (at most the persona's limit) and how the provider ended.
async fn stream_answer(
    app: &App,
    endpoint: &str,
    persona: &Persona,
    question: &QueuedQuestion,
    request: &SpiritRequest,
) -> (String, Result<(), super::SpiritError>) {
    let (tx, mut rx) = mpsc::channel::<String>(64);
    let deadline = app.config.spirit.deadline;
    let producer = async move {
        match tokio::time::timeout(deadline, app.spirit.stream(request, tx)).await {
            Ok(result) => result,
            Err(_) => Err(super::SpiritError::Deadline),
        }
    };
    let consumer = async {
        let broadcaster = app.broadcaster();
        let mut builder = PathBuilder::new(&app.board, pace(app));
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
                let _ = app
                    .spirit_queue
                    .set_state(question.session_id, SpiritState::Speaking)
                    .await;
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

/// Where the complete words of `text` end: its last whitespace that follows a word.
fn complete_end(text: &str) -> Option<usize> {
    let end = text.rfind(char::is_whitespace)?;
    if text[..end].trim().is_empty() {
        None
    } else {
        Some(end)
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
