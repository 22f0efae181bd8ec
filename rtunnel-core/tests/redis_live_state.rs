//! The Redis implementations of live state against a real Redis: the one
//! `scripts/test.sh` starts (`RTUNNEL_TEST_REDIS_URL`), and for the restart
//! tests one each test starts and stops itself (`redis-server`).

#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rtunnel_core::ids::{SessionId, SystemId};
use rtunnel_core::ratelimit::{RateLimiter, Rule};
use rtunnel_core::store::conformance;
use rtunnel_core::store::now_millis;
use rtunnel_core::store::redis::{
    Delivery, NodeInfo, RedisConnection, RedisPubSub, RedisRateLimiter, RedisRoutes,
    RedisTicketStore, Seal, TunnelRoute,
};
use rtunnel_core::ticket::{Ticket, TicketStore, ticket_key};
use uuid::Uuid;

/// The test Redis, or `None` (the test is skipped, loudly) when it is not
/// set and `scripts/test.sh` did not ask for it to be required.
fn redis_url() -> Option<String> {
    match std::env::var("RTUNNEL_TEST_REDIS_URL") {
        Ok(url) => Some(url),
        Err(_) if std::env::var("RTUNNEL_TEST_SERVICES").as_deref() == Ok("required") => {
            panic!("RTUNNEL_TEST_REDIS_URL is not set: run ./scripts/test.sh")
        }
        Err(_) => {
            eprintln!("skipped: no RTUNNEL_TEST_REDIS_URL (./scripts/test.sh starts a Redis)");
            None
        }
    }
}

/// The seal every "node" of these tests shares.
fn seal() -> Seal {
    Seal::new(b"the test cluster key, 32 bytes!!")
}

/// A connection with keys of its own, so tests do not see each other's.
async fn connect(url: &str) -> RedisConnection {
    let prefix = format!("rtunnel-test-{}:", Uuid::new_v4().simple());
    RedisConnection::connect(url, &prefix, seal())
        .await
        .unwrap()
}

fn ticket(expires_at: i64) -> Ticket {
    Ticket {
        session_id: Uuid::new_v4().into(),
        user_id: Uuid::new_v4().into(),
        login: None,
        token: None,
        expires_at,
    }
}

#[tokio::test]
async fn redis_tickets_meet_the_ticket_checks() {
    let Some(url) = redis_url() else { return };
    let store = RedisTicketStore::new(connect(&url).await);
    conformance::tickets_are_taken_once_and_only_before_they_expire(&store).await;
}

#[tokio::test]
async fn redis_rate_limits_meet_the_rate_limit_checks() {
    let Some(url) = redis_url() else { return };
    let limiter = RedisRateLimiter::new(connect(&url).await);
    conformance::rate_limits_allow_a_burst_then_one_failure_per_interval(&limiter).await;
}

#[tokio::test]
async fn failures_on_every_node_spend_one_budget() {
    let Some(url) = redis_url() else { return };
    let prefix = format!("rtunnel-test-{}:", Uuid::new_v4().simple());
    let nodes: Vec<RedisRateLimiter> = three_nodes(&url, &prefix).await;
    let rule = Rule {
        burst: 5,
        interval: Duration::from_secs(60),
    };
    let now = now_millis();
    // Twelve attempts spread over three nodes, at the same moment: exactly
    // five get a reservation.
    let fails = (0..12).map(|i| nodes[i % 3].reserve("login:mallory", rule, now));
    let allowed = futures::future::join_all(fails)
        .await
        .into_iter()
        .filter(|r| r.as_ref().unwrap().is_none())
        .count();
    assert_eq!(allowed, 5);
    for node in &nodes {
        let wait = node.check("login:mallory", rule, now).await.unwrap();
        assert_eq!(
            wait,
            Some(Duration::from_secs(60)),
            "every node sees the spent budget"
        );
    }
    // The key expires by itself once the budget is whole again.
    let ttl: i64 = {
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("PTTL")
            .arg(format!("{prefix}rl:login:mallory"))
            .query_async(&mut conn)
            .await
            .unwrap()
    };
    assert!((290_000..=300_000).contains(&ttl), "pttl {ttl}");
}

