//! Identical answers in the same voice (YES, NO and GOODBYE above all) are synthesised
//! once. The key covers the voice, the model, the format and the text, never the text
//! alone. In production the cache is Redis (entries expire after a lifetime, and one
//! larger than the per-entry budget is not kept); in the harness it is in process, within
//! a byte budget, oldest out first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::{Alignment, SpeechPiece};
use crate::redis_client::Redis;

/// What a cached answer is known by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub voice_id: String,
    pub model: String,
    pub format: String,
    pub text: String,
}

impl CacheKey {
    fn as_redis_key(&self, prefix: &str) -> String {
        // Lengths first, so no voice, model or format can run into the next field.
        format!(
            "{prefix}voice:{}:{}:{}:{}:{}:{}:{}",
            self.voice_id.len(),
            self.model.len(),
            self.format.len(),
            self.voice_id,
            self.model,
            self.format,
            self.text
        )
    }
}

fn size_of(pieces: &[SpeechPiece]) -> usize {
    pieces.iter().map(|p| p.audio.len()).sum()
}

#[async_trait]
pub trait VoiceCache: Send + Sync + 'static {
    async fn get(&self, key: &CacheKey) -> Option<Vec<SpeechPiece>>;
    async fn put(&self, key: &CacheKey, pieces: &[SpeechPiece]);
}

#[derive(Default)]
struct Held {
    entries: HashMap<CacheKey, Vec<SpeechPiece>>,
    /// Oldest first.
    order: VecDeque<CacheKey>,
    bytes: usize,
}

/// The harness's cache: at most `budget` bytes of audio, the oldest entry out first.
pub struct InProcessVoiceCache {
    budget: usize,
    state: Mutex<Held>,
}

impl InProcessVoiceCache {
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            state: Mutex::new(Held::default()),
        }
    }

    /// Bytes of audio held.
    pub fn held(&self) -> usize {
        self.state().bytes
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Held> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl VoiceCache for InProcessVoiceCache {
    async fn get(&self, key: &CacheKey) -> Option<Vec<SpeechPiece>> {
        self.state().entries.get(key).cloned()
    }

    async fn put(&self, key: &CacheKey, pieces: &[SpeechPiece]) {
        let size = size_of(pieces);
        if size > self.budget {
            return;
        }
        let mut held = self.state();
        if held.entries.contains_key(key) {
            return;
        }
        while held.bytes + size > self.budget {
            let Some(oldest) = held.order.pop_front() else {
                break;
            };
            if let Some(gone) = held.entries.remove(&oldest) {
                held.bytes -= size_of(&gone);
            }
        }
        held.entries.insert(key.clone(), pieces.to_vec());
        held.order.push_back(key.clone());
        held.bytes += size;
    }
}

#[derive(Serialize, Deserialize)]
struct Stored {
    audio_base64: String,
    alignment: Option<Alignment>,
}

/// Production's cache: one Redis string per answer, with a lifetime.
pub struct RedisVoiceCache {
    redis: Redis,
    prefix: String,
    max_entry_bytes: usize,
    ttl: Duration,
}

impl RedisVoiceCache {
    pub fn new(redis: Redis, prefix: &str, max_entry_bytes: usize, ttl: Duration) -> Self {
        Self {
            redis,
            prefix: prefix.to_owned(),
            max_entry_bytes,
            ttl,
        }
    }
}

#[async_trait]
impl VoiceCache for RedisVoiceCache {
    async fn get(&self, key: &CacheKey) -> Option<Vec<SpeechPiece>> {
        let mut conn = self.redis.connection().await.ok()?;
        let raw: Option<String> = redis::cmd("GET")
            .arg(key.as_redis_key(&self.prefix))
            .query_async(&mut conn)
            .await
            .ok()?;
        let stored: Vec<Stored> = serde_json::from_str(&raw?).ok()?;
        stored
            .into_iter()
            .map(|s| {
                Some(SpeechPiece {
                    audio: base64::engine::general_purpose::STANDARD
                        .decode(s.audio_base64)
                        .ok()?,
                    alignment: s.alignment,
                })
            })
            .collect()
    }

    async fn put(&self, key: &CacheKey, pieces: &[SpeechPiece]) {
        if size_of(pieces) > self.max_entry_bytes {
            return;
        }
        let stored: Vec<Stored> = pieces
            .iter()
            .map(|p| Stored {
                audio_base64: base64::engine::general_purpose::STANDARD.encode(&p.audio),
                alignment: p.alignment.clone(),
            })
            .collect();
        let Ok(value) = serde_json::to_string(&stored) else {
            return;
        };
        let Ok(mut conn) = self.redis.connection().await else {
            return;
        };
        let set: Result<(), redis::RedisError> = redis::cmd("SET")
            .arg(key.as_redis_key(&self.prefix))
            .arg(value)
            .arg("EX")
            .arg(self.ttl.as_secs().max(1))
            .query_async(&mut conn)
            .await;
        if let Err(err) = set {
            tracing::debug!(%err, "could not cache the voice");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str, voice: &str) -> CacheKey {
        CacheKey {
            voice_id: voice.into(),
            model: "m".into(),
            format: "f".into(),
            text: text.into(),
        }
    }

    fn piece(bytes: usize) -> Vec<SpeechPiece> {
        vec![SpeechPiece {
            audio: vec![1; bytes],
            alignment: None,
        }]
    }

    #[tokio::test]
    async fn keeps_within_its_budget_and_keys_by_voice_too() {
        let cache = InProcessVoiceCache::new(100);
        cache.put(&key("YES", "a"), &piece(60)).await;
        assert!(cache.get(&key("YES", "a")).await.is_some());
        assert!(cache.get(&key("YES", "b")).await.is_none(), "another voice");
        cache.put(&key("NO", "a"), &piece(60)).await;
        assert!(
            cache.get(&key("YES", "a")).await.is_none(),
            "the oldest went"
        );
        assert!(cache.get(&key("NO", "a")).await.is_some());
        assert_eq!(cache.held(), 60);
        cache.put(&key("GOODBYE", "a"), &piece(101)).await;
        assert!(
            cache.get(&key("GOODBYE", "a")).await.is_none(),
            "too big to keep"
        );
    }

    #[test]
    fn redis_keys_cannot_run_fields_together() {
        let one = key("b:c", "a").as_redis_key("p:");
        let other = CacheKey {
            voice_id: "a:b".into(),
            ..key("c", "")
        }
        .as_redis_key("p:");
        assert_ne!(one, other);
    }
}
