//! Crash consistency: `valet serve` is killed with SIGKILL at random moments during a storm
//! of creates, rolls and revokes, then restarted on the same store. No change that it
//! acknowledged may be lost, and every rolled key must have exactly one successor.
//!
//! Each run prints its seed, and `VALET_TEST_CRASH_SEED=N` replays the operations and kill
//! delays of seed N. The interleaving of the concurrent clients still varies between runs.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestSchema, on_each_backend};
use crate::process::{AdminClient, Server, Store};

on_each_backend!(killed_server_keeps_acknowledged_changes);

/// Kill and restart cycles per backend.
const CYCLES: u32 = 8;
/// Concurrent clients in the storm. Each works on chains of its own, so that the outcome
/// of every request is determined by the client's own earlier requests.
const CLIENTS: u64 = 4;
/// Chains that each client works on at a time.
const CHAINS_PER_CLIENT: usize = 3;
/// How long the storm runs before the kill.
const KILL_DELAY: Range<Duration> = Duration::from_millis(150)..Duration::from_millis(900);
/// Grace period of every roll, so that a rolled key stays valid throughout the test.
const GRACE_SECONDS: u64 = 3600;
/// Maximum time of one request. A request still open when the server is killed fails at
/// once, so reaching this limit means that the server hung.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Name of the key that `valet serve` creates on an empty store.
const BOOTSTRAP_NAME: &str = "bootstrap admin";
/// Maximum time for PostgreSQL to end the sessions of a killed server.
const SESSION_END_LIMIT: Duration = Duration::from_secs(10);

/// The test's record of one key. It has no `Debug`, so a raw key never reaches a failure
/// message.
struct TrackedKey {
    id: String,
    /// The raw key, unless the response that carried it was lost in a kill.
    raw: Option<String>,
    successor: Option<String>,
    revoked: bool,
    /// Cycle in which the key last changed. The checks after each restart verify the keys
    /// changed in that cycle.
    changed_in: u32,
}

impl TrackedKey {
    fn new(id: String, raw: Option<String>, cycle: u32) -> Self {
        Self {
            id,
            raw,
            successor: None,
            revoked: false,
            changed_in: cycle,
        }
    }
}

/// A created key and its successors, oldest first. Successors copy their predecessor's
/// name, and no other chain has that name, so the name finds a chain's rows in the store.
struct Chain {
    name: String,
    keys: Vec<TrackedKey>,
}

/// A write that the storm sends.
enum Write {
    Create { slot: usize, name: String },
    Roll { chain: usize },
    Revoke { chain: usize, key: usize },
}

/// A write whose response was lost when the server was killed.
struct Unanswered {
    write: Write,
    /// Whether a 2xx status line arrived before the body was cut off, which makes the
    /// write acknowledged.
    acknowledged: bool,
}

/// One row of `api_keys`, read with SQL after the kill.
struct StoredRow {
    name: String,
    successor: Option<String>,
    revoked: bool,
}

/// One client of the storm and everything it has written.
struct Client {
    index: u64,
    chains: Vec<Chain>,
    /// Chains the storm works on, as indexes into `chains`. An empty slot gets a new key,
    /// and a slot empties when its chain's newest key is revoked.
    slots: Vec<Option<usize>>,
    /// Creates sent so far, which numbers the names.
    creates: usize,
}

impl Client {
    fn new(index: u64) -> Self {
        Self {
            index,
            chains: Vec::new(),
            slots: vec![None; CHAINS_PER_CLIENT],
            creates: 0,
        }
    }

    fn keys(&self) -> impl Iterator<Item = &TrackedKey> {
        self.chains.iter().flat_map(|chain| &chain.keys)
    }

    /// Sends random writes until a request fails, which must be because the server was
    /// killed: `killed` is set just before the kill.
    async fn storm(
        mut self,
        api: AdminClient,
        seed: u64,
        cycle: u32,
        killed: Arc<AtomicBool>,
    ) -> (Self, Option<Unanswered>) {
        let mut rng = StdRng::seed_from_u64(seed);
        loop {
            let write = self.choose(&mut rng);
            if let Some(unanswered) = self.send(write, &api, cycle).await {
                assert!(
                    killed.load(Ordering::SeqCst),
                    "a request of client {} failed while the server was running",
                    self.index
                );
                return (self, Some(unanswered));
            }
        }
    }

