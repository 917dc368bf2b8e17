//! How `ws-message` tells the spirit that a session has a question waiting: one message on
//! an SQS FIFO queue per accepted question, grouped by session (so SQS hands a session's
//! messages to one worker at a time, in order) and deduplicated by question id. The
//! message is only a nudge: the worker answers the session's oldest unanswered question as
//! the database has it, so a nudge that arrives twice, late or out of order changes nothing.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::config::{BehaviorVersion, Region, retry::RetryConfig, timeout::TimeoutConfig};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::Config;
use crate::push::AwsCredentials;
use crate::tls::AwsTlsRoots;

/// The body of a queue message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub session_id: Uuid,
    /// The question whose acceptance sent this ticket (for logs and deduplication).
    pub question_id: Uuid,
    /// The `@connections` endpoint of the API the question came through, so the worker
    /// pushes to the same stage; `None` leaves it to the worker's configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

impl Ticket {
    /// The FIFO message group: one per session.
    pub fn group_id(&self) -> String {
        self.session_id.to_string()
    }

    /// The deduplication id: one per question.
    pub fn deduplication_id(&self) -> String {
        self.question_id.to_string()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the spirit's queue did not take the question: {0}")]
pub struct QueueError(pub String);

/// Where accepted questions are announced to the spirit.
#[async_trait]
pub trait QuestionQueue: Send + Sync + 'static {
    async fn send(&self, ticket: &Ticket) -> Result<(), QueueError>;
}

/// The production queue: `SendMessage` on an SQS FIFO queue.
pub struct SqsQueue {
    /// Built on the first send, so the functions that never send (every one but
    /// `ws-message`) build none during their cold start.
    client: std::sync::OnceLock<aws_sdk_sqs::Client>,
    region: String,
    endpoint: Option<String>,
    credentials: AwsCredentials,
    roots: AwsTlsRoots,
    queue_url: String,
}

impl std::fmt::Debug for SqsQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsQueue")
            .field("queue_url", &self.queue_url)
            .finish_non_exhaustive()
    }
}

/// The route handler waits for this send, so it is kept short.
const SEND_TIMEOUT: Duration = Duration::from_secs(3);

impl SqsQueue {
    /// Names the queue; the client is built on the first send. `endpoint` overrides the
    /// SQS endpoint (`AWS_ENDPOINT_URL_SQS`, for a local SQS-speaking server).
    pub fn new(
        queue_url: &str,
        region: &str,
        endpoint: Option<&str>,
        credentials: AwsCredentials,
        roots: AwsTlsRoots,
    ) -> Self {
        Self {
            roots,
            client: std::sync::OnceLock::new(),
            region: region.to_owned(),
            endpoint: endpoint.map(str::to_owned),
            credentials,
            queue_url: queue_url.to_owned(),
        }
    }

    fn client(&self) -> &aws_sdk_sqs::Client {
        self.client.get_or_init(|| {
            sqs_client(
                &self.region,
                self.endpoint.as_deref(),
                self.credentials.clone(),
                self.roots,
            )
        })
    }
}

/// Builds where a process sends accepted questions (see [`App::for_lambda`](crate::App::for_lambda)).
pub type QueueBuilder = fn(&Config, &AwsCredentials) -> Arc<dyn QuestionQueue>;

/// The queue `SPIRIT_QUEUE_URL` names, or [`NoQueue`] without one (the harness, which plugs
/// in its own).
pub fn from_config(config: &Config, credentials: &AwsCredentials) -> Arc<dyn QuestionQueue> {
    match &config.spirit.queue_url {
        Some(url) => Arc::new(SqsQueue::new(
            url,
            &config.aws_region,
            config.spirit.sqs_endpoint.as_deref(),
            credentials.clone(),
            config.aws_tls_roots,
        )),
        None => Arc::new(NoQueue),
    }
}

/// No queue, for a function that accepts no questions.
pub fn none(_config: &Config, _credentials: &AwsCredentials) -> Arc<dyn QuestionQueue> {
    Arc::new(NoQueue)
}

/// An SQS client for this region and endpoint.
pub fn sqs_client(
    region: &str,
    endpoint: Option<&str>,
    credentials: AwsCredentials,
    roots: AwsTlsRoots,
) -> aws_sdk_sqs::Client {
    let mut config = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(crate::tls::aws_http_client(roots))
        .region(Region::new(region.to_owned()))
        .credentials_provider(credentials.provider())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_timeout(SEND_TIMEOUT)
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(3));
    if let Some(endpoint) = endpoint {
        config = config.endpoint_url(endpoint);
    }
    aws_sdk_sqs::Client::from_conf(config.build())
}

#[async_trait]
impl QuestionQueue for SqsQueue {
    async fn send(&self, ticket: &Ticket) -> Result<(), QueueError> {
        let body = serde_json::to_string(ticket).map_err(|e| QueueError(e.to_string()))?;
        self.client()
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .message_group_id(ticket.group_id())
            .message_deduplication_id(ticket.deduplication_id())
            .send()
            .await
            .map(|_| ())
            .map_err(|err| QueueError(aws_sdk_sqs::error::DisplayErrorContext(&err).to_string()))
    }
}

/// A queue that refuses everything: the Lambda functions that accept no questions have it,
/// and so does the harness until it plugs in its own event source. `ws-message` never
/// does (its start-up requires `SPIRIT_QUEUE_URL`).
#[derive(Debug, Default)]
pub struct NoQueue;

#[async_trait]
impl QuestionQueue for NoQueue {
    async fn send(&self, _ticket: &Ticket) -> Result<(), QueueError> {
        Err(QueueError("no spirit queue is configured".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_group_by_session_and_dedup_by_question() {
        let ticket = Ticket {
            session_id: Uuid::now_v7(),
            question_id: Uuid::now_v7(),
            endpoint: None,
        };
        assert_eq!(ticket.group_id(), ticket.session_id.to_string());
        assert_eq!(ticket.deduplication_id(), ticket.question_id.to_string());
        let body = serde_json::to_string(&ticket).unwrap_or_default();
        assert!(!body.contains("endpoint"), "{body}");
        let back: Ticket = serde_json::from_str(&body).unwrap_or_else(|_| ticket.clone());
        assert_eq!(back, ticket);
    }

    /// Without a queue a question is refused (the asker hears `unavailable`), never
    /// accepted and left unanswered.
    #[tokio::test]
    async fn without_a_queue_questions_are_refused() {
        let ticket = Ticket {
            session_id: Uuid::now_v7(),
            question_id: Uuid::now_v7(),
            endpoint: None,
        };
        assert!(NoQueue.send(&ticket).await.is_err());
    }
}
