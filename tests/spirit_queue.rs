//! The spirit's turn through a queue: `ws-message` only accepts, a worker answers from an
//! SQS FIFO queue (moto's server, started by `tests/run`, through `aws-sdk-sqs`), the
//! database decides what is answered and answers it once, whatever the queue redelivers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use aws_lambda_events::event::sqs::SqsEvent;
use local_dev::event_source::SqsEventSource;
use seance::config::{Config, Secret, SpiritProviderConfig};
use seance::domain::TurnState;
use seance::spirit::queue::Ticket;
use seance::spirit::turn::MAX_ATTEMPTS;
use seance::store::{Claim, ReplyOutcome};
use seance_tests::mock_llm::{MockLlm, Reply, gemini_stream, stream};
use seance_tests::turns::{Table, ask, everyone_hears, table};
use seance_tests::{
    Backend, TestApp, fresh_fifo_queue, fresh_postgres_url, redis_url, spawn_app_configured,
    spawn_app_with_options, sqs_endpoint, sqs_test_client, test_config,
};
use serde_json::{Value, json};
use uuid::Uuid;

/// PostgreSQL and Redis, the spirit's queue on the test SQS server.
async fn queue_config(queue_url: &str) -> Config {
    let mut config = test_config(&fresh_postgres_url().await, Some(&redis_url()));
    config.spirit.queue_url = Some(queue_url.to_owned());
    config.spirit.sqs_endpoint = Some(sqs_endpoint());
    config.spirit.oracle_word_delay = Duration::from_millis(40);
    config
}

async fn queue_app(queue_url: &str, event_source: bool) -> TestApp {
    spawn_app_with_options(
        queue_config(queue_url).await,
        // The Lambda path: pushes through the Management API client.
        local_dev::Options {
            event_source,
            push: local_dev::PushPath::Sdk,
        },
    )
    .await
}

/// A `send_message` event for one connection, as API Gateway hands it to `ws-message`.
fn send_event(connection_id: &str, content: &str) -> ApiGatewayWebsocketProxyRequest {
    serde_json::from_value(json!({
        "requestContext": {
            "routeKey": "send_message", "eventType": "MESSAGE", "messageId": "m1", "connectionId": connection_id,
            "connectedAt": 1_795_000_000_000_i64, "requestTimeEpoch": 1_795_000_000_000_i64,
            "domainName": "example.test", "stage": "local", "apiId": "x", "requestId": "r", "identity": {"sourceIp": "127.0.0.1"},
        },
        "body": ask(content).to_string(),
        "isBase64Encoded": false,
    }))
    .unwrap()
}

async fn connection_of(app: &TestApp, sid: &str, name: &str) -> String {
    app.harness
        .app
        .connections
        .in_session(sid.parse().unwrap())
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.participant.display_name == name)
        .unwrap()
        .connection_id
}

/// The configuration with a Gemini-shaped local model.
fn gemini(mut config: Config, mock: &MockLlm) -> Config {
    config.spirit.provider = SpiritProviderConfig::Gemini {
        api_key: Secret::new("test-key"),
        model: "gemini-test".into(),
        base_url: mock.base_url.clone(),
    };
    config
}

/// The harness with nobody feeding the queue to the spirit: the test plays the event
/// source mapping itself.
async fn without_event_source(config: Config) -> TestApp {
    spawn_app_with_options(
        config,
        local_dev::Options {
            event_source: false,
            push: local_dev::PushPath::Sdk,
        },
    )
    .await
}

/// An SQS event as the event source mapping builds it, one record per ticket.
fn sqs_event(tickets: &[Ticket]) -> SqsEvent {
    let records: Vec<Value> = tickets
        .iter()
        .enumerate()
        .map(|(i, ticket)| {
            json!({
                "messageId": format!("message-{i}"),
                "receiptHandle": "receipt",
                "body": serde_json::to_string(ticket).unwrap(),
                "attributes": {"MessageGroupId": ticket.group_id(), "ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "eventSource": "aws:sqs",
            })
        })
        .collect();
    serde_json::from_value(json!({ "Records": records })).unwrap()
}

/// The ticket `ws-message` sent for the question a `message_received` announced.
fn ticket_for(received: &Value) -> Ticket {
    Ticket {
        session_id: received["session_id"].as_str().unwrap().parse().unwrap(),
        question_id: received["message"]["id"].as_str().unwrap().parse().unwrap(),
        endpoint: None,
    }
}

fn epoch_ms_in(delay: Duration) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    u64::try_from((now + delay).as_millis()).unwrap()
}

