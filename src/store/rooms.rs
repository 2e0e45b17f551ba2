//! The group-chat tables: who of our users is joined to which room from which resource, or
//! stays in it with none (`room_joins`), the room archive (`room_messages`), kept once per
//! room message however many users see it, and how far each instance's fan-out of a room
//! reached the server (`room_cursors`).

use sqlx::{AnyPool, Row};

use super::{StoreError, now_millis};

/// The room tables of one database; cheap to clone. From [`super::Store::rooms`].
#[derive(Clone, Debug)]
pub struct RoomTables {
    pub(super) pool: AnyPool,
    pub(super) engine: super::Engine,
}

/// The resource of the row that says a user stays in a room when their clients leave it
/// (the room is persistent for them): no XMPP resource is empty (RFC 7622, §3.4).
pub const STAYING: &str = "";

/// One resource of a user joined to a room, or [`STAYING`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRow {
    /// The user's bare JID.
    pub jid: String,
    /// The room's foreign id.
    pub room: String,
    /// The user's resource, or [`STAYING`].
    pub resource: String,
    /// The user's nick in the room.
    pub nick: String,
}

/// A room message to archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRoomMessage {
    /// The network's id: one row per (bridge, room, foreign id).
    pub foreign_id: String,
    /// The XEP-0359 id the room gives it.
    pub stanza_id: String,
    /// The sender's nick.
    pub nick: String,
    /// The sender's stable foreign id.
    pub sender: String,
    /// The text.
    pub text: String,
    /// The poster's origin-id, when one of our users posted it.
    pub origin_id: Option<String>,
    /// The poster's bare JID, when one of our users posted it.
    pub poster: Option<String>,
    /// When it was said, Unix ms.
    pub said_at: i64,
    /// When it corrects an earlier message: the id the room showed for that one.
    pub replaces: Option<String>,
    /// The id of the poster's own stanza, when one of our users posted it.
    pub post_id: Option<String>,
    /// When it replies to an earlier message: that one's stanza id, and who said it.
    pub reply_to: Option<RepliedTo>,
}

/// The message a room message replies to (XEP-0461), as archived with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepliedTo {
    /// The stanza id the room gave it.
    pub stanza_id: String,
    /// The nick of who said it.
    pub nick: String,
}

/// A room message to archive in a bridge's room: what a group commit carries
/// ([`super::Write::Archive`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveRow {
    /// The bridge's domain.
    pub bridge: String,
    /// The room's foreign id.
    pub room: String,
    /// The message.
    pub message: NewRoomMessage,
}

/// Rows archived per statement (fourteen bound values each).
const ARCHIVED_PER_INSERT: usize = 64;

/// How many of a room's latest messages a lookup by a poster's own id (a correction's or a
/// retraction's, by origin-id) reads: those ids have no index, to keep each archived
/// message's write cheap. A client names older messages by the room's stanza id.
pub const RECENT: u32 = 1000;

/// How many statements [`insert_messages`] makes of `rows` rows.
pub(super) fn statements_for(rows: usize) -> usize {
    rows.div_ceil(ARCHIVED_PER_INSERT)
}

/// The statements that archive `rows` (each with its index in the batch's results), several
/// rows per statement, in order; [`note_archived`] reads each one's returned rows.
pub(super) fn insert_messages<'q>(
    engine: super::Engine,
    rows: &'q [(usize, &'q ArchiveRow)],
    alone: bool,
) -> impl Iterator<Item = super::Statement<'q>> {
    rows.chunks(ARCHIVED_PER_INSERT).map(move |chunk| {
        let sql = format!(
            "{} room_messages (bridge, room, foreign_id, stanza_id, nick, sender, text, \
             origin_id, poster, said_at, replaces, post_id, reply_to, reply_nick) VALUES {} \
             ON CONFLICT (bridge, room, foreign_id) DO NOTHING RETURNING id, bridge, room, foreign_id",
            engine.insert_into(alone),
            engine.rows_of(chunk.len(), 14)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (_, row) in chunk {
            query = bind_message(query, &row.bridge, &row.room, &row.message);
        }
        super::Statement {
            query,
            returns: super::Returns::Archived(chunk),
        }
    })
}

