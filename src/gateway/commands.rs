//! The gateway's commands: one catalog, reachable as XEP-0050 ad-hoc commands (rendered by
//! [`crate::xmpp::adhoc`]) and as a chat bot on the bare bridge domain (`help` lists them),
//! because many clients have no ad-hoc UI.
//!
//! User commands: `register`, `unregister`, `status`. Admin commands (for the bridge's
//! `admins`): `stats`, `users`, `remove-user`, `reload`. A bridge adds its own
//! ([`jabbridge_sdk::Bridge::commands`]); the catalog is [`catalog`]. Those it marks
//! [`jabbridge_sdk::Command::on_contacts`] are also offered on the addresses of the contacts
//! it says ([`contact_catalog`], [`run_on_contact`]), as Biboumi offers an IRC server's
//! settings on the server's address.

use jabbridge_sdk::{
    CommandError, Field, FieldKind, ForeignId, Form, FormValues, UserJid, UserStatus,
};
use xmpp_parsers::jid::Jid;

use super::Gateway;
use super::registration::{self, Registered};
use crate::access::Role;
use crate::store::Queue;
use crate::xmpp::adhoc::{self, Outcome};
use crate::xmpp::stanza::StanzaFailure;

/// One command of the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    /// Its XEP-0050 node, and its word in chat.
    pub node: &'static str,
    /// What it does, as shown in clients and in `help`.
    pub name: &'static str,
    /// Whether only admins see and run it.
    pub admin: bool,
    /// How to say it in chat, after the word.
    pub usage: &'static str,
}

/// Every command, in the order `help` lists them.
pub const COMMANDS: &[Command] = &[
    Command {
        node: "register",
        name: "Register or change your settings",
        admin: false,
        usage: "field=value …",
    },
    Command {
        node: "unregister",
        name: "Unregister and delete your settings",
        admin: false,
        usage: "",
    },
    Command {
        node: "status",
        name: "Your registration and connection",
        admin: false,
        usage: "",
    },
    Command {
        node: "stats",
        name: "Gateway statistics",
        admin: true,
        usage: "",
    },
    Command {
        node: "users",
        name: "List registered users",
        admin: true,
        usage: "",
    },
    Command {
        node: "remove-user",
        name: "Unregister a user",
        admin: true,
        usage: "jid=USER@DOMAIN",
    },
    Command {
        node: "reload",
        name: "Read the configuration file again",
        admin: true,
        usage: "",
    },
];

/// One entry of a gateway's catalog: a core command or one its bridge added.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Its XEP-0050 node, and its word in chat.
    pub node: String,
    /// What it does.
    pub name: String,
    /// Whether only admins see and run it.
    pub admin: bool,
    /// How to say it in chat, after the word.
    pub usage: String,
    /// Who runs it.
    source: Source,
}

/// Who runs a listed command.
#[derive(Debug, Clone)]
enum Source {
    /// The core, in [`run`].
    Core,
    /// The bridge: this command, after the user filled in its form (if any).
    Bridge(jabbridge_sdk::Command),
}

impl Listed {
    /// How XEP-0050 lists it.
    pub fn entry(&self) -> adhoc::Entry<'_> {
        adhoc::Entry {
            node: &self.node,
            name: &self.name,
        }
    }

    /// Whether chat words after the command are its form's values.
    fn takes_values(&self) -> bool {
        match &self.source {
            Source::Bridge(command) => command.form.is_some(),
            Source::Core => matches!(self.node.as_str(), "register" | "remove-user"),
        }
    }

    /// The form whose values it takes, if any.
    fn form(&self, gateway: &Gateway) -> Option<Form> {
        match (&self.source, self.node.as_str()) {
            (Source::Bridge(command), _) => command.form.clone(),
            (Source::Core, "register") => gateway.info().registration.clone(),
            (Source::Core, "remove-user") => Some(remove_user_form()),
            (Source::Core, _) => None,
        }
    }

    /// Whether `role` may run it.
    fn allowed(&self, role: Option<Role>) -> bool {
        match role {
            Some(Role::Admin) => true,
            Some(Role::User) => !self.admin,
            None => false,
        }
    }

    /// `forbidden` unless `role` may run it on `domain`.
    fn permit(&self, role: Role, domain: &str) -> Result<(), StanzaFailure> {
        if self.allowed(Some(role)) {
            return Ok(());
        }
        Err(StanzaFailure::Forbidden(format!(
            "'{}' is for the admins of {domain}",
            self.node
        )))
    }
}

