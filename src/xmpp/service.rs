//! Answers to iq get requests on a bridge's domain and contacts: XEP-0030 disco, XEP-0092
//! version, XEP-0199 ping; XEP-0100's `jabber:iq:gateway` prompt; `service-unavailable` for
//! everything else, never silence.

use jabbridge_sdk::{BridgeInfo, Prompt};
use xmpp_parsers::{
    disco::{DiscoInfoQuery, DiscoInfoResult, DiscoItemsQuery, DiscoItemsResult, Identity},
    iq::Iq,
    jid::Jid,
    minidom::Element,
    ns,
    version::VersionResult,
};

use crate::xmpp::stanza::StanzaFailure;

/// XEP-0100 `jabber:iq:gateway`: what to type to add a contact, and the JID it makes.
pub const GATEWAY: &str = "jabber:iq:gateway";

/// The answer to a `jabber:iq:gateway` get: the bridge's description and prompt.
pub fn prompt_query(prompt: &Prompt) -> Element {
    Element::builder("query", GATEWAY)
        .append(Element::builder("desc", GATEWAY).append(prompt.description.as_str()))
        .append(Element::builder("prompt", GATEWAY).append(prompt.prompt.as_str()))
        .build()
}

/// What the user typed, from a `jabber:iq:gateway` set.
pub fn read_prompt(payload: &Element) -> Result<String, StanzaFailure> {
    payload
        .get_child("prompt", GATEWAY)
        .map(Element::text)
        .filter(|typed| !typed.trim().is_empty())
        .ok_or_else(|| StanzaFailure::BadRequest("a <prompt/> with the address is needed".into()))
}

/// The answer to a `jabber:iq:gateway` set: the contact's JID.
pub fn prompt_answer(jid: &Jid) -> Element {
    Element::builder("query", GATEWAY)
        .append(Element::builder("jid", GATEWAY).append(jid.to_string()))
        .build()
}

/// The outcome of an iq request: a result payload (possibly empty) or a failure.
pub type IqAnswer = Result<Option<Element>, StanzaFailure>;

/// Who an iq is addressed to.
pub enum Target<'a> {
    /// The bridge's domain itself.
    Gateway,
    /// A contact on the foreign network (its localpart parsed by the bridge).
    Contact(&'a str),
    /// A contact on whose address the bridge offers commands (XEP-0050).
    ContactWithCommands(&'a str),
}

/// Answers an `<iq type='get'/>` payload.
pub fn answer_get(info: &BridgeInfo, target: Target<'_>, payload: &Element) -> IqAnswer {
    if payload.is("query", ns::DISCO_INFO) {
        let query = DiscoInfoQuery::try_from(payload.clone())
            .map_err(|error| StanzaFailure::BadRequest(error.to_string()))?;
        if query.node.is_some() {
            return Err(StanzaFailure::BadRequest("no such disco node".into()));
        }
        return Ok(Some(disco_info(info, &target).into()));
    }
    if payload.is("query", ns::DISCO_ITEMS) {
        let query = DiscoItemsQuery::try_from(payload.clone())
            .map_err(|error| StanzaFailure::BadRequest(error.to_string()))?;
        return Ok(Some(
            DiscoItemsResult {
                node: query.node,
                items: Vec::new(),
                rsm: None,
            }
            .into(),
        ));
    }
    if payload.is("ping", ns::PING) {
        return Ok(None);
    }
    if payload.is("query", ns::VERSION) && matches!(target, Target::Gateway) {
        return Ok(Some(
            VersionResult {
                name: "Jabbridge".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                // The host's OS is nobody's business on the federation.
                os: None,
            }
            .into(),
        ));
    }
    Err(StanzaFailure::ServiceUnavailable)
}

/// A XEP-0092 answer for someone on the network: what their software said of itself, all
/// of it as the name (`version` is required, and left empty).
pub fn version_result(name: &str) -> Element {
    VersionResult {
        name: name.to_owned(),
        version: String::new(),
        os: None,
    }
    .into()
}

fn disco_info(info: &BridgeInfo, target: &Target<'_>) -> DiscoInfoResult {
    let mut features = vec![ns::DISCO_INFO, ns::DISCO_ITEMS, ns::PING];
    let mut identities = Vec::with_capacity(2);
    if matches!(target, Target::Gateway) && info.capabilities.rooms {
        // A gateway with rooms is also a MUC service: clients list it among conferences.
        identities.push(Identity::new(
            "conference",
            "text",
            "en",
            info.name.as_str(),
        ));
        features.push(crate::xmpp::muc::NS_MUC);
    }
    let identity = match target {
        Target::Gateway => {
            features.extend([ns::VERSION, GATEWAY, crate::xmpp::adhoc::NS]);
            if info.registration.is_some() {
                features.push(ns::REGISTER);
            }
            Identity::new(
                "gateway",
                info.gateway_type.as_str(),
                "en",
                info.name.as_str(),
            )
        }
        Target::Contact(name) | Target::ContactWithCommands(name) => {
            if matches!(target, Target::ContactWithCommands(_)) {
                features.push(crate::xmpp::adhoc::NS);
            }
            let capabilities = info.capabilities;
            features.push(ns::RECEIPTS);
            if capabilities.corrections {
                features.push(ns::MESSAGE_CORRECT);
            }
            if capabilities.chat_states {
                features.push(ns::CHATSTATES);
            }
            Identity::new("client", "pc", "en", *name)
        }
    };
    identities.insert(0, identity);
    DiscoInfoResult {
        node: None,
        identities,
        features: features.into_iter().map(str::to_owned).collect(),
        extensions: Vec::new(),
    }
}

/// Builds the reply to a request iq from its answer.
pub fn reply(
    request_from: Jid,
    request_to: Option<Jid>,
    id: String,
    answer: IqAnswer,
) -> Result<Element, StanzaFailure> {
    let payload = answer?;
    Ok(Iq::Result {
        from: request_to,
        to: Some(request_from),
        id,
        payload,
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jabbridge_sdk::Capabilities;

    fn info() -> BridgeInfo {
        BridgeInfo {
            gateway_type: "sms".into(),
            name: "SMS".into(),
            capabilities: Capabilities::default(),
            registration: None,
            prompt: Default::default(),
        }
    }

    #[test]
    fn gateway_identity_and_features() {
        let payload: Element = "<query xmlns='http://jabber.org/protocol/disco#info'/>"
            .parse()
            .unwrap();
        let answer = answer_get(&info(), Target::Gateway, &payload)
            .unwrap()
            .unwrap();
        let result = DiscoInfoResult::try_from(answer).unwrap();
        assert_eq!(result.identities[0].category, "gateway");
        assert_eq!(result.identities[0].type_, "sms");
        assert!(result.features.contains(ns::PING));
        assert!(result.features.contains(ns::VERSION));
    }

    #[test]
    fn unknown_payloads_are_service_unavailable() {
        let payload: Element = "<query xmlns='urn:example:nothing'/>".parse().unwrap();
        assert_eq!(
            answer_get(&info(), Target::Gateway, &payload),
            Err(StanzaFailure::ServiceUnavailable)
        );
        assert_eq!(
            answer_get(&info(), Target::Contact("x"), &payload),
            Err(StanzaFailure::ServiceUnavailable)
        );
    }
}
