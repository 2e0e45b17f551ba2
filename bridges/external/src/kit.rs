//! Playing the core against a bridge process without an XMPP server or a database:
//! `jabbridge doctor`'s check of an external bridge ([`check_setup`]).

use jabbridge_sdk::Checked;
use serde_json::Value;

use crate::child::{self, CallError};
use crate::protocol::{self, to_bridge};
use crate::{ExternalConfig, accept_handshake, initialize_params};

/// `jabbridge doctor`: starts the process in `check` mode, runs its `setup/check`, stops it.
pub async fn check_setup(
    config: &ExternalConfig,
    domain: &str,
    public_url: Option<&str>,
) -> Vec<Checked> {
    let what = format!("bridge process {:?}", config.command);
    // Nothing the process asks of the core is answered in check mode.
    let started = match child::start(&config.spawn(), config.limits(), || {}, |_, _| {}) {
        Ok(started) => started,
        Err(error) => {
            return vec![Checked {
                what,
                outcome: Err(format!(
                    "does not start: {error} (check `command` and `cwd`)"
                )),
            }];
        }
    };
    let child::Started {
        connection,
        mut process,
    } = started;
    let params = initialize_params(config, domain, public_url, "check");
    let answer = connection
        .call::<_, protocol::InitializeResult>(to_bridge::INITIALIZE, &params, config.start_timeout)
        .await
        .map_err(|error| describe_refusal(&error))
        .and_then(accept_handshake);
    let mut checks = Vec::new();
    match answer {
        Ok(handshake) => {
            checks.push(Checked {
                what,
                outcome: Ok(format!(
                    "{} {} speaks protocol {}",
                    handshake.answer.bridge.name,
                    handshake.answer.bridge.version.as_deref().unwrap_or(""),
                    handshake.answer.protocol.version
                )),
            });
            connection.notify(to_bridge::INITIALIZED, &protocol::Empty {});
            let own = connection
                .call::<_, protocol::SetupResult>(
                    to_bridge::SETUP_CHECK,
                    &protocol::Empty {},
                    config.request_timeout,
                )
                .await;
            match own {
                Ok(result) => checks.extend(result.checks.into_iter().map(|check| Checked {
                    what: check.what,
                    outcome: if check.ok {
                        Ok(check.detail)
                    } else {
                        Err(check.detail)
                    },
                })),
                Err(CallError::Refused(error))
                    if error.code == protocol::codes::METHOD_NOT_FOUND => {}
                Err(error) => checks.push(Checked {
                    what: "the bridge's own checks (setup/check)".into(),
                    outcome: Err(error.to_string()),
                }),
            }
        }
        Err(why) => checks.push(Checked {
            what,
            outcome: Err(why),
        }),
    }
    child::stop(&connection, &mut process, config.shutdown_grace, "stop").await;
    checks
}

/// A refused `initialize` in words, naming the config keys the bridge names
/// (`data.errors: [{key, message}]`).
fn describe_refusal(error: &CallError) -> String {
    let CallError::Refused(refusal) = error else {
        return error.to_string();
    };
    let keys: Vec<String> = serde_json::to_value(&refusal.data)
        .ok()
        .and_then(|data| data.get("errors").cloned())
        .and_then(|errors| errors.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|error| {
            Some(format!(
                "settings.{}: {}",
                error.get("key")?.as_str()?,
                error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("wrong")
            ))
        })
        .collect();
    if keys.is_empty() {
        refusal.text().to_owned()
    } else {
        keys.join("; ")
    }
}
