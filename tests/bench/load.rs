//! `seance-load`: S séances × M members over real WebSockets against any base URL (the
//! harness, or a deployed stack over `wss://`). Per séance a closed loop: one member asks
//! and waits for the answer before asking again, for D seconds after a warm-up. Reports
//! fan-out latency (send → `message_received` at each member), answer latency (send →
//! `spirit_response` at the asker), questions per second, the CPU the named processes used
//! in the measured window (from `/proc`), and completeness: every member got every
//! question and answer exactly once, in order, and nothing of another séance.
//!
//!     seance-load --url http://127.0.0.1:3000 --sessions 50 --members 5 --duration 20 \
//!         [--warmup 5] [--cpu server=PID] [--cpu postgres=comm:postgres] \
//!         [--cpu redis=comm:redis-server] [--connect-concurrency 64] [--fail-on-loss]
//!
//! One JSON line on stdout, a table on stderr. The server must not rate-limit or pace the
//! spirit for this (see the README's "Load" section for the settings).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

struct Args {
    url: String,
    sessions: usize,
    members: usize,
    duration: Duration,
    warmup: Duration,
    cpu: Vec<(String, String)>,
    connect_concurrency: usize,
    fail_on_loss: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: seance-load --url BASE [--sessions S] [--members M] [--duration SECS] [--warmup SECS]\n\
         \x20                  [--cpu NAME=PID|NAME=comm:COMM]... [--connect-concurrency N] [--fail-on-loss]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        url: String::new(),
        sessions: 10,
        members: 5,
        duration: Duration::from_secs(20),
        warmup: Duration::from_secs(5),
        cpu: Vec::new(),
        connect_concurrency: 64,
        fail_on_loss: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--url" => args.url = value().trim_end_matches('/').to_owned(),
            "--sessions" => args.sessions = value().parse().unwrap_or_else(|_| usage()),
            "--members" => args.members = value().parse().unwrap_or_else(|_| usage()),
            "--duration" => {
                args.duration = Duration::from_secs(value().parse().unwrap_or_else(|_| usage()))
            }
            "--warmup" => {
                args.warmup = Duration::from_secs(value().parse().unwrap_or_else(|_| usage()))
            }
            "--cpu" => {
                let raw = value();
                let (name, what) = raw.split_once('=').unwrap_or_else(|| usage());
                args.cpu.push((name.to_owned(), what.to_owned()));
            }
            "--connect-concurrency" => {
                args.connect_concurrency = value().parse().unwrap_or_else(|_| usage())
            }
            "--fail-on-loss" => args.fail_on_loss = true,
            _ => usage(),
        }
    }
    if args.url.is_empty() || args.members < 1 || args.members > 12 || args.sessions < 1 {
        usage();
    }
    args
}

// ----------------------------------------------------------------------------------------
// CPU from /proc.

fn clock_ticks() -> f64 {
    // sysconf(_SC_CLK_TCK) is 100 on every Linux this runs on.
    100.0
}

/// utime + stime of one process, in seconds.
fn cpu_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn pids_by_comm(comm: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim() == comm)
                .unwrap_or(false)
        })
        .collect()
}

/// CPU seconds per named process group, by pid.
fn cpu_snapshot(spec: &[(String, String)]) -> BTreeMap<String, HashMap<u32, f64>> {
    spec.iter()
        .map(|(name, what)| {
            let pids = match what.strip_prefix("comm:") {
                Some(comm) => pids_by_comm(comm),
                None => what.split(',').filter_map(|p| p.parse().ok()).collect(),
            };
            let times = pids
                .into_iter()
                .filter_map(|pid| Some((pid, cpu_of(pid)?)))
                .collect();
            (name.clone(), times)
        })
        .collect()
}

fn cpu_used(
    before: &BTreeMap<String, HashMap<u32, f64>>,
    after: &BTreeMap<String, HashMap<u32, f64>>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(name, times)| {
            let used = times
                .iter()
                .map(|(pid, t)| t - before.get(name).and_then(|b| b.get(pid)).unwrap_or(&0.0))
                .sum();
            (name.clone(), used)
        })
        .collect()
}

// ----------------------------------------------------------------------------------------
// What each member saw.