/// Notes what one statement of [`insert_messages`] returned: `results[index]` becomes the
/// new row's id, and stays `None` for a repeat of a foreign id the room had (or an earlier
/// row of the same batch had).
pub(super) fn note_archived(
    chunk: &[(usize, &ArchiveRow)],
    inserted: &[sqlx::any::AnyRow],
    results: &mut [Option<i64>],
) -> Result<(), StoreError> {
    for inserted in inserted {
        let (id, bridge, room, foreign_id): (i64, String, String, String) = (
            inserted.try_get(0)?,
            inserted.try_get(1)?,
            inserted.try_get(2)?,
            inserted.try_get(3)?,
        );
        // The first of the chunk's rows with this key is the one inserted.
        if let Some((index, _)) = chunk.iter().find(|(index, row)| {
            results[*index].is_none()
                && row.message.foreign_id == foreign_id
                && row.room == room
                && row.bridge == bridge
        }) {
            results[*index] = Some(id);
        }
    }
    Ok(())
}

/// Binds an archived message's fourteen columns, in `insert_messages`' order.
fn bind_message<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    bridge: &'q str,
    room: &'q str,
    message: &'q NewRoomMessage,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    query
        .bind(bridge)
        .bind(room)
        .bind(message.foreign_id.as_str())
        .bind(message.stanza_id.as_str())
        .bind(message.nick.as_str())
        .bind(message.sender.as_str())
        .bind(message.text.as_str())
        .bind(message.origin_id.as_deref())
        .bind(message.poster.as_deref())
        .bind(message.said_at)
        .bind(message.replaces.as_deref())
        .bind(message.post_id.as_deref())
        .bind(message.reply_to.as_ref().map(|to| to.stanza_id.as_str()))
        .bind(message.reply_to.as_ref().map(|to| to.nick.as_str()))
}

/// A message read back from the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedMessage {
    /// Its place in the archive (ascending in the order archived).
    pub id: i64,
    /// The XEP-0359 id the room gave it.
    pub stanza_id: String,
    /// The sender's nick.
    pub nick: String,
    /// The sender's stable foreign id.
    pub sender: String,
    /// The text.
    pub text: String,
    /// The poster's origin-id, when one of our users posted it.
    pub origin_id: Option<String>,
    /// When it was said, Unix ms.
    pub said_at: i64,
    /// The network's id.
    pub foreign_id: String,
    /// The poster's bare JID, when one of our users posted it.
    pub poster: Option<String>,
    /// When it corrects an earlier message: the id the room showed for that one.
    pub replaces: Option<String>,
    /// When it was retracted, Unix ms (its text is then empty).
    pub retracted_at: Option<i64>,
    /// When it replies to an earlier message: that one's stanza id, and who said it.
    pub reply_to: Option<RepliedTo>,
}

impl ArchivedMessage {
    /// The `id` its copies carried: the poster's origin-id, else the room's stanza id.
    pub fn shown_id(&self) -> &str {
        self.origin_id.as_deref().unwrap_or(&self.stanza_id)
    }
}

/// How [`RoomTables::find`] looks a message up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Find<'a> {
    /// By the network's id.
    Foreign(&'a str),
    /// By an id a client has for it (the room's stanza id or the poster's origin-id; with
    /// `poster`, also the id of the poster's own stanza), among the messages of `poster` when
    /// given.
    Shown {
        /// The id.
        id: &'a str,
        /// Only this user's messages.
        poster: Option<&'a str>,
    },
}

/// Which page of a room's archive to read (XEP-0313 with XEP-0059), by archive ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageQuery {
    /// Only messages after this archive id.
    pub after: Option<i64>,
    /// Only messages before this archive id.
    pub before: Option<i64>,
    /// The last page (XEP-0059's empty `<before/>`), rather than the first.
    pub last: bool,
    /// Only messages said at or after (Unix ms).
    pub start: Option<i64>,
    /// Only messages said at or before (Unix ms).
    pub end: Option<i64>,
    /// Only messages from this nick.
    pub nick: Option<String>,
    /// At most this many.
    pub max: u32,
}

