//! One conformance suite, run against both stores: PostgreSQL (a fresh database per test)
//! and SQLite (a fresh file per test). Both must behave identically.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;

use seance::domain::{
    DisplayName, MaxParticipants, MessageKind, Participant, Role, SessionName, SessionStatus,
};
use seance::store::{DynStore, NewMessage, NewSession, StoreError};
use seance_tests::{Backend, fresh_store};
use uuid::Uuid;

fn new_session(max: i64) -> NewSession {
    NewSession {
        name: SessionName::parse("Friday séance").unwrap(),
        persona: "madame-veyra".into(),
        max_participants: MaxParticipants::parse(max, 12).unwrap(),
        host_name: DisplayName::parse("Ada").unwrap(),
    }
}

fn name(n: &str) -> DisplayName {
    DisplayName::parse(n).unwrap()
}

async fn question(
    store: &DynStore,
    session: Uuid,
    author: &Participant,
    text: &str,
) -> seance::domain::Message {
    store
        .add_message(NewMessage {
            id: None,
            session_id: session,
            kind: MessageKind::Question,
            author: Some(author.clone()),
            content: text.into(),
            in_reply_to: None,
        })
        .await
        .unwrap()
}

/// A question accepted as `send_message` accepts one: under the session's lock, committed.
async fn accept(
    store: &DynStore,
    session: Uuid,
    author: &Participant,
    text: &str,
) -> seance::domain::Message {
    let mut accepting = store.begin_accept(session).await.unwrap();
    let message = accepting
        .insert_question(Uuid::now_v7(), author, text.into())
        .await
        .unwrap();
    accepting.commit().await.unwrap();
    message
}

async fn answer(store: &DynStore, session: Uuid, to: Uuid, text: &str) -> seance::domain::Message {
    store
        .add_message(NewMessage {
            id: None,
            session_id: session,
            kind: MessageKind::Spirit,
            author: None,
            content: text.into(),
            in_reply_to: Some(to),
        })
        .await
        .unwrap()
}

async fn creating_a_session_seats_the_host(backend: Backend) {
    let (store, _db) = fresh_store(backend).await;
    let (session, host) = store.create_session(new_session(8)).await.unwrap();
    assert_eq!(session.status, SessionStatus::Active);
    assert_eq!(session.participant_count, 1);
    assert_eq!(session.max_participants, 8);
    assert_eq!(session.persona, "madame-veyra");
    assert_eq!(host.role, Role::Host);
    assert_eq!(host.seat, 0);
    assert_eq!(host.display_name, "Ada");
    assert_eq!(store.session(session.id).await.unwrap(), session);
    assert_eq!(
        store.participant(session.id, host.id).await.unwrap(),
        Some(host.clone())
    );
    // A participant of one session is not one of another.
    let (other, _) = store.create_session(new_session(8)).await.unwrap();
    assert_eq!(store.participant(other.id, host.id).await.unwrap(), None);
}

async fn joins_take_the_next_seat_up_to_the_cap(backend: Backend) {
    let (store, _db) = fresh_store(backend).await;
    let (session, _) = store.create_session(new_session(3)).await.unwrap();
    let (after_bob, bob) = store.join_session(session.id, &name("Bob")).await.unwrap();
    assert_eq!(
        (bob.seat, bob.role, after_bob.participant_count),
        (1, Role::Participant, 2)
    );
    let (after_cy, cy) = store.join_session(session.id, &name("Cy")).await.unwrap();
    assert_eq!((cy.seat, after_cy.participant_count), (2, 3));
    assert!(matches!(
        store.join_session(session.id, &name("Dee")).await,
        Err(StoreError::SessionFull)
    ));
    assert_eq!(
        store.session(session.id).await.unwrap().participant_count,
        3
    );
}

async fn two_joins_racing_for_the_last_seat_have_one_winner(backend: Backend) {
    let (store, _db) = fresh_store(backend).await;
    for _round in 0..8 {
        let (session, _) = store.create_session(new_session(2)).await.unwrap();
        let racer = |who: &'static str| {
            let store = store.clone();
            tokio::spawn(async move { store.join_session(session.id, &name(who)).await })
        };
        let (a, b) = (racer("Racer A"), racer("Racer B"));
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        let wins = [a.is_ok(), b.is_ok()].iter().filter(|w| **w).count();
        assert_eq!(
            wins, 1,
            "exactly one join wins the last seat: {a:?} / {b:?}"
        );
        let loser = if a.is_ok() { b } else { a };
        assert!(matches!(loser, Err(StoreError::SessionFull)), "{loser:?}");
        assert_eq!(
            store.session(session.id).await.unwrap().participant_count,
            2
        );
    }
}

