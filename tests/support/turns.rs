//! A séance table for the spirit's tests: a session with everyone connected, and checks
//! of what each client saw of the spirit's turns.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::TestApp;
use crate::ws::WsClient;

pub struct Table {
    pub app: TestApp,
    pub sid: String,
    /// Each participant's REST answer (token included), host first.
    pub tickets: Vec<Value>,
    pub clients: Vec<WsClient>,
}

/// A session with `names.len()` participants, each connected and synced.
pub async fn table(app: TestApp, persona: &str, names: &[&str]) -> Table {
    let created: Value = app
        .post(
            "/api/sessions",
            json!({"name": "Table", "host_name": names[0], "persona": persona}),
        )
        .await
        .json()
        .await
        .unwrap();
    let sid = created["session"]["id"].as_str().unwrap().to_owned();
    let mut tickets = vec![created];
    for name in &names[1..] {
        tickets.push(app.join_ticket(&sid, name).await);
    }
    let mut clients = Vec::new();
    for ticket in &tickets {
        let mut client = WsClient::connect(&app.ws_url(ticket)).await.unwrap();
        client.sync(None).await;
        clients.push(client);
    }
    // Every $connect has returned, so each user_joined came before these pongs: forget
    // them.
    for client in &mut clients {
        client.until_pong().await;
    }
    Table {
        app,
        sid,
        tickets,
        clients,
    }
}

pub fn ask(content: &str) -> Value {
    json!({"type": "send_message", "content": content})
}

/// Every client's events up to its `count`th `spirit_response`, each transcript checked
/// and all agreeing on the same `count` answers: the transcripts and the answers.
pub async fn everyone_hears(
    clients: &mut [WsClient],
    count: usize,
) -> (Vec<Vec<Value>>, Vec<(String, String)>) {
    let mut transcripts = Vec::new();
    for client in clients.iter_mut() {
        transcripts.push(client.collect_until("spirit_response", count).await);
    }
    let answers = check_transcript(&transcripts[0]);
    assert_eq!(answers.len(), count);
    for other in &transcripts[1..] {
        assert_eq!(check_transcript(other), answers, "everyone saw the same");
    }
    (transcripts, answers)
}

/// Checks one client's transcript: each question answered once, in order, streams whole
/// and never interleaved, tokens adding up to the stored answer and its path.
pub fn check_transcript(events: &[Value]) -> Vec<(String, String)> {
    let of = |kind: &str| {
        events
            .iter()
            .filter(|e| e["type"] == kind)
            .collect::<Vec<_>>()
    };
    let asked: Vec<String> = of("message_received")
        .iter()
        .map(|e| e["message"]["id"].as_str().unwrap().to_owned())
        .collect();
    let thinking: Vec<String> = of("spirit_thinking")
        .iter()
        .map(|e| e["question_id"].as_str().unwrap().to_owned())
        .collect();
    let answered: Vec<String> = of("spirit_response")
        .iter()
        .map(|e| e["message"]["in_reply_to"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        thinking, asked,
        "one spirit_thinking per question, in the order accepted"
    );
    assert_eq!(
        answered, asked,
        "one spirit_response per question, in the order accepted"
    );

    let mut current: Option<String> = None;
    let mut tokens: HashMap<String, Vec<&Value>> = HashMap::new();
    for event in events {
        match event["type"].as_str().unwrap() {
            "spirit_thinking" => {
                assert!(
                    current.is_none(),
                    "a new answer began before the last ended"
                );
                current = Some(event["question_id"].as_str().unwrap().to_owned());
            }
            "spirit_token" => {
                let id = event["question_id"].as_str().unwrap();
                assert_eq!(
                    current.as_deref(),
                    Some(id),
                    "tokens of another answer interleaved"
                );
                tokens.entry(id.to_owned()).or_default().push(event);
            }
            "spirit_response" => {
                let id = event["message"]["in_reply_to"].as_str().unwrap();
                assert_eq!(current.as_deref(), Some(id));
                current = None;
            }
            _ => {}
        }
    }
    let mut answers = Vec::new();
    for response in of("spirit_response") {
        let id = response["message"]["in_reply_to"]
            .as_str()
            .unwrap()
            .to_owned();
        let content = response["message"]["content"].as_str().unwrap().to_owned();
        assert_eq!(response["message"]["kind"], "spirit");
        assert_eq!(response["message"]["author"], Value::Null);
        let path = response["planchette"].as_array().unwrap();
        assert_spells(&content, path);
        let streamed = tokens.remove(&id).unwrap_or_default();
        if response["fallback"] == false {
            let seqs: Vec<u64> = streamed
                .iter()
                .map(|t| t["seq"].as_u64().unwrap())
                .collect();
            assert_eq!(
                seqs,
                (0..streamed.len() as u64).collect::<Vec<_>>(),
                "seq counts 0, 1, 2…"
            );
            let text: String = streamed
                .iter()
                .map(|t| t["text"].as_str().unwrap())
                .collect();
            assert_eq!(text, content, "the tokens add up to the answer");
            let token_path: Vec<&Value> = streamed
                .iter()
                .flat_map(|t| t["planchette"].as_array().unwrap())
                .collect();
            assert_eq!(
                token_path,
                path.iter().collect::<Vec<_>>(),
                "the pieces' paths add up to the whole"
            );
        }
        answers.push((id, content));
    }
    answers
}

/// The path spells the answer: its letters and digits, upper-cased, REST between words;
/// or the single target of an answer that is exactly YES, NO or GOODBYE.
pub fn assert_spells(answer: &str, path: &[Value]) {
    let symbols: Vec<&str> = path.iter().map(|p| p["symbol"].as_str().unwrap()).collect();
    let word = answer
        .trim()
        .trim_end_matches(|c: char| c.is_ascii_punctuation())
        .to_uppercase();
    if ["YES", "NO", "GOODBYE"].contains(&word.as_str()) {
        assert_eq!(symbols, [word.as_str()], "{answer}");
        return;
    }
    let letters: String = symbols.iter().filter(|s| **s != "REST").copied().collect();
    let expected: String = answer
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect();
    assert_eq!(letters, expected, "{answer}");
    let rests = symbols.iter().filter(|s| **s == "REST").count();
    assert_eq!(
        rests,
        answer
            .split_whitespace()
            .filter(|w| w.chars().any(|c| c.is_ascii_alphanumeric()))
            .count()
            .saturating_sub(1)
    );
    let times: Vec<u64> = path.iter().map(|p| p["at_ms"].as_u64().unwrap()).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "at_ms never decreases"
    );
    for point in path {
        let (x, y) = (point["x"].as_f64().unwrap(), point["y"].as_f64().unwrap());
        assert!((0.0..=1.0).contains(&x) && (0.0..=1.0).contains(&y));
    }
}
