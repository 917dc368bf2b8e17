//! Lambda's SQS event source mapping, emulated, feeding the very handler the `spirit`
//! function runs ([`Spirit::handle_batch`]). Two ways:
//!
//! - [`InProcessFifo`], the embedded default: a FIFO queue in this process with the
//!   semantics the spirit relies on: messages grouped (by session), one message of a group
//!   in flight at a time and in order, deduplication by id for five minutes, a failed or
//!   killed turn's message hidden for the visibility timeout and then delivered again, and
//!   dead-lettered after three receives.
//! - [`SqsEventSource`], when `SPIRIT_QUEUE_URL` names a real queue (or a local
//!   SQS-speaking server): it polls, builds the `SqsEvent`, calls the handler, and deletes
//!   the message unless the `SqsBatchResponse` reports it failed, as the mapping does.
//!
//! Either way the handler gets the invocation's deadline and is killed at the function's
//! timeout, as Lambda does.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use seance::spirit::queue::{QuestionQueue, QueueError, Ticket};
use seance::spirit::turn::Spirit;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

/// SQS forgets a deduplication id after five minutes.
const DEDUP_WINDOW: Duration = Duration::from_secs(300);
/// The template's redrive policy: the third failed receive goes to the dead-letter queue.
pub const MAX_RECEIVES: u32 = 3;
const QUEUE_ARN: &str = "arn:aws:sqs:us-east-1:000000000000:seance-spirit.fifo";

/// A task that stops when this is dropped (with the harness).
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct KillOnDrop(tokio::task::AbortHandle);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn epoch_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One SQS record as the event source mapping hands it to Lambda.
fn record(
    message_id: &str,
    receipt_handle: &str,
    body: &str,
    attributes: &HashMap<String, String>,
) -> Value {
    json!({
        "messageId": message_id,
        "receiptHandle": receipt_handle,
        "body": body,
        "attributes": attributes,
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": QUEUE_ARN,
        "awsRegion": "us-east-1",
    })
}

/// Invokes the handler as Lambda would: the event through JSON, a deadline, and the
/// invocation killed at the timeout. True when the message is to be deleted.
async fn invoke(spirit: &Spirit, records: Vec<Value>, timeout: Duration) -> bool {
    let event: SqsEvent = match serde_json::from_value(json!({ "Records": records })) {
        Ok(event) => event,
        Err(err) => {
            tracing::error!(%err, "the event source built an event the handler cannot read");
            return false;
        }
    };
    let deadline_ms = epoch_ms(SystemTime::now()) + u64::try_from(timeout.as_millis()).unwrap_or(0);
    let spirit = spirit.clone();
    // One span per invocation, as the Lambda runtime opens one per event.
    let mut invocation = tokio::spawn(
        async move { spirit.handle_batch(event, deadline_ms).await }
            .instrument(tracing::info_span!("spirit")),
    );
    // Whoever drops this call (a stopping harness, a test playing a crash) kills the
    // invocation with it, as a Lambda sandbox dies with its process.
    let _kill = KillOnDrop(invocation.abort_handle());
    match tokio::time::timeout(timeout, &mut invocation).await {
        Ok(Ok(SqsBatchResponse {
            batch_item_failures,
            ..
        })) => batch_item_failures.is_empty(),
        Ok(Err(err)) => {
            tracing::error!(%err, "the spirit's invocation failed");
            false
        }
        Err(_) => {
            invocation.abort();
            tracing::warn!(?timeout, "the spirit's invocation timed out and was killed");
            false
        }
    }
}

// ---------------------------------------------------------------------------------------

struct Pending {
    message_id: String,
    body: String,
    dedup_id: String,
    receives: u32,
    sent_at: SystemTime,
    visible_at: Instant,
}

#[derive(Default)]
struct FifoState {
    groups: HashMap<String, VecDeque<Pending>>,
    in_flight: HashSet<String>,
    /// Deduplication ids sent within [`DEDUP_WINDOW`], and the same ids oldest first, so
    /// a send forgets the expired ones from the front instead of scanning them all.
    seen: HashSet<String>,
    seen_order: VecDeque<(Instant, String)>,
    sent: u64,
}

/// The harness's own FIFO queue (see the module's documentation).
pub struct InProcessFifo {
    state: Mutex<FifoState>,
    wake: Notify,
    visibility_timeout: Duration,
}