async fn many_concurrent_joins_fill_every_seat_once(backend: Backend) {
    let (store, _db) = fresh_store(backend).await;
    let (session, _) = store.create_session(new_session(12)).await.unwrap();
    let joins = (0..20).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .join_session(session.id, &name(&format!("Guest {i}")))
                .await
        })
    });
    let mut seats = HashSet::new();
    let mut full = 0;
    for join in joins {
        match join.await.unwrap() {
            Ok((_, p)) => assert!(seats.insert(p.seat), "seat {} given twice", p.seat),
            Err(StoreError::SessionFull) => full += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seats, (1..12).collect::<HashSet<u32>>());
    assert_eq!(full, 9);
    assert_eq!(
        store.session(session.id).await.unwrap().participant_count,
        12
    );
}

async fn unknown_sessions_are_not_found(backend: Backend) {
    let (store, _db) = fresh_store(backend).await;
    let nobody = Uuid::new_v4();
    assert!(matches!(
        store.session(nobody).await,
        Err(StoreError::SessionNotFound)
    ));
    assert!(matches!(
        store.join_session(nobody, &name("Bob")).await,
        Err(StoreError::SessionNotFound)
    ));
    assert!(matches!(
        store.end_session(nobody).await,
        Err(StoreError::SessionNotFound)
    ));
    assert!(matches!(
        store
            .messages_before(nobody, Some(Uuid::new_v4()), 10)
            .await,
        Err(StoreError::UnknownMessage)
    ));
}

async fn ending_a_session_closes_it(backend: Backend) {
    let (store, _db) = fresh_store(backend).await;
    let (session, host) = store.create_session(new_session(8)).await.unwrap();
    let asked = question(&store, session.id, &host, "Is anyone there?").await;
    let ended = store.end_session(session.id).await.unwrap();
    assert_eq!(ended.status, SessionStatus::Ended);
    assert_eq!(
        store.session(session.id).await.unwrap().status,
        SessionStatus::Ended
    );
    assert!(matches!(
        store.end_session(session.id).await,
        Err(StoreError::SessionEnded)
    ));
    assert!(matches!(
        store.join_session(session.id, &name("Late")).await,
        Err(StoreError::SessionEnded)
    ));
    let late = store
        .add_message(NewMessage {
            id: None,
            session_id: session.id,
            kind: MessageKind::Question,
            author: Some(host.clone()),
            content: "Still there?".into(),
            in_reply_to: None,
        })
        .await;
    assert!(matches!(late, Err(StoreError::SessionEnded)), "{late:?}");
    // History survives the end.
    let page = store.messages_before(session.id, None, 50).await.unwrap();
    assert_eq!(page.messages, vec![asked]);
    assert_eq!(
        store.session(session.id).await.unwrap().participant_count,
        1
    );
}