#[derive(Default)]
struct Seen {
    /// `(kind, id)` in arrival order: `q` for message_received (the question's id), `a`
    /// for spirit_response (the question it answers).
    order: Vec<(char, String)>,
    /// Events whose session_id was another séance's.
    foreign: u64,
    /// Token sequence faults: a `seq` that is not the next one for its question.
    token_faults: u64,
}

struct Member {
    seen: Arc<Mutex<Seen>>,
    out: mpsc::UnboundedSender<String>,
}

struct Pending {
    sent: Instant,
    measured: bool,
}

/// The questions in flight, by content, and their latencies.
#[derive(Default)]
struct Latencies {
    fanout_ms: Vec<f64>,
    answer_ms: Vec<f64>,
}

struct Shared {
    pending: Mutex<HashMap<String, Pending>>,
    /// Question id → content, once announced.
    ids: Mutex<HashMap<String, String>>,
    latencies: Mutex<Latencies>,
    answered: Mutex<HashMap<String, tokio::sync::oneshot::Sender<()>>>,
    errors: AtomicU64,
}

async fn post(client: &reqwest::Client, url: &str, body: Value) -> Value {
    for attempt in 0..5 {
        match client.post(url).json(&body).send().await {
            Ok(response) if response.status().is_success() => {
                return response.json().await.expect("json");
            }
            Ok(response) if response.status() == 429 && attempt < 4 => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                panic!("POST {url}: {status} {text}");
            }
            Err(err) if attempt < 4 => {
                eprintln!("POST {url}: {err}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("POST {url}: {err}"),
        }
    }
    unreachable!()
}

async fn open_member(
    ticket: &Value,
    session_id: String,
    member: usize,
    shared: Arc<Shared>,
) -> Member {
    let url = format!(
        "{}?token={}",
        ticket["websocket_url"].as_str().expect("websocket_url"),
        ticket["token"].as_str().expect("token")
    );
    let request = url.into_client_request().expect("a WebSocket URL");
    // A small read buffer: tungstenite zeroes it on every read (128 KiB by default).
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(8 * 1024);
    let (socket, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), false)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let (mut sink, mut stream) = socket.split();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (out, mut outgoing) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Some(text) = outgoing.recv().await {
            if sink.send(Message::text(text)).await.is_err() {
                break;
            }
        }
    });
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let reader_seen = seen.clone();
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let mut next_seq: HashMap<String, u64> = HashMap::new();
        while let Some(Ok(frame)) = stream.next().await {
            let Message::Text(text) = frame else { continue };
            let Ok(event) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            let now = Instant::now();
            if event["session_id"].as_str() != Some(session_id.as_str()) {
                if event.get("type").is_some() {
                    reader_seen.lock().await.foreign += 1;
                }
                continue;
            }
            match event["type"].as_str().unwrap_or_default() {
                "session_state" => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                }
                "message_received" => {
                    let id = event["message"]["id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    let content = event["message"]["content"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    reader_seen.lock().await.order.push(('q', id.clone()));
                    shared.ids.lock().await.insert(id, content.clone());
                    if let Some(pending) = shared.pending.lock().await.get(&content)
                        && pending.measured
                    {
                        let ms = (now - pending.sent).as_secs_f64() * 1000.0;
                        shared.latencies.lock().await.fanout_ms.push(ms);
                    }
                }
                "spirit_thinking" => {
                    let question = event["question_id"].as_str().unwrap_or_default();
                    next_seq.insert(question.to_owned(), 0);
                }
                "spirit_token" => {
                    let question = event["question_id"].as_str().unwrap_or_default();
                    let seq = event["seq"].as_u64().unwrap_or(u64::MAX);
                    let expected = next_seq.entry(question.to_owned()).or_insert(0);
                    if seq != *expected {
                        reader_seen.lock().await.token_faults += 1;
                    }
                    *expected = seq.wrapping_add(1);
                }
                "spirit_response" => {
                    let question = event["message"]["in_reply_to"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    reader_seen.lock().await.order.push(('a', question.clone()));
                    if member == 0 {
                        let content = shared.ids.lock().await.get(&question).cloned();
                        if let Some(content) = content {
                            // Kept, not removed: another member may not have read the
                            // question's `message_received` yet (its fan-out still counts).
                            if let Some(pending) = shared.pending.lock().await.get(&content)
                                && pending.measured
                            {
                                let ms = (now - pending.sent).as_secs_f64() * 1000.0;
                                shared.latencies.lock().await.answer_ms.push(ms);
                            }
                            if let Some(done) = shared.answered.lock().await.remove(&content) {
                                let _ = done.send(());
                            }
                        }
                    }
                }
                "error" => {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("error event: {text}");
                }
                _ => {}
            }
        }
    });
    // The server cannot push before the handshake ends: sync once open.
    let _ = out.send(json!({"type": "sync"}).to_string());
    tokio::time::timeout(Duration::from_secs(30), ready_rx)
        .await
        .expect("session_state within 30 s")
        .expect("the socket stayed open");
    Member { seen, out }
}

