//! Protocol v1 on the wire: the JSON-RPC 2.0 frames, the method names, and one serde type
//! for the params and the result of every method. Nothing here does I/O; `docs/bridge-protocol/v1.json`
//! is the same catalogue as a JSON Schema, and a test holds the two together.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The protocol's name in `initialize`.
pub const NAME: &str = "jabbridge-bridge";
/// Every major version this core speaks, newest first.
pub const VERSIONS: &[u32] = &[1];
/// The revision of v1 this core implements (informational: logs, docs, the kit).
pub const REVISION: &str = "1.0";

/// The methods the core calls on a bridge (C→B). `N` marks notifications.
pub mod to_bridge {
    /// Handshake: the first request, nothing else before its answer.
    pub const INITIALIZE: &str = "initialize";
    /// N: the handshake is over; the bridge may send requests from now on.
    pub const INITIALIZED: &str = "initialized";
    /// Health check, both ways.
    pub const PING: &str = "ping";
    /// Stop taking work and flush; only `exit` follows.
    pub const SHUTDOWN: &str = "shutdown";
    /// N: exit now (status 0 after `shutdown`, else 1).
    pub const EXIT: &str = "exit";
    /// N: give up on a request (the request is answered anyway).
    pub const CANCEL: &str = "$/cancel";
    /// A user submitted the registration form.
    pub const REGISTER_SUBMIT: &str = "register/submit";
    /// A registered user's session starts (start-up, registration, take-over).
    pub const SESSION_START: &str = "session/start";
    /// A user's session ends.
    pub const SESSION_STOP: &str = "session/stop";
    /// N: a registered user came online or went offline.
    pub const PRESENCE_USER: &str = "presence/user";
    /// A user wants to add a contact.
    pub const CONTACT_SUBSCRIBE: &str = "contact/subscribe";
    /// What software a contact (or a room's occupant) uses (-32601: the bridge cannot ask).
    pub const CONTACT_VERSION: &str = "contact/version";
    /// Whether a contact (or a room's occupant) answers now (-32601: the core answers for
    /// the network).
    pub const CONTACT_PING: &str = "contact/ping";
    /// N: a user's typing to a contact (and, to the core, a contact's typing to a user).
    pub const CHAT_TYPING: &str = "chat/typing";
    /// A user's message to a contact (or privately to a room occupant).
    pub const MESSAGE_SEND: &str = "message/send";
    /// A user joins a room.
    pub const ROOM_JOIN: &str = "room/join";
    /// A user leaves a room.
    pub const ROOM_LEAVE: &str = "room/leave";
    /// A joined user's presence in a room changed: away (with their text) or back (N).
    pub const ROOM_PRESENCE: &str = "room/presence";
    /// N: a joined user's typing in a room.
    pub const ROOM_TYPING: &str = "room/typing";
    /// A room's lines said before the core's oldest, for a MAM query (-32601: none).
    pub const ROOM_HISTORY: &str = "room/history";
    /// A user posts in a room.
    pub const ROOM_SEND: &str = "room/send";
    /// The rooms the network lists for a user.
    pub const ROOMS_LIST: &str = "rooms/list";
    /// Kick, ban, or change an occupant's role.
    pub const ROOM_MODERATE: &str = "room/moderate";
    /// A user in a room invites someone on the network to it (-32601: the bridge cannot).
    pub const ROOM_INVITE: &str = "room/invite";
    /// Change the user's nick in a room.
    pub const ROOM_NICK: &str = "room/nick";
    /// Change a room's subject.
    pub const ROOM_SUBJECT: &str = "room/subject";
    /// Retract one of the user's room messages.
    pub const ROOM_RETRACT: &str = "room/retract";
    /// Set the user's reactions to a room message.
    pub const ROOM_REACT: &str = "room/react";
    /// Run one of the commands the bridge declared.
    pub const COMMAND_RUN: &str = "command/run";
    /// What a declared command's form shows filled in (commands declared with `current`).
    pub const COMMAND_CURRENT: &str = "command/current";
    /// An HTTP request to `/bridges/{domain}/…`, forwarded.
    pub const HTTP_REQUEST: &str = "http/request";
    /// Check the bridge's own setup (`jabbridge doctor`).
    pub const SETUP_CHECK: &str = "setup/check";