async fn messages_come_oldest_first_and_page_backwards(backend: Backend) {
    let (store, _db) = fresh_store(backend).await;
    let (session, host) = store.create_session(new_session(8)).await.unwrap();
    let (_, bob) = store.join_session(session.id, &name("Bob")).await.unwrap();
    let (other, other_host) = store.create_session(new_session(8)).await.unwrap();
    let mut all = Vec::new();
    for i in 0..4 {
        let asker = if i % 2 == 0 { &host } else { &bob };
        let q = question(&store, session.id, asker, &format!("question {i}")).await;
        // Noise in another session must never show up here.
        question(&store, other.id, &other_host, "elsewhere").await;
        let a = answer(&store, session.id, q.id, &format!("answer {i}")).await;
        all.push(q);
        all.push(a);
    }

    let newest = store.messages_before(session.id, None, 3).await.unwrap();
    assert_eq!(newest.messages, all[5..].to_vec());
    assert_eq!(newest.next_before, Some(all[5].id));
    let middle = store
        .messages_before(session.id, newest.next_before, 3)
        .await
        .unwrap();
    assert_eq!(middle.messages, all[2..5].to_vec());
    let oldest = store
        .messages_before(session.id, middle.next_before, 3)
        .await
        .unwrap();
    assert_eq!(oldest.messages, all[..2].to_vec());
    assert_eq!(oldest.next_before, None);
    let before_the_first = store
        .messages_before(session.id, Some(all[0].id), 3)
        .await
        .unwrap();
    assert_eq!(before_the_first.messages, Vec::new());
    assert_eq!(before_the_first.next_before, None);

    let whole = store.messages_before(session.id, None, 100).await.unwrap();
    assert_eq!(whole.messages, all);
    assert_eq!(whole.next_before, None);
    let exact = store.messages_before(session.id, None, 8).await.unwrap();
    assert_eq!(
        exact.next_before, None,
        "no older page when the limit fits exactly"
    );

    // Authors come back as participants; the spirit has none and replies to its question.
    assert_eq!(whole.messages[2].author.as_ref(), Some(&bob));
    assert_eq!(whole.messages[1].author, None);
    assert_eq!(whole.messages[1].kind, MessageKind::Spirit);
    assert_eq!(whole.messages[1].in_reply_to, Some(all[0].id));

    // A cursor from another session, or from nowhere, is refused.
    let foreign = store
        .messages_before(other.id, None, 1)
        .await
        .unwrap()
        .messages[0]
        .id;
    assert!(matches!(
        store.messages_before(session.id, Some(foreign), 3).await,
        Err(StoreError::UnknownMessage)
    ));
}

async fn messages_after_resume_without_gaps(backend: Backend) {
    let (store, _db) = fresh_store(backend).await;
    let (session, host) = store.create_session(new_session(8)).await.unwrap();
    let mut all = Vec::new();
    for i in 0..5 {
        all.push(question(&store, session.id, &host, &format!("q{i}")).await);
    }
    let first = store
        .messages_after(session.id, all[0].id, 2)
        .await
        .unwrap();
    assert_eq!(first.messages, all[1..3].to_vec());
    assert!(first.has_more);
    let rest = store
        .messages_after(session.id, all[2].id, 2)
        .await
        .unwrap();
    assert_eq!(rest.messages, all[3..5].to_vec());
    assert!(!rest.has_more);
    let none = store
        .messages_after(session.id, all[4].id, 2)
        .await
        .unwrap();
    assert!(none.messages.is_empty() && !none.has_more);
    assert!(matches!(
        store.messages_after(session.id, Uuid::new_v4(), 2).await,
        Err(StoreError::UnknownMessage)
    ));
}

async fn pings(backend: Backend) {
    let (store, _db) = fresh_store(backend).await;
    store.ping().await.unwrap();
    assert_eq!(
        store.backend(),
        match backend {
            b if b.is_postgres() => "postgres",
            _ => "sqlite",
        }
    );
}

