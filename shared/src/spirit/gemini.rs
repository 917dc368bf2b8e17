//! Google Gemini: `POST {base}/v1beta/models/{model}:streamGenerateContent?alt=sse`, key in
//! `x-goog-api-key`. Each event is one `GenerateContentResponse`; only the last chunk has a
//! `finishReason`; a blocked prompt is HTTP 200 with `promptFeedback.blockReason` and no
//! candidates; errors are `{"error":{"code","message","status","details"}}`, and a 429
//! carries a `RetryInfo` with a `retryDelay` like `"26s"`.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::sse::SseReader;
use super::{Speaker, SpiritError, SpiritProvider, SpiritRequest, with_retries};
use crate::config::Secret;

pub struct Gemini {
    http: reqwest::Client,
    base_url: String,
    model: String,
    api_key: Secret,
}

impl Gemini {
    pub fn new(http: reqwest::Client, base_url: String, model: String, api_key: Secret) -> Self {
        Self {
            http,
            base_url,
            model,
            api_key,
        }
    }

    /// The request body: persona as `systemInstruction`, the conversation as alternating
    /// `user` / `model` turns, output capped, thinking off (thinking tokens would count
    /// against the cap), and Google's safety filters on.
    pub fn body(request: &SpiritRequest) -> Value {
        let contents: Vec<Value> = request
            .conversation
            .iter()
            .map(|turn| {
                json!({
                    "role": match turn.speaker { Speaker::Living => "user", Speaker::Spirit => "model" },
                    "parts": [{"text": turn.text}],
                })
            })
            .collect();
        let safety: Vec<Value> = [
            "HARM_CATEGORY_HARASSMENT",
            "HARM_CATEGORY_HATE_SPEECH",
            "HARM_CATEGORY_SEXUALLY_EXPLICIT",
            "HARM_CATEGORY_DANGEROUS_CONTENT",
        ]
        .iter()
        .map(|category| json!({"category": category, "threshold": "BLOCK_MEDIUM_AND_ABOVE"}))
        .collect();
        json!({
            "systemInstruction": {"parts": [{"text": request.system}]},
            "contents": contents,
            "generationConfig": {
                "temperature": request.temperature,
                "maxOutputTokens": request.max_output_tokens,
                "candidateCount": 1,
                "thinkingConfig": {"thinkingBudget": 0},
            },
            "safetySettings": safety,
        })
    }

    async fn attempt(
        &self,
        body: &Value,
        out: &mpsc::Sender<String>,
    ) -> (Result<(), SpiritError>, bool) {
        let url = format!(
            "{}/v1beta/models/{}:streamGenerateContent?alt=sse",
            self.base_url, self.model
        );
        let response = match self
            .http
            .post(url)
            .header("x-goog-api-key", self.api_key.expose())
            .json(body)
            .send()
            .await
        {
            Ok(response) => response,
            Err(err) => return (Err(SpiritError::Transport(err.to_string())), false),
        };
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return (Err(error_from(status.as_u16(), &text)), false);
        }
        let mut events = SseReader::new(Box::pin(response.bytes_stream()));
        let mut streamed = false;
        loop {
            let data = match events.next_data().await {
                Ok(Some(data)) => data,
                Ok(None) => return (Err(SpiritError::Cut), streamed),
                Err(err) => {
                    tracing::info!(%err, "gemini stream broke");
                    return (Err(SpiritError::Cut), streamed);
                }
            };
            let chunk: Chunk = match serde_json::from_str(&data) {
                Ok(chunk) => chunk,
                Err(err) => return (Err(SpiritError::Malformed(err.to_string())), streamed),
            };
            if let Some(reason) = chunk.prompt_feedback.and_then(|f| f.block_reason) {
                return (Err(SpiritError::Blocked(reason)), streamed);
            }
            let Some(candidate) = chunk.candidates.into_iter().next() else {
                continue;
            };
            for part in candidate.content.map(|c| c.parts).unwrap_or_default() {
                if part.thought.unwrap_or(false) {
                    continue;
                }
                if let Some(text) = part.text.filter(|t| !t.is_empty()) {
                    streamed = true;
                    if out.send(text).await.is_err() {
                        // The turn has all it needs (the word limit was reached).
                        return (Ok(()), streamed);
                    }
                }
            }
            match candidate.finish_reason.as_deref() {
                None | Some("FINISH_REASON_UNSPECIFIED") => {}
                Some("STOP") => return (Ok(()), streamed),
                Some("MAX_TOKENS") if streamed => return (Ok(()), streamed),
                Some("MAX_TOKENS") => return (Err(SpiritError::EmptyAnswer), streamed),
                Some(other) => return (Err(SpiritError::Refused(other.to_owned())), streamed),
            }
        }
    }
}

/// Reads Gemini's error body; a 429's `RetryInfo.retryDelay` becomes `retry_after`.
pub fn error_from(status: u16, body: &str) -> SpiritError {
    let parsed: Option<ErrorBody> = serde_json::from_str(body).ok();
    let (message, details) = match parsed {
        Some(body) => (
            format!(
                "{} {}",
                body.error.status.unwrap_or_default(),
                body.error.message.unwrap_or_default()
            )
            .trim()
            .to_owned(),
            body.error.details.unwrap_or_default(),
        ),
        None => ("no error body".to_owned(), Vec::new()),
    };
    if status == 429 {
        let retry_after = details
            .iter()
            .find(|d| {
                d.get("@type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.ends_with("RetryInfo"))
            })
            .and_then(|d| d.get("retryDelay").and_then(Value::as_str))
            .and_then(parse_delay);
        return SpiritError::RateLimited { retry_after };
    }
    SpiritError::Upstream { status, message }
}

/// `"26s"` or `"1.5s"`.
fn parse_delay(raw: &str) -> Option<Duration> {
    raw.strip_suffix('s')?
        .parse::<f64>()
        .ok()
        .filter(|s| *s >= 0.0)
        .map(Duration::from_secs_f64)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Chunk {
    #[serde(default)]
    candidates: Vec<Candidate>,
    prompt_feedback: Option<PromptFeedback>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    content: Option<Content>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Content {
    #[serde(default)]
    parts: Vec<Part>,
}

#[derive(Deserialize)]
struct Part {
    text: Option<String>,
    thought: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    block_reason: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    message: Option<String>,
    status: Option<String>,
    details: Option<Vec<Value>>,
}

#[async_trait]
impl SpiritProvider for Gemini {
    fn describe(&self) -> String {
        format!("gemini ({})", self.model)
    }

    async fn stream(
        &self,
        request: &SpiritRequest,
        out: mpsc::Sender<String>,
    ) -> Result<(), SpiritError> {
        let body = Self::body(request);
        // The turn enforces the deadline; this bounds the retry waits within it.
        let deadline = tokio::time::Instant::now() + request.budget;
        with_retries(deadline, || self.attempt(&body, &out)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_read() {
        let body = r#"{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure"},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"26s"}]}}"#;
        assert_eq!(
            error_from(429, body),
            SpiritError::RateLimited {
                retry_after: Some(Duration::from_secs(26))
            }
        );
        let body =
            r#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#;
        assert_eq!(
            error_from(503, body),
            SpiritError::Upstream {
                status: 503,
                message: "UNAVAILABLE The model is overloaded.".into()
            }
        );
        assert!(matches!(
            error_from(400, "<html>"),
            SpiritError::Upstream { status: 400, .. }
        ));
    }
}
