//! What a room has said, read back: history on join, MAM queries, the gateway's room list,
//! a room's disco#info, and the upkeep (cursors written, old messages forgotten).

use super::talk::{self, flush_cursors};
use super::*;
use jabbridge_sdk::HistoryRequest;

/// An archived message as history for `to`: with its delay, and the poster's origin-id.
pub(super) fn archived(
    gateway: &Gateway,
    room: &RoomId,
    room_jid: &BareJid,
    message: &ArchivedMessage,
    to: &str,
) -> Option<Element> {
    as_room_message(gateway, room, room_jid, message, |message| {
        let stanza = Writable::new(muc::room_message(message)).ok()?;
        Some(stanza.into_with(&[("to", to)]).into_inner())
    })
}

/// Builds a stanza from an archived message, as the room said it (with its delay).
pub(super) fn as_room_message(
    gateway: &Gateway,
    room: &RoomId,
    room_jid: &BareJid,
    message: &ArchivedMessage,
    build: impl FnOnce(&muc::RoomMessage<'_>) -> Option<Element>,
) -> Option<Element> {
    let stamp = humantime::format_rfc3339_millis(
        SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(message.said_at).ok()?),
    )
    .to_string();
    let room_name = room_jid.to_string();
    let retracted = match message.retracted_at {
        Some(at) => Some(
            humantime::format_rfc3339_millis(
                SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(at).ok()?),
            )
            .to_string(),
        ),
        None => None,
    };
    let replied_by = replied_by(room_jid, message.reply_to.as_ref());
    build(&muc::RoomMessage {
        from: occupant_jid(room_jid, &message.nick)?,
        room: &room_name,
        stanza_id: &message.stanza_id,
        text: &message.text,
        occupant_id: &occupant_id(&gateway.domain, room, &message.sender),
        origin_id: message.origin_id.as_deref(),
        delay: Some(&stamp),
        replaces: message.replaces.as_deref(),
        retracted: retracted.as_deref(),
        reply_to: message.reply_to.as_ref().map(|to| muc::Replied {
            id: &to.stanza_id,
            to: replied_by.as_deref(),
        }),
    })
}

/// Answers a XEP-0313 query of a room's archive from one of its members: the page's
/// messages as results to the asking resource, then the `<fin/>` for the iq result.
pub(in crate::gateway) async fn archive_query(
    gateway: &Gateway,
    from: &Jid,
    room: &RoomId,
    payload: &Element,
) -> Result<Element, StanzaFailure> {
    const DEFAULT_PAGE: u32 = 50;
    const LARGEST_PAGE: u32 = 250;
    let user = from.to_bare().to_string();
    let member = gateway
        .rooms
        .lock()
        .get(room)
        .is_some_and(|state| state.members.contains_key(&user));
    if !member {
        return Err(StanzaFailure::Forbidden(
            "join the room to read its archive".into(),
        ));
    }
    gateway.access.take(&user)?;
    let query = muc::archive_query(payload).map_err(StanzaFailure::BadRequest)?;
    let Some(room_jid) = room_jid(gateway, room) else {
        return Err(StanzaFailure::ItemNotFound("no such room".into()));
    };
    let time = |stamp: &Option<String>, name: &str| {
        stamp
            .as_deref()
            .map(|stamp| {
                humantime::parse_rfc3339_weak(stamp)
                    .map(millis)
                    .map_err(|_| {
                        StanzaFailure::BadRequest(format!("{name}: '{stamp}' is not a time"))
                    })
            })
            .transpose()
    };
    let tables = gateway.store.rooms();
    let id_of = async |stanza_id: &Option<String>| match stanza_id {
        None => Ok(None),
        Some(stanza_id) => tables
            .archive_id(&gateway.domain, room.as_str(), stanza_id)
            .await
            .map_err(|error| gateway.storage_failed(error))?
            .map(Some)
            .ok_or_else(|| {
                StanzaFailure::ItemNotFound(format!("no message '{stanza_id}' in the archive"))
            }),
    };
    let nick = match &query.with {
        None => None,
        Some(with) => match with.parse::<Jid>() {
            Ok(jid) if jid.to_bare() == room_jid => jid.resource().map(|nick| nick.to_string()),
            _ => {
                return Err(StanzaFailure::BadRequest(
                    "'with' must be an occupant of this room (room@domain/nick)".into(),
                ));
            }
        },
    };
    let page = crate::store::rooms::PageQuery {
        after: id_of(&query.after).await?,
        before: id_of(&query.before).await?,
        last: query.last,
        start: time(&query.start, "start")?,
        end: time(&query.end, "end")?,
        nick,
        max: query.max.unwrap_or(DEFAULT_PAGE).min(LARGEST_PAGE),
    };
    let (mut messages, mut complete) = tables
        .page(&gateway.domain, room.as_str(), &page)
        .await
        .map_err(|error| gateway.storage_failed(error))?;
    // Paging back through the whole archive and short of a page: the network may have
    // older lines (IRC's CHATHISTORY), which join the archive below what it had.
    let back_to_the_start = (page.before.is_some() || page.last)
        && page.after.is_none()
        && page.start.is_none()
        && page.end.is_none()
        && page.nick.is_none();
    let short = page.max as usize - messages.len();
    if back_to_the_start && complete && short > 0 && fetch_older(gateway, room, &user, short).await
    {
        (messages, complete) = tables
            .page(&gateway.domain, room.as_str(), &page)
            .await
            .map_err(|error| gateway.storage_failed(error))?;
        // A full page: the network may have more still, so the client may ask again.
        complete = complete && messages.len() < page.max as usize;
    }
    let to = from.to_string();
    let room_name = room_jid.to_string();
    for message in &messages {
        let result = as_room_message(gateway, room, &room_jid, message, |message| {
            Some(muc::archive_result(
                &to,
                &room_name,
                query.query_id.as_deref(),
                message,
            ))
        });
        if let Some(result) = result {
            gateway.send(result).await;
        }
    }
    Ok(muc::archive_fin(
        complete,
        messages.first().map(|message| message.stanza_id.as_str()),
        messages.last().map(|message| message.stanza_id.as_str()),
    ))
}