struct Room {
    session_id: String,
    members: Vec<Member>,
    shared: Arc<Shared>,
    asked: Vec<String>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn summary(values: &mut [f64]) -> Value {
    values.sort_by(|a, b| a.total_cmp(b));
    let round = |v: f64| (v * 10.0).round() / 10.0;
    json!({
        "count": values.len(),
        "p50": round(percentile(values, 50.0)),
        "p90": round(percentile(values, 90.0)),
        "p99": round(percentile(values, 99.0)),
        "max": round(values.last().copied().unwrap_or(0.0)),
    })
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    seance::tls::install_crypto_provider();
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    eprintln!(
        "seance-load: {} séances × {} members against {}; warm-up {:?}, measured {:?}",
        args.sessions, args.members, args.url, args.warmup, args.duration
    );

    // Rooms: create, join, open every socket concurrently (bounded), as real rooms do.
    let gate = Arc::new(Semaphore::new(args.connect_concurrency));
    let mut building = Vec::new();
    for s in 0..args.sessions {
        let client = client.clone();
        let url = args.url.clone();
        let members = args.members;
        let gate = gate.clone();
        building.push(tokio::spawn(async move {
            let host = post(
                &client,
                &format!("{url}/api/sessions"),
                json!({"name": format!("load {s}"), "host_name": "m0", "max_participants": 12}),
            )
            .await;
            let session_id = host["session"]["id"].as_str().expect("id").to_owned();
            let mut tickets = vec![host];
            for m in 1..members {
                tickets.push(
                    post(
                        &client,
                        &format!("{url}/api/sessions/{session_id}/join"),
                        json!({"display_name": format!("m{m}")}),
                    )
                    .await,
                );
            }
            let shared = Arc::new(Shared {
                pending: Mutex::new(HashMap::new()),
                ids: Mutex::new(HashMap::new()),
                latencies: Mutex::new(Latencies::default()),
                answered: Mutex::new(HashMap::new()),
                errors: AtomicU64::new(0),
            });
            let mut opening = Vec::new();
            for (m, ticket) in tickets.into_iter().enumerate() {
                let gate = gate.clone();
                let shared = shared.clone();
                let session_id = session_id.clone();
                opening.push(tokio::spawn(async move {
                    let _permit = gate.acquire_owned().await.expect("gate");
                    open_member(&ticket, session_id, m, shared).await
                }));
            }
            let mut members = Vec::new();
            for opened in opening {
                members.push(opened.await.expect("member"));
            }
            Room {
                session_id,
                members,
                shared,
                asked: Vec::new(),
            }
        }));
    }
    let started_connecting = Instant::now();
    let mut rooms = Vec::new();
    for room in building {
        rooms.push(room.await.expect("room"));
    }
    eprintln!(
        "{} sockets open in {:.1} s",
        args.sessions * args.members,
        started_connecting.elapsed().as_secs_f64()
    );

    // Closed loops.
    let measuring = Arc::new(AtomicBool::new(false));
    let stopping = Arc::new(AtomicBool::new(false));
    let measured_questions = Arc::new(AtomicU64::new(0));
    let mut loops = Vec::new();
    for mut room in rooms {
        let measuring = measuring.clone();
        let stopping = stopping.clone();
        let measured_questions = measured_questions.clone();
        loops.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stopping.load(Ordering::Relaxed) {
                n += 1;
                let content = format!("question {n} of {}", room.session_id);
                let measured = measuring.load(Ordering::Relaxed);
                let (done_tx, done_rx) = tokio::sync::oneshot::channel();
                room.shared
                    .answered
                    .lock()
                    .await
                    .insert(content.clone(), done_tx);
                room.shared.pending.lock().await.insert(
                    content.clone(),
                    Pending {
                        sent: Instant::now(),
                        measured,
                    },
                );
                let _ = room.members[0]
                    .out
                    .send(json!({"type": "send_message", "content": content}).to_string());
                room.asked.push(content.clone());
                if tokio::time::timeout(Duration::from_secs(60), done_rx)
                    .await
                    .is_err()
                {
                    eprintln!("{}: no answer to `{content}` within 60 s", room.session_id);
                    break;
                }
                if measured && measuring.load(Ordering::Relaxed) {
                    measured_questions.fetch_add(1, Ordering::Relaxed);
                }
            }
            room
        }));
    }
    tokio::time::sleep(args.warmup).await;
    let cpu_before = cpu_snapshot(&args.cpu);
    measuring.store(true, Ordering::Relaxed);
    let window = Instant::now();
    tokio::time::sleep(args.duration).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = window.elapsed().as_secs_f64();
    let cpu_after = cpu_snapshot(&args.cpu);
    let answered_in_window = measured_questions.load(Ordering::Relaxed);
    stopping.store(true, Ordering::Relaxed);
    let mut rooms = Vec::new();
    for finished in loops {
        rooms.push(finished.await.expect("loop"));
    }
    settle(&rooms).await;

    // Completeness.
    let (mut missing, mut duplicated, mut reordered, mut foreign, mut token_faults) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut fanout = Vec::new();
    let mut answer = Vec::new();
    let mut errors = 0;
    let mut asked_total = 0;
    for room in &rooms {
        let ids = room.shared.ids.lock().await.clone();
        let by_content: HashMap<&String, &String> = ids.iter().map(|(id, c)| (c, id)).collect();
        let expected: Vec<(char, String)> = room
            .asked
            .iter()
            .filter_map(|content| by_content.get(content).map(|id| (*id).clone()))
            .flat_map(|id| [('q', id.clone()), ('a', id)])
            .collect();
        asked_total += room.asked.len() as u64;
        // A question nobody saw announced is missing everywhere (twice: q and a).
        let never = room.asked.len() - expected.len() / 2;
        missing += (never * 2 * room.members.len()) as u64;
        for member in &room.members {
            let seen = member.seen.lock().await;
            foreign += seen.foreign;
            token_faults += seen.token_faults;
            let counts = tally(&expected, &seen.order);
            missing += counts.missing;
            duplicated += counts.duplicated;
            reordered += counts.reordered;
            foreign += counts.foreign;
        }
        let mut latencies = room.shared.latencies.lock().await;
        fanout.append(&mut latencies.fanout_ms);
        answer.append(&mut latencies.answer_ms);
        errors += room.shared.errors.load(Ordering::Relaxed);
    }
    let cpu = cpu_used(&cpu_before, &cpu_after);
    let cpu_total: f64 = cpu.values().sum();
    let qps = answered_in_window as f64 / elapsed;
    let cpu_per_question_ms = if answered_in_window > 0 && !cpu.is_empty() {
        cpu_total * 1000.0 / answered_in_window as f64
    } else {
        0.0
    };
    let lost = missing + duplicated + reordered + foreign + token_faults + errors;
    let report = json!({
        "url": args.url,
        "sessions": args.sessions,
        "members": args.members,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "duration_s": (elapsed * 10.0).round() / 10.0,
        "questions": answered_in_window,
        "questions_asked_in_all": asked_total,
        "questions_per_second": (qps * 10.0).round() / 10.0,
        "fanout_ms": summary(&mut fanout),
        "answer_ms": summary(&mut answer),
        "cpu_s": cpu.iter().map(|(k, v)| (k.clone(), json!((v * 100.0).round() / 100.0))).collect::<serde_json::Map<_, _>>(),
        "cpu_per_question_ms": (cpu_per_question_ms * 100.0).round() / 100.0,
        "missing": missing,
        "duplicated": duplicated,
        "reordered": reordered,
        "foreign": foreign,
        "token_faults": token_faults,
        "errors": errors,
    });
    eprintln!();
    eprintln!(
        "| séances × members | questions/s | fan-out p50/p90/p99/max ms | answer p50/p90/p99/max ms | CPU per question | missing | duplicated | reordered | foreign |"
    );
    eprintln!("|---|---:|---|---|---:|---:|---:|---:|---:|");
    let quad = |v: &Value| format!("{} / {} / {} / {}", v["p50"], v["p90"], v["p99"], v["max"]);
    eprintln!(
        "| {} × {} | {:.1} | {} | {} | {} | {missing} | {duplicated} | {reordered} | {foreign} |",
        args.sessions,
        args.members,
        qps,
        quad(&report["fanout_ms"]),
        quad(&report["answer_ms"]),
        if cpu.is_empty() {
            "not measured (no --cpu)".to_owned()
        } else {
            format!("{cpu_per_question_ms:.2} ms")
        }
    );
    if !cpu.is_empty() {
        eprintln!("CPU seconds in the window: {}", report["cpu_s"]);
    }
    println!("{report}");
    if args.fail_on_loss && lost > 0 {
        eprintln!("seance-load: {lost} events lost, duplicated, reordered, foreign or refused");
        std::process::exit(1);
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    missing: u64,
    duplicated: u64,
    reordered: u64,
    foreign: u64,
}

