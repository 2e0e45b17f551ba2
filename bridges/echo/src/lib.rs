//! The echo bridge (`kind = "echo"`): every contact replies to each message with its text.
//!
//! It is the template to copy when writing a bridge: a config struct, [`build`], and the
//! [`Bridge`] methods a real network needs (address parsing, registration, sending, an
//! authenticated webhook), each as short as it can be. The core's tests use it as their
//! foreign network.
//!
//! Rooms: `#NAME@{domain}` is a room where the bot `echo` repeats what is said ([`rooms`]).
//! Typing is mirrored too: a contact types back while the user types to it, and the bot
//! types in a room while a user does.
//!
//! Its webhook, `POST /bridges/{domain}/say` with `Authorization: Bearer {say_token}` and
//! `{"user": JID, "contact": NAME, "text": TEXT, "id": OPTIONAL}`, makes a contact speak
//! first: it exists only when `say_token` is set. A repeated `id` is delivered once.

pub mod rooms;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use jabbridge_sdk::http::{Method, StatusCode};
use jabbridge_sdk::secrecy::SecretString;
use jabbridge_sdk::{
    AddressError, Bridge, BridgeError, BridgeInfo, Capabilities, ChatState, Core, CoreError, Field,
    FieldKind, ForeignId, Form, FormValues, HistoryRequest, HttpRequest, HttpResponse,
    IncomingMessage, JoinError, JoinRequest, Joined, MessageId, Moderation, OutgoingMessage,
    Posted, Prompt, RegistrationData, RegistrationError, RoomActionError, RoomId, RoomListing,
    RoomMessage, RoomPost, SendError, SendOutcome, Settings, UserJid, async_trait, auth, respond,
};

/// The bridge's own keys in its `[[bridge]]` section.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EchoConfig {
    /// Put before every reply, unless the user registered a prefix of their own.
    #[serde(default)]
    prefix: String,
    /// The bearer token of the `/say` webhook; without it there is no webhook.
    #[serde(default)]
    say_token: Option<SecretString>,
    /// Milliseconds each reply and each room join take, to play a slow network (demos, crash
    /// tests).
    #[serde(default)]
    delay_ms: u64,
    /// Whether the pretend network carries corrections, retractions, reactions and replies (in rooms;
    /// a corrected chat message is echoed as a new one). `false` plays a network without them.
    #[serde(default = "yes")]
    edits: bool,
    /// Whether the pretend network echoes a user's room post back (as IRCv3 `echo-message`
    /// does). `false` plays a network that does not: the core reflects the post itself.
    #[serde(default = "yes")]
    echoes: bool,
}

fn yes() -> bool {
    true
}

/// What the echo bridge keeps per registered user.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct EchoRegistration {
    /// Put before their contacts' replies instead of the config's `prefix`, unless empty.
    #[serde(default)]
    prefix: String,
}

/// The body of a `/say` request.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Say {
    /// The message's id on the "network": a repeated id is delivered once. Optional.
    #[serde(default)]
    id: Option<String>,
    user: String,
    contact: String,
    text: String,
    /// Say it in this room (`#NAME`) as the nick `contact`, rather than to `user`.
    #[serde(default)]
    room: Option<String>,
}

/// The echo bridge.
pub struct Echo {
    core: Core,
    config: EchoConfig,
    /// When this run started (ns since the epoch), so that generated ids never repeat.
    started: u128,
    said: AtomicU64,
    rooms: rooms::EchoRooms,
}

/// Builds the echo bridge from its config section. Registered as `echo` in the core.
pub fn build(settings: &Settings, core: Core) -> Result<Arc<dyn Bridge>, BridgeError> {
    let config: EchoConfig = settings.parse()?;
    Ok(Arc::new(Echo {
        core,
        config,
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_nanos())
            .unwrap_or_default(),
        said: AtomicU64::new(0),
        rooms: rooms::EchoRooms::new(),
    }))
}

#[async_trait]
impl Bridge for Echo {
    fn info(&self) -> BridgeInfo {
        let mut capabilities = Capabilities::default();
        capabilities.rooms = true;
        capabilities.corrections = self.config.edits;
        capabilities.retractions = self.config.edits;
        capabilities.reactions = self.config.edits;
        capabilities.replies = self.config.edits;
        capabilities.chat_states = true;
        BridgeInfo {
            gateway_type: "echo".into(),
            name: "Echo gateway".into(),
            capabilities,
            registration: Some(Form {
                title: "Register with the echo gateway".into(),
                instructions: "Choose the prefix your contacts put before their replies \
                               (empty: the gateway's own)."
                    .into(),
                fields: vec![Field {
                    var: "prefix".into(),
                    label: "Reply prefix".into(),
                    kind: FieldKind::Text,
                    required: false,
                }],
            }),
            prompt: Prompt {
                description: "Enter any name: that contact will echo what you write".into(),
                prompt: "Name".into(),
            },
        }
    }

