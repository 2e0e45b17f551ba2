//! XEP-0050 ad-hoc commands on the wire: the command list (disco#items on the commands
//! node), reading a `<command/>` request, and rendering a step's outcome. What the commands
//! do lives in the gateway (`gateway::commands`).
//!
//! Sessions carry no server-side state: every submission holds the whole form, so a
//! multi-step command works even when ejabberd hands the second step to another instance.

use jabbridge_sdk::{Form, FormValues};
use xmpp_parsers::{
    disco::{DiscoInfoResult, DiscoItemsResult, Identity, Item},
    jid::Jid,
    minidom::{Element, ElementBuilder, rxml::NcName},
    ns,
};

use crate::xmpp::register;
use crate::xmpp::stanza::StanzaFailure;

/// The XEP-0050 namespace, also the disco node that lists the commands.
pub const NS: &str = "http://jabber.org/protocol/commands";

/// A command as the wire lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Its node.
    pub node: &'a str,
    /// Its name, as clients show it.
    pub name: &'a str,
}

/// What one step of a command came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The command needs this form filled in (with current values) before it can finish.
    Form(Form, FormValues),
    /// The command goes on with another step: this form (no current values), whose answer
    /// comes back with the step (carried in the session id).
    Next(Form, String),
    /// The command finished; this is what it says.
    Done(String),
}

/// The commands a user may run, as disco#items of the commands node.
pub fn command_list(domain: &str, commands: &[Entry<'_>]) -> DiscoItemsResult {
    let jid: Option<Jid> = domain.parse().ok();
    DiscoItemsResult {
        node: Some(NS.into()),
        items: commands
            .iter()
            .filter_map(|command| {
                Some(Item {
                    jid: jid.clone()?,
                    node: Some(command.node.to_owned()),
                    name: Some(command.name.to_owned()),
                })
            })
            .collect(),
        rsm: None,
    }
}

/// disco#info of the commands node or of one command's node, among `commands`.
pub fn node_info(node: &str, commands: &[Entry<'_>]) -> Result<Element, StanzaFailure> {
    let (type_, name) = if node == NS {
        ("command-list", "Commands")
    } else {
        let command = commands
            .iter()
            .find(|command| command.node == node)
            .ok_or_else(|| StanzaFailure::ItemNotFound(format!("no node '{node}'")))?;
        ("command-node", command.name)
    };
    Ok(DiscoInfoResult {
        node: Some(node.into()),
        identities: vec![Identity::new("automation", type_, "en", name)],
        features: [NS.to_owned(), ns::DATA_FORMS.to_owned()].into(),
        extensions: Vec::new(),
    }
    .into())
}

/// One `<command/>` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Which command.
    pub node: String,
    /// The session id, given or new (without the step).
    pub session: String,
    /// The step of a command in several steps this request answers, which the session id
    /// carries (`{session}/step/{step}`): the core keeps no state between steps.
    pub step: Option<String>,
    /// `action='cancel'`.
    pub cancelled: bool,
    /// The submitted form, if any.
    pub values: Option<FormValues>,
}

impl Request {
    /// Reads a `<command xmlns='http://jabber.org/protocol/commands'/>` payload.
    pub fn parse(payload: &Element) -> Result<Request, StanzaFailure> {
        let node = payload
            .attr("node")
            .filter(|node| !node.is_empty())
            .ok_or_else(|| StanzaFailure::BadRequest("a command needs a node".into()))?;
        let action = payload.attr("action").unwrap_or("execute");
        if !matches!(action, "execute" | "next" | "complete" | "cancel" | "prev") {
            return Err(StanzaFailure::BadRequest(format!(
                "unknown action '{action}'"
            )));
        }
        let values = match payload.get_child("x", ns::DATA_FORMS) {
            Some(x) if x.attr("type") == Some("submit") => Some(register::read_data_form(x)?),
            _ => None,
        };
        let session = payload
            .attr("sessionid")
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let (session, step) = match session.split_once(STEP) {
            Some((session, step)) => (session.to_owned(), Some(step.to_owned())),
            None => (session, None),
        };
        Ok(Request {
            node: node.to_owned(),
            session,
            step,
            cancelled: action == "cancel",
            values,
        })
    }
}

/// Sets an attribute on a builder; `name` is one of our constants, always a valid name.
fn attr(builder: ElementBuilder, name: &'static str, value: &str) -> ElementBuilder {
    match NcName::try_from(name) {
        Ok(name) => builder.attr(name, value),
        Err(_) => builder,
    }
}

/// What separates a session id from the step it carries.
const STEP: &str = "/step/";

/// The `<command/>` answering a step: `None` for a cancelled command.
pub fn response(node: &str, session: &str, outcome: Option<Outcome>) -> Element {
    let command = attr(
        attr(Element::builder("command", NS), "node", node),
        "sessionid",
        session,
    );
    match outcome {
        None => attr(command, "status", "canceled").build(),
        Some(Outcome::Done(text)) => attr(command, "status", "completed")
            .append(attr(Element::builder("note", NS), "type", "info").append(text))
            .build(),
        Some(Outcome::Next(form, step)) => {
            let x = register::data_form(&form, NS, None);
            attr(
                attr(
                    attr(Element::builder("command", NS), "node", node),
                    "sessionid",
                    &format!("{session}{STEP}{step}"),
                ),
                "status",
                "executing",
            )
            .append(
                attr(Element::builder("actions", NS), "execute", "complete")
                    .append(Element::bare("complete", NS)),
            )
            .append(x)
            .build()
        }
        Some(Outcome::Form(form, current)) => {
            let x = register::data_form(&form, NS, Some(&current));
            attr(command, "status", "executing")
                .append(
                    attr(Element::builder("actions", NS), "execute", "complete")
                        .append(Element::bare("complete", NS)),
                )
                .append(x)
                .build()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_submission_and_a_cancel() {
        let submit: Element =
            "<command xmlns='http://jabber.org/protocol/commands' node='register' \
             sessionid='s1' action='complete'><x xmlns='jabber:x:data' type='submit'>\
             <field var='prefix'><value>hi</value></field></x></command>"
                .parse()
                .unwrap();
        let request = Request::parse(&submit).unwrap();
        assert_eq!(request.node, "register");
        assert_eq!(request.session, "s1");
        assert_eq!(request.values.unwrap().get("prefix"), Some("hi"));
        let cancel: Element =
            "<command xmlns='http://jabber.org/protocol/commands' node='x' action='cancel'/>"
                .parse()
                .unwrap();
        assert!(Request::parse(&cancel).unwrap().cancelled);
        // A later step rides in the session id; only the first separator splits.
        let step: Element = "<command xmlns='http://jabber.org/protocol/commands' node='register' \
             sessionid='s2/step/1.ab.code/step/x'/>"
            .parse()
            .unwrap();
        let request = Request::parse(&step).unwrap();
        assert_eq!(request.session, "s2");
        assert_eq!(request.step.as_deref(), Some("1.ab.code/step/x"));
        let plain = Request::parse(&cancel).unwrap();
        assert_eq!(plain.step, None);
        let bad: Element = "<command xmlns='http://jabber.org/protocol/commands'/>"
            .parse()
            .unwrap();
        assert!(Request::parse(&bad).is_err());
    }
}