/// Three "nodes" on the same keys.
async fn three_nodes(url: &str, prefix: &str) -> Vec<RedisRateLimiter> {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(RedisRateLimiter::new(
            RedisConnection::connect(url, prefix, seal()).await.unwrap(),
        ));
    }
    nodes
}

#[tokio::test]
async fn a_ticket_is_taken_once_across_nodes_racing_for_it() {
    let Some(url) = redis_url() else { return };
    let prefix = format!("rtunnel-test-{}:", Uuid::new_v4().simple());
    // Two nodes: two connections on the same keys.
    let a = RedisTicketStore::new(
        RedisConnection::connect(&url, &prefix, seal())
            .await
            .unwrap(),
    );
    let b = RedisTicketStore::new(
        RedisConnection::connect(&url, &prefix, seal())
            .await
            .unwrap(),
    );
    for round in 0..50 {
        let key = ticket_key(&format!("race-{round}"));
        a.put(key.clone(), ticket(now_millis() + 30_000))
            .await
            .unwrap();
        let now = now_millis();
        let (x, y) = tokio::join!(a.take(&key, now), b.take(&key, now));
        let taken = [x.unwrap(), y.unwrap()]
            .iter()
            .filter(|t| t.is_some())
            .count();
        assert_eq!(taken, 1, "round {round}: a ticket was taken {taken} times");
    }
}

#[tokio::test]
async fn redis_forgets_a_ticket_at_its_expiry() {
    let Some(url) = redis_url() else { return };
    let store = RedisTicketStore::new(connect(&url).await);
    let key = ticket_key("short");
    store
        .put(key.clone(), ticket(now_millis() + 300))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Asked as if it were still valid: the key itself is gone.
    assert_eq!(store.take(&key, 0).await.unwrap(), None);
}

struct OwnRedis {
    child: Child,
    port: u16,
}

impl OwnRedis {
    fn start(port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test-deps.sh installs it)");
        OwnRedis { child, port }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_until_up(port: u16) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redis-server on {port} did not start");
}

/// A `redis-server` of the test's own on a free port, and a connection to it.
async fn own_redis() -> (OwnRedis, RedisConnection) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redis = OwnRedis::start(port);
    wait_until_up(port).await;
    let conn = RedisConnection::connect(&format!("redis://127.0.0.1:{port}"), "t:", seal())
        .await
        .unwrap();
    (redis, conn)
}