/// Compares what one member saw with what it should have seen, in that order.
fn tally(expected: &[(char, String)], seen: &[(char, String)]) -> Counts {
    let mut counts = Counts::default();
    let mut times: HashMap<&(char, String), usize> = HashMap::new();
    for event in seen {
        *times.entry(event).or_default() += 1;
    }
    for event in expected {
        match times.get(event).copied().unwrap_or(0) {
            0 => counts.missing += 1,
            1 => {}
            more => counts.duplicated += (more - 1) as u64,
        }
    }
    // Order: first arrivals must follow the expected order.
    let position: HashMap<&(char, String), usize> =
        expected.iter().enumerate().map(|(i, e)| (e, i)).collect();
    let mut last = None;
    let mut first_seen = std::collections::HashSet::new();
    for event in seen {
        if !first_seen.insert(event) {
            continue;
        }
        match position.get(event) {
            Some(&p) => {
                if last.is_some_and(|l| p < l) {
                    counts.reordered += 1;
                }
                last = Some(p);
            }
            None => counts.foreign += 1,
        }
    }
    counts
}

/// Waits (up to 10 s a room) until every member has the answer to its room's last
/// question: the last event each should get. What is absent then counts as missing.
async fn settle(rooms: &[Room]) {
    for room in rooms {
        let Some(last) = room.asked.last() else {
            continue;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let id = room
                .shared
                .ids
                .lock()
                .await
                .iter()
                .find(|(_, content)| *content == last)
                .map(|(id, _)| id.clone());
            let mut all = id.is_some();
            if let Some(id) = &id {
                for member in &room.members {
                    let seen = member.seen.lock().await;
                    if !seen.order.iter().any(|(k, q)| *k == 'a' && q == id) {
                        all = false;
                        break;
                    }
                }
            }
            if all || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(spec: &str) -> Vec<(char, String)> {
        spec.split_whitespace()
            .map(|e| (e.chars().next().unwrap(), e[1..].to_owned()))
            .collect()
    }

    #[test]
    fn tally_counts_each_kind_of_loss() {
        let expected = events("q1 a1 q2 a2 q3 a3");
        assert_eq!(tally(&expected, &expected), Counts::default());
        let counts = tally(&expected, &events("q1 a1 q2 q2 q3 a3"));
        assert_eq!((counts.missing, counts.duplicated), (1, 1));
        let counts = tally(&expected, &events("q1 q2 a1 a2 q3 a3 q9"));
        assert_eq!(
            (counts.reordered, counts.foreign, counts.missing),
            (1, 1, 0)
        );
    }
}
