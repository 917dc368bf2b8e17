//! The spirit: who it is (personas), what answers for it (providers behind one streaming
//! trait), how its turn is taken (one answerer per session, first in first out), and how
//! the planchette moves.

pub mod gemini;
pub mod openai;
pub mod oracle;
pub mod planchette;
pub mod queue;
pub mod sse;
pub mod turn;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::config::{SpiritConfig, SpiritProviderConfig};

/// Who said a turn of the conversation the model sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    /// The participants (their questions, each prefixed with the asker's name).
    Living,
    /// The spirit's earlier answers.
    Spirit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub speaker: Speaker,
    pub text: String,
}

/// Everything a provider needs for one answer.
#[derive(Debug, Clone)]
pub struct SpiritRequest {
    pub persona_id: String,
    pub persona_name: String,
    /// What the offline oracle says in this persona's voice.
    pub oracle_lines: crate::personas::OracleLines,
    /// The base steering and the persona's own, as one system instruction.
    pub system: String,
    /// Oldest first; ends with the living's turn that holds the question.
    pub conversation: Vec<Turn>,
    /// The question being answered, as the asker typed it.
    pub question: String,
    pub temperature: f32,
    pub max_output_tokens: u32,
    /// How long the provider may spend in all, retries included (the turn's deadline).
    pub budget: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpiritError {
    #[error("the prompt was blocked: {0}")]
    Blocked(String),
    #[error("the model stopped without answering: {0}")]
    Refused(String),
    #[error("the model ran out of tokens before answering")]
    EmptyAnswer,
    #[error("the provider is rate limited")]
    RateLimited { retry_after: Option<Duration> },
    #[error("the provider answered {status}: {message}")]
    Upstream { status: u16, message: String },
    #[error("the stream ended before the model finished")]
    Cut,
    #[error("the provider could not be reached: {0}")]
    Transport(String),
    #[error("the provider sent something unreadable: {0}")]
    Malformed(String),
    #[error("no answer before the deadline")]
    Deadline,
}

impl SpiritError {
    /// Worth another try (before any text was sent on).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Upstream { status, .. } if *status >= 500)
            || matches!(self, Self::Transport(_))
    }
}

/// A model that answers for the spirit, streaming text pieces into `out` as they come.
/// It returns when the answer is complete; an error means the answer is not to be trusted
/// (the turn falls back to a stock line). When `out` is closed the provider may stop early.
#[async_trait]
pub trait SpiritProvider: Send + Sync + 'static {
    /// What `/health` and the logs call it, e.g. `gemini (gemini-flash-latest)`.
    fn describe(&self) -> String;

    async fn stream(
        &self,
        request: &SpiritRequest,
        out: mpsc::Sender<String>,
    ) -> Result<(), SpiritError>;
}

/// Builds the configured provider. Making the HTTP client does no network I/O.
pub fn build_provider(config: &SpiritConfig) -> Arc<dyn SpiritProvider> {
    crate::tls::install_crypto_provider();
    let http = || {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default()
    };
    match &config.provider {
        SpiritProviderConfig::Gemini {
            api_key,
            model,
            base_url,
        } => Arc::new(gemini::Gemini::new(
            http(),
            base_url.clone(),
            model.clone(),
            api_key.clone(),
        )),
        SpiritProviderConfig::OpenAi {
            api_key,
            model,
            base_url,
        } => Arc::new(openai::OpenAiCompatible::new(
            http(),
            base_url.clone(),
            model.clone(),
            api_key.clone(),
        )),
        SpiritProviderConfig::Oracle { seed } => {
            Arc::new(oracle::Oracle::new(*seed, config.oracle_word_delay))
        }
    }
}

/// Cuts an answer at `max_words` words.
pub fn cut_words(text: &str, max_words: u32) -> String {
    text.split_whitespace()
        .take(max_words as usize)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Retries a provider call on transient failures and on a 429 whose retry delay fits
/// before the deadline, but only while nothing has been streamed yet.
pub(crate) async fn with_retries<F, Fut>(
    deadline: tokio::time::Instant,
    mut attempt: F,
) -> Result<(), SpiritError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (Result<(), SpiritError>, bool)>,
{
    const ATTEMPTS: u32 = 3;
    let mut tries = 0;
    loop {
        tries += 1;
        let (result, streamed) = attempt().await;
        let Err(err) = result else {
            return Ok(());
        };
        if streamed || tries >= ATTEMPTS {
            return Err(err);
        }
        let wait = match &err {
            SpiritError::RateLimited { retry_after } => {
                retry_after.unwrap_or(Duration::from_secs(1))
            }
            e if e.is_transient() => Duration::from_millis(250 * u64::from(tries)),
            _ => return Err(err),
        };
        if tokio::time::Instant::now() + wait >= deadline {
            return Err(err);
        }
        tracing::info!(%err, ?wait, "retrying the model");
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_describes_a_provider_as_the_provider_does() {
        use crate::config::{Secret, SpiritProviderConfig};
        for provider in [
            SpiritProviderConfig::Gemini {
                api_key: Secret::new("k"),
                model: "gemini-flash-latest".into(),
                base_url: "http://127.0.0.1:9".into(),
            },
            SpiritProviderConfig::OpenAi {
                api_key: None,
                model: "llama3".into(),
                base_url: "http://127.0.0.1:9".into(),
            },
            SpiritProviderConfig::Oracle { seed: 7 },
        ] {
            let config = crate::config::Config::harness_defaults().spirit;
            let config = crate::config::SpiritConfig {
                provider: provider.clone(),
                ..config
            };
            assert_eq!(build_provider(&config).describe(), provider.describe());
        }
    }

    #[test]
    fn answers_are_cut_at_the_word_limit() {
        assert_eq!(cut_words("one two  three\nfour", 3), "one two three");
        assert_eq!(cut_words("short", 40), "short");
    }
}
