//! The inbox lane's work: writing one bridge's message (a chat message with its fixed id, and
//! a XEP-0203 delay when late) or one notice to the component link once it is up, and
//! recording the outcome.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jabbridge_sdk::Attachment;
use tracing::Instrument;
use xmpp_parsers::{
    date::DateTime,
    jid::{BareJid, Jid},
    minidom::Element,
};

use super::commit::Done;
use super::{Delivery, InboxEntry, Inboxed};
use crate::store::{Queue, Write, now_millis};
use crate::xmpp::session::NotWritten;
use crate::xmpp::stanza::{self, Carried};

/// A late delivery (this long after the message was accepted) carries a XEP-0203 delay.
const LATE: Duration = Duration::from_secs(5);

/// A queued bridge's message in its conversation's lane.
#[derive(Debug)]
pub struct Item {
    row: i64,
    entry: Inboxed,
}

impl Item {
    pub(super) fn new(row: i64, entry: Inboxed) -> Self {
        Self { row, entry }
    }
}

/// Writes one bridge's message or notice to the link once it is up (or finds it can never be
/// written); the lane then moves on, and the row is marked delivered once the server
/// acknowledged the stanza.
pub async fn deliver(delivery: &Arc<Delivery>, item: Item) {
    let finish = |write: Write| delivery.committer.submit(write, None);
    let stanza = match &item.entry {
        Inboxed::Message(entry) => message(&delivery.domain, entry),
        Inboxed::Notice { notice } => notice.stanza(),
    };
    let stanza = match stanza {
        Ok(stanza) => stanza,
        Err(reason) => {
            tracing::error!(%reason, "an inbox row cannot become a stanza; dropping it");
            finish(Write::Fail {
                queue: Queue::Inbox,
                id: item.row,
                reason,
            })
            .await;
            return;
        }
    };
    // Known before it is written: the user's server may send it back at once.
    let message_id = match &item.entry {
        Inboxed::Message(entry) => {
            let unacked = (entry.user.clone(), item.row);
            if let Ok(mut written) = delivery.unacked.lock() {
                written.insert(entry.id.clone(), unacked);
            }
            Some(entry.id.clone())
        }
        Inboxed::Notice { .. } => None,
    };
    let forget = || forget_unacked(delivery, message_id.as_deref());
    let acked = loop {
        tokio::select! {
            () = delivery.link.state.wait_connected() => {}
            () = delivery.shutdown.clone().wait() => {
                forget();
                return;
            }
        }
        let written = tokio::time::timeout(
            delivery.config.lease / 2,
            delivery.link.send_and_confirm(stanza.clone()),
        )
        .await;
        match written {
            Ok(Ok(acked)) => break acked,
            Ok(Err(NotWritten::Unwritable(unwritable))) => {
                // Sending it again would fail the same way and hold up the lane.
                forget();
                finish(Write::Fail {
                    queue: Queue::Inbox,
                    id: item.row,
                    reason: unwritable.to_string(),
                })
                .await;
                return;
            }
            Ok(Err(NotWritten::LinkStopped)) | Err(_) => {
                // The link went down before the stanza was written: try again once up.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let delivery = delivery.clone();
    let span = delivery.span.clone();
    tokio::spawn(
        async move {
            // The link writes it again after a reconnection until the server has it; if
            // the link stops for good first (shutdown), the row stays queued and goes out
            // again at the next start.
            if !acked.wait().await {
                forget_unacked(&delivery, message_id.as_deref());
                return;
            }
            let complete = Write::Complete {
                queue: Queue::Inbox,
                id: item.row,
            };
            match &item.entry {
                Inboxed::Message(entry) => {
                    let mapping = Write::MapId {
                        bridge: delivery.domain.clone(),
                        jid: entry.user.clone(),
                        xmpp_id: entry.id.clone(),
                        foreign_id: entry.foreign_id.clone(),
                        pending_report: None,
                    };
                    // Forgotten once the mapping is stored, where a later bounce finds the
                    // row.
                    let stored = delivery.clone();
                    let done: Done =
                        Box::new(move |_| forget_unacked(&stored, message_id.as_deref()));
                    delivery
                        .committer
                        .submit_together(complete, mapping, Some(done))
                        .await;
                }
                Inboxed::Notice { .. } => delivery.committer.submit(complete, None).await,
            }
        }
        .instrument(span),
    );
}

/// Forgets a message tracked for bounces until its id mapping was stored.
fn forget_unacked(delivery: &Delivery, id: Option<&str>) {
    if let (Some(id), Ok(mut written)) = (id, delivery.unacked.lock()) {
        written.remove(id);
    }
}

/// The text with every attachment URL it does not already contain appended, one per line,
/// so that clients without XEP-0066 still show them (and clients with it, which show a body
/// that is exactly the URL as the file, do too).
pub fn with_fallback(text: String, attachments: &[Attachment]) -> String {
    let missing: Vec<&str> = attachments
        .iter()
        .map(|attachment| attachment.url.as_str())
        .filter(|url| !text.contains(url))
        .collect();
    if missing.is_empty() {
        return text;
    }
    let mut lines: Vec<&str> = Vec::new();
    if !text.trim().is_empty() {
        lines.push(&text);
    }
    lines.extend(missing);
    lines.join("\n")
}

/// The chat message an inbox entry becomes, with a XEP-0203 delay when it is late.
fn message(domain: &str, entry: &InboxEntry) -> Result<Element, String> {
    let to: BareJid = entry.user.parse().map_err(|error| format!("{error}"))?;
    let from: Jid = entry.from.parse().map_err(|error| format!("{error}"))?;
    let now = now_millis();
    let late = i64::try_from(LATE.as_millis()).unwrap_or(i64::MAX);
    let sent = entry.sent_at.unwrap_or(entry.accepted_at);
    let is_late = now.saturating_sub(entry.accepted_at) > late || now.saturating_sub(sent) > late;
    let delay = if is_late {
        stamp(sent).map(|stamp| (domain.parse().ok(), stamp))
    } else {
        None
    };
    Ok(stanza::carried(Carried {
        id: &entry.id,
        from,
        to,
        text: &entry.text,
        attachments: &entry.attachments,
        delay,
    }))
}

fn stamp(unix_millis: i64) -> Option<DateTime> {
    let time = UNIX_EPOCH + Duration::from_millis(u64::try_from(unix_millis).ok()?);
    let time = time.min(SystemTime::now());
    humantime::format_rfc3339_millis(time)
        .to_string()
        .parse()
        .ok()
}

/// Acts on an error that `user`'s server sent back for the stanza `id`: if it is a message
/// from the inbox, its row is marked failed with `reason` (the row stays, and the admin's
/// `stats` shows it). Returns whether it was one.
pub async fn bounced(delivery: &Delivery, user: &str, id: &str, reason: &str) -> bool {
    let before_ack = delivery
        .unacked
        .lock()
        .ok()
        .and_then(|written| written.get(id).cloned())
        .filter(|(to, _)| to == user)
        .map(|(_, row)| row);
    let row = match before_ack {
        Some(row) => Some(row),
        None => match delivery.store.inbox_row(&delivery.domain, user, id).await {
            Ok(row) => row,
            Err(error) => {
                tracing::warn!(%error, "cannot look up a bounced message");
                None
            }
        },
    };
    let Some(row) = row else { return false };
    let bounce = Write::Bounce {
        id: row,
        reason: format!("bounced: {reason}"),
    };
    delivery.committer.submit(bounce, None).await;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(accepted_ago: i64, sent_ago: Option<i64>) -> InboxEntry {
        let now = now_millis();
        InboxEntry {
            id: "m1".into(),
            foreign_id: "f1".into(),
            user: "alice@example.org".into(),
            from: "bob@gw.example".into(),
            text: "hi".into(),
            attachments: Vec::new(),
            sent_at: sent_ago.map(|ago| now - ago),
            accepted_at: now - accepted_ago,
        }
    }

    #[test]
    fn a_prompt_delivery_has_no_delay_and_carries_its_ids() {
        let element = message("gw.example", &entry(0, None)).unwrap();
        assert_eq!(element.attr("id"), Some("m1"));
        assert!(element.get_child("origin-id", "urn:xmpp:sid:0").is_some());
        assert!(element.get_child("delay", "urn:xmpp:delay").is_none());
    }

    #[test]
    fn a_late_delivery_carries_when_it_was_sent() {
        for (accepted_ago, sent_ago) in [(60_000, None), (0, Some(3_600_000))] {
            let element = message("gw.example", &entry(accepted_ago, sent_ago)).unwrap();
            let delay = element.get_child("delay", "urn:xmpp:delay").unwrap();
            assert_eq!(delay.attr("from"), Some("gw.example"));
            let stamp: DateTime = delay.attr("stamp").unwrap().parse().unwrap();
            let age = now_millis() / 1000 - stamp.0.timestamp();
            let expected = sent_ago.unwrap_or(accepted_ago) / 1000;
            assert!((age - expected).abs() <= 2, "{age} vs {expected}");
        }
    }

    #[test]
    fn attachments_become_oob_with_the_url_in_the_text() {
        let picture = Attachment {
            url: "https://media.example/cat.jpg".into(),
            description: Some("a cat".into()),
        };
        assert_eq!(
            with_fallback("look".into(), std::slice::from_ref(&picture)),
            "look\nhttps://media.example/cat.jpg"
        );
        assert_eq!(
            with_fallback(String::new(), std::slice::from_ref(&picture)),
            "https://media.example/cat.jpg"
        );
        let text = "see https://media.example/cat.jpg".to_owned();
        assert_eq!(
            with_fallback(text.clone(), std::slice::from_ref(&picture)),
            text
        );
        let mut with_picture = entry(0, None);
        with_picture.attachments = vec![picture];
        let element = message("gw.example", &with_picture).unwrap();
        let oob = element.get_child("x", "jabber:x:oob").unwrap();
        assert_eq!(
            oob.get_child("url", "jabber:x:oob").map(|url| url.text()),
            Some("https://media.example/cat.jpg".into())
        );
    }
}