/// The ids of the session's questions, oldest first, from the store.
async fn questions(app: &TestApp, sid: &str) -> Vec<Uuid> {
    app.store()
        .messages_before(sid.parse().unwrap(), None, 100)
        .await
        .unwrap()
        .messages
        .into_iter()
        .filter(|m| m.kind == seance::domain::MessageKind::Question)
        .map(|m| m.id)
        .collect()
}

/// How many stored replies each question has.
async fn replies(app: &TestApp, sid: &str) -> HashMap<Uuid, usize> {
    let mut counts = HashMap::new();
    for message in app
        .store()
        .messages_before(sid.parse().unwrap(), None, 100)
        .await
        .unwrap()
        .messages
    {
        if let Some(question) = message.in_reply_to {
            *counts.entry(question).or_default() += 1;
        }
    }
    counts
}

// ---------------------------------------------------------------------------------------

/// A séance on a real FIFO queue behaves as on the in-process one: every question is
/// answered once, in the order accepted, and everyone sees the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seance_runs_on_a_real_fifo_queue() {
    let queue_url = fresh_fifo_queue(30).await;
    let app = queue_app(&queue_url, true).await;
    let mut table = table(app, "madame-veyra", &["Ada", "Bob", "Cy"]).await;
    let asked = [
        "Tell me of the house",
        "Speak of my future",
        "Describe the garden",
    ];
    for (i, question) in asked.iter().enumerate() {
        table.clients[i].send_json(ask(question)).await;
    }
    let (_, answers) = everyone_hears(&mut table.clients, 3).await;
    let stored = questions(&table.app, &table.sid).await;
    let answered: Vec<Uuid> = answers.iter().map(|(q, _)| q.parse().unwrap()).collect();
    assert_eq!(answered, stored, "answered in the order stored");
    assert!(
        replies(&table.app, &table.sid)
            .await
            .values()
            .all(|n| *n == 1)
    );
    // Every ticket was deleted once its turn was taken.
    let attributes = sqs_test_client()
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .unwrap();
    let waiting = attributes
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages))
        .cloned();
    assert_eq!(waiting.as_deref(), Some("0"));
}

/// Many séances asking at once on one queue: every question answered once, in each
/// séance's order, and no séance sees another's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_seances_at_once_on_sqs_lose_duplicate_and_reorder_nothing() {
    let queue_url = fresh_fifo_queue(30).await;
    many_seances_at_once(queue_app(&queue_url, true).await).await;
}

/// The same on the embedded harness: SQLite, in-process stores and queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_seances_at_once_embedded_lose_duplicate_and_reorder_nothing() {
    let mut config = test_config(&seance_tests::fresh_sqlite_url(), None);
    config.spirit.oracle_word_delay = Duration::from_millis(40);
    many_seances_at_once(spawn_app_with_options(config, local_dev::Options::default()).await).await;
}

async fn many_seances_at_once(app: TestApp) {
    let app = Arc::new(app);
    let mut rooms = Vec::new();
    for room in 0..4 {
        let app = app.clone();
        rooms.push(tokio::spawn(async move {
            let created: Value = app
                .post(
                    "/api/sessions",
                    json!({"name": format!("Room {room}"), "host_name": "Ada", "persona": "madame-veyra"}),
                )
                .await
                .json()
                .await
                .unwrap();
            let sid = created["session"]["id"].as_str().unwrap().to_owned();
            let guest = app.join_ticket(&sid, "Bob").await;
            let mut clients = Vec::new();
            for ticket in [&created, &guest] {
                let mut client = seance_tests::ws::WsClient::connect(&app.ws_url(ticket))
                    .await
                    .unwrap();
                client.sync(None).await;
                clients.push(client);
            }
            for i in 0..3 {
                clients[i % 2]
                    .send_json(ask(&format!("Room {room}, question {i}")))
                    .await;
            }
            let (transcripts, answers) = everyone_hears(&mut clients, 3).await;
            for transcript in &transcripts {
                assert!(
                    transcript
                        .iter()
                        .all(|e| e["session_id"].as_str() == Some(sid.as_str())),
                    "only this séance's events"
                );
            }
            (sid, answers)
        }));
    }
    for room in rooms {
        let (sid, answers) = room.await.unwrap();
        let stored = questions(&app, &sid).await;
        let answered: Vec<Uuid> = answers.iter().map(|(q, _)| q.parse().unwrap()).collect();
        assert_eq!(answered, stored);
        let counts = replies(&app, &sid).await;
        assert!(
            stored.iter().all(|q| counts.get(q) == Some(&1)),
            "{counts:?}"
        );
    }
}