fn remove_user_form() -> Form {
    Form {
        title: "Unregister a user".into(),
        instructions: "Give the bare JID of the user to unregister.".into(),
        fields: vec![Field {
            var: "jid".into(),
            label: "User JID".into(),
            kind: FieldKind::Text,
            required: true,
        }],
    }
}

/// Every command `role` may run: the core's, then the bridge's (a bridge command named
/// like a core one is left out). `None` lists every command.
pub fn catalog(gateway: &Gateway, role: Option<Role>) -> Vec<Listed> {
    let core = COMMANDS.iter().map(|command| Listed {
        node: command.node.into(),
        name: command.name.into(),
        admin: command.admin,
        usage: command.usage.into(),
        source: Source::Core,
    });
    let bridge = gateway
        .bridge
        .commands()
        .into_iter()
        .filter(|command| COMMANDS.iter().all(|core| core.node != command.node))
        .map(|command| Listed {
            usage: command
                .form
                .iter()
                .flat_map(|form| &form.fields)
                .map(|field| format!("{}=…", field.var))
                .collect::<Vec<_>>()
                .join(" "),
            node: command.node.clone(),
            name: command.name.clone(),
            admin: command.admin,
            source: Source::Bridge(command),
        });
    core.chain(bridge)
        .filter(|command| role.is_none() || command.allowed(role))
        .collect()
}

/// Runs one step of command `node` for `user`: without `input` the first step (which
/// may ask for a form), with `input` the submission of that form, or, with `step`, of the
/// form of that later step (a registration in several steps).
pub async fn run(
    gateway: &Gateway,
    user: &str,
    role: Role,
    node: &str,
    input: Option<FormValues>,
    step: Option<String>,
) -> Result<Outcome, StanzaFailure> {
    let command = catalog(gateway, None)
        .into_iter()
        .find(|command| command.node == node)
        .ok_or_else(|| StanzaFailure::ItemNotFound(format!("no command '{node}'")))?;
    command.permit(role, &gateway.domain)?;
    if let Source::Bridge(command) = command.source {
        return run_bridge_command(gateway, user, &command, input, None).await;
    }
    match (command.node.as_str(), input) {
        // A later step's form may have no fields (a wait): its submission is the step.
        ("register", None) if step.is_some() => {
            registered(gateway, user, step, FormValues::default()).await
        }
        ("register", Some(values)) => registered(gateway, user, step, values).await,
        ("register", None) => {
            let form = gateway.info().registration.clone().ok_or_else(|| {
                StanzaFailure::FeatureNotImplemented(format!(
                    "{} needs no registration",
                    gateway.domain
                ))
            })?;
            Ok(Outcome::Form(form, current_values(gateway, user).await?))
        }
        ("reload", _) => reload(gateway).await.map(Outcome::Done),
        ("unregister", _) => {
            registration::unregister(gateway, user, false).await?;
            Ok(Outcome::Done(format!(
                "You are unregistered from {}; your settings are deleted.",
                gateway.domain
            )))
        }
        ("status", _) => status_text(gateway, user).await.map(Outcome::Done),
        ("stats", _) => stats_text(gateway).await.map(Outcome::Done),
        ("users", _) => {
            let users = gateway
                .store
                .registered_jids(&gateway.domain)
                .await
                .map_err(|_| StanzaFailure::Internal)?;
            Ok(Outcome::Done(if users.is_empty() {
                "No registered users.".into()
            } else {
                format!("{} registered:\n{}", users.len(), users.join("\n"))
            }))
        }
        ("remove-user", None) => Ok(Outcome::Form(remove_user_form(), FormValues::default())),
        ("remove-user", Some(values)) => {
            remove_user_form()
                .validate(&values)
                .map_err(StanzaFailure::NotAcceptable)?;
            let jid = values.get("jid").unwrap_or_default().trim().to_owned();
            registration::unregister(gateway, &jid, true).await?;
            tracing::info!(admin = user, removed = jid, "admin removed a user");
            Ok(Outcome::Done(format!("{jid} is unregistered.")))
        }
        _ => Err(StanzaFailure::ItemNotFound(format!("no command '{node}'"))),
    }
}