    /// Every method above.
    pub const ALL: &[&str] = &[
        INITIALIZE,
        INITIALIZED,
        PING,
        SHUTDOWN,
        EXIT,
        CANCEL,
        REGISTER_SUBMIT,
        SESSION_START,
        SESSION_STOP,
        PRESENCE_USER,
        CONTACT_SUBSCRIBE,
        CONTACT_VERSION,
        CONTACT_PING,
        CHAT_TYPING,
        MESSAGE_SEND,
        ROOM_JOIN,
        ROOM_LEAVE,
        ROOM_PRESENCE,
        ROOM_TYPING,
        ROOM_HISTORY,
        ROOM_SEND,
        ROOMS_LIST,
        ROOM_MODERATE,
        ROOM_INVITE,
        ROOM_NICK,
        ROOM_SUBJECT,
        ROOM_RETRACT,
        ROOM_REACT,
        COMMAND_RUN,
        COMMAND_CURRENT,
        HTTP_REQUEST,
        SETUP_CHECK,
    ];
}

/// The methods a bridge calls on the core (B→C). `N` marks notifications.
pub mod to_core {
    /// A message from a foreign contact to a user.
    pub const MESSAGE_RECEIVED: &str = "message/received";
    /// What the network said about a message sent with `report_follows`.
    pub const DELIVERY_REPORT: &str = "delivery/report";
    /// Something happened in a room.
    pub const ROOM_EVENT: &str = "room/event";
    /// A user's link to the network changed (request or notification).
    pub const SESSION_STATE: &str = "session/state";
    /// Read the bridge's durable state.
    pub const STATE_LOAD: &str = "state/load";
    /// Write the bridge's durable state.
    pub const STATE_SAVE: &str = "state/save";
    /// Who owns a foreign identity.
    pub const OWNER_GET: &str = "owner/get";
    /// Set who owns a foreign identity.
    pub const OWNER_SET: &str = "owner/set";
    /// The identities a user owns.
    pub const IDENTITIES_LIST: &str = "identities/list";
    /// What a user registered with.
    pub const REGISTRATION_GET: &str = "registration/get";
    /// N: a log line.
    pub const LOG: &str = "log";
    /// N: a contact's typing to a user (the same method as the core's to the bridge).
    pub const CHAT_TYPING: &str = super::to_bridge::CHAT_TYPING;

    /// Every method above (and `ping`, which goes both ways).
    pub const ALL: &[&str] = &[
        MESSAGE_RECEIVED,
        DELIVERY_REPORT,
        ROOM_EVENT,
        SESSION_STATE,
        STATE_LOAD,
        STATE_SAVE,
        OWNER_GET,
        OWNER_SET,
        IDENTITIES_LIST,
        REGISTRATION_GET,
        LOG,
        CHAT_TYPING,
    ];
}

/// JSON-RPC's own error codes, and the protocol's.
pub mod codes {
    /// Not JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// JSON, but not a JSON-RPC 2.0 object.
    pub const INVALID_REQUEST: i64 = -32600;
    /// The receiver does not know the method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// The params do not fit the method.
    pub const INVALID_PARAMS: i64 = -32602;
    /// The receiver failed.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// Too many requests in flight: try again after `retry_after_ms`.
    pub const OVERLOADED: i64 = -32000;
    /// A request before the handshake ended.
    pub const NOT_INITIALIZED: i64 = -32002;
    /// The request was cancelled.
    pub const CANCELLED: i64 = -32800;
}

/// One JSON-RPC message as read from a line, sorted into its kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A request: it gets exactly one response with the same `id`.
    Request {
        /// Echoed in the response, whatever JSON value it is.
        id: Value,
        /// The method.
        method: String,
        /// The params (`{}` when absent).
        params: Value,
    },
    /// A notification: no response.
    Notification {
        /// The method.
        method: String,
        /// The params (`{}` when absent).
        params: Value,
    },
    /// A response to a request of ours.
    Response {
        /// The id of our request.
        id: Value,
        /// The result, or the error.
        outcome: Result<Value, RpcError>,
    },
}

/// Why a line is not a JSON-RPC message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not JSON at all.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// JSON, but not a JSON-RPC 2.0 object (a batch, no `jsonrpc: "2.0"`, neither method nor
    /// result). `id` is the request's id when one could be read, to answer it.
    #[error("not a JSON-RPC 2.0 message: {reason}")]
    Invalid {
        /// The id, if the object had one.
        id: Option<Value>,
        /// What is wrong.
        reason: String,
    },
}