#[tokio::test]
async fn the_ticket_store_works_again_by_itself_after_redis_restarts() {
    if redis_url().is_none() {
        return;
    }
    let (redis, conn) = own_redis().await;
    let port = redis.port;
    let store = RedisTicketStore::new(conn.clone());
    store
        .put(ticket_key("before"), ticket(now_millis() + 30_000))
        .await
        .unwrap();

    drop(redis);
    let err = store
        .put(ticket_key("down"), ticket(now_millis() + 30_000))
        .await;
    assert!(err.is_err(), "a put with Redis down must fail, not vanish");
    assert!(conn.ping().await.is_err());

    let _redis = OwnRedis::start(port);
    wait_until_up(port).await;
    // The same store, no reconnect by hand: it comes back within seconds.
    let mut ok = false;
    for _ in 0..100 {
        if store
            .put(ticket_key("after"), ticket(now_millis() + 30_000))
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the store did not reconnect");
    assert!(
        store
            .take(&ticket_key("after"), now_millis())
            .await
            .unwrap()
            .is_some()
    );
    // What Redis held before its restart (it saves nothing) is gone, not wrong.
    assert_eq!(
        store
            .take(&ticket_key("before"), now_millis())
            .await
            .unwrap(),
        None
    );
}

fn route(session_id: SessionId, system_id: SystemId, node: &str) -> TunnelRoute {
    TunnelRoute {
        session_id,
        system_id,
        node_id: node.to_owned(),
        services: Vec::new(),
        thread: None,
    }
}

#[tokio::test]
async fn routes_belong_to_the_node_that_put_them_last() {
    let Some(url) = redis_url() else { return };
    let routes = RedisRoutes::new(connect(&url).await);
    let ttl = Duration::from_secs(10);
    let (session, system) = (SessionId::new(), SystemId::new());
    let on_a = route(session, system, "node-a");
    routes.put(&on_a, ttl).await.unwrap();
    assert_eq!(
        routes.by_session(session).await.unwrap(),
        Some(on_a.clone())
    );
    assert_eq!(routes.by_system(system).await.unwrap(), Some(on_a.clone()));

    // The agent moves to node B: B's put replaces A's route, and A's next
    // heartbeat (a stale tunnel it has not closed yet) does not take it back,
    // nor does A removing its tunnel.
    let on_b = route(session, system, "node-b");
    routes.put(&on_b, ttl).await.unwrap();
    routes
        .refresh(std::slice::from_ref(&on_a), ttl)
        .await
        .unwrap();
    routes.remove(&on_a).await.unwrap();
    assert_eq!(
        routes.by_session(session).await.unwrap(),
        Some(on_b.clone())
    );
    assert_eq!(routes.by_system(system).await.unwrap(), Some(on_b.clone()));

    // A refresh writes back a route Redis lost (a restart), and the holder's
    // remove deletes it.
    let lost = route(SessionId::new(), SystemId::new(), "node-b");
    routes
        .refresh(&[on_b.clone(), lost.clone()], ttl)
        .await
        .unwrap();
    assert_eq!(
        routes.by_session(lost.session_id).await.unwrap(),
        Some(lost.clone())
    );
    routes.remove(&on_b).await.unwrap();
    assert_eq!(routes.by_session(session).await.unwrap(), None);
    assert_eq!(routes.by_system(system).await.unwrap(), None);

    // Entries die with their time to live unless refreshed.
    let node = NodeInfo {
        node_id: "node-c".into(),
        address: "10.0.1.13:7000".into(),
    };
    routes.announce_node(&node, ttl).await.unwrap();
    assert_eq!(routes.node("node-c").await.unwrap(), Some(node.clone()));
    let brief = route(SessionId::new(), SystemId::new(), "node-c");
    routes
        .put(&brief, Duration::from_millis(200))
        .await
        .unwrap();
    routes
        .announce_node(&node, Duration::from_millis(200))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(routes.by_session(brief.session_id).await.unwrap(), None);
    assert_eq!(routes.node("node-c").await.unwrap(), None);
    routes.announce_node(&node, ttl).await.unwrap();
    routes.withdraw_node("node-c").await.unwrap();
    assert_eq!(routes.node("node-c").await.unwrap(), None);
}

#[tokio::test]
async fn the_refresh_of_many_routes_keeps_every_one() {
    let Some(url) = redis_url() else { return };
    let routes = RedisRoutes::new(connect(&url).await);
    // More than one pipelined batch.
    let many: Vec<TunnelRoute> = (0..600)
        .map(|_| route(SessionId::new(), SystemId::new(), "node-a"))
        .collect();
    routes
        .refresh(&many, Duration::from_secs(10))
        .await
        .unwrap();
    for r in [&many[0], &many[255], &many[256], &many[599]] {
        assert_eq!(
            routes.by_session(r.session_id).await.unwrap().as_ref(),
            Some(r)
        );
    }
}

/// The next delivery, within a few seconds.
async fn next(rx: &mut tokio::sync::mpsc::Receiver<Delivery>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("nothing delivered")
        .expect("the subscription ended")
}

#[tokio::test]
async fn a_subscription_comes_back_by_itself_after_redis_restarts() {
    if redis_url().is_none() {
        return;
    }
    let (redis, conn) = own_redis().await;
    let port = redis.port;
    let channel = RedisPubSub::new(conn.clone(), "commands");
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let listener = RedisPubSub::new(conn, "commands");
    let running = tokio::spawn(async move { listener.run(tx).await });
    assert_eq!(next(&mut rx).await, Delivery::Subscribed);
    assert_eq!(channel.publish("one").await.unwrap(), 1);
    assert_eq!(next(&mut rx).await, Delivery::Message("one".into()));

    drop(redis);
    assert!(channel.publish("lost").await.is_err());
    let _redis = OwnRedis::start(port);
    wait_until_up(port).await;
    // Subscribed again, and said so (what was sent meanwhile is gone).
    assert_eq!(next(&mut rx).await, Delivery::Subscribed);
    let mut delivered = 0;
    for _ in 0..100 {
        match channel.publish("two").await {
            Ok(n) => {
                delivered = n;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(delivered, 1);
    assert_eq!(next(&mut rx).await, Delivery::Message("two".into()));
    drop(rx);
    // With nobody listening, the subscription ends.
    channel.publish("nobody").await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the subscription outlived its receiver")
        .unwrap();
}

/// Raw access to the test Redis, as someone who can write to it has.
async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Finding: a ticket written into Redis by hand opened a root terminal.
/// What rtunnel reads back from Redis must be sealed with the cluster key
/// and bound to its key.
#[tokio::test]
async fn tickets_routes_and_messages_not_sealed_by_the_cluster_are_ignored() {
    let Some(url) = redis_url() else { return };
    let prefix = format!("rtunnel-test-{}:", Uuid::new_v4().simple());
    let conn = RedisConnection::connect(&url, &prefix, seal())
        .await
        .unwrap();
    let mut raw = raw(&url).await;
    let tickets = RedisTicketStore::new(conn.clone());

    // A ticket written by hand, as JSON or sealed with another key.
    let forged = serde_json::to_string(&ticket(now_millis() + 30_000)).unwrap();
    let key = ticket_key("forged");
    let full = format!("{prefix}ticket:{key}");
    let other = Seal::new(b"somebody else's key, 32 bytes!!!");
    for value in [forged.clone(), other.seal(&full, &forged)] {
        redis::cmd("SET")
            .arg(&full)
            .arg(&value)
            .query_async::<()>(&mut raw)
            .await
            .unwrap();
        assert_eq!(tickets.take(&key, now_millis()).await.unwrap(), None);
    }
    // A real ticket moved to another key does not open either.
    tickets
        .put(ticket_key("real"), ticket(now_millis() + 30_000))
        .await
        .unwrap();
    let real: String = redis::cmd("GET")
        .arg(format!("{prefix}ticket:{}", ticket_key("real")))
        .query_async(&mut raw)
        .await
        .unwrap();
    redis::cmd("SET")
        .arg(&full)
        .arg(&real)
        .query_async::<()>(&mut raw)
        .await
        .unwrap();
    assert_eq!(tickets.take(&key, now_millis()).await.unwrap(), None);
    assert!(
        tickets
            .take(&ticket_key("real"), now_millis())
            .await
            .unwrap()
            .is_some()
    );

    // A route and a node written by hand.
    let routes = RedisRoutes::new(conn.clone());
    let session = SessionId::new();
    let fake = route(session, SystemId::new(), "evil-node");
    redis::cmd("SET")
        .arg(format!("{prefix}route:session:{session}"))
        .arg(serde_json::to_string(&fake).unwrap())
        .query_async::<()>(&mut raw)
        .await
        .unwrap();
    assert_eq!(routes.by_session(session).await.unwrap(), None);
    redis::cmd("SET")
        .arg(format!("{prefix}node:evil-node"))
        .arg(r#"{"node_id":"evil-node","address":"203.0.113.9:7000"}"#)
        .query_async::<()>(&mut raw)
        .await
        .unwrap();
    assert_eq!(routes.node("evil-node").await.unwrap(), None);
    // The node's own route still refreshes over a forged one of its key.
    let mine = route(session, fake.system_id, "node-a");
    routes
        .refresh(std::slice::from_ref(&mine), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(routes.by_session(session).await.unwrap(), None);
    routes.put(&mine, Duration::from_secs(10)).await.unwrap();
    assert_eq!(routes.by_session(session).await.unwrap(), Some(mine));

    // A command published by hand is not delivered; a sealed one is.
    let bus = RedisPubSub::new(conn.clone(), "commands");
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let runner = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.run(tx).await })
    };
    assert!(matches!(rx.recv().await, Some(Delivery::Subscribed)));
    redis::cmd("PUBLISH")
        .arg(format!("{prefix}channel:commands"))
        .arg(r#"{"close":"everything"}"#)
        .query_async::<i64>(&mut raw)
        .await
        .unwrap();
    bus.publish("sealed").await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
        Ok(Some(Delivery::Message(m))) => assert_eq!(m, "sealed"),
        other => panic!("expected the sealed message first: {other:?}"),
    }
    runner.abort();
}