/// One step of the `register` command, and what to tell the user. The step travels in the
/// command's session id, which the client may change: it goes out sealed for this user and
/// bridge with the time ([`seal_step`]), and comes back only while the seal holds, so nobody
/// reaches a step the bridge did not offer them (a bridge may carry a phone number it
/// checked in its step).
async fn registered(
    gateway: &Gateway,
    user: &str,
    sealed: Option<String>,
    values: FormValues,
) -> Result<Outcome, StanzaFailure> {
    let key = &gateway.step_key;
    let now = crate::store::now_millis() / 1000;
    let step = sealed
        .map(|sealed| open_step(key, user, &sealed, now))
        .transpose()?;
    match registration::register(gateway, user, step.as_deref(), &values).await? {
        Registered::Done { new: true } => Ok(Outcome::Done(format!(
            "You are registered with {}.",
            gateway.domain
        ))),
        Registered::Done { new: false } => {
            Ok(Outcome::Done("Your registration is updated.".into()))
        }
        Registered::Next { step, form } => {
            Ok(Outcome::Next(form, seal_step(key, user, &step, now)))
        }
    }
}

/// How long a registration step offered to a user may be answered.
const STEP_TTL_SECONDS: i64 = 30 * 60;

/// HMAC-SHA-256 of (`user`, `at`, `step`) under `key`, hex.
fn step_mac(key: &[u8; 32], user: &str, at: i64, step: &str) -> String {
    use hmac::Mac;
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(key) else {
        return String::new();
    };
    for part in [user.as_bytes(), at.to_string().as_bytes(), step.as_bytes()] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// `step` sealed for `user` at `now` (Unix seconds): `{now}.{mac}.{step}`.
fn seal_step(key: &[u8; 32], user: &str, step: &str, now: i64) -> String {
    format!("{now}.{}.{step}", step_mac(key, user, now, step))
}

/// The step a sealed one carries, if it was offered to `user` within [`STEP_TTL_SECONDS`].
fn open_step(key: &[u8; 32], user: &str, sealed: &str, now: i64) -> Result<String, StanzaFailure> {
    let refused = || {
        StanzaFailure::NotAcceptable(
            "this registration step was not offered to you, or too long ago: start again".into(),
        )
    };
    let mut parts = sealed.splitn(3, '.');
    let (Some(at), Some(mac), Some(step)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(refused());
    };
    let at: i64 = at.parse().map_err(|_| refused())?;
    if !(0..=STEP_TTL_SECONDS).contains(&(now - at)) {
        return Err(refused());
    }
    let expected = step_mac(key, user, at, step);
    let same = mac.len() == expected.len()
        && mac
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |differ, (a, b)| differ | (a ^ b))
            == 0;
    if same {
        Ok(step.to_owned())
    } else {
        Err(refused())
    }
}

/// The contact `to` is, when the bridge offers commands on its address.
pub fn commanded_contact(gateway: &Gateway, to: Option<&Jid>) -> Option<ForeignId> {
    let contact = gateway.contact_of(to?).ok().flatten()?;
    gateway.bridge.offers_commands(&contact).then_some(contact)
}

/// The commands offered on a contact's address ([`jabbridge_sdk::Command::on_contacts`])
/// that `role` may run.
pub fn contact_catalog(gateway: &Gateway, role: Option<Role>) -> Vec<Listed> {
    catalog(gateway, role)
        .into_iter()
        .filter(|listed| {
            matches!(&listed.source, Source::Bridge(command) if command.contact_field.is_some())
        })
        .collect()
}

/// Runs one step of command `node` on `contact`'s address for `user`: its form without
/// the field the contact's address fills, then the bridge runs it with that field set.
pub async fn run_on_contact(
    gateway: &Gateway,
    user: &str,
    role: Role,
    contact: &ForeignId,
    node: &str,
    input: Option<FormValues>,
) -> Result<Outcome, StanzaFailure> {
    let not_here = || StanzaFailure::ItemNotFound(format!("no command '{node}' here"));
    let listed = contact_catalog(gateway, None)
        .into_iter()
        .find(|command| command.node == node)
        .ok_or_else(not_here)?;
    listed.permit(role, &gateway.domain)?;
    let Source::Bridge(command) = listed.source else {
        return Err(not_here());
    };
    let field = command.contact_field.clone().ok_or_else(not_here)?;
    let address = gateway.bridge.format_address(contact);
    run_bridge_command(gateway, user, &command, input, Some((&field, address))).await
}