/// A worker killed mid-answer (its invocation dropped after the first tokens): the queue
/// hands the message out again after its visibility timeout, the question is answered
/// once, from the start (a second `spirit_thinking` for it), and the next question follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_answer_is_taken_over() {
    // The claim of a killed invocation holds until that invocation's end (its timeout);
    // the queue hides a message a little longer, as the template sets it (6x there).
    let queue_url = fresh_fifo_queue(7).await;
    let mut config = queue_config(&queue_url).await;
    config.spirit.function_timeout = Duration::from_secs(6);
    config.spirit.oracle_word_delay = Duration::from_millis(100);
    let app = without_event_source(config).await;
    let mut table = table(app, "the-archivist", &["Ada", "Bob"]).await;
    table.clients[0]
        .send_json(ask("Recall the first catalogue in full"))
        .await;
    table.clients[0].expect("message_received").await;
    table.clients[1]
        .send_json(ask("List the missing volumes"))
        .await;
    table.clients[0].expect("message_received").await;

    let harness = &table.app.harness;
    let spirit = harness.app.spirit_worker();
    let source = SqsEventSource::new(
        sqs_test_client(),
        &queue_url,
        harness.app.config.spirit.function_timeout,
    );
    // The first invocation dies as soon as the room has seen a word of the answer.
    let watcher = &mut table.clients[1];
    tokio::select! {
        handled = source.poll_once(&spirit, 5) => panic!("the worker finished before it was killed: {handled:?}"),
        token = watcher.expect("spirit_token") => assert_eq!(token["seq"], 0),
    }
    let first = questions(&table.app, &table.sid).await[0];
    assert_eq!(
        table
            .app
            .store()
            .turn_state(table.sid.parse().unwrap())
            .await
            .unwrap(),
        Some(TurnState::Speaking),
        "the killed attempt left its question mid-answer"
    );

    // The event source mapping carries on; the message comes back by itself.
    let _mapping = source.start(spirit);
    let events = table.clients[0].collect_until("spirit_response", 2).await;
    let thinking: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "spirit_thinking")
        .map(|e| e["question_id"].as_str().unwrap())
        .collect();
    let first = first.to_string();
    let stored = questions(&table.app, &table.sid).await;
    let second = stored[1].to_string();
    assert_eq!(
        thinking,
        [first.as_str(), first.as_str(), second.as_str()],
        "the first question restarts, then the second follows"
    );
    let answered: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "spirit_response")
        .map(|e| e["message"]["in_reply_to"].as_str().unwrap())
        .collect();
    assert_eq!(answered, [first.as_str(), second.as_str()]);
    // After the restart, the tokens of the first answer add up to its stored answer.
    let restart = events
        .iter()
        .rposition(|e| e["type"] == "spirit_thinking" && e["question_id"] == first.as_str())
        .unwrap();
    let response = events
        .iter()
        .find(|e| e["type"] == "spirit_response")
        .unwrap();
    let text: String = events[restart..]
        .iter()
        .take_while(|e| e["type"] != "spirit_response")
        .filter(|e| e["type"] == "spirit_token")
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, response["message"]["content"].as_str().unwrap());
    let counts = replies(&table.app, &table.sid).await;
    assert_eq!(counts.len(), 2);
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    assert_eq!(
        table
            .app
            .store()
            .turn_state(table.sid.parse().unwrap())
            .await
            .unwrap(),
        None,
        "nothing is left unanswered"
    );
}