/// The most lines one MAM query asks the network for.
const FETCHED_AT_ONCE: usize = 100;

/// Asks the network for up to `wanted` lines of `room` older than its archive's oldest, on
/// `user`'s link, and archives those it gives below it (within the archive's retention,
/// each with its time). Whether any was new; a network with none is not asked again.
async fn fetch_older(gateway: &Gateway, room: &RoomId, user: &str, wanted: usize) -> bool {
    let exhausted = gateway
        .rooms
        .lock()
        .get(room)
        .is_none_or(|state| state.history_exhausted);
    let Some(room_jid) = room_jid(gateway, room).filter(|_| !exhausted) else {
        return false;
    };
    let tables = gateway.store.rooms();
    let first = crate::store::rooms::PageQuery {
        max: 1,
        ..Default::default()
    };
    let oldest = match tables.page(&gateway.domain, room.as_str(), &first).await {
        Ok((messages, _)) => messages.into_iter().next(),
        Err(error) => {
            tracing::error!(%error, "cannot read a room's archive");
            return false;
        }
    };
    let before = oldest.as_ref().and_then(|oldest| {
        let at =
            SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(oldest.said_at).ok()?);
        Some((MessageId::new(oldest.foreign_id.clone()), at))
    });
    let request = HistoryRequest {
        user: UserJid::new(user),
        room: room.clone(),
        before,
        limit: u32::try_from(wanted.min(FETCHED_AT_ONCE)).unwrap_or(1),
    };
    let lines = match gateway
        .call(
            "reading a room's history",
            gateway.bridge.room_history(request),
        )
        .await
    {
        Ok(Ok(lines)) => lines,
        Ok(Err(error)) => {
            tracing::info!(%room, %error, "the network gave no older history");
            return false;
        }
        Err(failure) => {
            tracing::warn!(%room, %failure, "reading a room's older history failed");
            return false;
        }
    };
    let keep = i64::try_from(gateway.rooms_config.keep_history.as_millis()).unwrap_or(i64::MAX);
    let kept_since = now_millis().saturating_sub(keep);
    let newest = oldest.as_ref().map_or(i64::MAX, |oldest| oldest.said_at);
    let rows: Vec<NewRoomMessage> = lines
        .into_iter()
        .filter_map(|line| {
            let said_at = millis(line.timestamp?);
            let ids = [
                line.foreign_id.as_str(),
                line.sender.as_str(),
                line.nick.as_str(),
            ];
            let fits = ids
                .iter()
                .all(|id| id.len() <= talk::MAX_ID && !id.contains('\0'))
                && occupant_jid(&room_jid, &line.nick).is_some();
            if !fits || said_at > newest || said_at < kept_since {
                return None;
            }
            let mut text = line.text;
            crate::xmpp::xml_safe::clean(&mut text);
            Some(NewRoomMessage {
                foreign_id: line.foreign_id.to_string(),
                stanza_id: uuid::Uuid::now_v7().to_string(),
                nick: line.nick,
                sender: line.sender.to_string(),
                text,
                origin_id: None,
                poster: None,
                said_at,
                replaces: None,
                post_id: None,
                // A network's older lines are archived as they come, parents maybe after
                // their replies: shown as plain messages.
                reply_to: None,
            })
        })
        .collect();
    let added = match tables.backfill(&gateway.domain, room.as_str(), &rows).await {
        Ok(added) => added,
        Err(error) => {
            tracing::error!(%error, "cannot archive a room's older history");
            return false;
        }
    };
    if added == 0
        && let Some(state) = gateway.rooms.lock().get_mut(room)
    {
        state.history_exhausted = true;
    }
    added > 0
}