/// A bridge command: its form first (when it has one), then the bridge runs it. Run on a
/// contact's address, `fixed` is the field that address fills: the form shown leaves it
/// out, and the values the bridge gets hold it whatever the user sent.
async fn run_bridge_command(
    gateway: &Gateway,
    user: &str,
    command: &jabbridge_sdk::Command,
    input: Option<FormValues>,
    fixed: Option<(&str, String)>,
) -> Result<Outcome, StanzaFailure> {
    let node = command.node.as_str();
    // On a contact whose address is the form's only field, there is nothing to ask.
    let asks_nothing = |form: &jabbridge_sdk::Form| {
        fixed
            .as_ref()
            .is_some_and(|(field, _)| form.fields.iter().all(|shown| shown.var == *field))
    };
    let input = match (&command.form, input) {
        (Some(form), None) if asks_nothing(form) => Some(FormValues::default()),
        (_, input) => input,
    };
    let values = match (command.form.clone(), input) {
        (Some(mut form), None) => {
            let mut known = FormValues::default();
            if let Some((field, address)) = &fixed {
                form.fields.retain(|shown| shown.var != *field);
                form.title = format!("{} ({address})", form.title);
                known.0.insert((*field).to_owned(), address.clone());
            }
            // Shown filled in as they stand (secrets never: the form leaves them out).
            let reading = command.current(UserJid::new(user), known);
            let current = gateway.call("reading your settings", reading).await?;
            return Ok(Outcome::Form(form, current));
        }
        (Some(form), Some(mut values)) => {
            if let Some((field, address)) = fixed {
                values.0.insert(field.to_owned(), address);
            }
            form.validate(&values)
                .map_err(StanzaFailure::NotAcceptable)?;
            values
        }
        (None, _) => {
            let mut values = FormValues::default();
            if let Some((field, address)) = fixed {
                values.0.insert(field.to_owned(), address);
            }
            values
        }
    };
    let call = command.run(UserJid::new(user), values);
    match gateway.call("the command", call).await? {
        Ok(text) => {
            tracing::info!(user, command = node, "ran a bridge command");
            Ok(Outcome::Done(text))
        }
        Err(CommandError::Rejected(reason)) => Err(StanzaFailure::NotAcceptable(reason)),
        Err(CommandError::Failed(reason)) => Err(StanzaFailure::Unavailable(reason)),
    }
}

/// The user's registration as form values (secrets are never shown back).
async fn current_values(gateway: &Gateway, user: &str) -> Result<FormValues, StanzaFailure> {
    let stored = gateway
        .store
        .registration(&gateway.domain, user)
        .await
        .map_err(|_| StanzaFailure::Internal)?;
    let mut values = FormValues::default();
    if let Some(serde_json::Value::Object(fields)) = stored.as_ref().map(|data| data.as_json()) {
        for (key, value) in fields {
            if let serde_json::Value::String(text) = value {
                values.0.insert(key.clone(), text.clone());
            }
        }
    }
    Ok(values)
}

async fn status_text(gateway: &Gateway, user: &str) -> Result<String, StanzaFailure> {
    if !gateway.is_member(user).await? {
        return Ok(format!(
            "You are not registered with {}. Say 'register' to start.",
            gateway.domain
        ));
    }
    let link = match gateway.bridge.user_status(&UserJid::new(user)) {
        UserStatus::Connected(None) => "connected".to_owned(),
        UserStatus::Connected(Some(text)) => format!("connected ({text})"),
        UserStatus::Unavailable(text) => format!("unavailable: {text}"),
        UserStatus::BadCredentials(text) => {
            format!("credentials refused: {text}. Say 'register' to change them.")
        }
    };
    Ok(format!(
        "You are registered with {} ({}).\nYour link to the network: {link}.",
        gateway.domain,
        gateway.info().name
    ))
}