    /// Picks a write: mostly rolls of a chain's newest key, and revokes of older keys or of
    /// the newest one, which ends the chain.
    fn choose(&mut self, rng: &mut StdRng) -> Write {
        let slot = rng.random_range(0..self.slots.len());
        let Some(chain) = self.slots[slot] else {
            let name = format!("crash-{}-{}", self.index, self.creates);
            self.creates += 1;
            return Write::Create { slot, name };
        };

        let keys = &self.chains[chain].keys;
        let newest = keys.len() - 1;
        let older: Vec<usize> = (0..newest).filter(|&i| !keys[i].revoked).collect();
        if rng.random_bool(0.6) {
            Write::Roll { chain }
        } else if !older.is_empty() && rng.random_bool(0.6) {
            let key = older[rng.random_range(0..older.len())];
            Write::Revoke { chain, key }
        } else {
            Write::Revoke { chain, key: newest }
        }
    }

    /// Sends `write` and records its outcome. Returns the write when its response was lost.
    async fn send(&mut self, write: Write, api: &AdminClient, cycle: u32) -> Option<Unanswered> {
        let (method, path, body) = match &write {
            Write::Create { name, .. } => (
                Method::POST,
                "/v1/keys".to_owned(),
                Some(json!({ "name": name, "scopes": ["orders:read"] })),
            ),
            Write::Roll { chain } => (
                Method::POST,
                format!("/v1/keys/{}/roll", self.newest(*chain).id),
                Some(json!({ "grace_period_seconds": GRACE_SECONDS })),
            ),
            Write::Revoke { chain, key } => (
                Method::POST,
                format!("/v1/keys/{}/revoke", self.chains[*chain].keys[*key].id),
                None,
            ),
        };
        let response = match api.send(method, &path, body.as_ref()).await {
            Ok(response) => response,
            Err(_) => {
                return Some(Unanswered {
                    write,
                    acknowledged: false,
                });
            }
        };
        let status = response.status();
        let Ok(answer) = response.json::<Value>().await else {
            return Some(Unanswered {
                write,
                acknowledged: status.is_success(),
            });
        };
        // Error bodies name key ids only, never a raw key.
        let expected = match write {
            Write::Revoke { .. } => StatusCode::OK,
            Write::Create { .. } | Write::Roll { .. } => StatusCode::CREATED,
        };
        assert_eq!(status, expected, "POST {path}: {answer}");

        let new_key = || {
            let id = answer["id"].as_str().expect("answer has an id").to_owned();
            let raw = answer["key"].as_str().expect("answer has the raw key");
            TrackedKey::new(id, Some(raw.to_owned()), cycle)
        };
        match write {
            Write::Create { slot, name } => self.add_chain(slot, name, new_key()),
            Write::Roll { chain } => self.add_successor(chain, new_key(), cycle),
            Write::Revoke { chain, key } => self.mark_revoked(chain, key, cycle),
        }
        None
    }

    fn newest(&self, chain: usize) -> &TrackedKey {
        self.chains[chain].keys.last().expect("a chain has a key")
    }

    fn add_chain(&mut self, slot: usize, name: String, key: TrackedKey) {
        self.chains.push(Chain {
            name,
            keys: vec![key],
        });
        self.slots[slot] = Some(self.chains.len() - 1);
    }

    fn add_successor(&mut self, chain: usize, successor: TrackedKey, cycle: u32) {
        let keys = &mut self.chains[chain].keys;
        let newest = keys.last_mut().expect("a chain has a key");
        newest.successor = Some(successor.id.clone());
        newest.changed_in = cycle;
        keys.push(successor);
    }

    fn mark_revoked(&mut self, chain: usize, key: usize, cycle: u32) {
        let keys = &mut self.chains[chain].keys;
        keys[key].revoked = true;
        keys[key].changed_in = cycle;
        if key == keys.len() - 1 {
            for slot in &mut self.slots {
                if *slot == Some(chain) {
                    *slot = None;
                }
            }
        }
    }