/// Two `ws-message` instances accepting and two event sources answering, on one session:
/// answers in acceptance order, one `spirit_thinking` and one `spirit_response` each,
/// never interleaved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_and_two_workers_keep_one_order() {
    // A worker that finds the session's question held by the other reports its message
    // failed (`TurnError::Busy`); the queue hands it out again after the visibility
    // timeout, kept short so that a message comes back while the other worker is still
    // answering: the case where a claim of the next question must wait until the last
    // answer has reached the room (it once did not, and an answer interleaved).
    let queue_url = fresh_fifo_queue(3).await;
    let config = queue_config(&queue_url).await;
    let first = spawn_app_with_options(config.clone(), local_dev::Options::default()).await;
    // The second instance shares the database, Redis and queue, and pushes through the
    // first's @connections, as two Lambda containers behind one API would.
    let mut second_config = config;
    second_config.apigw_management_endpoint =
        first.harness.app.config.apigw_management_endpoint.clone();
    let second = spawn_app_with_options(second_config, local_dev::Options::default()).await;
    let mut table = table(first, "the-archivist", &["Ada", "Bob", "Cy", "Di"]).await;
    for round in 0..2 {
        let bob = connection_of(&table.app, &table.sid, "Bob").await;
        let di = connection_of(&table.app, &table.sid, "Di").await;
        let (second_app, first_app) = (second.harness.app.clone(), table.app.harness.app.clone());
        let a = tokio::spawn(async move {
            seance::ws::handle_message(
                &second_app,
                send_event(&bob, &format!("Round {round} from Bob")),
            )
            .await
        });
        let b = tokio::spawn(async move {
            seance::ws::handle_message(
                &first_app,
                send_event(&di, &format!("Round {round} from Di")),
            )
            .await
        });
        table.clients[0]
            .send_json(ask(&format!("Round {round} from Ada")))
            .await;
        a.await.unwrap();
        b.await.unwrap();
        everyone_hears(&mut table.clients, 3).await;
    }
    let stored = questions(&table.app, &table.sid).await;
    assert_eq!(stored.len(), 6);
    let counts = replies(&table.app, &table.sid).await;
    assert!(
        stored.iter().all(|q| counts.get(q) == Some(&1)),
        "{counts:?}"
    );
}

/// `ws-message` never waits for the model: with a model that takes 30 s, the handler has
/// returned while the question is still unanswered, and the asker has its
/// `message_received` but no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_message_returns_before_the_model_answers() {
    let mock = MockLlm::start(vec![Reply::Slow(
        Duration::from_secs(30),
        Box::new(stream(gemini_stream(&["Too ", "late."], "STOP"))),
    )])
    .await;
    let base_url = mock.base_url.clone();
    let app = spawn_app_configured(Backend::Sqlite, move |config| {
        config.spirit.provider = SpiritProviderConfig::Gemini {
            api_key: Secret::new("test-key"),
            model: "gemini-test".into(),
            base_url,
        };
    })
    .await;
    let mut table = table(app, "madame-veyra", &["Ada"]).await;
    let ada = connection_of(&table.app, &table.sid, "Ada").await;
    let response = seance::ws::handle_message(
        &table.app.harness.app,
        send_event(&ada, "Will it rain tomorrow?"),
    )
    .await;
    assert_eq!(response.status_code, 200);
    // The handler is back; the spirit has not answered.
    let state = table
        .app
        .store()
        .turn_state(table.sid.parse().unwrap())
        .await
        .unwrap();
    assert!(
        matches!(state, Some(TurnState::Queued | TurnState::Thinking)),
        "{state:?}"
    );
    let before_pong = table.clients[0].until_pong().await;
    assert!(before_pong.iter().any(|e| e["type"] == "message_received"));
    assert!(!before_pong.iter().any(|e| e["type"] == "spirit_response"));
}

