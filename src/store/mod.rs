//! The database: registrations, identities, message id mappings and the durable
//! outbox/inbox, on SQLite (the default) or PostgreSQL, with one set of queries; the room
//! tables are in [`rooms`].
//!
//! Queries go through sqlx's `Any` driver with basic types only (TEXT, BIGINT): times are
//! Unix milliseconds and structured data is JSON text. Migrations differ per engine and live
//! in `migrations/sqlite` and `migrations/postgres`.
//!
//! Registrations and the identities a user owns are read on every message, so they are
//! cached in memory ([`DirectoryCache`]). Every change to them bumps `directory_version` in
//! the same transaction: this process forgets the entry at once, and every process (other
//! instances, the CLI's changes) forgets everything when [`Store::watch_directory`] sees the
//! version move. Only what exists is cached (a registration, a non-empty list of identities),
//! so a registration made elsewhere is seen at once; a removal made elsewhere within 0.1 s.

pub mod rooms;
pub mod sessions;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jabbridge_sdk::RegistrationData;
use secrecy::{ExposeSecret, SecretString};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, AssertSqlSafe, ConnectOptions, Connection, Row};

// Table names in format!() below come only from `Queue::table`, and SET clauses only from
// string literals, never from input.

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no engine we support.
    #[error("database.url must start with sqlite:// or postgres://")]
    UnsupportedUrl,
    /// The database refused or failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// Stored JSON does not parse (the row was written by something else).
    #[error("stored data is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    /// How a batch's multi-row inserts begin. On SQLite, inside a transaction of several
    /// statements, `OR FAIL`: a broken constraint (other than the conflict each insert
    /// handles) then fails the statement without undoing its earlier rows, which the failed
    /// batch's rollback undoes anyway, so SQLite keeps no statement journal (a copy of every
    /// page the statement changes) for it: a quarter of an archived row's cost. A statement
    /// `alone` (its own transaction) must not say `OR FAIL`: SQLite would commit the rows
    /// before the failure; it needs no statement journal either. PostgreSQL has no such
    /// clause and no such journal.
    fn insert_into(self, alone: bool) -> &'static str {
        match self {
            Engine::Sqlite if !alone => "INSERT OR FAIL INTO",
            Engine::Sqlite | Engine::Postgres => "INSERT INTO",
        }
    }

    /// `rows` rows of `width` placeholders, bound in order from the first: `$1, $2…` on
    /// PostgreSQL, anonymous `?` on SQLite, where binding a numbered one searches the
    /// statement's list of names (sqlx binds each parameter by its name), so a statement
    /// of many rows costs the square of its parameters.
    fn rows_of(self, rows: usize, width: usize) -> String {
        match self {
            Engine::Sqlite => {
                let row = format!("({})", vec!["?"; width].join(", "));
                vec![row; rows].join(", ")
            }
            Engine::Postgres => per_row(rows, 1, width, ""),
        }
    }
}

/// Commits batches of writes as [`Store::commit_batch`] does, on SQLite in a file on a
/// connection it keeps between batches ([`Store::batch_writer`]). A batch that fails closes
/// that connection (it may hold the write lock); the next batch opens another. On
/// PostgreSQL, where a kept connection could be one the server has since dropped, each batch
/// takes one from the pool, which checks it first; and so does a database in memory, which
/// only the pool's connection sees.
pub struct BatchWriter {
    store: Store,
    /// Whether it keeps a connection of its own (SQLite in a file), decided once.
    keeps: bool,
    connection: Option<sqlx::AnyConnection>,
}

impl BatchWriter {
    /// Commits `writes` in one transaction for instance `owner`; see
    /// [`Store::commit_batch`].
    pub async fn commit(
        &mut self,
        owner: &str,
        writes: &[Write],
    ) -> Result<Vec<Option<i64>>, StoreError> {
        if !self.keeps {
            return self.store.commit_batch(owner, writes).await;
        }
        let mut connection = match self.connection.take() {
            Some(connection) => connection,
            None => self.store.pool.acquire().await?.detach(),
        };
        let written = Store::write_batch(&mut connection, self.store.engine, owner, writes).await;
        if written.is_ok() {
            self.connection = Some(connection);
        } else {
            let _ = connection.close().await;
        }
        written
    }
}

/// One statement of a batch ([`Store::commit_batch`]), and which writes the rows it
/// returns belong to.
struct Statement<'q> {
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    returns: Returns<'q>,
}

/// What a batch's statement returns.
enum Returns<'q> {
    /// Nothing read.
    Nothing,
    /// The queue rows inserted (`id, bridge, dedupe_key`), of these writes.
    Queued(&'q [(usize, &'q NewRow)]),
    /// The archive rows inserted, of these writes ([`rooms::note_archived`]).
    Archived(&'q [(usize, &'q rooms::ArchiveRow)]),
}

impl<'q> Statement<'q> {
    fn plain(query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>) -> Self {
        Statement {
            query,
            returns: Returns::Nothing,
        }
    }
}

/// Runs `statements` on `connection` in order, noting the ids they return in `results`.
async fn run_statements<'q>(
    connection: &mut sqlx::AnyConnection,
    statements: impl IntoIterator<Item = Statement<'q>>,
    results: &mut [Option<i64>],
) -> Result<(), StoreError> {
    for statement in statements {
        match statement.returns {
            Returns::Nothing => {
                statement.query.execute(&mut *connection).await?;
            }
            Returns::Queued(chunk) => {
                for row in statement.query.fetch_all(&mut *connection).await? {
                    let (id, bridge, dedupe_key): (i64, String, String) =
                        (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
                    // The first of the chunk's rows with this key is the one inserted.
                    if let Some((index, _)) = chunk.iter().find(|(index, candidate)| {
                        results[*index].is_none()
                            && candidate.bridge == bridge
                            && candidate.dedupe_key == dedupe_key
                    }) {
                        results[*index] = Some(id);
                    }
                }
            }
            Returns::Archived(chunk) => {
                let inserted = statement.query.fetch_all(&mut *connection).await?;
                rooms::note_archived(chunk, &inserted, results)?;
            }
        }
    }
    Ok(())
}

/// A handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    engine: Engine,
    /// The URL, for the PostgreSQL listener of handed-off stanzas.
    url: Arc<SecretString>,
    directory: Arc<DirectoryCache>,
}

