//! ElevenLabs text to speech with character timestamps, streamed:
//! `POST {base}/v1/text-to-speech/{voice_id}/stream/with-timestamps?output_format=…` with
//! `xi-api-key`, answered with newline-delimited JSON pieces
//! `{"audio_base64","alignment","normalized_alignment"}` (either alignment may be null).
//! Errors come under `detail`: an object `{status, message}`, or for 422 a list of
//! `{loc, msg, type}`.

use async_trait::async_trait;
use base64::Engine;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Alignment, SpeechPiece, VoiceError, VoiceProvider};
use crate::config::Secret;

pub struct ElevenLabs {
    http: reqwest::Client,
    base_url: String,
    api_key: Secret,
    model: String,
    output_format: String,
}

impl ElevenLabs {
    pub fn new(
        http: reqwest::Client,
        base_url: String,
        api_key: Secret,
        model: String,
        output_format: String,
    ) -> Self {
        Self {
            http,
            base_url,
            api_key,
            model,
            output_format,
        }
    }
}

#[derive(Deserialize)]
struct Piece {
    audio_base64: Option<String>,
    alignment: Option<Alignment>,
}

/// Reads `detail` into one line: `status: message`, or the 422 list's `loc: msg` items.
fn error_from(status: u16, body: &str) -> VoiceError {
    let detail = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("detail").cloned());
    let message = match &detail {
        Some(Value::Object(object)) => {
            let code = object.get("status").and_then(Value::as_str).unwrap_or("");
            let text = object.get("message").and_then(Value::as_str).unwrap_or("");
            format!("{code}: {text}")
        }
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                let loc = item
                    .get("loc")
                    .and_then(Value::as_array)
                    .map(|l| {
                        l.iter()
                            .map(|p| p.as_str().map_or_else(|| p.to_string(), str::to_owned))
                            .collect::<Vec<_>>()
                            .join(".")
                    })
                    .unwrap_or_default();
                let msg = item.get("msg").and_then(Value::as_str).unwrap_or("");
                format!("{loc}: {msg}")
            })
            .collect::<Vec<_>>()
            .join("; "),
        Some(Value::String(text)) => text.clone(),
        _ => body.chars().take(200).collect(),
    };
    match status {
        401 => VoiceError::Unauthorized(message),
        422 => VoiceError::Invalid(message),
        429 => VoiceError::RateLimited(message),
        status => VoiceError::Upstream { status, message },
    }
}

fn piece_from(line: &[u8]) -> Result<SpeechPiece, VoiceError> {
    let piece: Piece =
        serde_json::from_slice(line).map_err(|e| VoiceError::Malformed(e.to_string()))?;
    let audio = match piece.audio_base64 {
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| VoiceError::Malformed(e.to_string()))?,
        None => Vec::new(),
    };
    Ok(SpeechPiece {
        audio,
        alignment: piece.alignment,
    })
}

#[async_trait]
impl VoiceProvider for ElevenLabs {
    fn describe(&self) -> String {
        format!("elevenlabs ({})", self.model)
    }

    fn format(&self) -> String {
        self.output_format.clone()
    }

    fn model(&self) -> String {
        self.model.clone()
    }

    async fn speak(
        &self,
        voice_id: &str,
        text: &str,
        out: mpsc::Sender<SpeechPiece>,
    ) -> Result<(), VoiceError> {
        if voice_id.is_empty() {
            return Err(VoiceError::NoVoice);
        }
        // Voice ids and formats are letters, digits and underscores: keep nothing else.
        let safe = |s: &str| -> String {
            s.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .collect()
        };
        let url = format!(
            "{}/v1/text-to-speech/{}/stream/with-timestamps?output_format={}",
            self.base_url,
            safe(voice_id),
            safe(&self.output_format)
        );
        let response = self
            .http
            .post(url)
            .header("xi-api-key", self.api_key.expose())
            .json(&json!({"text": text, "model_id": self.model}))
            .send()
            .await
            .map_err(|e| VoiceError::Transport(e.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(error_from(status.as_u16(), &body));
        }
        let mut bytes = response.bytes_stream();
        let mut buffer: Vec<u8> = Vec::new();
        loop {
            match bytes.next().await {
                Some(Ok(chunk)) => buffer.extend_from_slice(&chunk),
                Some(Err(err)) => return Err(VoiceError::Cut(err.to_string())),
                None => {
                    let rest = buffer.trim_ascii();
                    if !rest.is_empty() {
                        // A last line without its newline is whole only if it parses.
                        let piece = piece_from(rest).map_err(|e| VoiceError::Cut(e.to_string()))?;
                        let _ = out.send(piece).await;
                    }
                    return Ok(());
                }
            }
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                if out.send(piece_from(line)?).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_both_detail_shapes() {
        assert_eq!(
            error_from(
                401,
                r#"{"detail":{"status":"invalid_api_key","message":"Invalid API key"}}"#
            ),
            VoiceError::Unauthorized("invalid_api_key: Invalid API key".into())
        );
        assert_eq!(
            error_from(
                422,
                r#"{"detail":[{"loc":["body","text"],"msg":"field required","type":"value_error.missing"}]}"#
            ),
            VoiceError::Invalid("body.text: field required".into())
        );
        assert!(matches!(
            error_from(503, "upstream down"),
            VoiceError::Upstream { status: 503, .. }
        ));
    }
}