impl Frame {
    /// Reads one line (without its line ending).
    pub fn parse(line: &[u8]) -> Result<Self, FrameError> {
        let value: Value =
            serde_json::from_slice(line).map_err(|error| FrameError::NotJson(error.to_string()))?;
        let Value::Object(mut object) = value else {
            return Err(FrameError::Invalid {
                id: None,
                reason: "not an object (batches are not part of the protocol)".into(),
            });
        };
        let id = object.remove("id");
        let invalid = |id: Option<Value>, reason: &str| FrameError::Invalid {
            id,
            reason: reason.into(),
        };
        if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err(invalid(id, "\"jsonrpc\" must be \"2.0\""));
        }
        if let Some(method) = object.remove("method") {
            let Value::String(method) = method else {
                return Err(invalid(id, "\"method\" must be a string"));
            };
            let params = match object.remove("params") {
                None | Some(Value::Null) => Value::Object(serde_json::Map::new()),
                Some(params @ (Value::Object(_) | Value::Array(_))) => params,
                Some(_) => return Err(invalid(id, "\"params\" must be an object")),
            };
            return Ok(match id {
                Some(id) => Self::Request { id, method, params },
                None => Self::Notification { method, params },
            });
        }
        let Some(id) = id else {
            return Err(invalid(None, "neither a method nor an id"));
        };
        match (object.remove("result"), object.remove("error")) {
            (Some(result), None) => Ok(Self::Response {
                id,
                outcome: Ok(result),
            }),
            (None, Some(error)) => match serde_json::from_value::<RpcError>(error) {
                Ok(error) => Ok(Self::Response {
                    id,
                    outcome: Err(error),
                }),
                Err(error) => Err(invalid(Some(id), &format!("bad \"error\": {error}"))),
            },
            _ => Err(invalid(
                Some(id),
                "a response has exactly one of result and error",
            )),
        }
    }

    /// The frame as one line, without the line ending.
    pub fn to_line(&self) -> String {
        let value = match self {
            Self::Request { id, method, params } => {
                serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
            }
            Self::Notification { method, params } => {
                serde_json::json!({"jsonrpc": "2.0", "method": method, "params": params})
            }
            Self::Response {
                id,
                outcome: Ok(result),
            } => {
                serde_json::json!({"jsonrpc": "2.0", "id": id, "result": result})
            }
            Self::Response {
                id,
                outcome: Err(error),
            } => {
                serde_json::json!({"jsonrpc": "2.0", "id": id, "error": error})
            }
        };
        value.to_string()
    }
}

/// A JSON-RPC error object. Application errors carry [`ErrorData`], whose `condition` is
/// authoritative; protocol errors use JSON-RPC's codes ([`codes`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} ({code})")]
pub struct RpcError {
    /// An HTTP-like code (400…504) for application errors; JSON-RPC's codes otherwise.
    pub code: i64,
    /// For logs.
    pub message: String,
    /// The typed error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<ErrorData>>,
}

/// A typed error: an RFC 6120 stanza error condition, its type, and what the user reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorData {
    /// An RFC 6120 §8.3.3 condition, e.g. `item-not-found`.
    pub condition: String,
    /// `cancel`, `modify`, `auth` or `wait`; `wait` (or `retry_after_ms`) means a retry may
    /// cure it.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Shown to the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Try again no sooner than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// The form field at fault, for registration and commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl RpcError {
    /// A protocol-level error with no typed data.
    pub fn protocol(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// An application error: `code` HTTP-like, `condition` RFC 6120, `kind` its type.
    pub fn typed(code: i64, condition: &str, kind: &str, text: impl Into<String>) -> Self {
        let text = text.into();
        Self {
            code,
            message: text.clone(),
            data: Some(Box::new(ErrorData {
                condition: condition.into(),
                kind: Some(kind.into()),
                text: Some(text),
                retry_after_ms: None,
                field: None,
            })),
        }
    }

    /// The stanza condition: the typed one, or what a protocol error amounts to.
    pub fn condition(&self) -> &str {
        match &self.data {
            Some(data) => &data.condition,
            None if self.code == codes::METHOD_NOT_FOUND => "feature-not-implemented",
            None if self.code == codes::OVERLOADED => "resource-constraint",
            None => "internal-server-error",
        }
    }

    /// What the user reads: the typed text, or the message.
    pub fn text(&self) -> &str {
        self.data
            .as_ref()
            .and_then(|data| data.text.as_deref())
            .unwrap_or(&self.message)
    }

    /// Whether a retry may cure it: type `wait`, a `retry_after_ms`, an overloaded or
    /// failing bridge.
    pub fn transient(&self) -> bool {
        match &self.data {
            Some(data) => data.kind.as_deref() == Some("wait") || data.retry_after_ms.is_some(),
            None => matches!(
                self.code,
                codes::OVERLOADED | codes::INTERNAL_ERROR | codes::CANCELLED
            ),
        }
    }

    /// `retry_after_ms`, if given.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.data
            .as_ref()
            .and_then(|data| data.retry_after_ms)
            .map(std::time::Duration::from_millis)
    }
}