    /// Records a write whose response was lost if the store shows that it took effect. An
    /// acknowledged write must have taken effect.
    fn resolve(&mut self, unanswered: Unanswered, rows: &BTreeMap<String, StoredRow>, cycle: u32) {
        let Unanswered {
            write,
            acknowledged,
        } = unanswered;
        match write {
            Write::Create { slot, name } => {
                let ids: Vec<&String> = rows
                    .iter()
                    .filter(|(_, row)| row.name == name)
                    .map(|(id, _)| id)
                    .collect();
                assert!(ids.len() <= 1, "one create of {name} stored {ids:?}");
                match ids.first() {
                    Some(id) => {
                        self.add_chain(slot, name, TrackedKey::new(id.to_string(), None, cycle))
                    }
                    None => assert!(!acknowledged, "acknowledged create of {name} was lost"),
                }
            }
            Write::Roll { chain } => {
                let id = self.newest(chain).id.clone();
                let stored = rows.get(&id).and_then(|row| row.successor.clone());
                match stored {
                    Some(successor) => {
                        self.add_successor(chain, TrackedKey::new(successor, None, cycle), cycle)
                    }
                    None => assert!(!acknowledged, "acknowledged roll of key {id} was lost"),
                }
            }
            Write::Revoke { chain, key } => {
                let id = self.chains[chain].keys[key].id.clone();
                if rows.get(&id).is_some_and(|row| row.revoked) {
                    self.mark_revoked(chain, key, cycle);
                } else {
                    assert!(!acknowledged, "acknowledged revoke of key {id} was lost");
                }
            }
        }
    }
}

/// Returns the seed from `VALET_TEST_CRASH_SEED`, or a fresh random one.
fn seed() -> u64 {
    match std::env::var("VALET_TEST_CRASH_SEED") {
        Ok(text) => text
            .parse()
            .expect("VALET_TEST_CRASH_SEED is an unsigned 64-bit integer"),
        Err(_) => rand::random(),
    }
}