/// Registrations and owned identities per (bridge, JID), as last read.
#[derive(Debug, Default)]
pub struct DirectoryCache {
    state: Mutex<DirectoryState>,
}

#[derive(Debug, Default)]
struct DirectoryState {
    registrations: HashMap<(String, String), Option<RegistrationData>>,
    identities: HashMap<(String, String), Vec<String>>,
    /// Bumped by every invalidation: a read that started before one is not cached.
    generation: u64,
    /// The last `directory_version` seen.
    version: Option<i64>,
}

/// Entries kept before the cache starts over (a bound, not a working-set size).
const DIRECTORY_ENTRIES: usize = 100_000;

impl DirectoryCache {
    fn state(&self) -> std::sync::MutexGuard<'_, DirectoryState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cached value under `key` in the map `pick` chooses, or the generation to pass to
    /// [`DirectoryCache::remember`] after reading it from the database.
    fn lookup<T: Clone>(
        &self,
        pick: fn(&mut DirectoryState) -> &mut HashMap<(String, String), T>,
        key: &(String, String),
    ) -> Result<T, u64> {
        let mut state = self.state();
        let generation = state.generation;
        pick(&mut state).get(key).cloned().ok_or(generation)
    }

    /// Caches `value`, unless something was invalidated since `generation` (the read may
    /// have raced a change).
    fn remember<T>(
        &self,
        pick: fn(&mut DirectoryState) -> &mut HashMap<(String, String), T>,
        key: (String, String),
        value: T,
        generation: u64,
    ) {
        let mut state = self.state();
        if state.generation == generation {
            let map = pick(&mut state);
            if map.len() >= DIRECTORY_ENTRIES {
                map.clear();
            }
            map.insert(key, value);
        }
    }

    fn forget(&self, bridge: &str, jid: Option<&str>) {
        let mut state = self.state();
        state.generation += 1;
        match jid {
            Some(jid) => {
                let key = (bridge.to_owned(), jid.to_owned());
                state.registrations.remove(&key);
                state.identities.remove(&key);
            }
            // An identity changed owner: whose lists it was in is not known here.
            None => state.identities.clear(),
        }
    }

    fn forget_all(&self) {
        let mut state = self.state();
        state.generation += 1;
        state.registrations.clear();
        state.identities.clear();
    }
}

/// The two durable queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// XMPP → foreign network.
    Outbox,
    /// Foreign network → XMPP.
    Inbox,
}

impl Queue {
    fn table(self) -> &'static str {
        match self {
            Queue::Outbox => "outbox",
            Queue::Inbox => "inbox",
        }
    }
}

/// How long a statement waits for a connection of the pool before it fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// What counting a message against a bridge's `spend_limit` came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spent {
    /// Counted: within the caps. With a cap for the whole bridge, what it has sent today,
    /// this message included.
    Counted {
        /// The bridge's count for today, when it has a daily cap.
        bridge_today: Option<i64>,
    },
    /// The bridge's cap for today is reached; nothing was counted.
    BridgeCapReached,
    /// The user's cap for today is reached; nothing was counted.
    UserCapReached,
}

/// A write that [`Store::commit_batch`] commits with others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Queue a message (unless its `dedupe_key` was queued before).
    Enqueue(NewRow),
    /// A queued message was delivered.
    Complete {
        /// Its queue.
        queue: Queue,
        /// Its row.
        id: i64,
    },
    /// A queued message was given up on; the row stays, so a repeat is still recognised.
    Fail {
        /// Its queue.
        queue: Queue,
        /// Its row.
        id: i64,
        /// Why.
        reason: String,
    },
    /// A queued message failed for now; it is due again at `at` (Unix ms).
    Retry {
        /// Its queue.
        queue: Queue,
        /// Its row.
        id: i64,
        /// When it is due.
        at: i64,
    },
    /// A stanza delivered from the inbox came back as an error from the user's server: the
    /// row stays, failed with the reason.
    Bounce {
        /// Its row in the inbox.
        id: i64,
        /// Why, as the server said.
        reason: String,
    },
    /// A delivery report about `foreign_id` was acted on: none is awaited any more.
    ClearReport {
        /// The bridge's domain.
        bridge: String,
        /// The foreign network's id of the message.
        foreign_id: String,
    },
    /// The XMPP id and the foreign network's id of the same message, and, when a delivery
    /// report is awaited about it, what acting on that report needs (JSON).
    MapId {
        /// The bridge's domain.
        bridge: String,
        /// The user's bare JID.
        jid: String,
        /// The XMPP id.
        xmpp_id: String,
        /// The foreign id.
        foreign_id: String,
        /// What a later delivery report needs ([`Store::pending_report`]); `None` when none
        /// is awaited.
        pending_report: Option<String>,
    },
    /// Archive a room message (unless the room has its foreign id): its id is the write's
    /// result.
    Archive(rooms::ArchiveRow),
    /// Writes nothing: committed once every write submitted before it is (a reader's
    /// barrier).
    Barrier,
}