async fn stats_text(gateway: &Gateway) -> Result<String, StanzaFailure> {
    let internal = |_| StanzaFailure::Internal;
    let store = &gateway.store;
    let domain = gateway.domain.as_str();
    let users = store.registered_jids(domain).await.map_err(internal)?.len();
    let mut lines = vec![
        format!(
            "{domain}: link {}",
            if gateway.link.state.is_connected() {
                "up"
            } else {
                "down"
            }
        ),
        format!(
            "Registered users: {users}; online: {}",
            gateway.online_users()
        ),
    ];
    for (queue, label) in [(Queue::Outbox, "To the network"), (Queue::Inbox, "To XMPP")] {
        lines.push(format!(
            "{label}: {} waiting, {} delivered, {} failed",
            store.pending(queue, domain).await.map_err(internal)?,
            store
                .finished(queue, domain, true)
                .await
                .map_err(internal)?,
            store
                .finished(queue, domain, false)
                .await
                .map_err(internal)?,
        ));
    }
    let (bounced, users) = store.bounced(domain, 10).await.map_err(internal)?;
    if bounced > 0 {
        lines.push(format!(
            "Sent back by users' servers: {bounced}, for {}",
            users.join(", ")
        ));
    }
    Ok(lines.join("\n"))
}

/// Answers a chat message to the bare domain: `help`, or a command with its values as
/// `field=value` words.
pub async fn by_chat(gateway: &Gateway, user: &str, role: Role, text: &str) -> String {
    let text = text.trim();
    let (word, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    let word = word.to_lowercase();
    if matches!(word.as_str(), "help" | "?" | "commands" | "") {
        return help(gateway, user, role);
    }
    let Some(command) = catalog(gateway, None)
        .into_iter()
        .find(|command| command.node == word)
    else {
        return format!("I don't know '{word}'.\n{}", help(gateway, user, role));
    };
    let values = parse_values(rest);
    let form = command.form(gateway);
    let secrets: Vec<&str> = form
        .iter()
        .flat_map(|form| &form.fields)
        .filter(|field| field.kind == FieldKind::Secret && values.0.contains_key(&field.var))
        .map(|field| field.var.as_str())
        .collect();
    if !secrets.is_empty() {
        // A chat message stays in the user's archive (and their server's): secrets go
        // through the form, whose fields clients hide.
        return format!(
            "{} {} secret: send it through the form instead (your client's registration or \
             ad-hoc command '{}'), not by chat, which your server keeps in your archive. \
             Nothing was changed; consider changing that secret.",
            secrets.join(", "),
            if secrets.len() == 1 {
                "is a"
            } else {
                "are each a"
            },
            command.node
        );
    }
    let input = (command.takes_values() && !values.0.is_empty()).then_some(values);
    if command.node == "register" && gateway.info().capabilities.registration_steps {
        return format!(
            "{} registers in several steps: run the command 'register' from your client's \
             commands (XEP-0050).",
            gateway.domain
        );
    }
    match run(gateway, user, role, &command.node, input, None).await {
        Ok(Outcome::Done(text)) => text,
        Ok(Outcome::Next(form, _)) => format!(
            "{}\n{}\nThis goes on in several steps: run the command '{}' from your client's \
             commands (XEP-0050) to finish.",
            form.title, form.instructions, command.node
        ),
        Ok(Outcome::Form(form, _)) => {
            let fields: Vec<String> = form
                .fields
                .iter()
                .map(|field| {
                    format!(
                        "  {}=…  {}{}",
                        field.var,
                        field.label,
                        if field.required { " (required)" } else { "" }
                    )
                })
                .collect();
            format!(
                "{}\n{}\nSay: {} {}\n{}",
                form.title,
                form.instructions,
                command.node,
                command.usage,
                fields.join("\n")
            )
        }
        Err(failure) => format!("{}: {failure}", command.node),
    }
}

fn help(gateway: &Gateway, user: &str, role: Role) -> String {
    let mut lines = vec![format!(
        "This is {} (Jabbridge {}). Write to a contact as ADDRESS@{}.",
        gateway.info().name,
        env!("CARGO_PKG_VERSION"),
        gateway.domain
    )];
    lines.extend(gateway.bridge.describe(&UserJid::new(user)));
    lines.push("Commands (also as ad-hoc commands):".into());
    for command in catalog(gateway, Some(role)) {
        let usage = if command.usage.is_empty() {
            String::new()
        } else {
            format!(" {}", command.usage)
        };
        lines.push(format!("  {}{usage}: {}", command.node, command.name));
    }
    lines.join("\n")
}

/// `a=1 b=two words` → `{a: "1", b: "two words"}`: a word with `=` starts a field; words
/// without continue the previous value.
fn parse_values(text: &str) -> FormValues {
    let mut values = FormValues::default();
    let mut current: Option<String> = None;
    for word in text.split_whitespace() {
        match word.split_once('=') {
            Some((key, value)) if !key.is_empty() => {
                values.0.insert(key.to_owned(), value.to_owned());
                current = Some(key.to_owned());
            }
            _ => {
                if let Some(value) = current.as_ref().and_then(|key| values.0.get_mut(key)) {
                    value.push(' ');
                    value.push_str(word);
                }
            }
        }
    }
    values
}

/// Asks the process to read its configuration file again (as SIGHUP does), and says what
/// will change, or why nothing does.
async fn reload(gateway: &Gateway) -> Result<String, StanzaFailure> {
    let Some(reloads) = &gateway.reload else {
        return Err(StanzaFailure::FeatureNotImplemented(
            "this gateway cannot reload its configuration".into(),
        ));
    };
    let (answer, answered) = tokio::sync::oneshot::channel();
    let unavailable = || StanzaFailure::Unavailable("Jabbridge is shutting down".into());
    let request = super::ReloadRequest {
        from: gateway.domain.clone(),
        answer,
    };
    reloads.send(request).await.map_err(|_| unavailable())?;
    match tokio::time::timeout(std::time::Duration::from_secs(20), answered).await {
        Ok(Ok(Ok(summary))) => Ok(format!("Reloading: {summary}.")),
        Ok(Ok(Err(error))) => Err(StanzaFailure::NotAcceptable(format!(
            "the configuration was not reloaded; the running one stays: {error}"
        ))),
        Ok(Err(_)) => Err(unavailable()),
        Err(_) => Err(StanzaFailure::Timeout(
            "the reload did not answer within 20 s; see the log".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_steps_open_only_for_whom_they_were_sealed_and_not_for_ever() {
        let key = [1; 32];
        let sealed = seal_step(&key, "alice@x", "code:+15550001111", 1000);
        let open = |key: &[u8; 32], user: &str, sealed: &str, now: i64| {
            open_step(key, user, sealed, now).ok()
        };
        assert_eq!(
            open(&key, "alice@x", &sealed, 1060).as_deref(),
            Some("code:+15550001111")
        );
        assert_eq!(open(&key, "mallory@x", &sealed, 1060), None);
        assert_eq!(
            open(&[2; 32], "alice@x", &sealed, 1060),
            None,
            "another bridge's"
        );
        assert_eq!(
            open(&key, "alice@x", &sealed, 1000 + 31 * 60),
            None,
            "expired"
        );
        let forged = sealed.replace("+15550001111", "+15559999999");
        assert_eq!(open(&key, "alice@x", &forged, 1060), None);
        assert_eq!(open(&key, "alice@x", "code:+15550001111", 1060), None);
    }

    #[test]
    fn values_in_chat() {
        let values = parse_values("prefix=Bob says: name=x");
        assert_eq!(values.get("prefix"), Some("Bob says:"));
        assert_eq!(values.get("name"), Some("x"));
        assert!(parse_values("").0.is_empty());
        assert!(parse_values("=x stray").0.is_empty());
    }

    #[test]
    fn users_do_not_see_admin_commands() {
        let listed = |admin| Listed {
            node: "x".into(),
            name: "x".into(),
            admin,
            usage: String::new(),
            source: Source::Bridge(jabbridge_sdk::Command::new("x", "x", |_, _| async {
                Ok(String::new())
            })),
        };
        assert!(listed(false).allowed(Some(Role::User)));
        assert!(!listed(true).allowed(Some(Role::User)));
        assert!(listed(true).allowed(Some(Role::Admin)));
        assert!(!listed(false).allowed(None));
    }

    proptest::proptest! {
        /// Anything typed after a command reads without a panic, and `field=value` words
        /// come back as the fields and values they name.
        #[test]
        fn chat_values_read_back(
            typed in "\\PC{0,80}",
            pairs in proptest::collection::btree_map("[a-z_]{1,8}", "[a-zA-Z0-9.+]{0,8}", 0..5),
        ) {
            let _ = parse_values(&typed);
            let text: Vec<String> = pairs.iter().map(|(key, value)| format!("{key}={value}")).collect();
            let values = parse_values(&text.join(" "));
            proptest::prop_assert_eq!(values.0, pairs);
        }
    }
}