impl InProcessFifo {
    pub fn new(visibility_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(FifoState::default()),
            wake: Notify::new(),
            visibility_timeout,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FifoState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Messages waiting or in flight.
    pub fn depth(&self) -> usize {
        self.state().groups.values().map(VecDeque::len).sum()
    }

    /// Takes the head of every group that has none in flight and whose head is visible;
    /// with the earliest time a hidden head shows again.
    fn receive(&self) -> (Vec<(String, Value)>, Option<Instant>) {
        let now = Instant::now();
        let mut state = self.state();
        let FifoState {
            groups, in_flight, ..
        } = &mut *state;
        let mut ready = Vec::new();
        let mut next = None::<Instant>;
        for (group, queue) in groups.iter_mut() {
            let Some(head) = queue.front_mut() else {
                continue;
            };
            if in_flight.contains(group) {
                continue;
            }
            if head.visible_at > now {
                next = Some(next.map_or(head.visible_at, |n| n.min(head.visible_at)));
                continue;
            }
            head.receives += 1;
            in_flight.insert(group.clone());
            let attributes = HashMap::from([
                ("MessageGroupId".to_owned(), group.clone()),
                ("MessageDeduplicationId".to_owned(), head.dedup_id.clone()),
                (
                    "ApproximateReceiveCount".to_owned(),
                    head.receives.to_string(),
                ),
                (
                    "SentTimestamp".to_owned(),
                    epoch_ms(head.sent_at).to_string(),
                ),
            ]);
            let receipt = format!("{}-{}", head.message_id, head.receives);
            ready.push((
                group.clone(),
                record(&head.message_id, &receipt, &head.body, &attributes),
            ));
        }
        (ready, next)
    }

    /// Deletes the group's head after a successful turn, or hides it for the visibility
    /// timeout (dead-lettering it after [`MAX_RECEIVES`]).
    fn settle(&self, group: &str, delete: bool) {
        let mut state = self.state();
        state.in_flight.remove(group);
        let mut empty = false;
        if let Some(queue) = state.groups.get_mut(group) {
            if let Some(head) = queue.front_mut() {
                if delete {
                    queue.pop_front();
                } else if head.receives >= MAX_RECEIVES {
                    tracing::error!(message_id = %head.message_id, group, "moved to the dead-letter queue after {MAX_RECEIVES} receives");
                    queue.pop_front();
                } else {
                    head.visible_at = Instant::now() + self.visibility_timeout;
                }
            }
            empty = queue.is_empty();
        }
        if empty {
            state.groups.remove(group);
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Hands messages to `spirit` until the harness stops.
    pub fn start(self: &Arc<Self>, spirit: Spirit, function_timeout: Duration) -> AbortOnDrop {
        let fifo = self.clone();
        AbortOnDrop(tokio::spawn(async move {
            loop {
                let (ready, next) = fifo.receive();
                for (group, record) in ready {
                    let fifo = fifo.clone();
                    let spirit = spirit.clone();
                    tokio::spawn(async move {
                        let delete = invoke(&spirit, vec![record], function_timeout).await;
                        fifo.settle(&group, delete);
                    });
                }
                match next {
                    Some(at) => {
                        tokio::select! {
                            () = fifo.wake.notified() => {}
                            () = tokio::time::sleep_until(at) => {}
                        }
                    }
                    None => fifo.wake.notified().await,
                }
            }
        }))
    }
}

#[async_trait]
impl QuestionQueue for InProcessFifo {
    async fn send(&self, ticket: &Ticket) -> Result<(), QueueError> {
        let body = serde_json::to_string(ticket).map_err(|e| QueueError(e.to_string()))?;
        let dedup_id = ticket.deduplication_id();
        {
            let mut state = self.state();
            let now = Instant::now();
            while let Some((at, _)) = state.seen_order.front()
                && now.duration_since(*at) >= DEDUP_WINDOW
            {
                if let Some((_, expired)) = state.seen_order.pop_front() {
                    state.seen.remove(&expired);
                }
            }
            if state.seen.contains(&dedup_id) {
                return Ok(());
            }
            state.seen.insert(dedup_id.clone());
            state.seen_order.push_back((now, dedup_id.clone()));
            state.sent += 1;
            let message_id = format!("{:016}-{}", state.sent, uuid::Uuid::new_v4().simple());
            state
                .groups
                .entry(ticket.group_id())
                .or_default()
                .push_back(Pending {
                    message_id,
                    body,
                    dedup_id,
                    receives: 0,
                    sent_at: SystemTime::now(),
                    visible_at: now,
                });
        }
        self.wake.notify_one();
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------

/// How many batches the mapping hands out at once (`MaximumConcurrency` in the template).
pub const POLLERS: usize = 4;

/// Lambda's event source mapping over a real SQS queue.
#[derive(Clone)]
pub struct SqsEventSource {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    function_timeout: Duration,
}

impl SqsEventSource {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: &str, function_timeout: Duration) -> Self {
        Self {
            client,
            queue_url: queue_url.to_owned(),
            function_timeout,
        }
    }

    /// One receive (waiting up to `wait_seconds` for a message) and, for a message, one
    /// invocation; the message is deleted when the handler reports no failure. How many
    /// messages were handled.
    pub async fn poll_once(&self, spirit: &Spirit, wait_seconds: i32) -> Result<usize, String> {
        let received = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(1)
            .wait_time_seconds(wait_seconds)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .send()
            .await
            .map_err(|err| aws_sdk_sqs::error::DisplayErrorContext(&err).to_string())?;
        let messages = received.messages.unwrap_or_default();
        for message in &messages {
            let attributes: HashMap<String, String> = message
                .attributes
                .iter()
                .flatten()
                .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
                .collect();
            let receipt = message.receipt_handle.clone().unwrap_or_default();
            let record = record(
                message.message_id.as_deref().unwrap_or_default(),
                &receipt,
                message.body.as_deref().unwrap_or_default(),
                &attributes,
            );
            if invoke(spirit, vec![record], self.function_timeout).await {
                self.client
                    .delete_message()
                    .queue_url(&self.queue_url)
                    .receipt_handle(receipt)
                    .send()
                    .await
                    .map_err(|err| aws_sdk_sqs::error::DisplayErrorContext(&err).to_string())?;
            }
        }
        Ok(messages.len())
    }

    /// [`POLLERS`] loops of [`poll_once`](Self::poll_once) until the harness stops.
    pub fn start(&self, spirit: Spirit) -> AbortOnDrop {
        let source = self.clone();
        AbortOnDrop(tokio::spawn(async move {
            let pollers = (0..POLLERS).map(|_| {
                let source = source.clone();
                let spirit = spirit.clone();
                async move {
                    loop {
                        if let Err(err) = source.poll_once(&spirit, 1).await {
                            tracing::warn!(%err, "cannot receive from the spirit's queue");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            });
            futures_util::future::join_all(pollers).await;
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(session_id: uuid::Uuid) -> Ticket {
        Ticket {
            session_id,
            question_id: uuid::Uuid::now_v7(),
            endpoint: None,
        }
    }

    fn bodies(ready: &[(String, Value)]) -> Vec<String> {
        let mut bodies: Vec<String> = ready
            .iter()
            .map(|(_, record)| record["body"].as_str().unwrap_or_default().to_owned())
            .collect();
        bodies.sort();
        bodies
    }

    #[tokio::test]
    async fn one_message_of_a_group_in_flight_in_order_deduplicated_and_redelivered() {
        let fifo = InProcessFifo::new(Duration::ZERO);
        let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        let (a1, a2, b1) = (ticket(a), ticket(a), ticket(b));
        for t in [&a1, &a2, &b1, &a1] {
            assert!(fifo.send(t).await.is_ok());
        }
        assert_eq!(fifo.depth(), 3, "the repeated id was deduplicated");
        let body = |t: &Ticket| serde_json::to_string(t).unwrap_or_default();
        // The head of each group, no more.
        let (ready, _) = fifo.receive();
        let mut expected = vec![body(&a1), body(&b1)];
        expected.sort();
        assert_eq!(bodies(&ready), expected);
        assert!(fifo.receive().0.is_empty(), "both groups are in flight");
        // A failed turn: the same message again (visibility 0 here), before a2.
        fifo.settle(&a.to_string(), false);
        fifo.settle(&b.to_string(), true);
        let (ready, _) = fifo.receive();
        assert_eq!(bodies(&ready), vec![body(&a1)]);
        assert_eq!(ready[0].1["attributes"]["ApproximateReceiveCount"], "2");
        fifo.settle(&a.to_string(), true);
        let (ready, _) = fifo.receive();
        assert_eq!(bodies(&ready), vec![body(&a2)]);
        // Three failed receives: dead-lettered.
        fifo.settle(&a.to_string(), false);
        fifo.receive();
        fifo.settle(&a.to_string(), false);
        fifo.receive();
        fifo.settle(&a.to_string(), false);
        assert_eq!(fifo.depth(), 0);
        assert!(fifo.receive().0.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_deduplication_id_is_forgotten_once_its_window_has_passed() {
        let fifo = InProcessFifo::new(Duration::ZERO);
        let (first, other) = (ticket(uuid::Uuid::now_v7()), ticket(uuid::Uuid::now_v7()));
        assert!(fifo.send(&first).await.is_ok());
        tokio::time::advance(DEDUP_WINDOW / 2).await;
        assert!(fifo.send(&other).await.is_ok());
        tokio::time::advance(DEDUP_WINDOW / 2 - Duration::from_millis(1)).await;
        assert!(fifo.send(&first).await.is_ok());
        assert_eq!(fifo.depth(), 2, "still within the window: deduplicated");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(fifo.send(&first).await.is_ok());
        assert!(fifo.send(&other).await.is_ok());
        assert_eq!(
            fifo.depth(),
            3,
            "the first id's window has passed, the other's has not"
        );
    }

    #[tokio::test]
    async fn a_failed_message_stays_hidden_for_the_visibility_timeout() {
        let fifo = InProcessFifo::new(Duration::from_secs(60));
        let session = uuid::Uuid::now_v7();
        assert!(fifo.send(&ticket(session)).await.is_ok());
        assert_eq!(fifo.receive().0.len(), 1);
        fifo.settle(&session.to_string(), false);
        let (ready, next) = fifo.receive();
        assert!(ready.is_empty());
        assert!(next.is_some_and(|at| at > Instant::now() + Duration::from_secs(50)));
    }
}