/// `{}`: the params or result of a method that carries nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

// ----- lifecycle ---------------------------------------------------------------------------

/// `initialize` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitializeParams {
    /// The protocol and every major version the core speaks.
    pub protocol: ProtocolOffer,
    /// The core: `{name: "jabbridge", version}`.
    pub core: Software,
    /// The bridge's XMPP domain.
    pub domain: String,
    /// The bridge's own settings (`[bridge.settings]`), secrets included: they travel only
    /// here, never in argv or the environment.
    pub config: Value,
    /// Where the outside world reaches the core's HTTP listener, if configured; the bridge's
    /// routes are under `{public_url}/bridges/{domain}/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// Limits both sides keep.
    pub limits: Limits,
    /// `run`, or `check`: validate the config, answer, and expect `shutdown`.
    pub mode: String,
}

/// The versions offered in `initialize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolOffer {
    /// Always `jabbridge-bridge`.
    pub name: String,
    /// Every major version the core speaks.
    pub versions: Vec<u32>,
}

/// A name and a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Software {
    /// The name.
    pub name: String,
    /// The version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// The limits announced in `initialize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// The longest line either side may write, in bytes.
    pub max_message_bytes: usize,
    /// The most unanswered requests either side may have.
    pub max_inflight: usize,
    /// How long the core waits for an answer.
    pub request_timeout_ms: u64,
}

/// `initialize` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitializeResult {
    /// The version the bridge chose.
    pub protocol: ProtocolChoice,
    /// Who the bridge is.
    pub bridge: BridgeDescription,
    /// What it can do beyond one-to-one text.
    #[serde(default)]
    pub capabilities: CapabilitiesWire,
    /// The registration form; absent when users need not register.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<FormWire>,
    /// Which JID localparts are contacts and rooms.
    #[serde(default)]
    pub addressing: Addressing,
    /// Commands the bridge adds to the gateway's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<CommandWire>,
}

/// The version a bridge chose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolChoice {
    /// One of the offered majors.
    pub version: u32,
    /// Informational, e.g. `1.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

/// What the bridge says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeDescription {
    /// Shown by clients, e.g. "Python echo".
    pub name: String,
    /// The bridge's own version, for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The XEP-0030 gateway type: `sms`, `irc`, … (`echo` for the examples).
    pub gateway_type: String,
    /// XEP-0100's prompt when a user adds a contact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<PromptWire>,
    /// Shown above the commands when a user writes to the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub describe: Option<String>,
}

/// XEP-0100's question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptWire {
    /// A sentence saying what to enter.
    pub description: String,
    /// The field's label.
    pub prompt: String,
}

/// The capabilities; an absent key is `false`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilitiesWire {
    /// Group chats: `room/*`.
    #[serde(default)]
    pub rooms: bool,
    /// Message corrections (`replaces`).
    #[serde(default)]
    pub corrections: bool,
    /// `room/retract`.
    #[serde(default)]
    pub retractions: bool,
    /// `room/react`.
    #[serde(default)]
    pub reactions: bool,
    /// Replies in rooms (`reply_to` of `room/send` and of a room message).
    #[serde(default)]
    pub replies: bool,
    /// `chat/typing`.
    #[serde(default)]
    pub chat_states: bool,
    /// `http/request`.
    #[serde(default)]
    pub http: bool,
    /// The network's acceptance (`message/send` answered `sent`) is worth a XEP-0184
    /// receipt: used only where the admin also sets `receipts_on_accept`. Otherwise a
    /// receipt waits for `delivery/report` `delivered`.
    #[serde(default)]
    pub receipts_on_accept: bool,
    /// The registration has several steps (`register/submit` answers `form` or `waiting`):
    /// the core refuses XEP-0077 and chat registration at once, before asking the bridge.
    #[serde(default)]
    pub registration_steps: bool,
}

