//! The Redis-backed stores on every flavour of Redis they may meet: a plain server, a TLS
//! server (`rediss://`, a private CA), and a one-node TLS cluster with every slot, which
//! refuses cross-slot commands as ElastiCache Serverless does. `tests/run` starts the
//! last two. Each suite runs on all three; a séance runs end to end on the TLS cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chrono::Utc;
use seance::connections::{
    Connection, ConnectionStore, InProcessConnections, Presence, RedisConnections,
};
use seance::domain::{Participant, Role};
use seance::ratelimit::{Decision, RateLimit, RateLimiter, RedisRateLimiter};
use seance::redis_client::Redis;
use seance::voice::SpeechPiece;
use seance::voice::cache::{CacheKey, RedisVoiceCache, VoiceCache};
use seance_tests::turns::{ask, check_transcript, table};
use seance_tests::{RedisFlavour, fresh_postgres_url, redis_config, spawn_app_with, test_config};
use uuid::Uuid;

fn prefix() -> String {
    format!("seance-test:{}:", Uuid::new_v4().simple())
}

fn participant(name: &str, seat: u32) -> Participant {
    Participant {
        id: Uuid::now_v7(),
        display_name: name.into(),
        role: Role::Participant,
        seat,
    }
}

fn connection(id: &str, session_id: Uuid, who: &Participant) -> Connection {
    Connection {
        connection_id: id.into(),
        session_id,
        participant: who.clone(),
        connected_at: Utc::now(),
    }
}

async fn connections_keep_presence(flavour: RedisFlavour) {
    let redis = Redis::new(&redis_config(flavour)).unwrap();
    redis.ping().await.unwrap();
    let ttl = Duration::from_secs(3600);
    check_connection_store(&RedisConnections::new(redis, &prefix(), ttl), ttl).await;
}

/// The harness's in-process store keeps the same promises as Redis's.
#[tokio::test]
async fn in_process_connections_keep_presence() {
    let ttl = Duration::from_secs(3600);
    check_connection_store(&InProcessConnections::new(ttl), ttl).await;
}

