//! The session tables: which instance runs each user's session (`sessions`), and the
//! stanzas that reached another instance waiting for that one (`handoffs`). With one
//! instance (SQLite) every session is this instance's and nothing is handed off.

use std::collections::HashMap;

use sqlx::{AnyPool, Row};

use super::{StoreError, now_millis};

/// The NOTIFY channel that tells instances a stanza was handed off (PostgreSQL).
pub const HANDOFF_CHANNEL: &str = "jabbridge_handoff";

/// The session tables of one database; cheap to clone. From [`super::Store::sessions`].
#[derive(Clone, Debug)]
pub struct SessionTables {
    pub(super) pool: AnyPool,
    pub(super) postgres: bool,
}

/// A session this instance claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The user's bare JID.
    pub jid: String,
    /// The instance that ran it before, if any: its room cursors say what it may not have
    /// sent.
    pub previous: Option<String>,
}

/// A stanza handed off to the instance running its sender's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandedOff {
    /// Its row.
    pub id: i64,
    /// The stanza as it arrived.
    pub stanza: String,
}

impl SessionTables {
    /// Claims for `owner` the sessions of `bridge`'s registered users (all, or only `user`)
    /// that no live instance runs: never claimed, released at an orderly shutdown, or held
    /// by an instance whose last heartbeat is older than `stale_before` (Unix ms; `None`
    /// claims from every other instance, for SQLite, where only one instance runs). Several
    /// instances may call this at once: each session goes to one.
    pub async fn claim(
        &self,
        bridge: &str,
        owner: &str,
        user: Option<&str>,
        stale_before: Option<i64>,
    ) -> Result<Vec<Claimed>, StoreError> {
        let now = now_millis();
        let users = if user.is_some() {
            "AND jid = $3"
        } else {
            "AND $3 = ''"
        };
        // A session for every registered user, and for every user in a room (a bridge
        // without registration, such as IRC, still has users to rejoin at start).
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO sessions (bridge, jid, owner, last_owner, claimed_at) \
             SELECT bridge, jid, NULL, NULL, $2 FROM \
             (SELECT bridge, jid FROM registrations WHERE bridge = $1 {users} \
              UNION SELECT bridge, jid FROM room_joins WHERE bridge = $1 {users}) AS users \
             WHERE true ON CONFLICT (bridge, jid) DO NOTHING"
        )))
        .bind(bridge)
        .bind(now)
        .bind(user.unwrap_or(""))
        .execute(&self.pool)
        .await?;
        let others = match stale_before {
            Some(_) => {
                "(owner IS NULL OR (owner <> $2 AND owner NOT IN \
                 (SELECT id FROM instances WHERE heartbeat_at >= $4)))"
            }
            None => "$4 = 0 AND (owner IS NULL OR owner <> $2)",
        };
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE sessions SET last_owner = COALESCE(owner, last_owner), owner = $2, \
             claimed_at = $5 \
             WHERE bridge = $1 {users} AND {others} \
             AND (jid IN (SELECT jid FROM registrations WHERE bridge = $1) \
                  OR jid IN (SELECT jid FROM room_joins WHERE bridge = $1)) \
             RETURNING jid, last_owner"
        )))
        .bind(bridge)
        .bind(owner)
        .bind(user.unwrap_or(""))
        .bind(stale_before.unwrap_or(0))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Claimed {
                    jid: row.try_get(0)?,
                    previous: row.try_get(1)?,
                })
            })
            .collect()
    }

    /// The live owners of `bridge`'s sessions other than `me`, by user: where their stanzas
    /// go.
    pub async fn others(
        &self,
        bridge: &str,
        me: &str,
        stale_before: i64,
    ) -> Result<HashMap<String, String>, StoreError> {
        let rows = sqlx::query(
            "SELECT jid, owner FROM sessions WHERE bridge = $1 AND owner <> $2 \
             AND owner IN (SELECT id FROM instances WHERE heartbeat_at >= $3)",
        )
        .bind(bridge)
        .bind(me)
        .bind(stale_before)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    /// The users of `bridge` whose session `owner` holds.
    pub async fn owned(&self, bridge: &str, owner: &str) -> Result<Vec<String>, StoreError> {
        let rows =
            sqlx::query("SELECT jid FROM sessions WHERE bridge = $1 AND owner = $2 ORDER BY jid")
                .bind(bridge)
                .bind(owner)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|row| row.try_get::<String, _>(0).map_err(StoreError::from))
            .collect()
    }

    /// Hands back every session `owner` holds (orderly shutdown): live instances claim them.
    pub async fn release(&self, bridge: &str, owner: &str) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE sessions SET last_owner = owner, owner = NULL \
             WHERE bridge = $1 AND owner = $2",
        )
        .bind(bridge)
        .bind(owner)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Forgets `user`'s session (unregistered) and what was handed off for it.
    pub async fn forget(&self, bridge: &str, user: &str) -> Result<(), StoreError> {
        for table in ["sessions", "handoffs"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE bridge = $1 AND jid = $2"
            )))
            .bind(bridge)
            .bind(user)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// Stores `stanza`, from `user`, for the instance running their session, and tells it.
    pub async fn hand_off(&self, bridge: &str, user: &str, stanza: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO handoffs (bridge, jid, stanza, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(bridge)
        .bind(user)
        .bind(stanza)
        .bind(now_millis())
        .execute(&self.pool)
        .await?;
        if self.postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(HANDOFF_CHANNEL)
                .bind(bridge)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// The stanzas handed off for the users of `bridge` whose session `owner` holds, oldest
    /// first, at most `limit`.
    pub async fn handed_to(
        &self,
        bridge: &str,
        owner: &str,
        limit: i64,
    ) -> Result<Vec<HandedOff>, StoreError> {
        let rows = sqlx::query(
            "SELECT h.id, h.stanza FROM handoffs h JOIN sessions s \
             ON s.bridge = h.bridge AND s.jid = h.jid \
             WHERE h.bridge = $1 AND s.owner = $2 ORDER BY h.id LIMIT $3",
        )
        .bind(bridge)
        .bind(owner)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(HandedOff {
                    id: row.try_get(0)?,
                    stanza: row.try_get(1)?,
                })
            })
            .collect()
    }

    /// Deletes a handed-off stanza once handled.
    pub async fn handled(&self, id: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM handoffs WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Tells this instance when a stanza was handed off to some instance (PostgreSQL's
/// LISTEN); the payload is the bridge's domain.
pub struct HandoffSignals {
    listener: sqlx::postgres::PgListener,
}

impl HandoffSignals {
    /// Listens on [`HANDOFF_CHANNEL`].
    pub(super) async fn connect(url: &str) -> Result<Self, StoreError> {
        let mut listener = sqlx::postgres::PgListener::connect(url).await?;
        listener.listen(HANDOFF_CHANNEL).await?;
        Ok(Self { listener })
    }

    /// The next bridge something was handed off for. After the connection dropped it
    /// reconnects (signals sent meanwhile are lost: the owners also look every second).
    pub async fn next(&mut self) -> Result<String, StoreError> {
        Ok(self.listener.recv().await?.payload().to_owned())
    }
}
