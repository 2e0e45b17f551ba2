//! Answers to iq get requests on a bridge's domain and contacts: XEP-0030 disco, XEP-0092
//! version, XEP-0199 ping; `service-unavailable` for everything else, never silence.

use jabbridge_sdk::BridgeInfo;
use xmpp_parsers::{
    disco::{DiscoInfoQuery, DiscoInfoResult, DiscoItemsQuery, DiscoItemsResult, Identity},
    iq::Iq,
    jid::Jid,
    minidom::Element,
    ns,
    version::VersionResult,
};

use crate::xmpp::stanza::StanzaFailure;

/// The outcome of an iq request: a result payload (possibly empty) or a failure.
pub type IqAnswer = Result<Option<Element>, StanzaFailure>;

/// Who an iq is addressed to.
pub enum Target<'a> {
    /// The bridge's domain itself.
    Gateway,
    /// A contact on the foreign network (its localpart parsed by the bridge).
    Contact(&'a str),
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

fn disco_info(info: &BridgeInfo, target: &Target<'_>) -> DiscoInfoResult {
    let mut features = vec![ns::DISCO_INFO, ns::DISCO_ITEMS, ns::PING];
    let identity = match target {
        Target::Gateway => {
            features.push(ns::VERSION);
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
        Target::Contact(name) => {
            let capabilities = info.capabilities;
            if capabilities.receipts {
                features.push(ns::RECEIPTS);
            }
            if capabilities.corrections {
                features.push(ns::MESSAGE_CORRECT);
            }
            if capabilities.chat_states {
                features.push(ns::CHATSTATES);
            }
            Identity::new("client", "pc", "en", *name)
        }
    };
    DiscoInfoResult {
        node: None,
        identities: vec![identity],
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