/// What every connection store promises: presence changes only with a participant's first
/// and last connection in a session, the connections of a session oldest first, none
/// older than the store's time to live, and tombstones that stay.
async fn check_connection_store(store: &dyn ConnectionStore, ttl: Duration) {
    let session = Uuid::now_v7();
    let (ada, bob) = (participant("Ada", 0), participant("Bob", 1));
    assert_eq!(
        store.add(&connection("A1=", session, &ada)).await.unwrap(),
        Presence::Changed
    );
    assert_eq!(
        store.add(&connection("A2=", session, &ada)).await.unwrap(),
        Presence::Unchanged
    );
    // The same connection recorded again (a retried $connect) is not another tab.
    assert_eq!(
        store.add(&connection("B1=", session, &bob)).await.unwrap(),
        Presence::Changed
    );
    assert_eq!(
        store.add(&connection("B1=", session, &bob)).await.unwrap(),
        Presence::Changed
    );
    // Ada in another séance is someone else there.
    let elsewhere = Uuid::now_v7();
    assert_eq!(
        store
            .add(&connection("A3=", elsewhere, &ada))
            .await
            .unwrap(),
        Presence::Changed
    );
    let ids = |found: Vec<Connection>| {
        found
            .into_iter()
            .map(|c| c.connection_id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(store.in_session(session).await.unwrap()),
        ["A1=", "A2=", "B1="]
    );
    assert_eq!(ids(store.in_session(elsewhere).await.unwrap()), ["A3="]);
    assert_eq!(store.get("B1=").await.unwrap().unwrap().participant, bob);
    assert!(store.get("Z1=").await.unwrap().is_none());

    // A record older than the time to live is not a connection any more.
    let mut stale = connection("C1=", session, &participant("Cy", 2));
    stale.connected_at =
        Utc::now() - chrono::Duration::from_std(ttl).unwrap() - chrono::Duration::seconds(1);
    store.add(&stale).await.unwrap();
    assert_eq!(
        ids(store.in_session(session).await.unwrap()),
        ["A1=", "A2=", "B1="]
    );

    let (_, presence) = store.remove("A1=").await.unwrap().unwrap();
    assert_eq!(presence, Presence::Unchanged, "Ada has another tab");
    let (gone, presence) = store.remove("A2=").await.unwrap().unwrap();
    assert_eq!(
        (gone.participant, presence),
        (ada.clone(), Presence::Changed)
    );
    assert!(store.remove("A2=").await.unwrap().is_none());
    assert_eq!(
        ids(store.in_session(elsewhere).await.unwrap()),
        ["A3="],
        "the other séance keeps Ada"
    );
    assert!(!store.is_tombstoned("Z9=").await.unwrap());
    store.tombstone("Z9=").await.unwrap();
    store.tombstone("Z8=").await.unwrap();
    assert!(store.is_tombstoned("Z9=").await.unwrap());
    assert!(store.is_tombstoned("Z8=").await.unwrap());
    assert!(!store.is_tombstoned("B1=").await.unwrap());
    assert_eq!(ids(store.in_session(session).await.unwrap()), ["B1="]);
}

async fn rate_limits_hold(flavour: RedisFlavour) {
    let redis = Redis::new(&redis_config(flavour)).unwrap();
    let limiter = RedisRateLimiter::new(redis, &prefix());
    let limit = RateLimit {
        interval: Duration::from_secs(60),
        burst: 3,
    };
    for _ in 0..3 {
        assert_eq!(
            limiter.acquire("k", limit).await.unwrap(),
            Decision::Allowed
        );
    }
    assert!(matches!(
        limiter.acquire("k", limit).await.unwrap(),
        Decision::RetryAfter(wait) if wait > Duration::from_secs(50)
    ));
    assert_eq!(
        limiter.acquire("other", limit).await.unwrap(),
        Decision::Allowed
    );
}

async fn the_voice_cache_round_trips(flavour: RedisFlavour) {
    let redis = Redis::new(&redis_config(flavour)).unwrap();
    let cache = RedisVoiceCache::new(redis, &prefix(), 1 << 20, Duration::from_secs(60));
    let key = CacheKey {
        voice_id: "v".into(),
        model: "m".into(),
        format: "f".into(),
        text: "YES".into(),
    };
    assert!(cache.get(&key).await.is_none());
    let pieces = vec![SpeechPiece {
        audio: vec![1, 2, 3],
        alignment: None,
    }];
    cache.put(&key, &pieces).await;
    assert_eq!(cache.get(&key).await, Some(pieces));
}

seance_tests::on_each_redis!(
    connections_keep_presence,
    rate_limits_hold,
    the_voice_cache_round_trips,
);

/// The cluster is as strict as ElastiCache Serverless: a script over keys of two slots
/// fails (the client cannot split a script as it splits MSET), one slot works.
#[tokio::test]
async fn the_test_cluster_refuses_cross_slot_scripts() {
    let redis = Redis::new(&redis_config(RedisFlavour::TlsCluster)).unwrap();
    let mut conn = redis.connection().await.unwrap();
    let script =
        redis::Script::new("redis.call('SET', KEYS[1], 1) return redis.call('SET', KEYS[2], 2)");
    let same_slot: Result<(), redis::RedisError> = script
        .key("seance-test:{slot}:a")
        .key("seance-test:{slot}:b")
        .invoke_async(&mut conn)
        .await;
    assert!(same_slot.is_ok(), "{same_slot:?}");
    let result: Result<(), redis::RedisError> = script
        .key("seance-test:slot-a")
        .key("seance-test:slot-b")
        .invoke_async(&mut conn)
        .await;
    let err = result.unwrap_err();
    assert!(
        format!("{err:?}")
            .to_ascii_uppercase()
            .contains("CROSSSLOT"),
        "{err:?}"
    );
}

/// A whole séance on PostgreSQL and the TLS cluster: connect, ask, hear the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seance_runs_on_a_tls_cluster() {
    let cluster = redis_config(RedisFlavour::TlsCluster);
    let mut config = test_config(&fresh_postgres_url().await, Some(cluster.url.expose()));
    config.redis = Some(cluster);
    config.spirit.oracle_word_delay = Duration::from_millis(10);
    let app = spawn_app_with(config).await;
    let health: serde_json::Value = app.get("/health").await.json().await.unwrap();
    assert_eq!(health["redis"], "connected");
    let mut table = table(app, "madame-veyra", &["Ada", "Bob"]).await;
    table.clients[0].send_json(ask("Is anyone there?")).await;
    let events = table.clients[1].collect_until("spirit_response", 1).await;
    assert_eq!(check_transcript(&events).len(), 1);
}