async fn killed_server_keeps_acknowledged_changes(backend: Backend) {
    let seed = seed();
    eprintln!(
        "crash test on {backend:?} with seed {seed}; replay with VALET_TEST_CRASH_SEED={seed}"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let (store, schema) = match backend {
        Backend::Sqlite => (Store::new(), None),
        Backend::Postgres => {
            let schema = TestSchema::create().await;
            // The schema's name as the application name finds the server's sessions in
            // pg_stat_activity.
            let url = format!("{}&application_name={}", schema.url, schema.name);
            (Store::at(&url), Some(schema))
        }
    };
    let mut server = Server::start(&store, "info").await;
    let admin_key = server.bootstrap_key();
    let mut clients: Vec<Client> = (0..CLIENTS).map(Client::new).collect();
    let started = Instant::now();

    for cycle in 0..CYCLES {
        let api = AdminClient::new(&server, &admin_key, REQUEST_TIMEOUT);
        let killed = Arc::new(AtomicBool::new(false));
        let storms: Vec<_> = clients
            .drain(..)
            .map(|client| {
                let storm = client.storm(api.clone(), rng.random(), cycle, killed.clone());
                tokio::spawn(storm)
            })
            .collect();
        tokio::time::sleep(rng.random_range(KILL_DELAY)).await;
        killed.store(true, Ordering::SeqCst);
        server.kill();

        let mut unanswered = Vec::new();
        for storm in storms {
            let (client, lost) = storm.await.expect("storm client finished");
            clients.push(client);
            unanswered.push(lost);
        }
        // PostgreSQL carries out what a killed server had sent before it died, such as
        // the COMMIT of a roll, so the store is final only once its sessions have ended.
        // A killed SQLite server leaves nothing running.
        if let Some(schema) = &schema {
            wait_until_sessions_end(&store.url(), &schema.name).await;
        }
        let rows = read_store(backend, &store.url()).await;
        for (client, lost) in clients.iter_mut().zip(unanswered) {
            if let Some(lost) = lost {
                client.resolve(lost, &rows, cycle);
            }
        }
        check_store(&clients, &rows);

        server = Server::start(&store, "info").await;
        let api = AdminClient::new(&server, &admin_key, REQUEST_TIMEOUT);
        let last = cycle + 1 == CYCLES;
        check_api(&api, &clients, |key| last || key.changed_in == cycle).await;
    }

    let keys = clients.iter().flat_map(Client::keys).count();
    eprintln!(
        "crash test on {backend:?}: {CYCLES} kills, {keys} keys checked, {:?}",
        started.elapsed()
    );
}

/// Waits until no PostgreSQL session but this one has the application name `name`.
async fn wait_until_sessions_end(url: &str, name: &str) {
    use sqlx::Connection;

    let mut connection = sqlx::PgConnection::connect(url)
        .await
        .expect("connect to the PostgreSQL store");
    let deadline = Instant::now() + SESSION_END_LIMIT;
    loop {
        let sessions: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity
             WHERE application_name = $1 AND pid <> pg_backend_pid()",
        )
        .bind(name)
        .fetch_one(&mut connection)
        .await
        .expect("count sessions in pg_stat_activity");
        if sessions == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{sessions} sessions of the killed server still open after {SESSION_END_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    connection
        .close()
        .await
        .expect("close the PostgreSQL connection");
}

/// Reads every key's name, successor and revocation with SQL, not through Valet.
async fn read_store(backend: Backend, url: &str) -> BTreeMap<String, StoredRow> {
    use sqlx::Connection;

    const SQL: &str = "SELECT id, name, successor_id, revoked_at IS NOT NULL FROM api_keys";
    let rows: Vec<(String, String, Option<String>, bool)> = match backend {
        Backend::Sqlite => {
            let mut connection = sqlx::SqliteConnection::connect(url)
                .await
                .expect("open the SQLite store");
            let rows = sqlx::query_as(SQL).fetch_all(&mut connection).await;
            connection.close().await.expect("close the SQLite store");
            rows.expect("read api_keys")
        }
        Backend::Postgres => {
            let mut connection = sqlx::PgConnection::connect(url)
                .await
                .expect("connect to the PostgreSQL store");
            let rows = sqlx::query_as(SQL).fetch_all(&mut connection).await;
            connection
                .close()
                .await
                .expect("close the PostgreSQL connection");
            rows.expect("read api_keys")
        }
    };
    rows.into_iter()
        .map(|(id, name, successor, revoked)| {
            let row = StoredRow {
                name,
                successor,
                revoked,
            };
            (id, row)
        })
        .collect()
}

/// Checks that the store contains exactly the keys the clients recorded, with the
/// recorded successors and revocations. The records contain every acknowledged write, and
/// every lost write that the store shows took effect.
fn check_store(clients: &[Client], rows: &BTreeMap<String, StoredRow>) {
    let admins = rows.values().filter(|row| row.name == BOOTSTRAP_NAME);
    assert_eq!(admins.count(), 1, "bootstrap admin keys in the store");
    let mut names = BTreeSet::from([BOOTSTRAP_NAME]);
    for chain in clients.iter().flat_map(|client| &client.chains) {
        names.insert(&chain.name);
        // Equal sets also rule out a successor row without the roll that points to it.
        let stored: BTreeSet<&str> = rows
            .iter()
            .filter(|(_, row)| row.name == chain.name)
            .map(|(id, _)| id.as_str())
            .collect();
        let known: BTreeSet<&str> = chain.keys.iter().map(|key| key.id.as_str()).collect();
        assert_eq!(stored, known, "keys named {} in the store", chain.name);

        for key in &chain.keys {
            let row = &rows[&key.id];
            assert_eq!(
                row.successor, key.successor,
                "successor of key {} in the store",
                key.id
            );
            assert_eq!(
                row.revoked, key.revoked,
                "revocation of key {} in the store",
                key.id
            );
        }
    }
    let strays: Vec<&String> = rows
        .iter()
        .filter(|(_, row)| !names.contains(row.name.as_str()))
        .map(|(id, _)| id)
        .collect();
    assert!(strays.is_empty(), "keys that no client wrote: {strays:?}");
}

/// Checks every key that `selected` picks through the restarted server's API. A key whose
/// raw form is known must verify as `VALID`, or as `REVOKED` once revoked, and show its
/// successor. Any other key is read with `GET /v1/keys/{id}`.
async fn check_api(api: &AdminClient, clients: &[Client], selected: impl Fn(&TrackedKey) -> bool) {
    for key in clients
        .iter()
        .flat_map(Client::keys)
        .filter(|key| selected(key))
    {
        let response = match &key.raw {
            Some(raw) => {
                let body = json!({ "key": raw });
                api.send(Method::POST, "/v1/keys/verify", Some(&body)).await
            }
            None => {
                api.send(Method::GET, &format!("/v1/keys/{}", key.id), None)
                    .await
            }
        };
        let response = response.expect("restarted server answers");
        let status = response.status();
        let answer: Value = response.json().await.expect("JSON answer");
        assert_eq!(status, StatusCode::OK, "check of key {}: {answer}", key.id);

        let object = match key.raw {
            Some(_) => {
                let expected = if key.revoked { "REVOKED" } else { "VALID" };
                assert_eq!(answer["code"], expected, "verification of key {}", key.id);
                &answer["key"]
            }
            None => &answer,
        };
        assert_eq!(
            object["successor_id"].as_str(),
            key.successor.as_deref(),
            "successor of key {} through the API",
            key.id
        );
        assert_eq!(
            !object["revoked_at"].is_null(),
            key.revoked,
            "revocation of key {} through the API",
            key.id
        );
    }
}