/// With less time left in the invocation than the model takes, the fallback is stored and
/// announced before the deadline, and the message is not failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_slower_than_the_deadline_gets_the_fallback_in_time() {
    let mock = MockLlm::start(vec![Reply::Slow(
        Duration::from_secs(30),
        Box::new(stream(gemini_stream(&["Too ", "late."], "STOP"))),
    )])
    .await;
    let app = without_event_source(gemini(test_config("sqlite::memory:", None), &mock)).await;
    let mut table = table(app, "captain-hollow", &["Ada"]).await;
    table.clients[0].send_json(ask("Where is the ship?")).await;
    let received = table.clients[0].expect("message_received").await;
    let ticket = ticket_for(&received);
    let spirit = table.app.harness.app.spirit_worker();
    // The invocation has 5 s; the reply margin leaves the model 2.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let response = spirit
        .handle_batch(sqs_event(&[ticket]), epoch_ms_in(Duration::from_secs(5)))
        .await;
    assert!(
        tokio::time::Instant::now() < deadline,
        "returned before the deadline"
    );
    assert!(response.batch_item_failures.is_empty());
    let answer = table.clients[0].expect("spirit_response").await;
    assert_eq!(answer["fallback"], true);
    assert!(
        ["Fog on the water", "Heavy seas, ask again"]
            .contains(&answer["message"]["content"].as_str().unwrap())
    );
    assert_eq!(mock.requests().len(), 1, "the model was asked");
}

/// A question claimed `MAX_ATTEMPTS` times without a reply (each attempt died) is given
/// to the model once more; one claimed more often than that gets the fallback at once,
/// the model unasked: whatever killed those attempts is not given another go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_whose_attempts_keep_dying_gets_the_fallback() {
    for (died, model_asked) in [(MAX_ATTEMPTS - 1, true), (MAX_ATTEMPTS, false)] {
        let mock = MockLlm::start(vec![stream(gemini_stream(&["Fair ", "winds."], "STOP"))]).await;
        let app = without_event_source(gemini(test_config("sqlite::memory:", None), &mock)).await;
        let mut table = table(app, "captain-hollow", &["Ada"]).await;
        table.clients[0].send_json(ask("Where is the ship?")).await;
        let received = table.clients[0].expect("message_received").await;
        let ticket = ticket_for(&received);
        // Each attempt that died claimed it until a moment already past.
        for attempt in 1..=died {
            match table
                .app
                .store()
                .claim_next_question(ticket.session_id, 0, 0)
                .await
                .unwrap()
            {
                Claim::Claimed(claimed) => assert_eq!(claimed.attempts, attempt),
                other => panic!("attempt {attempt}: {other:?}"),
            }
        }
        let spirit = table.app.harness.app.spirit_worker();
        let response = spirit.handle_batch(sqs_event(&[ticket]), 0).await;
        assert!(response.batch_item_failures.is_empty());
        let answer = table.clients[0].expect("spirit_response").await;
        assert_eq!(answer["fallback"], !model_asked, "after {died} attempts");
        assert_eq!(mock.requests().len(), usize::from(model_asked));
        if model_asked {
            assert_eq!(answer["message"]["content"], "Fair winds.");
        }
    }
}