/// The spirit's turn in the database: acceptance counts what is owed, the oldest
/// unanswered question is claimed once per attempt, a held claim is not taken, a run-out
/// one is, and a question has one reply however often it is stored.
async fn turns_are_claimed_and_answered_once(backend: Backend) {
    use seance::domain::TurnState;
    use seance::store::{Claim, ReplyOutcome};

    let (store, _db) = fresh_store(backend).await;
    let (session, host) = store.create_session(new_session(8)).await.unwrap();
    let mut ids = Vec::new();
    for (i, text) in ["first", "second"].iter().enumerate() {
        let mut accepting = store.begin_accept(session.id).await.unwrap();
        assert_eq!(accepting.unanswered(), u32::try_from(i).unwrap());
        let message = accepting
            .insert_question(Uuid::now_v7(), &host, (*text).to_owned())
            .await
            .unwrap();
        accepting.commit().await.unwrap();
        ids.push(message.id);
    }
    // An acceptance dropped before its commit leaves nothing.
    let mut dropped = store.begin_accept(session.id).await.unwrap();
    dropped
        .insert_question(Uuid::now_v7(), &host, "never".into())
        .await
        .unwrap();
    drop(dropped);
    assert_eq!(
        store.begin_accept(session.id).await.unwrap().unanswered(),
        2
    );
    assert_eq!(
        store.turn_state(session.id).await.unwrap(),
        Some(TurnState::Queued)
    );

    let far = seance::store::now_ms() + 60_000;
    let Claim::Claimed(first) = store.claim_next_question(session.id, far, 0).await.unwrap() else {
        panic!("the oldest question is claimed");
    };
    assert_eq!((first.message.id, first.attempts), (ids[0], 1));
    assert_eq!(
        first.session.id, session.id,
        "the session comes with the claim"
    );
    assert_eq!(first.session.persona, session.persona);
    assert_eq!(first.message.author.as_ref().map(|a| a.id), Some(host.id));
    // Held: nobody else takes it, nor skips ahead of it.
    assert_eq!(
        store.claim_next_question(session.id, far, 0).await.unwrap(),
        Claim::InProgress
    );
    store.mark_speaking(ids[0]).await.unwrap();
    assert_eq!(
        store.turn_state(session.id).await.unwrap(),
        Some(TurnState::Speaking)
    );

    let ReplyOutcome::Stored(reply) = store
        .store_reply(ids[0], Uuid::now_v7(), "YES".into())
        .await
        .unwrap()
    else {
        panic!("the first reply is stored");
    };
    assert_eq!(reply.in_reply_to, Some(ids[0]));
    assert_eq!(
        store
            .store_reply(ids[0], Uuid::now_v7(), "NO".into())
            .await
            .unwrap(),
        ReplyOutcome::AlreadyAnswered
    );

    // Stored but not yet announced: the question still holds its turn, so no worker starts
    // the next one before the room has heard this answer; to the room the spirit has
    // moved on to the next question.
    assert_eq!(
        store.claim_next_question(session.id, far, 0).await.unwrap(),
        Claim::InProgress
    );
    assert_eq!(
        store.turn_state(session.id).await.unwrap(),
        Some(TurnState::Queued)
    );
    assert!(
        store.mark_answered(ids[0]).await.unwrap(),
        "marked, and the second question is still owed"
    );

    // A claim that has run out (its worker died) is taken over, with the count going up.
    let gone = seance::store::now_ms() - 1;
    let Claim::Claimed(second) = store
        .claim_next_question(session.id, gone, 0)
        .await
        .unwrap()
    else {
        panic!("the second question is next");
    };
    assert_eq!((second.message.id, second.attempts), (ids[1], 1));
    let Claim::Claimed(again) = store
        .claim_next_question(session.id, gone, 0)
        .await
        .unwrap()
    else {
        panic!("a run-out claim is taken over");
    };
    assert_eq!((again.message.id, again.attempts), (ids[1], 2));

    // Its worker stores the reply and dies before announcing it: whoever claims next
    // announces that reply (once: the claim is still conditional) instead of answering.
    let ReplyOutcome::Stored(stored) = store
        .store_reply(ids[1], Uuid::now_v7(), "PERHAPS".into())
        .await
        .unwrap()
    else {
        panic!("the second reply is stored");
    };
    let Claim::Replied { question, reply } =
        store.claim_next_question(session.id, far, 0).await.unwrap()
    else {
        panic!("a stored reply nobody announced is handed over to announce");
    };
    assert_eq!((question.message.id, question.attempts), (ids[1], 3));
    assert_eq!(reply, stored);
    assert_eq!(
        store.claim_next_question(session.id, far, 0).await.unwrap(),
        Claim::InProgress,
        "one taker announces it"
    );
    assert!(
        store.mark_answered(ids[0]).await.unwrap(),
        "marking a settled question again changes nothing, and a stored reply not yet \
         announced is still owed"
    );
    // Another séance's waiting question is not this one's.
    let (elsewhere, elsewhere_host) = store.create_session(new_session(8)).await.unwrap();
    accept(&store, elsewhere.id, &elsewhere_host, "Anyone?").await;
    assert!(
        !store.mark_answered(ids[1]).await.unwrap(),
        "nothing more owed in this séance"
    );
    assert_eq!(
        store.claim_next_question(session.id, far, 0).await.unwrap(),
        Claim::Nothing
    );
    accept(&store, session.id, &host, "third").await;
    let Claim::Claimed(next) = store.claim_next_question(session.id, far, 0).await.unwrap() else {
        panic!("the next question is claimed once the last is settled");
    };
    ids.push(next.message.id);

    // The session ends: a claim says so, what is owed is dropped, and a late reply is
    // refused.
    store.end_session(session.id).await.unwrap();
    assert_eq!(
        store.claim_next_question(session.id, far, 0).await.unwrap(),
        Claim::Ended
    );
    assert!(matches!(
        store
            .store_reply(ids[2], Uuid::now_v7(), "late".into())
            .await,
        Err(StoreError::SessionEnded)
    ));
    assert_eq!(store.turn_state(session.id).await.unwrap(), None);
    assert_eq!(store.drop_unanswered(session.id).await.unwrap(), 0);
    assert!(
        !store.mark_answered(ids[2]).await.unwrap(),
        "a dropped question stays dropped, and nothing is owed"
    );
    let page = store.messages_before(session.id, None, 10).await.unwrap();
    let replies: Vec<_> = page
        .messages
        .iter()
        .filter(|m| m.in_reply_to.is_some())
        .collect();
    let contents: Vec<_> = replies.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["YES", "PERHAPS"]);
}

