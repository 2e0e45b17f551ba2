//! The echo bridge (`kind = "echo"`): every contact replies to each message with its text.
//!
//! It is the template to copy when writing a bridge: a config struct, [`build`], and the
//! [`Bridge`] methods a real network needs (address parsing, registration, sending), each
//! as short as it can be. The core's tests use it as their foreign network.

use std::sync::Arc;

use jabbridge_sdk::{
    AddressError, Bridge, BridgeError, BridgeInfo, Capabilities, Core, Field, FieldKind, ForeignId,
    Form, IncomingMessage, MessageId, OutgoingMessage, SendError, SendOutcome, Settings,
    async_trait,
};

/// The bridge's own keys in its `[[bridge]]` section.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EchoConfig {
    /// Put before every reply, unless the user registered a prefix of their own.
    #[serde(default)]
    prefix: String,
}

/// The echo bridge.
pub struct Echo {
    core: Core,
    config: EchoConfig,
}

/// Builds the echo bridge from its config section. Registered as `echo` in the core.
pub fn build(settings: &Settings, core: Core) -> Result<Arc<dyn Bridge>, BridgeError> {
    let config: EchoConfig = settings.parse()?;
    Ok(Arc::new(Echo { core, config }))
}

#[async_trait]
impl Bridge for Echo {
    fn info(&self) -> BridgeInfo {
        BridgeInfo {
            gateway_type: "echo".into(),
            name: "Echo gateway".into(),
            capabilities: Capabilities::default(),
            registration: Some(Form {
                title: "Register with the echo gateway".into(),
                instructions: "Choose the prefix your contacts put before their replies.".into(),
                fields: vec![Field {
                    var: "prefix".into(),
                    label: "Reply prefix".into(),
                    kind: FieldKind::Text,
                    required: true,
                }],
            }),
        }
    }

    /// Any non-empty name is a contact: `anything@echo.example.org`.
    fn parse_address(&self, localpart: &str) -> Result<ForeignId, AddressError> {
        if localpart.is_empty() {
            return Err(AddressError("an echo contact needs a name".into()));
        }
        Ok(ForeignId::new(localpart))
    }

    async fn send_message(&self, message: OutgoingMessage) -> Result<SendOutcome, SendError> {
        let prefix = message
            .registration
            .as_ref()
            .and_then(|data| data.get("prefix"))
            .and_then(|prefix| prefix.as_str())
            .unwrap_or(&self.config.prefix);
        let reply_id = MessageId::new(format!("echo-{}", message.id));
        self.core
            .deliver(IncomingMessage {
                foreign_id: reply_id.clone(),
                contact: message.contact,
                user: message.user,
                text: format!("{prefix}{}", message.text),
                timestamp: None,
            })
            .await
            .map_err(|error| SendError::Transient {
                reason: error.to_string(),
                retry_after: None,
            })?;
        Ok(SendOutcome {
            foreign_id: Some(reply_id),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jabbridge_sdk::{UserJid, testkit::TestCore};

    use super::*;

    fn outgoing(
        text: &str,
        registration: Option<jabbridge_sdk::serde_json::Value>,
    ) -> OutgoingMessage {
        OutgoingMessage {
            id: MessageId::new("m1"),
            user: UserJid::new("alice@example.org"),
            contact: ForeignId::new("bob"),
            text: text.into(),
            registration,
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
        let registration = jabbridge_sdk::serde_json::json!({"prefix": "echo: "});
        bridge
            .send_message(outgoing("hi", Some(registration)))
            .await
            .unwrap();
        let reply = kit.next_delivered(Duration::from_secs(1)).await.unwrap();
        assert_eq!(reply.text, "echo: hi");
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