/// A form: the registration form, or a command's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormWire {
    /// The title.
    pub title: String,
    /// What is asked and why.
    #[serde(default)]
    pub instructions: String,
    /// The fields in order.
    pub fields: Vec<FieldWire>,
}

/// One field of a form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldWire {
    /// Its key in the submitted values.
    pub var: String,
    /// Its label.
    pub label: String,
    /// `text-single` (the default), `text-private`, `text-multi` (lines; the value holds
    /// them separated by `\n`), `boolean` or `list-single`.
    #[serde(default = "text_single", rename = "type")]
    pub kind: String,
    /// Refused without it.
    #[serde(default)]
    pub required: bool,
    /// The choices of a `list-single`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

fn text_single() -> String {
    "text-single".into()
}

/// Which localparts of the bridge's JIDs are contacts and which are rooms: regular
/// expressions matched against the whole (unescaped) localpart. The core checks them itself,
/// with no round trip.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addressing {
    /// A contact's address; absent: any non-empty localpart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_pattern: Option<String>,
    /// A room's address; absent: no rooms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_pattern: Option<String>,
    /// Shown to a user whose address does not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_hint: Option<String>,
}

/// A command the bridge declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandWire {
    /// Its node and chat word.
    pub node: String,
    /// What it does.
    pub name: String,
    /// Only for the bridge's admins.
    #[serde(default)]
    pub admin: bool,
    /// Its form, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form: Option<FormWire>,
    /// Whether the core asks `command/current` what the form shows filled in.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub current: bool,
}

/// `shutdown` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownParams {
    /// `stop` or `restart`.
    pub reason: String,
    /// The bridge is killed this long after the request.
    pub deadline_ms: u64,
}

/// `$/cancel` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelParams {
    /// The request given up on.
    pub id: Value,
}

// ----- users -------------------------------------------------------------------------------

/// `register/submit` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterParams {
    /// The user's bare JID (for logs and keys; never parse it).
    pub user: String,
    /// The submitted values: of the registration form (checked against it by the core)
    /// without `step_id`, of that step's form with it.
    pub values: BTreeMap<String, String>,
    /// The step these values answer (the `step_id` of a `form` or `waiting` step the bridge
    /// returned); absent for the registration form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_id: Option<String>,
}

/// `register/submit` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterResult {
    /// The next step; v1 cores take `done` only.
    pub step: Step,
}

/// A step of a registration: `done`, or one more step, `form` (more fields to fill in) or
/// `waiting` (instructions, e.g. "confirm on your phone, then press Complete"). The user's
/// answer to a `form` or `waiting` step comes back as `register/submit` with its `step_id`.
/// An unknown type aborts the registration with `feature-not-implemented`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// `done`, `form` or `waiting`.
    #[serde(rename = "type")]
    pub kind: String,
    /// With `form` and `waiting`: the bridge's name for the step (carry what you need in
    /// it: the core keeps no state between steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_id: Option<String>,
    /// With `form` and `waiting`: the title shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// With `form` and `waiting`: what the user is asked, or waited for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// With `form`: the fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldWire>,
    /// With `done`: what the core stores for the user and hands back with their sessions,
    /// messages and joins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// `session/start` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionStartParams {
    /// The user.
    pub user: String,
    /// What the user registered with (`null` without registration).
    #[serde(default)]
    pub registration: Option<Value>,
}

/// `session/stop` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStopParams {
    /// The user.
    pub user: String,
    /// `unregistered`, `removed`, `shutdown` or `moved` (open: treat others as `shutdown`).
    pub reason: String,
}

/// `presence/user` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceParams {
    /// The user.
    pub user: String,
    /// Whether they have a resource online now.
    pub online: bool,
}

/// `contact/subscribe` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeParams {
    /// The user.
    pub user: String,
    /// The contact they want to add.
    pub contact: String,
}

/// `contact/subscribe` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeResult {
    /// Whether the contact accepts.
    pub approved: bool,
}

/// `contact/version` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionParams {
    /// The user who asks.
    pub user: String,
    /// Whom: a contact, or, with `room`, an occupant's nick there.
    pub contact: String,
    /// The room the occupant is in, when asked of an occupant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
}