/// A worker that stored its reply and died before announcing it (its claim ran out) has
/// not finished the turn: the next worker announces that reply, unasked of the model, and
/// only then takes the next question, so the room hears the answers in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_stored_but_never_announced_is_announced_before_the_next_turn() {
    let mock = MockLlm::start(vec![stream(gemini_stream(&["Fair ", "winds."], "STOP"))]).await;
    let app = without_event_source(gemini(test_config("sqlite::memory:", None), &mock)).await;
    let mut table = table(app, "captain-hollow", &["Ada", "Bob"]).await;
    table.clients[0].send_json(ask("Where is the ship?")).await;
    let first = table.clients[0].expect("message_received").await;
    table.clients[1].send_json(ask("Who sails her?")).await;
    let second = table.clients[0].expect("message_received").await;
    let ticket = ticket_for(&first);
    let session_id = ticket.session_id;
    let store = table.app.store();
    let Claim::Claimed(claimed) = store.claim_next_question(session_id, 0, 0).await.unwrap() else {
        panic!("the first question is claimed");
    };
    assert_eq!(claimed.message.id.to_string(), first["message"]["id"]);
    let ReplyOutcome::Stored(stored) = store
        .store_reply(claimed.message.id, Uuid::now_v7(), "The tide turns.".into())
        .await
        .unwrap()
    else {
        panic!("the reply is stored");
    };
    // The worker dies here. The queue's message comes back to another.
    let spirit = table.app.harness.app.spirit_worker();
    let response = spirit.handle_batch(sqs_event(&[ticket]), 0).await;
    assert!(response.batch_item_failures.is_empty());
    for client in &mut table.clients {
        let events = client.collect_until("spirit_response", 2).await;
        let turns: Vec<(&str, &str)> = events
            .iter()
            .filter(|e| e["type"] == "spirit_thinking" || e["type"] == "spirit_response")
            .map(|e| {
                let kind = e["type"].as_str().unwrap();
                let question = match kind {
                    "spirit_response" => e["message"]["in_reply_to"].as_str(),
                    _ => e["question_id"].as_str(),
                };
                (kind, question.unwrap())
            })
            .collect();
        let (q1, q2) = (
            first["message"]["id"].as_str().unwrap(),
            second["message"]["id"].as_str().unwrap(),
        );
        assert_eq!(
            turns,
            [
                ("spirit_response", q1),
                ("spirit_thinking", q2),
                ("spirit_response", q2)
            ]
        );
        let answers: Vec<&Value> = events
            .iter()
            .filter(|e| e["type"] == "spirit_response")
            .collect();
        assert_eq!(answers[0]["message"]["id"], stored.id.to_string());
        assert_eq!(answers[0]["message"]["content"], "The tide turns.");
        assert_eq!(answers[1]["message"]["content"], "Fair winds.");
    }
    assert_eq!(
        mock.requests().len(),
        1,
        "only the second question reached the model"
    );
    assert_eq!(store.turn_state(session_id).await.unwrap(), None);
}

/// What the model is shown of the conversation: questions asked one after the other, with
/// no answer between them, as one turn of the living (one JSON line each); a window of
/// history that begins with the spirit's words begins at the first question after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_sees_the_conversation_in_turns() {
    let mock = MockLlm::start(vec![stream(gemini_stream(&["Fair ", "winds."], "STOP"))]).await;
    let mut config = gemini(test_config("sqlite::memory:", None), &mock);
    config.spirit.history = 2;
    let app = without_event_source(config).await;
    let mut table = table(app, "captain-hollow", &["Ada", "Bob"]).await;
    table.clients[0].send_json(ask("Where is the ship?")).await;
    let first = table.clients[0].expect("message_received").await;
    table.clients[1].send_json(ask("Who sails her?")).await;
    table.clients[0].expect("message_received").await;
    // Nothing answers until the queue's message is handled: both questions wait.
    let spirit = table.app.harness.app.spirit_worker();
    let response = spirit
        .handle_batch(sqs_event(&[ticket_for(&first)]), 0)
        .await;
    assert!(response.batch_item_failures.is_empty());
    table.clients[0].collect_until("spirit_response", 2).await;

    table.clients[0].send_json(ask("Is she near?")).await;
    let third = table.clients[0].expect("message_received").await;
    let response = spirit
        .handle_batch(sqs_event(&[ticket_for(&third)]), 0)
        .await;
    assert!(response.batch_item_failures.is_empty());
    table.clients[0].expect("spirit_response").await;

    let turns = |request: usize| -> Vec<(String, String)> {
        mock.requests()[request].body["contents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["role"].as_str().unwrap().to_owned(),
                    c["parts"][0]["text"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let line =
        |asker: &str, question: &str| json!({"asker": asker, "question": question}).to_string();
    assert_eq!(mock.requests().len(), 3);
    assert_eq!(
        turns(0),
        [("user".into(), line("Ada", "Where is the ship?"))]
    );
    // The first answer came after the second question: not part of its history.
    assert_eq!(
        turns(1),
        [(
            "user".into(),
            format!(
                "{}\n{}",
                line("Ada", "Where is the ship?"),
                line("Bob", "Who sails her?")
            )
        )]
    );
    // The last two messages before the third question are both answers.
    assert_eq!(turns(2), [("user".into(), line("Ada", "Is she near?"))]);
}

/// Questions of a session that ended before the spirit got to them are never sent to the
/// model; their messages are done with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn questions_of_an_ended_session_never_reach_the_model() {
    let mock = MockLlm::start(vec![stream(gemini_stream(&["Never."], "STOP"))]).await;
    let config = test_config(&fresh_postgres_url().await, Some(&redis_url()));
    let app = without_event_source(gemini(config, &mock)).await;
    let mut table = table(app, "madame-veyra", &["Ada", "Bob"]).await;
    let mut tickets = Vec::new();
    for (i, question) in ["First?", "Second?"].iter().enumerate() {
        table.clients[i].send_json(ask(question)).await;
        let received = table.clients[0].expect("message_received").await;
        tickets.push(ticket_for(&received));
    }
    let host_token = table.tickets[0]["token"].as_str().unwrap().to_owned();
    let ended = table
        .app
        .post_with_token(&format!("/api/sessions/{}/end", table.sid), &host_token)
        .await;
    assert!(ended.status().is_success(), "{}", ended.status());
    let spirit = table.app.harness.app.spirit_worker();
    let response = spirit.handle_batch(sqs_event(&tickets), 0).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "done with, not retried"
    );
    assert!(mock.requests().is_empty(), "the model was never asked");
    assert_eq!(
        table
            .app
            .store()
            .turn_state(table.sid.parse().unwrap())
            .await
            .unwrap(),
        None
    );
    assert!(replies(&table.app, &table.sid).await.is_empty());
}