/// A claimed question comes with the conversation before it, as many messages as asked
/// for, oldest first, exactly as `messages_before` pages them; a reply being announced
/// comes with none.
async fn a_claim_comes_with_the_history_before_its_question(backend: Backend) {
    use seance::store::{Claim, ReplyOutcome};

    let (store, _db) = fresh_store(backend).await;
    let (session, host) = store.create_session(new_session(8)).await.unwrap();
    let (guest_session, guest) = store
        .join_session(session.id, &name("Guest"))
        .await
        .unwrap();
    assert_eq!(guest_session.id, session.id);
    let far = seance::store::now_ms() + 60_000;
    let gone = seance::store::now_ms() - 1;

    let first = accept(&store, session.id, &host, "Is anyone there?").await;
    let Claim::Claimed(claimed) = store
        .claim_next_question(session.id, gone, 12)
        .await
        .unwrap()
    else {
        panic!("the first question is claimed");
    };
    assert_eq!(claimed.message.id, first.id);
    assert!(
        claimed.history.is_empty(),
        "nothing came before the first question"
    );
    let ReplyOutcome::Stored(yes) = store
        .store_reply(first.id, Uuid::now_v7(), "YES".into())
        .await
        .unwrap()
    else {
        panic!("the reply is stored");
    };
    store.mark_answered(first.id).await.unwrap();

    let second = accept(&store, session.id, &guest, "Who are you?").await;
    let third = accept(&store, session.id, &host, "Why now?").await;
    let Claim::Claimed(claimed) = store
        .claim_next_question(session.id, gone, 12)
        .await
        .unwrap()
    else {
        panic!("the second question is claimed");
    };
    assert_eq!(claimed.message.id, second.id);
    let ids: Vec<_> = claimed.history.iter().map(|m| m.id).collect();
    assert_eq!(
        ids,
        [first.id, yes.id],
        "oldest first, nothing after the question"
    );
    assert_eq!(
        claimed.history[0], first,
        "each message whole, its author included"
    );
    assert_eq!(claimed.history[1], yes);
    let paged = store
        .messages_before(session.id, Some(second.id), 12)
        .await
        .unwrap();
    assert_eq!(claimed.history, paged.messages);

    // Fewer asked for: the newest of them. (The claim above ran out: taken over.)
    let Claim::Claimed(claimed) = store
        .claim_next_question(session.id, gone, 1)
        .await
        .unwrap()
    else {
        panic!("a run-out claim is taken over");
    };
    assert_eq!((claimed.message.id, claimed.attempts), (second.id, 2));
    assert_eq!(claimed.history, std::slice::from_ref(&yes));
    let Claim::Claimed(claimed) = store
        .claim_next_question(session.id, gone, 0)
        .await
        .unwrap()
    else {
        panic!("a run-out claim is taken over again");
    };
    assert!(claimed.history.is_empty(), "none asked for, none read");

    // Stored and never announced: the next claimer announces it, and reads no history.
    store
        .store_reply(second.id, Uuid::now_v7(), "A WANDERER".into())
        .await
        .unwrap();
    let Claim::Replied { question, .. } = store
        .claim_next_question(session.id, far, 12)
        .await
        .unwrap()
    else {
        panic!("the stored reply is handed over to announce");
    };
    assert_eq!(question.message.id, second.id);
    assert!(question.history.is_empty());
    assert!(
        store.mark_answered(second.id).await.unwrap(),
        "the third is owed"
    );

    // Another séance's messages are never part of this one's history.
    let (elsewhere, elsewhere_host) = store.create_session(new_session(8)).await.unwrap();
    accept(&store, elsewhere.id, &elsewhere_host, "Hello?").await;
    let Claim::Claimed(claimed) = store
        .claim_next_question(session.id, far, 12)
        .await
        .unwrap()
    else {
        panic!("the third question is claimed");
    };
    assert_eq!(claimed.message.id, third.id);
    // In stored order: the second's reply was stored after the third was asked.
    let contents: Vec<_> = claimed.history.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["Is anyone there?", "YES", "Who are you?"]);
    let paged = store
        .messages_before(session.id, Some(third.id), 12)
        .await
        .unwrap();
    assert_eq!(claimed.history, paged.messages);
}