/// `contact/version` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionResult {
    /// What their software says of itself, in words.
    pub software: String,
}

/// A typing notification's state (XEP-0085).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TypingState {
    /// Typing.
    Composing,
    /// Stopped typing.
    Paused,
    /// Paying attention to the conversation.
    Active,
    /// Not paying attention.
    Inactive,
    /// Closed the conversation.
    Gone,
}

/// `chat/typing` params, either way: the user's typing to the contact, or the contact's to
/// the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypingParams {
    /// The user.
    pub user: String,
    /// The contact (with `room`, an occupant's nick there).
    pub contact: String,
    /// Core to bridge: the room whose occupant the user types to privately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// What they do.
    pub state: TypingState,
}

/// `room/typing` params: a joined user's typing in a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomTypingParams {
    /// The user.
    pub user: String,
    /// The room.
    pub room: String,
    /// What they do.
    pub state: TypingState,
}

/// `session/state` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStateParams {
    /// The user.
    pub user: String,
    /// `connected`, `unavailable` or `bad_credentials`.
    pub state: String,
    /// Shown with the gateway's presence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

// ----- messages ----------------------------------------------------------------------------

/// A file linked by URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentWire {
    /// `https://…`.
    pub url: String,
    /// What it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Which earlier message a correction replaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplacesWire {
    /// The XMPP id of the corrected message.
    pub xmpp_id: String,
    /// The id the bridge gave it, when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreign_id: Option<String>,
}

/// `message/send` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendParams {
    /// The core's id for the message, the same on every attempt: the idempotency key.
    pub txn_id: String,
    /// 1 on the first attempt; more on retries (after a timeout or a restart of the bridge).
    pub attempt: u32,
    /// The sender.
    pub user: String,
    /// The contact (or, with `room`, the occupant's nick).
    pub contact: String,
    /// Set for a private message to a room occupant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// The text; never empty.
    pub text: String,
    /// Linked files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<AttachmentWire>,
    /// When the core accepted it (RFC 3339, UTC).
    pub ts: String,
    /// What the user registered with.
    #[serde(default)]
    pub registration: Option<Value>,
    /// Set on a correction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<ReplacesWire>,
}

/// `message/send` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendResult {
    /// `sent`: the network took it; `report_follows`: and a `delivery/report` will say
    /// whether it arrived. Either way the user's receipt waits for a `delivered` report,
    /// unless the bridge declares `receipts_on_accept` and the admin enables it.
    pub status: String,
    /// The network's id for it (`delivery/report` refers to it; the `txn_id` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// `message/received` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedParams {
    /// The network's id for the message: the core delivers each once.
    pub event_id: String,
    /// The user it is for.
    pub user: String,
    /// Who wrote it (with `room`: the occupant's nick).
    pub contact: String,
    /// The text.
    pub text: String,
    /// Linked files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<AttachmentWire>,
    /// When the network got it (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<String>,
    /// Set when a room occupant writes privately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
}

/// `delivery/report` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportParams {
    /// The `id` the bridge returned from `message/send`.
    pub id: String,
    /// `delivered` or `failed`.
    pub status: String,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Acted on only if this user sent the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
}

// ----- rooms -------------------------------------------------------------------------------

/// A room occupant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OccupantWire {
    /// The nick.
    pub nick: String,
    /// The network's stable id for them; the nick when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `moderator`, `participant` (the default) or `visitor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// `owner`, `admin`, `member` or `none` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affiliation: Option<String>,
    /// Set when away, with their message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub away: Option<String>,
    /// Where they connect from (a host), shown as their item's bare JID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Their real name: their vCard's full name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realname: Option<String>,
}

/// A room's subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectWire {
    /// The text.
    pub text: String,
    /// Who set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// `room/join` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinParams {
    /// The user.
    pub user: String,
    /// The room.
    pub room: String,
    /// The nick they asked for.
    pub nick: String,
    /// The room password they gave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// How much history they want: `{max_stanzas?, since?}`.
    #[serde(default)]
    pub history: HistoryWire,
    /// What the user registered with.
    #[serde(default)]
    pub registration: Option<Value>,
}