/// SQS may deliver a message twice: the second delivery finds the question answered and
/// announces nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_message_is_answered_once() {
    let mut config = test_config("sqlite::memory:", None);
    config.spirit.oracle_word_delay = Duration::from_millis(10);
    let app = without_event_source(config).await;
    let mut table: Table = table(app, "madame-veyra", &["Ada"]).await;
    table.clients[0].send_json(ask("Is anyone there?")).await;
    let received = table.clients[0].expect("message_received").await;
    let ticket = ticket_for(&received);
    let spirit = table.app.harness.app.spirit_worker();
    let event = sqs_event(std::slice::from_ref(&ticket));
    assert!(
        spirit
            .handle_batch(event.clone(), 0)
            .await
            .batch_item_failures
            .is_empty()
    );
    let first = table.clients[0].collect_until("spirit_response", 1).await;
    let thinking = first
        .iter()
        .filter(|e| e["type"] == "spirit_thinking")
        .count();
    assert_eq!(thinking, 1, "{first:?}");
    assert!(
        spirit
            .handle_batch(event, 0)
            .await
            .batch_item_failures
            .is_empty()
    );
    let after = table.clients[0].until_pong().await;
    assert!(
        !after
            .iter()
            .any(|e| e["type"] == "spirit_thinking" || e["type"] == "spirit_response"),
        "{after:?}"
    );
    let counts = replies(&table.app, &table.sid).await;
    assert_eq!(counts.get(&ticket.question_id), Some(&1));
}

/// A ticket that cannot be read is dropped (retrying cannot fix it); a ticket whose turn
/// fails for a reason worth retrying is reported, and so is everything after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_failures_follow_fifo_rules() {
    let app = without_event_source(test_config("sqlite::memory:", None)).await;
    let spirit = app.harness.app.spirit_worker();
    let mut event: SqsEvent = serde_json::from_value(json!({"Records": [
        {"messageId": "garbled", "body": "not a ticket", "attributes": {}, "messageAttributes": {}},
    ]}))
    .unwrap();
    assert!(
        spirit
            .handle_batch(event.clone(), 0)
            .await
            .batch_item_failures
            .is_empty()
    );
    // The database closes: the next ticket's turn cannot be taken, nor the one after.
    let good = sqs_event(&[
        Ticket {
            session_id: Uuid::now_v7(),
            question_id: Uuid::now_v7(),
            endpoint: None,
        },
        Ticket {
            session_id: Uuid::now_v7(),
            question_id: Uuid::now_v7(),
            endpoint: None,
        },
    ]);
    event.records.extend(good.records);
    app.harness.database.close().await;
    let failed: Vec<String> = spirit
        .handle_batch(event, 0)
        .await
        .batch_item_failures
        .into_iter()
        .map(|f| f.item_identifier)
        .collect();
    assert_eq!(failed, ["message-0", "message-1"]);
}
