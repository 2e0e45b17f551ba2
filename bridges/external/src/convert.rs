//! Between the SDK's types and the wire's: forms, occupants, room events, timestamps, and
//! every error a child can answer turned into the SDK error the core expects.

use std::time::SystemTime;

use jabbridge_sdk::{
    Affiliation, Attachment, ChatState, CommandError, CoreError, Field, FieldKind, ForeignId, Form,
    JoinError, MessageId, Occupant, RegistrationError, Role, RoomActionError, RoomEvent, RoomId,
    RoomMessage, SendError, Subject, UserJid,
};

use crate::child::CallError;
use crate::protocol::{
    AttachmentWire, FieldWire, FormWire, OccupantWire, RoomEventWire, RpcError, SubjectWire,
    TypingState, VersionParams,
};

/// RFC 3339 with `Z` and milliseconds.
pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// Reads an RFC 3339 timestamp leniently; `None` when it does not read.
pub fn parse_timestamp(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text.trim_end_matches('Z'))
        .or_else(|_| humantime::parse_rfc3339(text))
        .ok()
}

/// A wire form as the SDK's.
pub fn form(wire: &FormWire) -> Form {
    Form {
        title: wire.title.clone(),
        instructions: wire.instructions.clone(),
        fields: wire.fields.iter().map(field).collect(),
    }
}

fn field(wire: &FieldWire) -> Field {
    Field {
        var: wire.var.clone(),
        label: wire.label.clone(),
        kind: match wire.kind.as_str() {
            "text-private" => FieldKind::Secret,
            "text-multi" => FieldKind::Lines,
            "boolean" => FieldKind::Boolean,
            "list-single" => FieldKind::Choice(wire.options.clone()),
            _ => FieldKind::Text,
        },
        required: wire.required,
    }
}

/// Attachments to the wire.
pub fn attachments_out(attachments: &[Attachment]) -> Vec<AttachmentWire> {
    attachments
        .iter()
        .map(|attachment| AttachmentWire {
            url: attachment.url.clone(),
            description: attachment.description.clone(),
        })
        .collect()
}

/// Attachments from the wire.
pub fn attachments_in(attachments: Vec<AttachmentWire>) -> Vec<Attachment> {
    attachments
        .into_iter()
        .map(|attachment| Attachment {
            url: attachment.url,
            description: attachment.description,
        })
        .collect()
}

/// An occupant from the wire; unknown roles and affiliations are the defaults.
pub fn occupant(wire: OccupantWire) -> Occupant {
    let role = match wire.role.as_deref() {
        Some("moderator") => Role::Moderator,
        Some("visitor") => Role::Visitor,
        _ => Role::Participant,
    };
    let affiliation = match wire.affiliation.as_deref() {
        Some("owner") => Affiliation::Owner,
        Some("admin") => Affiliation::Admin,
        Some("member") => Affiliation::Member,
        _ => Affiliation::None,
    };
    Occupant {
        id: ForeignId::new(wire.id.unwrap_or_else(|| wire.nick.clone())),
        nick: wire.nick,
        role,
        affiliation,
        away: wire.away,
        host: wire.host,
        realname: wire.realname,
    }
}

/// A role's wire name.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Moderator => "moderator",
        Role::Participant => "participant",
        Role::Visitor => "visitor",
    }
}

/// A subject from the wire.
pub fn subject(wire: SubjectWire) -> Subject {
    Subject {
        text: wire.text,
        by: wire.by,
    }
}

/// A room event from the wire.
pub fn room_event(wire: RoomEventWire) -> RoomEvent {
    match wire {
        RoomEventWire::Message {
            event_id,
            nick,
            sender,
            text,
            ts,
            echo_of,
            replaces,
            reply_to,
        } => RoomEvent::Message(RoomMessage {
            foreign_id: MessageId::new(event_id),
            sender: ForeignId::new(sender.unwrap_or_else(|| nick.clone())),
            nick,
            text,
            timestamp: ts.as_deref().and_then(parse_timestamp),
            echo_of: echo_of.map(MessageId::new),
            replaces: replaces.map(MessageId::new),
            reply_to: reply_to.map(MessageId::new),
        }),
        RoomEventWire::Occupant { occupant: wire } => RoomEvent::Occupant(occupant(wire)),
        RoomEventWire::Left { nick, reason } => RoomEvent::Left { nick, reason },
        RoomEventWire::Renamed { old, new } => RoomEvent::Renamed { old, new },
        RoomEventWire::Kicked { nick, by, reason } => RoomEvent::Kicked { nick, by, reason },
        RoomEventWire::Banned { nick, by, reason } => RoomEvent::Banned { nick, by, reason },
        RoomEventWire::Subject { text, by } => RoomEvent::Subject(Subject { text, by }),
        RoomEventWire::Retracted { target } => RoomEvent::Retracted {
            foreign_id: MessageId::new(target),
        },
        RoomEventWire::Reacted {
            target,
            nick,
            sender,
            emojis,
        } => RoomEvent::Reacted(jabbridge_sdk::Reaction {
            to: MessageId::new(target),
            sender: ForeignId::new(sender.unwrap_or_else(|| nick.clone())),
            nick,
            emojis,
        }),
        RoomEventWire::Notice { user, text } => RoomEvent::Notice {
            user: user.map(UserJid::new),
            text,
        },
        RoomEventWire::Invited { user, by } => RoomEvent::Invited {
            user: UserJid::new(user),
            by: ForeignId::new(by),
        },
        RoomEventWire::Typing { nick, state } => RoomEvent::Typing {
            nick,
            state: chat_state(state),
        },
    }
}