    /// Any non-empty name is a contact: `anything@echo.example.org`.
    fn parse_address(&self, localpart: &str) -> Result<ForeignId, AddressError> {
        if localpart.is_empty() {
            return Err(AddressError("an echo contact needs a name".into()));
        }
        Ok(ForeignId::new(localpart))
    }

    /// Accepts a prefix of up to 32 characters (to show how a bridge refuses a form).
    async fn register(
        &self,
        _user: &UserJid,
        form: &FormValues,
    ) -> Result<RegistrationData, RegistrationError> {
        let prefix = form.get("prefix").unwrap_or_default();
        if prefix.chars().count() > 32 {
            return Err(RegistrationError::Rejected(
                "the reply prefix may be at most 32 characters".into(),
            ));
        }
        RegistrationData::new(&EchoRegistration {
            prefix: prefix.to_owned(),
        })
    }

    fn parse_room(&self, localpart: &str) -> Option<RoomId> {
        rooms::is_room(localpart).then(|| RoomId::new(localpart))
    }

    async fn join_room(&self, request: JoinRequest) -> Result<Joined, JoinError> {
        // A slow network's join: what is said in the room meanwhile must not be lost.
        if self.config.delay_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(self.config.delay_ms)).await;
        }
        self.rooms.join(&self.core, request).await
    }

    async fn leave_room(&self, user: &UserJid, room: &RoomId) {
        self.rooms.leave(&self.core, user, room).await;
    }

    async fn send_room_message(&self, post: RoomPost) -> Result<Posted, SendError> {
        let id = self.fresh_id();
        self.rooms
            .post(&self.core, post, id, self.config.echoes)
            .await
    }

    async fn retract_room_message(
        &self,
        user: &UserJid,
        room: &RoomId,
        message: &MessageId,
    ) -> Result<(), RoomActionError> {
        self.rooms.retract(&self.core, user, room, message).await
    }

    async fn react_in_room(
        &self,
        user: &UserJid,
        room: &RoomId,
        message: &MessageId,
        emojis: &[String],
    ) -> Result<(), RoomActionError> {
        self.rooms
            .react(&self.core, user, room, message, emojis)
            .await
    }

    async fn moderate(
        &self,
        user: &UserJid,
        room: &RoomId,
        action: Moderation,
    ) -> Result<(), RoomActionError> {
        self.rooms.moderate(&self.core, user, room, action).await
    }

    async fn list_rooms(&self, _user: &UserJid) -> Result<Vec<RoomListing>, RoomActionError> {
        Ok(self.rooms.list().await)
    }

    async fn room_history(
        &self,
        request: HistoryRequest,
    ) -> Result<Vec<RoomMessage>, RoomActionError> {
        Ok(rooms::EchoRooms::history(&request))
    }

    async fn change_nick(
        &self,
        user: &UserJid,
        room: &RoomId,
        nick: &str,
    ) -> Result<(), RoomActionError> {
        self.rooms.rename(&self.core, user, room, nick).await
    }

    async fn set_subject(
        &self,
        user: &UserJid,
        room: &RoomId,
        subject: &str,
    ) -> Result<(), RoomActionError> {
        self.rooms
            .set_subject(&self.core, user, room, subject)
            .await
    }

    async fn send_chat_state(
        &self,
        user: &UserJid,
        contact: &ForeignId,
        room: Option<&RoomId>,
        state: ChatState,
    ) {
        // A contact types back (an occupant, privately, does not: the SDK has no way to say
        // so from room/nick).
        if room.is_none() {
            let _ = self.core.chat_state(user, contact, state).await;
        }
    }

    async fn room_chat_state(&self, _user: &UserJid, room: &RoomId, state: ChatState) {
        let nick = rooms::BOT.to_owned();
        let typing = jabbridge_sdk::RoomEvent::Typing { nick, state };
        let _ = self.core.room_event(room, typing).await;
    }

    async fn send_message(&self, message: OutgoingMessage) -> Result<SendOutcome, SendError> {
        let registered = message
            .registration
            .as_ref()
            .and_then(|data| data.read::<EchoRegistration>().ok())
            .map(|registration| registration.prefix)
            .filter(|prefix| !prefix.is_empty());
        let prefix = registered.as_deref().unwrap_or(&self.config.prefix);
        if self.config.delay_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(self.config.delay_ms)).await;
        }
        let reply_id = MessageId::new(format!("echo-{}", message.id));
        self.core
            .deliver(IncomingMessage {
                foreign_id: reply_id.clone(),
                contact: message.contact,
                user: message.user,
                text: format!("{prefix}{}", message.text),
                attachments: message.attachments,
                timestamp: None,
                room: message.room.clone(),
            })
            .await
            .map_err(|error| SendError::Transient {
                reason: error.to_string(),
                retry_after: None,
            })?;
        Ok(SendOutcome::SentAs(reply_id))
    }

    async fn handle_http(&self, request: HttpRequest) -> HttpResponse {
        let Some(token) = &self.config.say_token else {
            return respond(StatusCode::NOT_FOUND, "not found\n");
        };
        if request.method() != Method::POST || request.uri().path() != "/say" {
            return respond(StatusCode::NOT_FOUND, "not found\n");
        }
        // Check who is asking before reading anything they sent.
        let presented = auth::bearer_token(request.headers());
        if !presented.is_some_and(|presented| auth::secret_matches(presented, token)) {
            return respond(StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n");
        }
        let say: Say = match jabbridge_sdk::serde_json::from_slice(request.body()) {
            Ok(say) => say,
            Err(error) => return respond(StatusCode::BAD_REQUEST, format!("bad JSON: {error}\n")),
        };
        if say.text.trim().is_empty() || say.contact.is_empty() {
            return respond(
                StatusCode::BAD_REQUEST,
                "contact and text must not be empty\n",
            );
        }
        let id = say.id.clone().unwrap_or_else(|| self.fresh_id());
        let delivered = match say.room.clone() {
            Some(room) if rooms::is_room(&room) => {
                let room = RoomId::new(room);
                self.rooms
                    .say(&self.core, &room, &say.contact, say.text.clone(), id)
                    .await
            }
            Some(room) => {
                return respond(
                    StatusCode::BAD_REQUEST,
                    format!("'{room}' is not a room: rooms start with #\n"),
                );
            }
            None => self.deliver_said(say, id).await,
        };
        match delivered {
            // Accepted: the core has the message and will deliver it.
            Ok(()) => respond(StatusCode::ACCEPTED, "accepted\n"),
            Err(CoreError::Refused(reason)) => {
                respond(StatusCode::BAD_REQUEST, format!("{reason}\n"))
            }
            Err(CoreError::Unavailable(reason)) => {
                let mut answer = respond(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n"));
                answer.headers_mut().insert(
                    jabbridge_sdk::http::header::RETRY_AFTER,
                    jabbridge_sdk::http::HeaderValue::from_static("5"),
                );
                answer
            }
            Err(CoreError::ShuttingDown) => {
                respond(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            }
        }
    }
}

impl Echo {
    /// Delivers what the `/say` webhook made a contact say to a user.
    async fn deliver_said(&self, say: Say, id: String) -> Result<(), CoreError> {
        self.core
            .deliver(IncomingMessage {
                foreign_id: MessageId::new(format!("say-{id}")),
                contact: ForeignId::new(say.contact),
                user: UserJid::new(say.user),
                text: say.text,
                attachments: Vec::new(),
                timestamp: None,
                room: None,
            })
            .await
    }

    /// An id no earlier run used: start time and a counter.
    fn fresh_id(&self) -> String {
        let number = self.said.fetch_add(1, Ordering::Relaxed);
        format!("{}-{number}", self.started)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jabbridge_sdk::http::header;
    use jabbridge_sdk::{UserJid, testkit::TestCore};

    use super::*;

    fn outgoing(text: &str, registration: Option<RegistrationData>) -> OutgoingMessage {
        OutgoingMessage {
            id: MessageId::new("m1"),
            user: UserJid::new("alice@example.org"),
            contact: ForeignId::new("bob"),
            text: text.into(),
            attachments: Vec::new(),
            accepted_at: std::time::SystemTime::now(),
            registration,
            replaces: None,
            room: None,
        }
    }

    #[tokio::test]
    async fn replies_with_the_text_from_the_same_contact() {
        let kit = TestCore::new("echo.test");
        let bridge = kit
            .build(build, jabbridge_sdk::serde_json::json!({"prefix": "> "}))
            .unwrap();
        bridge.send_message(outgoing("hello", None)).await.unwrap();
        let reply = kit.next_delivered(Duration::from_secs(1)).await.unwrap();
        assert_eq!(reply.text, "> hello");
        assert_eq!(reply.contact, ForeignId::new("bob"));
        assert_eq!(reply.user, UserJid::new("alice@example.org"));
    }

    #[tokio::test]
    async fn a_registered_prefix_wins_over_the_configured_one() {
        let kit = TestCore::new("echo.test");
        let bridge = kit
            .build(build, jabbridge_sdk::serde_json::json!({}))
            .unwrap();
        // What the bridge stores at registration is what it reads when it sends.
        let mut form = FormValues::default();
        form.0.insert("prefix".into(), "echo: ".into());
        let registration = bridge
            .register(&UserJid::new("alice@example.org"), &form)
            .await
            .unwrap();
        bridge
            .send_message(outgoing("hi", Some(registration)))
            .await
            .unwrap();
        let reply = kit.next_delivered(Duration::from_secs(1)).await.unwrap();
        assert_eq!(reply.text, "echo: hi");
    }

    fn say(token: Option<&str>, body: &str) -> HttpRequest {
        let mut request = HttpRequest::new(body.to_owned().into());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = "/say".parse().unwrap();
        if let Some(token) = token {
            request.headers_mut().insert(
                header::AUTHORIZATION,
                format!("Bearer {token}").parse().unwrap(),
            );
        }
        request
    }

    #[tokio::test]
    async fn say_needs_the_token_and_delivers() {
        let kit = TestCore::new("echo.test");
        let bridge = kit
            .build(
                build,
                jabbridge_sdk::serde_json::json!({"say_token": "t0k"}),
            )
            .unwrap();
        let body = r#"{"user": "alice@example.org", "contact": "bob", "text": "hi"}"#;
        assert_eq!(bridge.handle_http(say(None, body)).await.status(), 401);
        assert_eq!(
            bridge.handle_http(say(Some("t0x"), body)).await.status(),
            401
        );
        assert!(
            kit.next_delivered(Duration::from_millis(50))
                .await
                .is_none()
        );
        assert_eq!(
            bridge.handle_http(say(Some("t0k"), "{")).await.status(),
            400
        );
        assert_eq!(
            bridge.handle_http(say(Some("t0k"), body)).await.status(),
            202
        );
        let message = kit.next_delivered(Duration::from_secs(1)).await.unwrap();
        assert_eq!(
            (message.contact.as_str(), message.text.as_str()),
            ("bob", "hi")
        );
    }

    #[tokio::test]
    async fn without_a_token_there_is_no_webhook() {
        let kit = TestCore::new("echo.test");
        let bridge = kit
            .build(build, jabbridge_sdk::serde_json::json!({}))
            .unwrap();
        let body = r#"{"user": "a@x", "contact": "b", "text": "hi"}"#;
        assert_eq!(bridge.handle_http(say(Some(""), body)).await.status(), 404);
    }

    #[tokio::test]
    async fn a_room_post_is_echoed_by_the_network_then_repeated_by_the_bot() {
        use jabbridge_sdk::{JoinRequest, Posted, RoomEvent, RoomId, RoomPost};
        let kit = TestCore::new("echo.test");
        let bridge = kit
            .build(build, jabbridge_sdk::serde_json::json!({}))
            .unwrap();
        let room = RoomId::new("#lobby");
        let alice = UserJid::new("alice@example.org");
        let joined = bridge
            .join_room(JoinRequest {
                user: alice.clone(),
                room: room.clone(),
                nick: "alice".into(),
                password: None,
                history: Default::default(),
                registration: None,
            })
            .await
            .unwrap();
        let nicks: Vec<&str> = joined.occupants.iter().map(|o| o.nick.as_str()).collect();
        assert_eq!(nicks, ["echo", "alice"]);
        let posted = bridge
            .send_room_message(RoomPost {
                id: MessageId::new("o-1"),
                user: alice,
                room: room.clone(),
                text: "hello".into(),
                registration: None,
                replaces: None,
                reply_to: None,
            })
            .await
            .unwrap();
        assert_eq!(posted, Posted::EchoFollows);
        let said: Vec<(String, Option<String>)> = kit
            .room_events()
            .into_iter()
            .filter_map(|(_, event)| match event {
                RoomEvent::Message(message) => {
                    Some((message.nick, message.echo_of.map(|id| id.to_string())))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            said,
            [
                ("alice".to_owned(), Some("o-1".to_owned())),
                ("echo".to_owned(), None)
            ]
        );
    }

    #[tokio::test]
    async fn a_repeated_say_id_reaches_the_user_once() {
        let kit = TestCore::new("echo.test");
        let bridge = kit
            .build(
                build,
                jabbridge_sdk::serde_json::json!({"say_token": "t0k"}),
            )
            .unwrap();
        let body = r#"{"id": "same", "user": "a@x", "contact": "bob", "text": "hi"}"#;
        for _ in 0..2 {
            assert_eq!(
                bridge.handle_http(say(Some("t0k"), body)).await.status(),
                202
            );
        }
        assert!(kit.next_delivered(Duration::from_secs(1)).await.is_some());
        assert!(
            kit.next_delivered(Duration::from_millis(100))
                .await
                .is_none()
        );
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let kit = TestCore::new("echo.test");
        let error = match kit.build(build, jabbridge_sdk::serde_json::json!({"prefx": "x"})) {
            Err(error) => error.to_string(),
            Ok(_) => panic!("a misspelt key was accepted"),
        };
        assert!(error.contains("unknown field `prefx`"), "{error}");
    }
}