/// The history a joining user wants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryWire {
    /// At most this many messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_stanzas: Option<u32>,
    /// None older than this (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// `room/join` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinResult {
    /// The nick the network gave the user.
    pub nick: String,
    /// Everyone in the room, the user included.
    pub occupants: Vec<OccupantWire>,
    /// The subject, if the room has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<SubjectWire>,
}

/// `room/leave` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaveParams {
    /// The user.
    pub user: String,
    /// The room.
    pub room: String,
}

/// `room/presence` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomPresenceParams {
    /// The user.
    pub user: String,
    /// The room.
    pub room: String,
    /// Their status text while they show away, extended away or busy (empty when they gave
    /// none); absent while they are available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub away: Option<String>,
}

/// `room/history` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomHistoryParams {
    /// Whose link to the network asks.
    pub user: String,
    /// The room.
    pub room: String,
    /// Lines said before this one (the core's oldest); absent: the latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<BeforeWire>,
    /// At most this many.
    pub limit: u32,
}

/// The message a history read goes back from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeforeWire {
    /// Its `event_id`.
    pub event_id: String,
    /// When it was said (RFC 3339).
    pub ts: String,
}

/// `room/history` result: `message` events, each with its `ts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomHistoryResult {
    /// The lines, in any order.
    pub messages: Vec<RoomEventWire>,
}

/// `room/send` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomSendParams {
    /// The core's id for the post.
    pub txn_id: String,
    /// The user.
    pub user: String,
    /// The room.
    pub room: String,
    /// The text.
    pub text: String,
    /// What the user registered with.
    #[serde(default)]
    pub registration: Option<Value>,
    /// The network's id of the post this corrects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
    /// The message this replies to (with `replies`; `text` is then the reply alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<ReplyToWire>,
}

/// The message a post replies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyToWire {
    /// Its `event_id`.
    pub event_id: String,
    /// The nick of who said it.
    pub nick: String,
}

/// `room/send` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSendResult {
    /// `reflect`: the core shows the post to the room now (under `id`); `echo_follows`: the
    /// bridge reports it as a `room/event` message with `echo_of` = `txn_id`.
    pub status: String,
    /// The network's id for the post.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// `rooms/list` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserParams {
    /// The user.
    pub user: String,
}

/// `rooms/list` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomsResult {
    /// The rooms.
    pub rooms: Vec<RoomListingWire>,
}

/// One listed room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomListingWire {
    /// Its address.
    pub room: String,
    /// Its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// How many are in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occupants: Option<u32>,
}

/// `room/moderate` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModerateParams {
    /// The moderator.
    pub user: String,
    /// The room.
    pub room: String,
    /// `kick`, `ban` or `role`.
    pub action: String,
    /// The occupant.
    pub nick: String,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// With `role`: the new role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// `room/invite` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteParams {
    /// The user who invites, in the room.
    pub user: String,
    /// The room.
    pub room: String,
    /// Whom: their id on the network, as a contact.
    pub contact: String,
}

/// `room/nick` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NickParams {
    /// The user.
    pub user: String,
    /// The room.
    pub room: String,
    /// The nick they want.
    pub nick: String,
}

/// `room/subject` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectParams {
    /// The user.
    pub user: String,
    /// The room.
    pub room: String,
    /// The new subject.
    pub subject: String,
}

/// `room/retract` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetractParams {
    /// The user.
    pub user: String,
    /// The room.
    pub room: String,
    /// The network's id of the user's post.
    pub target: String,
}

/// `room/react` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReactParams {
    /// The user.
    pub user: String,
    /// The room.
    pub room: String,
    /// The network's id of the message.
    pub target: String,
    /// The full set of the user's reactions now (empty: none).
    pub emojis: Vec<String>,
}

/// `room/event` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomEventParams {
    /// The room.
    pub room: String,
    /// What happened.
    pub event: RoomEventWire,
}