/// A message to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRow {
    /// Which queue.
    pub queue: Queue,
    /// The bridge's domain.
    pub bridge: String,
    /// The conversation it belongs to; order is kept within one.
    pub conversation: String,
    /// The id that makes it unique.
    pub dedupe_key: String,
    /// The message, as JSON.
    pub payload: String,
}

/// An undelivered row taken over from a stopped or dead instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Row id.
    pub id: i64,
    /// The conversation it belongs to.
    pub conversation: String,
    /// The message, as JSON.
    pub payload: String,
    /// Failed attempts so far.
    pub attempts: i64,
    /// When it is due, Unix ms.
    pub next_attempt_at: i64,
}

/// Rows per multi-row `INSERT` (and ids per `IN (…)`): few statements per batch, well under
/// every engine's limit on bound parameters.
const ROWS_PER_INSERT: usize = 128;

/// The `VALUES` of a multi-row insert: `($f, $f+1, $f+2, $f+3, {shared}), …` for `rows` rows
/// of four bound values each, the first at `$first`, each row ending with the same `shared`
/// parameters (e.g. `$1, $2`).
fn four_per_row(rows: usize, first: usize, shared: &str) -> String {
    per_row(rows, first, 4, shared)
}

/// `($first, …, shared), (…)`: `width` placeholders per row, numbered from `first`, then
/// `shared` (placeholders every row repeats; none when empty).
fn per_row(rows: usize, first: usize, width: usize, shared: &str) -> String {
    (0..rows)
        .map(|row| {
            let at = first + row * width;
            let own: Vec<String> = (at..at + width).map(|n| format!("${n}")).collect();
            if shared.is_empty() {
                format!("({})", own.join(", "))
            } else {
                format!("({}, {shared})", own.join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// How long a delivery report is awaited at most: a week.
pub const REPORTS_AWAITED: Duration = Duration::from_secs(7 * 86_400);

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Now, in Unix milliseconds.
pub fn now_millis() -> i64 {
    millis(SystemTime::now())
}

/// Now plus `duration`, in Unix milliseconds.
pub fn from_now(duration: Duration) -> i64 {
    now_millis().saturating_add(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX))
}

/// A time in Unix milliseconds.
pub fn millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Store {
    /// Connects to `url` (creating an SQLite file if missing, in WAL mode). Does not migrate.
    pub async fn connect(url: &SecretString, max_connections: u32) -> Result<Store, StoreError> {
        Self::connect_waiting(url, max_connections, ACQUIRE_TIMEOUT).await
    }

    /// [`Store::connect`], with how long a statement may wait for a connection of the pool
    /// before it fails: the in-process harness, whose clock jumps, waits as long as it takes.
    pub async fn connect_waiting(
        url: &SecretString,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let secret_url = Arc::new(url.clone());
        let url = url.expose_secret();
        let engine = if url.starts_with("sqlite:") {
            Engine::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Engine::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        let url = match engine {
            Engine::Sqlite if !url.contains("mode=") && !url.contains(":memory:") => {
                let separator = if url.contains('?') { '&' } else { '?' };
                format!("{url}{separator}mode=rwc")
            }
            _ => url.to_owned(),
        };
        // Statements are logged at debug only: they carry no secrets, but they are noisy.
        let options = AnyConnectOptions::from_str(&url)?
            .log_statements(tracing::log::LevelFilter::Debug)
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(acquire_timeout)
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if engine == Engine::Sqlite {
                        // WAL lets readers proceed while one writer writes; busy_timeout makes
                        // writers queue instead of failing with SQLITE_BUSY.
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *connection)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 5000")
                            .execute(&mut *connection)
                            .await?;
                        // FULL: a transaction acknowledged is on disk, power cut or not.
                        // Commits are batched (crate::delivery::commit), so this costs one fsync per
                        // batch, not per message.
                        sqlx::query("PRAGMA synchronous = FULL")
                            .execute(&mut *connection)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(Store {
            pool,
            engine,
            url: secret_url,
            directory: Arc::default(),
        })
    }

    /// Whether this is SQLite in a file: not a database in memory, which lives in the pool's
    /// connection, and which another connection would not see.
    fn is_sqlite_file(&self) -> bool {
        let url = self.url.expose_secret();
        self.engine == Engine::Sqlite && !url.contains(":memory:") && !url.contains("mode=memory")
    }

    /// Whether this is SQLite, where one instance runs at a time.
    pub fn is_sqlite(&self) -> bool {
        self.engine == Engine::Sqlite
    }

    /// Applies the pending migrations of this engine.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self.engine {
            Engine::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await?,
            Engine::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await?,
        }
        Ok(())
    }

    /// Whether the database answers (for `/ready`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// The pool, for tests that make the database fail on purpose (a trigger).
    #[cfg(test)]
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The group-chat tables.
    pub fn rooms(&self) -> rooms::RoomTables {
        rooms::RoomTables {
            pool: self.pool.clone(),
            engine: self.engine,
        }
    }

    /// The session tables.
    pub fn sessions(&self) -> sessions::SessionTables {
        sessions::SessionTables {
            pool: self.pool.clone(),
            postgres: self.engine == Engine::Postgres,
        }
    }

    /// On PostgreSQL, a listener told of every handed-off stanza; `None` on SQLite, where one
    /// instance runs and nothing is handed off.
    pub async fn handoff_signals(&self) -> Result<Option<sessions::HandoffSignals>, StoreError> {
        match self.engine {
            Engine::Sqlite => Ok(None),
            Engine::Postgres => sessions::HandoffSignals::connect(self.url.expose_secret())
                .await
                .map(Some),
        }
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Registers `jid` with `bridge`, or updates the registration.
    pub async fn put_registration(
        &self,
        bridge: &str,
        jid: &str,
        data: &RegistrationData,
    ) -> Result<(), StoreError> {
        let now = now_millis();
        let mut transaction = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO registrations (bridge, jid, data, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (bridge, jid) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
        )
        .bind(bridge)
        .bind(jid)
        .bind(serde_json::to_string(data.as_json())?)
        .bind(now)
        .execute(&mut *transaction)
        .await?;
        Self::directory_changed(&mut transaction).await?;
        transaction.commit().await?;
        self.directory.forget(bridge, Some(jid));
        Ok(())
    }

    /// Bumps `directory_version`, in the transaction that changes a registration or identity.
    async fn directory_changed(
        transaction: &mut sqlx::Transaction<'_, sqlx::Any>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE directory_version SET version = version + 1 WHERE id = 1")
            .execute(&mut **transaction)
            .await?;
        Ok(())
    }

    /// Forgets every cached registration and identity if another process (or connection)
    /// changed any since the last look. Returns whether it did.
    pub async fn refresh_directory(&self) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT version FROM directory_version WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        let version: i64 = match row {
            Some(row) => row.try_get(0)?,
            None => 0,
        };
        let changed = {
            let mut state = self.directory.state();
            let changed = state.version.is_some_and(|seen| seen != version);
            state.version = Some(version);
            changed
        };
        if changed {
            self.directory.forget_all();
        }
        Ok(changed)
    }

    /// Keeps the directory cache true to the database until `stopping`: looks at
    /// `directory_version` every `period`.
    pub async fn watch_directory(&self, period: Duration, stopping: jabbridge_sdk::Shutdown) {
        loop {
            if let Err(error) = self.refresh_directory().await {
                // Not knowing, forget: reads go to the database until it answers again.
                self.directory.forget_all();
                tracing::debug!(%error, "cannot read directory_version");
            }
            tokio::select! {
                () = tokio::time::sleep(period) => {}
                () = stopping.clone().wait() => return,
            }
        }
    }

    /// What the bridge stored for `jid`, if registered (cached).
    pub async fn registration(
        &self,
        bridge: &str,
        jid: &str,
    ) -> Result<Option<RegistrationData>, StoreError> {
        let key = (bridge.to_owned(), jid.to_owned());
        let pick: fn(&mut DirectoryState) -> &mut _ = |state| &mut state.registrations;
        let generation = match self.directory.lookup(pick, &key) {
            Ok(cached) => return Ok(cached),
            Err(generation) => generation,
        };
        let registration = self
            .json_value(
                "SELECT data FROM registrations WHERE bridge = $1 AND jid = $2",
                bridge,
                jid,
            )
            .await?
            .map(RegistrationData::from_json);
        // Only what exists is cached: a user registering through another instance (or the
        // CLI) must be let in at once, not after the watcher's next look.
        if registration.is_some() {
            self.directory
                .remember(pick, key, registration.clone(), generation);
        }
        Ok(registration)
    }

    /// The JSON text in the first column of the row `sql` selects with two parameters, parsed.
    async fn json_value(
        &self,
        sql: &'static str,
        first: &str,
        second: &str,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        let row = sqlx::query(sql)
            .bind(first)
            .bind(second)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(Some(serde_json::from_str(&row.try_get::<String, _>(0)?)?)),
            None => Ok(None),
        }
    }

    /// Removes a registration; with `identities`, also the foreign identities an admin gave
    /// that user (what an admin removing a user does; a user unregistering keeps them, since
    /// only an admin gives or takes them). Whether anything was removed.
    pub async fn delete_registration(
        &self,
        bridge: &str,
        jid: &str,
        identities: bool,
    ) -> Result<bool, StoreError> {
        let mut transaction = self.pool.begin().await?;
        let mut deleted = sqlx::query("DELETE FROM registrations WHERE bridge = $1 AND jid = $2")
            .bind(bridge)
            .bind(jid)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
        if identities {
            deleted += sqlx::query("DELETE FROM identities WHERE bridge = $1 AND jid = $2")
                .bind(bridge)
                .bind(jid)
                .execute(&mut *transaction)
                .await?
                .rows_affected();
        }
        Self::directory_changed(&mut transaction).await?;
        transaction.commit().await?;
        self.directory.forget(bridge, Some(jid));
        Ok(deleted > 0)
    }

    /// A bridge's saved value under `key` (see [`jabbridge_sdk::Core::load`]).
    pub async fn state(
        &self,
        bridge: &str,
        key: &str,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        self.json_value(
            "SELECT value FROM bridge_state WHERE bridge = $1 AND key = $2",
            bridge,
            key,
        )
        .await
    }

    /// Saves (or with `None` deletes) a bridge's value under `key`.
    pub async fn put_state(
        &self,
        bridge: &str,
        key: &str,
        value: Option<&serde_json::Value>,
    ) -> Result<(), StoreError> {
        let query = match value {
            Some(value) => sqlx::query(
                "INSERT INTO bridge_state (bridge, key, value, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (bridge, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            )
            .bind(bridge)
            .bind(key)
            .bind(serde_json::to_string(value)?)
            .bind(now_millis()),
            None => sqlx::query("DELETE FROM bridge_state WHERE bridge = $1 AND key = $2")
                .bind(bridge)
                .bind(key),
        };
        query.execute(&self.pool).await?;
        Ok(())
    }

    /// Every registered JID of a bridge, sorted.
    pub async fn registered_jids(&self, bridge: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT jid FROM registrations WHERE bridge = $1 ORDER BY jid")
            .bind(bridge)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| row.try_get::<String, _>(0).map_err(StoreError::from))
            .collect()
    }

    /// Every registration of a bridge, by JID, in one read (sessions at start).
    pub async fn registrations(
        &self,
        bridge: &str,
    ) -> Result<Vec<(String, RegistrationData)>, StoreError> {
        let rows =
            sqlx::query("SELECT jid, data FROM registrations WHERE bridge = $1 ORDER BY jid")
                .bind(bridge)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|row| {
                let jid: String = row.try_get(0)?;
                let data: String = row.try_get(1)?;
                Ok((
                    jid,
                    RegistrationData::from_json(serde_json::from_str(&data)?),
                ))
            })
            .collect()
    }

    /// Records that `foreign_id` on `bridge` belongs to `jid` (replacing any owner).
    pub async fn put_identity(
        &self,
        bridge: &str,
        foreign_id: &str,
        jid: &str,
    ) -> Result<(), StoreError> {
        let mut transaction = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO identities (bridge, foreign_id, jid, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (bridge, foreign_id) DO UPDATE SET jid = excluded.jid",
        )
        .bind(bridge)
        .bind(foreign_id)
        .bind(jid)
        .bind(now_millis())
        .execute(&mut *transaction)
        .await?;
        Self::directory_changed(&mut transaction).await?;
        transaction.commit().await?;
        self.directory.forget(bridge, None);
        Ok(())
    }

    /// The JID that owns a foreign identity.
    pub async fn identity_owner(
        &self,
        bridge: &str,
        foreign_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT jid FROM identities WHERE bridge = $1 AND foreign_id = $2")
            .bind(bridge)
            .bind(foreign_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|row| row.try_get::<String, _>(0)).transpose()?)
    }

    /// The foreign identities `jid` owns on `bridge`, sorted (cached).
    pub async fn identities_of(&self, bridge: &str, jid: &str) -> Result<Vec<String>, StoreError> {
        let key = (bridge.to_owned(), jid.to_owned());
        let pick: fn(&mut DirectoryState) -> &mut _ = |state| &mut state.identities;
        let generation = match self.directory.lookup(pick, &key) {
            Ok(cached) => return Ok(cached),
            Err(generation) => generation,
        };
        let rows = sqlx::query(
            "SELECT foreign_id FROM identities WHERE bridge = $1 AND jid = $2 ORDER BY foreign_id",
        )
        .bind(bridge)
        .bind(jid)
        .fetch_all(&self.pool)
        .await?;
        let identities = rows
            .iter()
            .map(|row| row.try_get::<String, _>(0).map_err(StoreError::from))
            .collect::<Result<Vec<_>, _>>()?;
        if !identities.is_empty() {
            self.directory
                .remember(pick, key, identities.clone(), generation);
        }
        Ok(identities)
    }

    /// Removes the owner of a foreign identity; whether it had one.
    pub async fn delete_identity(
        &self,
        bridge: &str,
        foreign_id: &str,
    ) -> Result<bool, StoreError> {
        let mut transaction = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM identities WHERE bridge = $1 AND foreign_id = $2")
            .bind(bridge)
            .bind(foreign_id)
            .execute(&mut *transaction)
            .await?;
        Self::directory_changed(&mut transaction).await?;
        transaction.commit().await?;
        self.directory.forget(bridge, None);
        Ok(done.rows_affected() > 0)
    }

    /// What a delivery report about `foreign_id` needs (JSON), while no report was acted on:
    /// `Ok(None)` when no message awaits one (unknown, or already reported). Acting on it
    /// clears it ([`Write::ClearReport`]) in the transaction that queues the notice.
    pub async fn pending_report(
        &self,
        bridge: &str,
        foreign_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT pending_report FROM message_ids \
             WHERE bridge = $1 AND foreign_id = $2 AND pending_report IS NOT NULL \
             ORDER BY created_at DESC LIMIT 1",
        )
        .bind(bridge)
        .bind(foreign_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| row.try_get::<String, _>(0).map_err(StoreError::from))
            .transpose()
    }

    /// The inbox row of the message `jid` received with `xmpp_id` (found through its id
    /// mapping, written once it was delivered).
    pub async fn inbox_row(
        &self,
        bridge: &str,
        jid: &str,
        xmpp_id: &str,
    ) -> Result<Option<i64>, StoreError> {
        let Some(foreign_id) = self.foreign_message_id(bridge, jid, xmpp_id).await? else {
            return Ok(None);
        };
        let row = sqlx::query("SELECT id FROM inbox WHERE bridge = $1 AND dedupe_key = $2")
            .bind(bridge)
            .bind(format!("{jid}\n{foreign_id}"))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| row.try_get::<i64, _>(0).map_err(StoreError::from))
            .transpose()
    }

    /// How many of `bridge`'s inbox rows came back from users' servers as errors, and the
    /// users they were for (at most `limit`, sorted).
    pub async fn bounced(
        &self,
        bridge: &str,
        limit: usize,
    ) -> Result<(i64, Vec<String>), StoreError> {
        let rows = sqlx::query(
            "SELECT dedupe_key FROM inbox WHERE bridge = $1 AND failure LIKE 'bounced:%'",
        )
        .bind(bridge)
        .fetch_all(&self.pool)
        .await?;
        let mut users = std::collections::BTreeSet::new();
        for row in &rows {
            let key: String = row.try_get(0)?;
            if let Some((user, _)) = key.split_once('\n') {
                users.insert(user.to_owned());
            }
        }
        let count = i64::try_from(rows.len()).unwrap_or(i64::MAX);
        Ok((count, users.into_iter().take(limit).collect()))
    }

    /// How many messages `bridge` counted on UTC `day` against its daily cap.
    pub async fn spent(&self, bridge: &str, day: i64) -> Result<i64, StoreError> {
        let row =
            sqlx::query("SELECT count FROM spend WHERE bridge = $1 AND subject = '' AND day = $2")
                .bind(bridge)
                .bind(day)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row
            .map(|row| row.try_get::<i64, _>(0))
            .transpose()?
            .unwrap_or(0))
    }

    /// Counts one message of `user` on `bridge` against today's (UTC `day`) caps: `per_day`
    /// for the bridge, `per_user` for the user. Counts nothing and says which cap is
    /// reached when one is; every instance shares the counts.
    pub async fn spend(
        &self,
        bridge: &str,
        user: &str,
        day: i64,
        per_day: Option<u32>,
        per_user: Option<u32>,
    ) -> Result<Spent, StoreError> {
        let mut transaction = self.pool.begin().await?;
        let mut bridge_today = None;
        for (subject, cap, reached) in [
            ("", per_day, Spent::BridgeCapReached),
            (user, per_user, Spent::UserCapReached),
        ] {
            let Some(cap) = cap else { continue };
            let counted = sqlx::query(
                "INSERT INTO spend (bridge, subject, day, count) VALUES ($1, $2, $3, 1) \
                 ON CONFLICT (bridge, subject, day) DO UPDATE SET count = spend.count + 1 \
                 WHERE spend.count < $4 RETURNING count",
            )
            .bind(bridge)
            .bind(subject)
            .bind(day)
            .bind(i64::from(cap))
            .fetch_optional(&mut *transaction)
            .await?;
            let Some(counted) = counted else {
                transaction.rollback().await?;
                return Ok(reached);
            };
            if subject.is_empty() {
                bridge_today = Some(counted.try_get::<i64, _>(0)?);
            }
        }
        transaction.commit().await?;
        Ok(Spent::Counted { bridge_today })
    }

    /// Deletes the spend counts of days before `day`.
    pub async fn forget_spend(&self, day: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM spend WHERE day < $1")
            .bind(day)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// The foreign id of a message `jid` sent or received with `xmpp_id`.
    pub async fn foreign_message_id(
        &self,
        bridge: &str,
        jid: &str,
        xmpp_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT foreign_id FROM message_ids WHERE bridge = $1 AND jid = $2 AND xmpp_id = $3",
        )
        .bind(bridge)
        .bind(jid)
        .bind(xmpp_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| row.try_get::<String, _>(0)).transpose()?)
    }

    /// The `(jid, xmpp_id)` a foreign message id maps to.
    pub async fn xmpp_message_id(
        &self,
        bridge: &str,
        foreign_id: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let row = sqlx::query(
            "SELECT jid, xmpp_id FROM message_ids WHERE bridge = $1 AND foreign_id = $2 \
             ORDER BY created_at DESC LIMIT 1",
        )
        .bind(bridge)
        .bind(foreign_id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => Ok(Some((row.try_get(0)?, row.try_get(1)?))),
            None => Ok(None),
        }
    }

    /// Commits `writes` in one transaction, so that a batch costs one commit however many
    /// messages it holds (see [`crate::delivery::commit`]). Queued rows belong to `owner` (this
    /// instance) until delivered. For each write, in order: the new row's id for an
    /// [`Write::Enqueue`] that was queued, `None` for one whose `dedupe_key` was queued
    /// before (delivered or not), and `None` for every other kind.
    pub async fn commit_batch(
        &self,
        owner: &str,
        writes: &[Write],
    ) -> Result<Vec<Option<i64>>, StoreError> {
        let mut connection = self.pool.acquire().await?;
        let written = Self::write_batch(&mut connection, self.engine, owner, writes).await;
        if written.is_err() {
            // A batch that failed half-way (SQLite on a full disk) can leave its connection
            // holding the database's write lock, and every later statement then fails with
            // "database is locked": the connection is closed rather than reused.
            let _ = connection.detach().close().await;
        }
        written
    }

    /// A writer of batches for the group commit ([`crate::delivery::commit`]): on SQLite in
    /// a file it keeps a connection of its own, outside the pool, so that a batch costs no
    /// trip through the pool, whose acquiring and releasing each ping the connection's
    /// thread.
    pub fn batch_writer(&self) -> BatchWriter {
        BatchWriter {
            store: self.clone(),
            keeps: self.is_sqlite_file(),
            connection: None,
        }
    }

    async fn write_batch(
        connection: &mut sqlx::AnyConnection,
        engine: Engine,
        owner: &str,
        writes: &[Write],
    ) -> Result<Vec<Option<i64>>, StoreError> {
        let now = now_millis();
        let mut results = vec![None; writes.len()];
        let queued = [Queue::Outbox, Queue::Inbox].map(|queue| {
            let rows: Vec<(usize, &NewRow)> = writes
                .iter()
                .enumerate()
                .filter_map(|(index, write)| match write {
                    Write::Enqueue(row) if row.queue == queue => Some((index, row)),
                    _ => None,
                })
                .collect();
            let delivered: Vec<i64> = writes
                .iter()
                .filter_map(|write| match write {
                    Write::Complete { queue: of, id } if *of == queue => Some(*id),
                    _ => None,
                })
                .collect();
            (queue, rows, delivered)
        });
        let archived: Vec<(usize, &rooms::ArchiveRow)> = writes
            .iter()
            .enumerate()
            .filter_map(|(index, write)| match write {
                Write::Archive(row) => Some((index, row)),
                _ => None,
            })
            .collect();
        // Id mappings, several per statement. The last mapping of a key wins, as it would
        // one statement at a time (and PostgreSQL refuses one upsert touching a row twice).
        let mut mappings: HashMap<(&str, &str, &str), (&str, Option<&str>)> = HashMap::new();
        for write in writes {
            if let Write::MapId {
                bridge,
                jid,
                xmpp_id,
                foreign_id,
                pending_report,
            } = write
            {
                // An awaited report is kept unless the foreign id changed, as the statement
                // below does across batches.
                let pending = pending_report.as_deref();
                mappings
                    .entry((bridge, jid, xmpp_id))
                    .and_modify(|(old_id, old_pending)| {
                        if *old_id != foreign_id.as_str() {
                            *old_pending = None;
                        }
                        *old_id = foreign_id;
                        *old_pending = pending.or(*old_pending);
                    })
                    .or_insert((foreign_id, pending));
            }
        }
        let mappings: Vec<_> = mappings.into_iter().collect();
        let updates = writes
            .iter()
            .filter(|write| {
                matches!(
                    write,
                    Write::Fail { .. }
                        | Write::Retry { .. }
                        | Write::Bounce { .. }
                        | Write::ClearReport { .. }
                )
            })
            .count();
        // Whether the batch is one statement (built below), which then runs alone.
        let alone = queued
            .iter()
            .map(|(_, rows, delivered)| {
                rows.len().div_ceil(ROWS_PER_INSERT) + delivered.len().div_ceil(ROWS_PER_INSERT)
            })
            .sum::<usize>()
            + rooms::statements_for(archived.len())
            + updates
            + mappings.len().div_ceil(ROWS_PER_INSERT)
            == 1;

        let mut statements = Vec::new();
        for (queue, rows, delivered) in &queued {
            for chunk in rows.chunks(ROWS_PER_INSERT) {
                // $1 = now, $2 = owner; then four per row.
                let sql = format!(
                    "{} {} (bridge, conversation, dedupe_key, payload, next_attempt_at, \
                     created_at, lease_owner) VALUES {} \
                     ON CONFLICT (bridge, dedupe_key) DO NOTHING RETURNING id, bridge, dedupe_key",
                    engine.insert_into(alone),
                    queue.table(),
                    four_per_row(chunk.len(), 3, "$1, $1, $2")
                );
                let mut query = sqlx::query(AssertSqlSafe(sql)).bind(now).bind(owner);
                for (_, row) in chunk {
                    query = query
                        .bind(row.bridge.as_str())
                        .bind(row.conversation.as_str())
                        .bind(row.dedupe_key.as_str())
                        .bind(row.payload.as_str());
                }
                statements.push(Statement {
                    query,
                    returns: Returns::Queued(chunk),
                });
            }
            for chunk in delivered.chunks(ROWS_PER_INSERT) {
                let ids: Vec<String> = (0..chunk.len()).map(|n| format!("${}", n + 2)).collect();
                let sql = format!(
                    "UPDATE {} SET delivered_at = $1, lease_owner = NULL \
                     WHERE delivered_at IS NULL AND id IN ({})",
                    queue.table(),
                    ids.join(", ")
                );
                let mut query = sqlx::query(AssertSqlSafe(sql)).bind(now);
                for id in chunk {
                    query = query.bind(*id);
                }
                statements.push(Statement::plain(query));
            }
        }
        statements.extend(rooms::insert_messages(engine, &archived, alone));
        for write in writes {
            let query = match write {
                Write::Enqueue(_)
                | Write::Complete { .. }
                | Write::Archive(_)
                | Write::Barrier
                | Write::MapId { .. } => continue,
                Write::Fail { queue, id, reason } => sqlx::query(AssertSqlSafe(format!(
                    "UPDATE {} SET delivered_at = $1, failure = $2, lease_owner = NULL \
                     WHERE id = $3 AND delivered_at IS NULL",
                    queue.table()
                )))
                .bind(now)
                .bind(reason.as_str())
                .bind(*id),
                Write::Retry { queue, id, at } => sqlx::query(AssertSqlSafe(format!(
                    "UPDATE {} SET next_attempt_at = $1, attempts = attempts + 1 \
                     WHERE id = $2 AND delivered_at IS NULL",
                    queue.table()
                )))
                .bind(*at)
                .bind(*id),
                Write::Bounce { id, reason } => sqlx::query(
                    "UPDATE inbox SET failure = $1, lease_owner = NULL, \
                     delivered_at = COALESCE(delivered_at, $2) WHERE id = $3",
                )
                .bind(reason.as_str())
                .bind(now)
                .bind(*id),
                Write::ClearReport { bridge, foreign_id } => sqlx::query(
                    "UPDATE message_ids SET pending_report = NULL \
                     WHERE bridge = $1 AND foreign_id = $2 AND pending_report IS NOT NULL",
                )
                .bind(bridge.as_str())
                .bind(foreign_id.as_str()),
            };
            statements.push(Statement::plain(query));
        }
        for chunk in mappings.chunks(ROWS_PER_INSERT) {
            // $1 = now; then five per row.
            let sql = format!(
                "{} message_ids (bridge, jid, xmpp_id, foreign_id, pending_report, created_at) \
                 VALUES {} ON CONFLICT (bridge, jid, xmpp_id) DO UPDATE SET \
                 pending_report = CASE WHEN excluded.foreign_id = message_ids.foreign_id \
                 THEN COALESCE(excluded.pending_report, message_ids.pending_report) \
                 ELSE excluded.pending_report END, \
                 foreign_id = excluded.foreign_id",
                engine.insert_into(alone),
                per_row(chunk.len(), 2, 5, "$1")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql)).bind(now);
            for ((bridge, jid, xmpp_id), (foreign_id, pending)) in chunk {
                query = query
                    .bind(*bridge)
                    .bind(*jid)
                    .bind(*xmpp_id)
                    .bind(*foreign_id)
                    .bind(*pending);
            }
            statements.push(Statement::plain(query));
        }

        // One statement is a transaction of its own (autocommit): no BEGIN and COMMIT, each
        // a round trip to the connection's thread (SQLite) or to the server (PostgreSQL).
        // The common batch under load (a room's lines, or a queue's new rows) is one.
        debug_assert_eq!(alone, statements.len() == 1, "the count of statements");
        match statements.len() {
            0 => {}
            1 => run_statements(connection, statements, &mut results).await?,
            _ => {
                let mut transaction = connection.begin().await?;
                run_statements(&mut transaction, statements, &mut results).await?;
                transaction.commit().await?;
            }
        }
        Ok(results)
    }

    /// Takes the undelivered rows of `bridge` that no live instance holds, for `owner`:
    /// rows released at an orderly shutdown, and rows of instances whose last heartbeat is
    /// older than `stale_before` (Unix ms; `None` takes the rows of every other instance, for
    /// SQLite, where only one instance runs). A user's messages are left to the live
    /// instance that runs their session, if another does. Several instances may call this at
    /// once on PostgreSQL: each row goes to one. Returns the rows taken, oldest first.
    pub async fn take_over(
        &self,
        queue: Queue,
        bridge: &str,
        owner: &str,
        stale_before: Option<i64>,
    ) -> Result<Vec<Recovered>, StoreError> {
        let others = match stale_before {
            Some(_) => {
                "(lease_owner IS NULL OR (lease_owner <> $1 AND lease_owner NOT IN \
                 (SELECT id FROM instances WHERE heartbeat_at >= $3)))"
            }
            None => "$3 = 0 AND (lease_owner IS NULL OR lease_owner <> $1)",
        };
        // A user's messages go with their session: rows of a user whose session another live
        // instance runs are left for it (conversations start with the user and a newline).
        let affine = stale_before.is_some() && queue == Queue::Outbox;
        let with_session = if affine {
            "AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.bridge = $2 \
             AND s.owner <> $1 AND s.owner IN (SELECT id FROM instances WHERE heartbeat_at >= $3) \
             AND substr(conversation, 1, length(s.jid) + 1) = s.jid || $4)"
        } else {
            ""
        };
        let mut query = sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET lease_owner = $1 \
             WHERE bridge = $2 AND delivered_at IS NULL AND {others} {with_session} \
             RETURNING id, conversation, payload, attempts, next_attempt_at",
            queue.table()
        )))
        .bind(owner)
        .bind(bridge)
        .bind(stale_before.unwrap_or(0));
        if affine {
            query = query.bind("\n");
        }
        let rows = query.fetch_all(&self.pool).await?;
        let mut recovered = rows
            .iter()
            .map(|row| {
                Ok(Recovered {
                    id: row.try_get(0)?,
                    conversation: row.try_get(1)?,
                    payload: row.try_get(2)?,
                    attempts: row.try_get(3)?,
                    next_attempt_at: row.try_get(4)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        recovered.sort_by_key(|row| row.id);
        Ok(recovered)
    }

    /// Hands back the undelivered rows `owner` holds, so that the next instance to start, or
    /// another running one, takes them at once (orderly shutdown).
    pub async fn release(&self, queue: Queue, owner: &str) -> Result<u64, StoreError> {
        Ok(sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET lease_owner = NULL WHERE lease_owner = $1 AND delivered_at IS NULL",
            queue.table()
        )))
        .bind(owner)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Records that instance `owner` is alive now.
    pub async fn heartbeat(&self, owner: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO instances (id, heartbeat_at, started_at) VALUES ($1, $2, $2) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
        )
        .bind(owner)
        .bind(now_millis())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets instance `owner` (orderly shutdown), or with `None` every instance silent
    /// since `before` (Unix ms).
    pub async fn forget_instances(
        &self,
        owner: Option<&str>,
        before: i64,
    ) -> Result<(), StoreError> {
        match owner {
            Some(owner) => sqlx::query("DELETE FROM instances WHERE id = $1").bind(owner),
            None => sqlx::query("DELETE FROM instances WHERE heartbeat_at < $1").bind(before),
        }
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes message id mappings older than `before` (Unix ms) that no delivery report
    /// still waits for, and those waiting for one for longer than [`REPORTS_AWAITED`]
    /// (networks that never report would otherwise keep them forever); how many.
    pub async fn forget_message_ids(&self, before: i64) -> Result<u64, StoreError> {
        let hopeless = now_millis()
            .saturating_sub(i64::try_from(REPORTS_AWAITED.as_millis()).unwrap_or(i64::MAX));
        Ok(sqlx::query(
            "DELETE FROM message_ids WHERE (created_at < $1 AND pending_report IS NULL) \
             OR (pending_report IS NOT NULL AND created_at < $2)",
        )
        .bind(before)
        .bind(hopeless)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Deletes messages delivered (or given up on) before `before` (Unix ms); how many.
    pub async fn forget_delivered(&self, queue: Queue, before: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {} WHERE delivered_at IS NOT NULL AND delivered_at < $1",
            queue.table()
        )))
        .bind(before)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// How many messages of a queue were delivered (`true`) or given up on (`false`).
    pub async fn finished(
        &self,
        queue: Queue,
        bridge: &str,
        delivered: bool,
    ) -> Result<i64, StoreError> {
        let condition = if delivered {
            "failure IS NULL"
        } else {
            "failure IS NOT NULL"
        };
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM {} WHERE bridge = $1 AND delivered_at IS NOT NULL AND {condition}",
            queue.table()
        )))
        .bind(bridge)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    /// Messages not yet delivered, per queue and bridge (for metrics and tests).
    pub async fn pending(&self, queue: Queue, bridge: &str) -> Result<i64, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM {} WHERE bridge = $1 AND delivered_at IS NULL",
            queue.table()
        )))
        .bind(bridge)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }
}
