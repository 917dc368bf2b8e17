//! Any OpenAI-compatible chat completions server (Ollama, llama.cpp, vLLM, Gemini's own
//! compatibility endpoint): `POST {base}/chat/completions` with `stream: true`; chunks are
//! `data: {json}` with `choices[0].delta.content`, and the stream ends with `data: [DONE]`.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::sse::SseReader;
use super::{Speaker, SpiritError, SpiritProvider, SpiritRequest, with_retries};
use crate::config::Secret;

pub struct OpenAiCompatible {
    http: reqwest::Client,
    base_url: String,
    model: String,
    api_key: Option<Secret>,
}

impl OpenAiCompatible {
    pub fn new(
        http: reqwest::Client,
        base_url: String,
        model: String,
        api_key: Option<Secret>,
    ) -> Self {
        Self {
            http,
            base_url,
            model,
            api_key,
        }
    }

    pub fn body(&self, request: &SpiritRequest) -> Value {
        let mut messages = vec![json!({"role": "system", "content": request.system})];
        messages.extend(request.conversation.iter().map(|turn| {
            json!({
                "role": match turn.speaker { Speaker::Living => "user", Speaker::Spirit => "assistant" },
                "content": turn.text,
            })
        }));
        json!({
            "model": self.model,
            "messages": messages,
            "stream": true,
            "temperature": request.temperature,
            "max_tokens": request.max_output_tokens,
        })
    }

    async fn attempt(
        &self,
        body: &Value,
        out: &mpsc::Sender<String>,
    ) -> (Result<(), SpiritError>, bool) {
        let mut call = self
            .http
            .post(format!("{}/chat/completions", self.base_url))
            .json(body);
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key.expose());
        }
        let response = match call.send().await {
            Ok(response) => response,
            Err(err) => return (Err(SpiritError::Transport(err.to_string())), false),
        };
        let status = response.status();
        if !status.is_success() {
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_secs);
            let text = response.text().await.unwrap_or_default();
            if status.as_u16() == 429 {
                return (Err(SpiritError::RateLimited { retry_after }), false);
            }
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "no error body".into());
            return (
                Err(SpiritError::Upstream {
                    status: status.as_u16(),
                    message,
                }),
                false,
            );
        }
        let mut events = SseReader::new(Box::pin(response.bytes_stream()));
        let mut streamed = false;
        let mut finished = false;
        loop {
            let data = match events.next_data().await {
                Ok(Some(data)) => data,
                // Some servers close right after the last chunk without [DONE].
                Ok(None) if finished => return (Ok(()), streamed),
                Ok(None) | Err(_) => return (Err(SpiritError::Cut), streamed),
            };
            if data.trim() == "[DONE]" {
                return if streamed {
                    (Ok(()), true)
                } else {
                    (Err(SpiritError::EmptyAnswer), false)
                };
            }
            let chunk: Chunk = match serde_json::from_str(&data) {
                Ok(chunk) => chunk,
                Err(err) => return (Err(SpiritError::Malformed(err.to_string())), streamed),
            };
            let Some(choice) = chunk.choices.into_iter().next() else {
                continue;
            };
            if let Some(text) = choice
                .delta
                .and_then(|d| d.content)
                .filter(|t| !t.is_empty())
            {
                streamed = true;
                if out.send(text).await.is_err() {
                    return (Ok(()), streamed);
                }
            }
            match choice.finish_reason.as_deref() {
                None => {}
                Some("content_filter") => {
                    return (Err(SpiritError::Refused("content_filter".into())), streamed);
                }
                Some("length") if !streamed => return (Err(SpiritError::EmptyAnswer), streamed),
                Some(_) => finished = true,
            }
        }
    }
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    delta: Option<Delta>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    content: Option<String>,
}

#[async_trait]
impl SpiritProvider for OpenAiCompatible {
    fn describe(&self) -> String {
        format!("openai-compatible ({})", self.model)
    }

    async fn stream(
        &self,
        request: &SpiritRequest,
        out: mpsc::Sender<String>,
    ) -> Result<(), SpiritError> {
        let body = self.body(request);
        let deadline = tokio::time::Instant::now() + request.budget;
        with_retries(deadline, || self.attempt(&body, &out)).await
    }
}