/// The gateway's disco#items: the rooms the network lists for `user`, sorted by address
/// and paged with XEP-0059 (`after` a room's JID, 100 per page unless asked, at most 500).
pub(in crate::gateway) async fn list(
    gateway: &Gateway,
    user: &str,
    payload: &Element,
) -> Result<Element, StanzaFailure> {
    const DEFAULT_PAGE: usize = 100;
    const LARGEST_PAGE: usize = 500;
    let query = xmpp_parsers::disco::DiscoItemsQuery::try_from(payload.clone())
        .map_err(|error| StanzaFailure::BadRequest(error.to_string()))?;
    let asker = UserJid::new(user);
    let listed = gateway
        .call("listing the rooms", gateway.bridge.list_rooms(&asker))
        .await?
        .map_err(action_failure)?;
    let mut rooms: Vec<(Jid, Option<String>)> = listed
        .into_iter()
        .filter_map(|listing| {
            let jid = Jid::from(room_jid(gateway, &listing.room)?);
            let name = match (listing.name, listing.occupants) {
                (Some(name), Some(count)) => format!("{} ({count}): {name}", listing.room),
                (None, Some(count)) => format!("{} ({count})", listing.room),
                (Some(name), None) => format!("{}: {name}", listing.room),
                (None, None) => listing.room.to_string(),
            };
            Some((jid, Some(name)))
        })
        .collect();
    rooms.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    rooms.dedup_by(|a, b| a.0 == b.0);
    let (after, index, max) = query
        .rsm
        .map_or((None, None, None), |set| (set.after, set.index, set.max));
    let start = match &after {
        None => index.unwrap_or(0),
        Some(after) => {
            rooms
                .iter()
                .position(|(jid, _)| jid.as_str() == after)
                .ok_or_else(|| {
                    StanzaFailure::ItemNotFound(format!("no room {after} in the list"))
                })?
                + 1
        }
    };
    let max = max.unwrap_or(DEFAULT_PAGE).min(LARGEST_PAGE);
    let page = rooms.get(start..).unwrap_or_default();
    let page = &page[..page.len().min(max)];
    Ok(muc::room_list(page, start, rooms.len()))
}

/// The disco#info of a room.
pub(in crate::gateway) fn info(gateway: &Gateway, room: &RoomId) -> Element {
    let (subject, occupants) = {
        let rooms = gateway.rooms.lock();
        rooms.get(room).map_or((String::new(), 0), |state| {
            (
                state
                    .subject
                    .as_ref()
                    .map(|subject| subject.text.clone())
                    .unwrap_or_default(),
                state.occupants.len(),
            )
        })
    };
    let name = gateway.bridge.format_address(room);
    let capabilities = gateway.info().capabilities;
    let mut features = vec![
        "http://jabber.org/protocol/disco#info",
        muc::NS_MUC,
        "muc_open",
        "muc_public",
        "muc_semianonymous",
        "muc_persistent",
        muc::NS_OCCUPANT_ID,
        muc::NS_SID,
        muc::NS_MAM,
        "urn:xmpp:ping",
        crate::xmpp::adhoc::NS,
    ];
    for (carried, feature) in [
        (capabilities.corrections, muc::NS_CORRECT),
        (capabilities.retractions, muc::NS_RETRACT),
        (capabilities.reactions, muc::NS_REACTIONS),
        (capabilities.replies, muc::NS_REPLY),
    ] {
        if carried {
            features.push(feature);
        }
    }
    muc::room_info(&name, &subject, occupants, &features)
}

/// The gateway's upkeep until shutdown: the rooms' cursors written every second (and once
/// more at shutdown), the `spend_limit` gauge read back every minute (so that it falls to 0
/// at UTC midnight), archived messages older than `keep_history` forgotten hourly.
pub async fn maintain(gateway: Arc<Gateway>, shutdown: jabbridge_sdk::Shutdown) {
    const CURSORS: Duration = Duration::from_secs(1);
    const SWEEP: u32 = 3600;
    const SPEND: u32 = 60;
    let mut ticks = 0;
    loop {
        tokio::select! {
            () = tokio::time::sleep(CURSORS) => {}
            () = shutdown.clone().wait() => {
                flush_cursors(&gateway).await;
                return;
            }
        }
        flush_cursors(&gateway).await;
        ticks += 1;
        if ticks % SPEND != 0 {
            continue;
        }
        refresh_spend(&gateway).await;
        if ticks % SWEEP != 0 {
            continue;
        }
        let keep = i64::try_from(gateway.rooms_config.keep_history.as_millis()).unwrap_or(i64::MAX);
        let before = now_millis().saturating_sub(keep);
        match gateway
            .store
            .rooms()
            .forget_before(&gateway.domain, before)
            .await
        {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "forgot old room messages"),
            Err(error) => tracing::warn!(%error, "cannot delete old room messages"),
        }
    }
}

/// Sets the `spend_limit` gauge from the database: it falls back to 0 at UTC midnight even
/// when nothing is sent, and follows what other instances sent.
async fn refresh_spend(gateway: &Gateway) {
    let Some(cap) = gateway.spend.and_then(|limit| limit.per_day) else {
        return;
    };
    let day = now_millis() / 86_400_000;
    match gateway.store.spent(&gateway.domain, day).await {
        Ok(today) => crate::metrics::spend_used(&gateway.domain, today, cap),
        Err(error) => tracing::debug!(%error, "cannot read today's spend"),
    }
}
