//! The spirit's voice: a speech provider behind one streaming trait (ElevenLabs, or the
//! offline synthesiser), each piece of audio with the alignment of the characters it
//! speaks; the cache of identical answers; and the stereo maths that places the voice for
//! each seat at the table.

pub mod cache;
pub mod elevenlabs;
pub mod offline;
pub mod pan;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub use pan::{PanPoint, pan_at};

/// Which characters a piece of audio speaks, and when (seconds from the start of the
/// answer's audio, or of the piece: [`Timeline`] tells them apart). ElevenLabs' shape.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Alignment {
    pub characters: Vec<String>,
    pub character_start_times_seconds: Vec<f64>,
    pub character_end_times_seconds: Vec<f64>,
}

/// One piece of synthesised speech as it arrives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeechPiece {
    pub audio: Vec<u8>,
    pub alignment: Option<Alignment>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VoiceError {
    #[error("the voice service refused the key (401): {0}")]
    Unauthorized(String),
    #[error("the voice service refused the request (422): {0}")]
    Invalid(String),
    #[error("the voice service is rate limited (429): {0}")]
    RateLimited(String),
    #[error("the voice service answered {status}: {message}")]
    Upstream { status: u16, message: String },
    #[error("the voice service could not be reached: {0}")]
    Transport(String),
    #[error("the voice stream ended early: {0}")]
    Cut(String),
    #[error("the voice service sent something unreadable: {0}")]
    Malformed(String),
    #[error("no voice is configured for this persona")]
    NoVoice,
}

/// Speaks text, streaming pieces into `out` as they are produced. The text answer never
/// waits on a failure here: the turn carries on without the voice.
#[async_trait]
pub trait VoiceProvider: Send + Sync + 'static {
    /// What logs and `/health` call it, e.g. `elevenlabs (eleven_flash_v2_5)`.
    fn describe(&self) -> String;

    /// The encoding of the audio, e.g. `mp3_44100_128`.
    fn format(&self) -> String;

    /// The model, for the cache key.
    fn model(&self) -> String;

    async fn speak(
        &self,
        voice_id: &str,
        text: &str,
        out: mpsc::Sender<SpeechPiece>,
    ) -> Result<(), VoiceError>;
}

/// The configured voice, if any. Building it does no network I/O.
pub fn build_voice(config: &crate::config::VoiceConfig) -> Option<Arc<dyn VoiceProvider>> {
    match config {
        crate::config::VoiceConfig::None => None,
        crate::config::VoiceConfig::Offline => Some(Arc::new(offline::OfflineVoice)),
        crate::config::VoiceConfig::ElevenLabs {
            api_key,
            base_url,
            model,
            output_format,
        } => Some(Arc::new(elevenlabs::ElevenLabs::new(
            {
                crate::tls::install_crypto_provider();
                reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .build()
                    .unwrap_or_default()
            },
            base_url.clone(),
            api_key.clone(),
            model.clone(),
            output_format.clone(),
        ))),
    }
}

/// The answer's characters in order, each with when it is heard (ms from the start of
/// the answer's audio), built from the alignments of the pieces as they arrive.
/// ElevenLabs' streamed pieces may count time from the start of the piece or of the whole
/// audio: a piece whose first character starts before the last one heard is taken to
/// count from its own start, and is shifted by what came before it.
#[derive(Debug, Default)]
pub struct Timeline {
    pub heard: Vec<(char, u64)>,
    end_s: f64,
}

impl Timeline {
    pub fn extend(&mut self, alignment: &Alignment) {
        let first = alignment
            .character_start_times_seconds
            .first()
            .copied()
            .unwrap_or(0.0);
        let offset = if first + 0.001 < self.end_s {
            self.end_s
        } else {
            0.0
        };
        let mut last_ms = self.heard.last().map_or(0, |(_, at)| *at);
        for (i, text) in alignment.characters.iter().enumerate() {
            let start = alignment
                .character_start_times_seconds
                .get(i)
                .copied()
                .unwrap_or(0.0)
                .max(0.0)
                + offset;
            let at = ((start * 1000.0).round() as u64).max(last_ms);
            last_ms = at;
            for c in text.chars() {
                self.heard.push((c, at));
            }
        }
        let end = alignment
            .character_end_times_seconds
            .last()
            .copied()
            .unwrap_or(0.0)
            + offset;
        self.end_s = self.end_s.max(end);
    }

    /// When the last character heard ends, in ms.
    pub fn end_ms(&self) -> u64 {
        (self.end_s * 1000.0).round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alignment(chars: &str, starts: &[f64]) -> Alignment {
        Alignment {
            characters: chars.chars().map(String::from).collect(),
            character_start_times_seconds: starts.to_vec(),
            character_end_times_seconds: starts.iter().map(|s| s + 0.1).collect(),
        }
    }

    #[test]
    fn the_configuration_describes_a_voice_as_the_voice_does() {
        use crate::config::{Secret, VoiceConfig};
        assert!(build_voice(&VoiceConfig::None).is_none());
        assert_eq!(VoiceConfig::None.describe(), "none");
        for config in [
            VoiceConfig::Offline,
            VoiceConfig::ElevenLabs {
                api_key: Secret::new("k"),
                base_url: "http://127.0.0.1:9".into(),
                model: "eleven_flash_v2_5".into(),
                output_format: "mp3_44100_128".into(),
            },
        ] {
            let built = build_voice(&config).map(|voice| voice.describe());
            assert_eq!(built, Some(config.describe()));
        }
    }

    #[test]
    fn timelines_join_relative_and_absolute_pieces() {
        let mut absolute = Timeline::default();
        absolute.extend(&alignment("ab", &[0.0, 0.1]));
        absolute.extend(&alignment("c", &[0.2]));
        assert_eq!(absolute.heard, [('a', 0), ('b', 100), ('c', 200)]);
        let mut relative = Timeline::default();
        relative.extend(&alignment("ab", &[0.0, 0.1]));
        relative.extend(&alignment("c", &[0.0]));
        assert_eq!(relative.heard, [('a', 0), ('b', 100), ('c', 200)]);
        assert_eq!(relative.end_ms(), 300);
    }
}