/// What happened in a room, by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RoomEventWire {
    /// A message, shown once per `event_id`.
    Message {
        /// The network's id: the idempotency key.
        event_id: String,
        /// The author's nick.
        nick: String,
        /// The author's stable id (the nick when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sender: Option<String>,
        /// The text.
        text: String,
        /// When it was said (RFC 3339).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ts: Option<String>,
        /// The `txn_id` of the user's post this is the echo of (`echo_follows`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        echo_of: Option<String>,
        /// The `event_id` of the message this corrects.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replaces: Option<String>,
        /// The `event_id` of the message this replies to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<String>,
    },
    /// Someone arrived, or changed (away, role).
    Occupant {
        /// Who.
        occupant: OccupantWire,
    },
    /// Someone left.
    Left {
        /// Who.
        nick: String,
        /// Their parting words.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Someone changed nick.
    Renamed {
        /// The old nick.
        old: String,
        /// The new nick.
        new: String,
    },
    /// Someone was kicked.
    Kicked {
        /// Who.
        nick: String,
        /// By whom.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        /// Why.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Someone was banned.
    Banned {
        /// Who.
        nick: String,
        /// By whom.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        /// Why.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A new subject.
    Subject {
        /// The subject.
        text: String,
        /// Who set it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// A message was retracted.
    Retracted {
        /// Its `event_id`.
        target: String,
    },
    /// Someone's reactions to a message (the full set).
    Reacted {
        /// The message's `event_id`.
        target: String,
        /// Who.
        nick: String,
        /// Their stable id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sender: Option<String>,
        /// Their reactions now.
        emojis: Vec<String>,
    },
    /// A notice from the network, for one user or all.
    Notice {
        /// For this user only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// The text.
        text: String,
    },
    /// Someone on the network invites `user` to this room, whether or not they are in it.
    Invited {
        /// Whom: a user's bare JID.
        user: String,
        /// Who invites them: their id on the network, as a contact.
        by: String,
    },
    /// Someone on the network types, or stopped (changes only; not the core's own users).
    Typing {
        /// Who.
        nick: String,
        /// What they do.
        state: TypingState,
    },
}

// ----- commands, HTTP, setup ---------------------------------------------------------------

/// `command/run` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandParams {
    /// The command's node.
    pub node: String,
    /// Who runs it.
    pub user: String,
    /// Its form's values.
    #[serde(default)]
    pub values: BTreeMap<String, String>,
}

/// `command/current` result: the form's values as they stand, by field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentResult {
    /// The values.
    #[serde(default)]
    pub values: BTreeMap<String, String>,
}

/// `command/run` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResultWire {
    /// Shown to the user.
    pub text: String,
}

/// `http/request` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequestParams {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path after `/bridges/{domain}`, e.g. `/inbound`.
    pub path: String,
    /// The query string, without `?`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The headers, lowercase names; repeated headers joined with `, `.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The body, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_text: Option<String>,
    /// The body in base64, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_b64: Option<String>,
    /// What the core checked: `{scheme: "bearer"}` (`http_token`) or `{scheme:
    /// "standard-webhooks", id}` (`http_signing_secret`); requests that fail it never reach
    /// the bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<Verified>,
}

/// A check the core made on an HTTP request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// `bearer` or `standard-webhooks`.
    pub scheme: String,
    /// With `standard-webhooks`: the `webhook-id`, the same on every retry of a delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// `http/request` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpResponseWire {
    /// The status code.
    pub status: u16,
    /// Headers to send.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// A UTF-8 body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_text: Option<String>,
    /// A binary body in base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_b64: Option<String>,
}

/// `setup/check` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupResult {
    /// Each check.
    pub checks: Vec<CheckWire>,
}

/// One check of `setup/check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckWire {
    /// What was checked.
    pub what: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was seen, or what to fix.
    pub detail: String,
}

// ----- state and identities ----------------------------------------------------------------

/// `state/load` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyParams {
    /// The key.
    pub key: String,
}

/// `state/load` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValueResult {
    /// The value, `null` when none was saved.
    pub value: Option<Value>,
}

/// `state/save` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaveParams {
    /// The key.
    pub key: String,
    /// The value; `null` deletes it.
    pub value: Option<Value>,
}

/// `owner/get` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityParams {
    /// A foreign identity of the bridge's (a phone number, a nick).
    pub identity: String,
}

/// `owner/get` result, and `owner/set` params' `user`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerResult {
    /// The owner, `null` for nobody.
    pub user: Option<String>,
}

/// `owner/set` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetOwnerParams {
    /// The identity.
    pub identity: String,
    /// Its owner, `null` for nobody.
    pub user: Option<String>,
}

/// `identities/list` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentitiesResult {
    /// The identities the user owns, sorted.
    pub identities: Vec<String>,
}

/// `registration/get` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistrationResult {
    /// What the user registered with, `null` if they did not.
    pub registration: Option<Value>,
}

/// `log` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogParams {
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub level: String,
    /// The line.
    pub message: String,
}