/// The params of a question for `contact` (with `room`: the occupant of that nick) asked
/// for `user` (`contact/version`, `contact/ping`).
pub fn asked(user: &UserJid, contact: &ForeignId, room: Option<&RoomId>) -> VersionParams {
    VersionParams {
        user: user.to_string(),
        contact: contact.as_str().to_owned(),
        room: room.map(|room| room.as_str().to_owned()),
    }
}

/// A typing state as the SDK's.
pub fn chat_state(state: TypingState) -> ChatState {
    match state {
        TypingState::Composing => ChatState::Composing,
        TypingState::Paused => ChatState::Paused,
        TypingState::Active => ChatState::Active,
        TypingState::Inactive => ChatState::Inactive,
        TypingState::Gone => ChatState::Gone,
    }
}

/// The SDK's chat state on the wire.
pub fn typing_state(state: ChatState) -> TypingState {
    match state {
        ChatState::Composing => TypingState::Composing,
        ChatState::Paused => TypingState::Paused,
        ChatState::Active => TypingState::Active,
        ChatState::Inactive => TypingState::Inactive,
        ChatState::Gone => TypingState::Gone,
    }
}

/// The core's refusal as the child reads it.
pub fn core_error(error: CoreError) -> RpcError {
    match error {
        CoreError::Refused(reason) => RpcError::typed(406, "not-acceptable", "modify", reason),
        CoreError::Unavailable(reason) => retry_later(&reason),
        CoreError::ShuttingDown => retry_later("the core is shutting down"),
    }
}

fn retry_later(reason: &str) -> RpcError {
    let mut error = RpcError::typed(503, "service-unavailable", "wait", reason);
    if let Some(data) = &mut error.data {
        data.retry_after_ms = Some(5000);
    }
    error
}

/// A failed `message/send` or `room/send`.
pub fn send_error(error: CallError) -> SendError {
    match error {
        CallError::Refused(error) if !error.transient() => SendError::Permanent {
            reason: error.text().to_owned(),
        },
        CallError::Refused(error) => SendError::Transient {
            // A bridge's wish, within reason: an hour at most.
            retry_after: error
                .retry_after()
                .map(|wait| wait.min(std::time::Duration::from_secs(3600))),
            reason: error.text().to_owned(),
        },
        CallError::Malformed { .. } => SendError::Permanent {
            reason: error.to_string(),
        },
        CallError::Down(_) | CallError::TimedOut(_) => SendError::Transient {
            reason: error.to_string(),
            retry_after: None,
        },
    }
}

/// A failed `room/join`.
pub fn join_error(error: CallError) -> JoinError {
    let CallError::Refused(error) = error else {
        return JoinError::Unavailable(error.to_string());
    };
    let text = error.text().to_owned();
    match error.condition() {
        "not-authorized" => JoinError::PasswordRequired(text),
        "forbidden" => JoinError::Banned(text),
        "conflict" => JoinError::NickInUse(text),
        "registration-required" => JoinError::MembersOnly(text),
        "item-not-found" => JoinError::NoSuchRoom(text),
        _ => JoinError::Unavailable(text),
    }
}

/// A failed room action (moderation, nick, subject, retraction, reaction, listing).
pub fn room_action_error(error: CallError) -> RoomActionError {
    let CallError::Refused(error) = error else {
        return RoomActionError::Unavailable(error.to_string());
    };
    let text = error.text().to_owned();
    match error.condition() {
        "forbidden" | "not-allowed" | "not-authorized" | "conflict" => {
            RoomActionError::Forbidden(text)
        }
        "item-not-found" => RoomActionError::NoSuchOccupant(text),
        "feature-not-implemented" => RoomActionError::NotSupported(text),
        _ => RoomActionError::Unavailable(text),
    }
}

/// A failed `register/submit`.
pub fn registration_error(error: CallError) -> RegistrationError {
    match error {
        CallError::Refused(error) if !error.transient() && error.data.is_some() => {
            RegistrationError::Rejected(error.text().to_owned())
        }
        other => RegistrationError::Unavailable(other.to_string()),
    }
}

/// A failed `command/run`.
pub fn command_error(error: CallError) -> CommandError {
    match error {
        CallError::Refused(error)
            if matches!(error.condition(), "not-acceptable" | "bad-request") =>
        {
            CommandError::Rejected(error.text().to_owned())
        }
        CallError::Refused(error) => CommandError::Failed(error.text().to_owned()),
        other => CommandError::Failed(other.to_string()),
    }
}