impl RoomTables {
    /// Records that `resource` of `jid` is in `room` as `nick` (replacing what was there).
    pub async fn join(&self, bridge: &str, row: &JoinRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO room_joins (bridge, jid, room, resource, nick, joined_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (bridge, jid, room, resource) DO UPDATE SET nick = excluded.nick",
        )
        .bind(bridge)
        .bind(&row.jid)
        .bind(&row.room)
        .bind(&row.resource)
        .bind(&row.nick)
        .bind(now_millis())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets one resource of `jid` in `room` (or that they stay: [`STAYING`]), or all of
    /// them and the stay with `None`.
    pub async fn leave(
        &self,
        bridge: &str,
        jid: &str,
        room: &str,
        resource: Option<&str>,
    ) -> Result<(), StoreError> {
        let query = match resource {
            Some(resource) => sqlx::query(
                "DELETE FROM room_joins WHERE bridge = $1 AND jid = $2 AND room = $3 \
                 AND resource = $4",
            )
            .bind(bridge)
            .bind(jid)
            .bind(room)
            .bind(resource),
            None => {
                sqlx::query("DELETE FROM room_joins WHERE bridge = $1 AND jid = $2 AND room = $3")
                    .bind(bridge)
                    .bind(jid)
                    .bind(room)
            }
        };
        query.execute(&self.pool).await?;
        Ok(())
    }

    /// Forgets every room of `jid` (unregistered).
    pub async fn leave_all(&self, bridge: &str, jid: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM room_joins WHERE bridge = $1 AND jid = $2")
            .bind(bridge)
            .bind(jid)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Sets `jid`'s nick in `room` for all their resources (the network renamed them).
    pub async fn rename(
        &self,
        bridge: &str,
        jid: &str,
        room: &str,
        nick: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE room_joins SET nick = $4 WHERE bridge = $1 AND jid = $2 AND room = $3")
            .bind(bridge)
            .bind(jid)
            .bind(room)
            .bind(nick)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every joined resource of a bridge (and every stay), by user, room and resource.
    pub async fn joins(&self, bridge: &str) -> Result<Vec<JoinRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT jid, room, resource, nick FROM room_joins WHERE bridge = $1 \
             ORDER BY jid, room, resource",
        )
        .bind(bridge)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(JoinRow {
                    jid: row.try_get(0)?,
                    room: row.try_get(1)?,
                    resource: row.try_get(2)?,
                    nick: row.try_get(3)?,
                })
            })
            .collect()
    }

    /// Archives a room message on its own (the gateway's go through the group commit).
    /// Returns its archive id, or `None` when the room already has a message with this
    /// foreign id (a repeat, shown once).
    pub async fn archive(
        &self,
        bridge: &str,
        room: &str,
        message: NewRoomMessage,
    ) -> Result<Option<i64>, StoreError> {
        let row = ArchiveRow {
            bridge: bridge.to_owned(),
            room: room.to_owned(),
            message,
        };
        let mut results = [None];
        let rows = [(0, &row)];
        let mut connection = self.pool.acquire().await?;
        let statements = insert_messages(self.engine, &rows, true);
        super::run_statements(&mut connection, statements, &mut results).await?;
        Ok(results[0])
    }

    /// Archives lines said before everything `room` has (a network's older history, read
    /// for a MAM query that reached the archive's start) below every id the archive has,
    /// the latest highest, so that the room's order stays the order said; the fan-out's
    /// cursors, all above, never send them. Lines the room has (by foreign id) are skipped.
    /// Returns how many were new.
    pub async fn backfill(
        &self,
        bridge: &str,
        room: &str,
        messages: &[NewRoomMessage],
    ) -> Result<u64, StoreError> {
        let mut ordered: Vec<&NewRoomMessage> = messages.iter().collect();
        ordered.sort_by_key(|message| std::cmp::Reverse(message.said_at));
        let mut transaction = self.pool.begin().await?;
        let lowest: i64 = sqlx::query("SELECT COALESCE(MIN(id), 1) FROM room_messages")
            .fetch_one(&mut *transaction)
            .await?
            .try_get(0)?;
        let mut next = lowest.min(1) - 1;
        let mut inserted = 0;
        for message in ordered {
            let query = sqlx::query(
                "INSERT INTO room_messages (bridge, room, foreign_id, stanza_id, nick, sender, \
                 text, origin_id, poster, said_at, replaces, post_id, reply_to, reply_nick, id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
                 ON CONFLICT DO NOTHING",
            );
            let done = bind_message(query, bridge, room, message)
                .bind(next)
                .execute(&mut *transaction)
                .await?;
            if done.rows_affected() > 0 {
                inserted += 1;
                next -= 1;
            }
        }
        transaction.commit().await?;
        Ok(inserted)
    }

    /// The last `max` messages of `room` said at or after `since` (Unix ms), oldest first.
    pub async fn history(
        &self,
        bridge: &str,
        room: &str,
        max: u32,
        since: i64,
    ) -> Result<Vec<ArchivedMessage>, StoreError> {
        let query = PageQuery {
            last: true,
            start: Some(since),
            max,
            ..PageQuery::default()
        };
        Ok(self.page(bridge, room, &query).await?.0)
    }

    /// The archive id of the message a room gave `stanza_id`.
    pub async fn archive_id(
        &self,
        bridge: &str,
        room: &str,
        stanza_id: &str,
    ) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(
            "SELECT id FROM room_messages WHERE bridge = $1 AND room = $2 AND stanza_id = $3",
        )
        .bind(bridge)
        .bind(room)
        .bind(stanza_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| row.try_get::<i64, _>(0)).transpose()?)
    }

    /// One page of a room's archive, oldest first, and whether it reaches the end of what
    /// the query selects in its direction (XEP-0313's `complete`).
    pub async fn page(
        &self,
        bridge: &str,
        room: &str,
        query: &PageQuery,
    ) -> Result<(Vec<ArchivedMessage>, bool), StoreError> {
        // Only fixed fragments go into the SQL; every value is bound.
        let mut sql = String::from(
            "SELECT id, stanza_id, nick, sender, text, origin_id, said_at, foreign_id, poster, \
             replaces, retracted_at, reply_to, reply_nick FROM room_messages \
             WHERE bridge = $1 AND room = $2",
        );
        let mut numbers = Vec::new();
        for (fragment, value) in [
            (" AND id > ", query.after),
            (" AND id < ", query.before),
            (" AND said_at >= ", query.start),
            (" AND said_at <= ", query.end),
        ] {
            if let Some(value) = value {
                numbers.push(value);
                sql.push_str(fragment);
                sql.push_str(&format!("${}", numbers.len() + 2));
            }
        }
        if query.nick.is_some() {
            sql.push_str(&format!(" AND nick = ${}", numbers.len() + 3));
        }
        let backwards = query.before.is_some() || query.last;
        sql.push_str(if backwards {
            " ORDER BY id DESC"
        } else {
            " ORDER BY id ASC"
        });
        let limit_at = numbers.len() + 3 + usize::from(query.nick.is_some());
        sql.push_str(&format!(" LIMIT ${limit_at}"));
        let mut statement = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(bridge)
            .bind(room);
        for value in numbers {
            statement = statement.bind(value);
        }
        if let Some(nick) = &query.nick {
            statement = statement.bind(nick.clone());
        }
        let rows = statement
            .bind(i64::from(query.max) + 1)
            .fetch_all(&self.pool)
            .await?;
        let mut messages = rows
            .iter()
            .map(archived)
            .collect::<Result<Vec<_>, StoreError>>()?;
        let complete = messages.len() <= query.max as usize;
        messages.truncate(query.max as usize);
        if backwards {
            messages.reverse();
        }
        Ok((messages, complete))
    }

    /// The archived message `find` names in `room`, if any (the latest, should a client
    /// have reused an id). A room's stanza ids are found however old; a poster's own ids
    /// (origin-id, their stanza's id) among the room's [`RECENT`] latest messages only.
    pub async fn find(
        &self,
        bridge: &str,
        room: &str,
        find: Find<'_>,
    ) -> Result<Option<ArchivedMessage>, StoreError> {
        const FIELDS: &str = "id, stanza_id, nick, sender, text, origin_id, said_at, \
                              foreign_id, poster, replaces, retracted_at, reply_to, reply_nick";
        let query = match find {
            Find::Foreign(id) => sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {FIELDS} FROM room_messages \
                 WHERE bridge = $1 AND room = $2 AND foreign_id = $3"
            )))
            .bind(bridge)
            .bind(room)
            .bind(id),
            Find::Shown { id, poster } => {
                // The stanza id through its index; the poster's ids by a scan of the
                // room's latest rows (through its (bridge, room, id) index).
                let (own_ids, of_poster) = match poster {
                    None => ("origin_id = $3", ""),
                    Some(_) => ("(origin_id = $3 OR post_id = $3)", " AND poster = $4"),
                };
                let query = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {FIELDS} FROM room_messages \
                     WHERE bridge = $1 AND room = $2 AND stanza_id = $3{of_poster} \
                     UNION ALL \
                     SELECT {FIELDS} FROM (SELECT {FIELDS}, post_id FROM room_messages \
                     WHERE bridge = $1 AND room = $2 ORDER BY id DESC LIMIT {RECENT}) recent \
                     WHERE {own_ids}{of_poster} \
                     ORDER BY id DESC LIMIT 1"
                )))
                .bind(bridge)
                .bind(room)
                .bind(id);
                match poster {
                    Some(poster) => query.bind(poster),
                    None => query,
                }
            }
        };
        let row = query.fetch_optional(&self.pool).await?;
        row.as_ref().map(archived).transpose()
    }

    /// Keeps only a tombstone of archived `message`, and of the corrections of it by the
    /// same sender: their text goes. Whether the message was not retracted before.
    pub async fn retract(
        &self,
        bridge: &str,
        room: &str,
        message: &ArchivedMessage,
    ) -> Result<bool, StoreError> {
        let now = now_millis();
        let done = sqlx::query(
            "UPDATE room_messages SET text = '', retracted_at = $2 \
             WHERE id = $1 AND retracted_at IS NULL",
        )
        .bind(message.id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "UPDATE room_messages SET text = '', retracted_at = $4 \
             WHERE bridge = $1 AND room = $2 AND replaces = $3 AND sender = $5 \
             AND retracted_at IS NULL",
        )
        .bind(bridge)
        .bind(room)
        .bind(message.shown_id())
        .bind(now)
        .bind(&message.sender)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records that `room`'s fan-out by `instance` reached the server up to archive id
    /// `sent` (a cursor only moves forward).
    pub async fn set_cursor(
        &self,
        bridge: &str,
        room: &str,
        instance: &str,
        sent: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO room_cursors (bridge, room, instance, sent_id) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (bridge, room, instance) DO UPDATE SET sent_id = excluded.sent_id \
             WHERE room_cursors.sent_id < excluded.sent_id",
        )
        .bind(bridge)
        .bind(room)
        .bind(instance)
        .bind(sent)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// How far `room`'s fan-out by `instance` is known to have reached the server, if it
    /// was recorded.
    pub async fn cursor(
        &self,
        bridge: &str,
        room: &str,
        instance: &str,
    ) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(
            "SELECT sent_id FROM room_cursors WHERE bridge = $1 AND room = $2 AND instance = $3",
        )
        .bind(bridge)
        .bind(room)
        .bind(instance)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| row.try_get::<i64, _>(0)).transpose()?)
    }

    /// Forgets the cursors of instances that are gone (no heartbeat left: stopped, or dead
    /// for a day) and neither run nor last ran any session: nobody will resend from them.
    pub async fn forget_orphan_cursors(&self, bridge: &str) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM room_cursors WHERE bridge = $1 \
             AND instance NOT IN (SELECT id FROM instances) AND instance NOT IN \
             (SELECT owner FROM sessions WHERE bridge = $1 AND owner IS NOT NULL \
              UNION SELECT last_owner FROM sessions WHERE bridge = $1 AND last_owner IS NOT NULL)",
        )
        .bind(bridge)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Forgets a bridge's room messages said before `before` (Unix ms): the archive's
    /// retention.
    pub async fn forget_before(&self, bridge: &str, before: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM room_messages WHERE bridge = $1 AND said_at < $2")
            .bind(bridge)
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

/// An archived message from a row of `SELECT id, stanza_id, nick, sender, text, origin_id,
/// said_at, foreign_id, poster, replaces, retracted_at, reply_to, reply_nick`.
fn archived(row: &sqlx::any::AnyRow) -> Result<ArchivedMessage, StoreError> {
    Ok(ArchivedMessage {
        id: row.try_get(0)?,
        stanza_id: row.try_get(1)?,
        nick: row.try_get(2)?,
        sender: row.try_get(3)?,
        text: row.try_get(4)?,
        origin_id: row.try_get(5)?,
        said_at: row.try_get(6)?,
        foreign_id: row.try_get(7)?,
        poster: row.try_get(8)?,
        replaces: row.try_get(9)?,
        retracted_at: row.try_get(10)?,
        reply_to: match (row.try_get(11)?, row.try_get(12)?) {
            (Some(stanza_id), Some(nick)) => Some(RepliedTo { stanza_id, nick }),
            _ => None,
        },
    })
}