/// Migrations go down and up again cleanly on both databases.
async fn migrations_are_reversible(backend: Backend) {
    let (store, db) = fresh_store(backend).await;
    store.create_session(new_session(8)).await.unwrap();
    let status = db.migration_status().await.unwrap();
    assert!(
        status
            .iter()
            .all(|m| m.state == seance::store::MigrationState::Applied)
    );
    // PostgreSQL has two more than SQLite: the turn's functions (0003, 0004).
    let versions: Vec<i64> = status.iter().map(|m| m.version).collect();
    let expected: &[i64] = match backend {
        Backend::Postgres | Backend::PostgresInProcess => &[1, 2, 3, 4],
        Backend::Sqlite | Backend::SqliteWithRedis => &[1, 2],
    };
    assert_eq!(versions, expected);
    for version in versions.iter().rev() {
        assert_eq!(db.migrate_down().await.unwrap(), Some(*version));
    }
    assert!(
        store.session(Uuid::new_v4()).await.is_err(),
        "tables are gone"
    );
    let status = db.migration_status().await.unwrap();
    assert!(
        status
            .iter()
            .all(|m| m.state == seance::store::MigrationState::Pending)
    );
    assert_eq!(db.migrate_down().await.unwrap(), None);
    assert_eq!(db.migrate_up().await.unwrap(), versions);
    assert!(db.migrate_up().await.unwrap().is_empty());
    store.create_session(new_session(8)).await.unwrap();
}

seance_tests::on_both_backends!(
    postgres, sqlite:
    creating_a_session_seats_the_host,
    joins_take_the_next_seat_up_to_the_cap,
    two_joins_racing_for_the_last_seat_have_one_winner,
    many_concurrent_joins_fill_every_seat_once,
    unknown_sessions_are_not_found,
    ending_a_session_closes_it,
    messages_come_oldest_first_and_page_backwards,
    messages_after_resume_without_gaps,
    pings,
    turns_are_claimed_and_answered_once,
    a_claim_comes_with_the_history_before_its_question,
    migrations_are_reversible,
);

/// Behind RDS Proxy, named prepared statements pin a client to one database connection:
/// with `DATABASE_PREPARED_STATEMENTS=false` the store prepares none (and with the default
/// it does, so this test can tell).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_prepared_statements_nothing_is_prepared() {
    for prepared in [false, true] {
        let mut config = seance_tests::test_config(&seance_tests::fresh_postgres_url().await, None);
        config.database_max_connections = 1;
        config.database_prepared_statements = prepared;
        // Migrate on a pool of its own: the migrator prepares its own statements.
        let migrating = seance::store::Database::connect_lazy(&config).unwrap();
        migrating.migrate_up().await.unwrap();
        migrating.close().await;
        let database = seance::store::Database::connect_lazy(&config).unwrap();
        let store = database.store_with(prepared);
        let (session, host) = store.create_session(new_session(4)).await.unwrap();
        store
            .join_session(session.id, &DisplayName::parse("Bob").unwrap())
            .await
            .unwrap();
        accept(&store, session.id, &host, "Anyone?").await;
        store.messages_before(session.id, None, 10).await.unwrap();
        let seance::store::Database::Postgres(pool) = &database else {
            unreachable!("a PostgreSQL database")
        };
        // One connection in the pool: the one every statement above ran on.
        let mut conn = pool.acquire().await.unwrap();
        let named: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_prepared_statements")
            .persistent(false)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        if prepared {
            assert!(named > 0, "the default prepares its statements");
        } else {
            assert_eq!(
                named, 0,
                "nothing prepared that would pin a proxy connection"
            );
        }
    }
}
