//! Unit tests of the webhook bridge, through the SDK's test kit (no XMPP server, no
//! receiver: the integration tests have those).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jabbridge_sdk::http::{HeaderValue, Method, StatusCode, header};
use jabbridge_sdk::serde_json::{Value, json};
use jabbridge_sdk::testkit::TestCore;
use jabbridge_sdk::{
    Bridge, FormValues, HttpRequest, MessageId, OutgoingMessage, SendError, UserJid,
};

use super::*;
use crate::outgoing::{Verdict, retry_after, verdict, webhook_id};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn settings() -> Value {
    json!({
        "endpoint": [
            {"name": "alerts", "url": "http://127.0.0.1:9/hook", "signing_secret": SECRET,
             "inbound_token": "t0k", "deliver_to": ["alice@example.org", "bob@example.org"]},
            {"name": "signed", "inbound_signing_secret": SECRET, "deliver_to": ["alice@example.org"]},
            {"name": "ops-only", "url": "http://127.0.0.1:9/ops", "allow": ["ops.example.org"]},
        ],
        "max_body": 1000,
    })
}

fn bridge(kit: &TestCore) -> Arc<dyn Bridge> {
    kit.build(build, settings()).unwrap()
}

fn build_error(settings: Value) -> String {
    match TestCore::new("hooks.test").build(build, settings) {
        Err(error) => error.to_string(),
        Ok(_) => panic!("accepted a bad config"),
    }
}

#[test]
fn config_errors_name_the_endpoint_key() {
    let cases = [
        (
            json!({"endpoint": [{"name": "Alerts", "url": "http://x/"}]}),
            "endpoint[0].name",
        ),
        (
            json!({"endpoint": [{"name": "a", "url": "ftp://x/"}]}),
            "endpoint[0].url",
        ),
        (json!({"endpoint": [{"name": "a"}]}), "endpoint[0].url"),
        (
            json!({"endpoint": [{"name": "a", "url": "http://x/", "signing_secret": "whsec_!!"}]}),
            "endpoint[0].signing_secret",
        ),
        (
            json!({"endpoint": [{"name": "a", "inbound_token": "t"}]}),
            "endpoint[0].deliver_to",
        ),
        (
            json!({"endpoint": [{"name": "a", "url": "http://x/", "deliver_to": ["a@b"]}]}),
            "endpoint[0].deliver_to",
        ),
        (
            json!({"endpoint": [{"name": "a", "url": "http://x/"}, {"name": "a", "url": "http://y/"}]}),
            "endpoint[1].name",
        ),
        (
            json!({"endpoint": [{"name": "a", "url": "http://x/", "tokn": "t"}]}),
            "tokn",
        ),
    ];
    for (settings, key) in cases {
        let error = build_error(settings);
        assert!(error.contains(key), "{key}: {error}");
    }
}

#[test]
fn answers_are_judged() {
    let judge = |code: u16| verdict("a", StatusCode::from_u16(code).unwrap(), None, "");
    assert_eq!(judge(200), Verdict::Delivered);
    assert_eq!(judge(204), Verdict::Delivered);
    assert_eq!(judge(410), Verdict::Gone);
    for code in [408, 429, 500, 502, 503] {
        assert!(matches!(judge(code), Verdict::Retry(..)), "{code}");
    }
    for code in [301, 400, 401, 403, 404, 422] {
        assert!(matches!(judge(code), Verdict::Refused(..)), "{code}");
    }
    let Verdict::Refused(reason) = verdict("a", StatusCode::NOT_FOUND, None, "no such hook") else {
        panic!()
    };
    assert_eq!(reason, "endpoint 'a' answered 404 Not Found: no such hook");
}

#[test]
fn retry_after_in_seconds_or_as_a_date() {
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let header = |text: &str| HeaderValue::from_str(text).unwrap();
    assert_eq!(retry_after(&header("7"), now), Some(Duration::from_secs(7)));
    let date = httpdate::fmt_http_date(now + Duration::from_secs(90));
    assert_eq!(
        retry_after(&header(&date), now),
        Some(Duration::from_secs(90))
    );
    assert_eq!(
        retry_after(&header("86400"), now),
        Some(Duration::from_secs(3600))
    );
    assert_eq!(retry_after(&header("soon"), now), None);
}

#[test]
fn webhook_ids_are_stable_per_message_and_distinct_across_senders() {
    assert_eq!(webhook_id("a@x", "1"), webhook_id("a@x", "1"));
    assert_ne!(webhook_id("a@x", "1"), webhook_id("b@x", "1"));
    assert_ne!(webhook_id("a@x", "1"), webhook_id("a@x", "2"));
    assert!(webhook_id("a@x", "weird\nid").starts_with("msg_"));
}

fn message(user: &str, contact: &str) -> OutgoingMessage {
    OutgoingMessage {
        id: MessageId::new("m1"),
        user: UserJid::new(user),
        contact: ForeignId::new(contact),
        text: "hi".into(),
        attachments: Vec::new(),
        accepted_at: SystemTime::now(),
        registration: None,
        replaces: None,
        room: None,
    }
}

#[tokio::test]
async fn sending_refuses_what_cannot_work_and_retries_an_unreachable_receiver() {
    let kit = TestCore::new("hooks.test");
    let bridge = bridge(&kit);
    // Port 9 (discard) is closed on loopback: a connection error, worth a retry.
    let error = bridge
        .send_message(message("alice@example.org", "alerts"))
        .await
        .unwrap_err();
    assert!(matches!(error, SendError::Transient { .. }), "{error:?}");
    let permanent = |error: SendError| match error {
        SendError::Permanent { reason } => reason,
        other => panic!("{other:?}"),
    };
    let reason = permanent(
        bridge
            .send_message(message("alice@example.org", "ops-only"))
            .await
            .unwrap_err(),
    );
    assert!(reason.contains("may not write"), "{reason}");
    let reason = permanent(
        bridge
            .send_message(message("alice@example.org", "signed"))
            .await
            .unwrap_err(),
    );
    assert!(reason.contains("only receives"), "{reason}");
    assert!(bridge.parse_address("nope").is_err());
    assert!(bridge.parse_address("alerts").is_ok());
}

fn choose(endpoint: &str) -> FormValues {
    FormValues([("endpoint".to_owned(), endpoint.to_owned())].into())
}

#[tokio::test]
async fn a_disabled_endpoint_refuses_until_enabled_and_survives_a_rebuild() {
    let kit = TestCore::new("hooks.test");
    let bridge = bridge(&kit);
    let admin = UserJid::new("admin@example.org");
    let nodes: Vec<String> = bridge.commands().into_iter().map(|c| c.node).collect();
    assert_eq!(nodes, ["enable-endpoint", "disable-endpoint"]);
    jabbridge_sdk::testkit::run_command(&*bridge, &admin, "disable-endpoint", &choose("alerts"))
        .await
        .unwrap();
    // A new instance (a restart) sees the saved flag.
    let bridge = kit.build(build, settings()).unwrap();
    let error = bridge
        .send_message(message("alice@example.org", "alerts"))
        .await
        .unwrap_err();
    let SendError::Permanent { reason } = error else {
        panic!("{error:?}")
    };
    assert!(
        reason.contains("disabled since") && reason.contains("enable-endpoint"),
        "{reason}"
    );
    let help = bridge.describe(&UserJid::new("alice@example.org")).unwrap();
    assert!(
        help.contains("alerts@hooks.test (posts to 127.0.0.1) — DISABLED"),
        "{help}"
    );
    let said =
        jabbridge_sdk::testkit::run_command(&*bridge, &admin, "enable-endpoint", &choose("alerts"))
            .await
            .unwrap();
    assert_eq!(said, "alerts@hooks.test is enabled again.");
    assert!(matches!(
        bridge
            .send_message(message("alice@example.org", "alerts"))
            .await,
        Err(SendError::Transient { .. })
    ));
    assert!(
        jabbridge_sdk::testkit::run_command(&*bridge, &admin, "enable-endpoint", &choose("signed"))
            .await
            .is_err()
    );
}

#[test]
fn help_lists_what_each_user_may_use() {
    let kit = TestCore::new("hooks.test");
    let bridge = bridge(&kit);
    let alice = bridge.describe(&UserJid::new("alice@example.org")).unwrap();
    assert!(
        alice.contains("alerts@hooks.test (posts to 127.0.0.1)"),
        "{alice}"
    );
    assert!(!alice.contains("ops-only"), "{alice}");
    assert!(
        alice.contains("write to you:\n  alerts@hooks.test\n  signed@hooks.test"),
        "{alice}"
    );
    let ops = bridge
        .describe(&UserJid::new("carol@ops.example.org"))
        .unwrap();
    assert!(ops.contains("ops-only@hooks.test"), "{ops}");
    assert!(!ops.contains("write to you"), "{ops}");
}

fn post(path: &str, headers: &[(&str, &str)], body: &str) -> HttpRequest {
    let mut request = HttpRequest::new(body.to_owned().into());
    *request.method_mut() = Method::POST;
    *request.uri_mut() = path.parse().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    request
}

async fn status(bridge: &Arc<dyn Bridge>, request: HttpRequest) -> (u16, Value) {
    let response = bridge.handle_http(request).await;
    let status = response.status().as_u16();
    let body = jabbridge_sdk::serde_json::from_slice(response.body()).unwrap_or(Value::Null);
    (status, body)
}

const TOKEN: (&str, &str) = ("authorization", "Bearer t0k");

#[tokio::test]
async fn incoming_needs_credentials_and_a_good_body() {
    let kit = TestCore::new("hooks.test");
    let bridge = bridge(&kit);
    let good = r#"{"text": "disk full"}"#;
    let cases: Vec<(HttpRequest, u16, &str)> = vec![
        (post("/endpoints/nope", &[TOKEN], good), 404, "no endpoint"),
        (
            post("/endpoints/ops-only", &[TOKEN], good),
            404,
            "no endpoint",
        ),
        (
            post("/endpoints/alerts", &[], good),
            401,
            "missing credentials",
        ),
        (
            post(
                "/endpoints/alerts",
                &[("authorization", "Bearer t0x")],
                good,
            ),
            401,
            "wrong bearer",
        ),
        (post("/endpoints/signed", &[TOKEN], good), 401, "signature"),
        (
            post("/endpoints/alerts", &[TOKEN], "{"),
            400,
            "not a JSON message",
        ),
        (
            post("/endpoints/alerts", &[TOKEN], r#"{"text": "  "}"#),
            400,
            "'text'",
        ),
        (
            post("/endpoints/alerts", &[TOKEN], r#"{"text": 3}"#),
            400,
            "not a JSON",
        ),
        (
            post(
                "/endpoints/alerts",
                &[TOKEN],
                &format!(r#"{{"text": "{}"}}"#, "x".repeat(2000)),
            ),
            413,
            "at most 1000",
        ),
        (
            post(
                "/endpoints/alerts",
                &[TOKEN],
                r#"{"text": "x", "to": "eve@example.org"}"#,
            ),
            403,
            "deliver_to",
        ),
        (
            post(
                "/endpoints/alerts",
                &[TOKEN, ("content-type", "application/x-www-form-urlencoded")],
                "text=x",
            ),
            400,
            "payload",
        ),
    ];
    for (request, expected, says) in cases {
        let path = request.uri().to_string();
        let (status, body) = status(&bridge, request).await;
        assert_eq!(status, expected, "{path}: {body}");
        let text = body["error"].as_str().unwrap_or_default();
        assert!(text.contains(says), "{path}: {text}");
    }
    let mut get = post("/endpoints/alerts", &[TOKEN], good);
    *get.method_mut() = Method::GET;
    assert_eq!(bridge.handle_http(get).await.status(), 405);
    assert!(
        kit.next_delivered(Duration::from_millis(20))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn incoming_reaches_each_recipient_once_per_id() {
    let kit = TestCore::new("hooks.test");
    let bridge = bridge(&kit);
    let (code, body) = status(
        &bridge,
        post(
            "/endpoints/alerts",
            &[TOKEN],
            r#"{"text": "disk full", "id": "a1"}"#,
        ),
    )
    .await;
    assert_eq!(
        (code, &body["recipients"]),
        (202, &json!(["alice@example.org", "bob@example.org"]))
    );
    for user in ["alice@example.org", "bob@example.org"] {
        let message = kit.next_delivered(Duration::from_secs(1)).await.unwrap();
        assert_eq!(message.user.as_str(), user);
        assert_eq!(message.contact.as_str(), "alerts");
        assert_eq!(message.text, "disk full");
        assert_eq!(message.foreign_id.as_str(), "alerts/a1");
    }
    // `to` picks recipients (case-insensitively); Slack's form shape with attachments.
    let payload = r#"{"to": ["BOB@example.org"], "attachments": [{"fallback": "deploy done"}], "username": "ci"}"#;
    let form: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", payload)
        .finish();
    let (code, _) = status(
        &bridge,
        post(
            "/endpoints/alerts",
            &[TOKEN, ("content-type", "application/x-www-form-urlencoded")],
            &form,
        ),
    )
    .await;
    assert_eq!(code, 202);
    let message = kit.next_delivered(Duration::from_secs(1)).await.unwrap();
    assert_eq!(
        (message.user.as_str(), message.text.as_str()),
        ("bob@example.org", "deploy done")
    );
    assert!(
        kit.next_delivered(Duration::from_millis(20))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn signed_incoming_uses_the_webhook_id_and_refuses_stale_or_forged() {
    let kit = TestCore::new("hooks.test");
    let bridge = bridge(&kit);
    let signer = standardwebhooks::Webhook::new(SECRET).unwrap();
    let body = r#"{"text": "signed hello"}"#;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let signed = |timestamp: i64, body: &str| {
        let signature = signer.sign("evt_1", timestamp, body.as_bytes()).unwrap();
        post(
            "/endpoints/signed",
            &[
                ("webhook-id", "evt_1"),
                ("webhook-timestamp", &timestamp.to_string()),
                ("webhook-signature", &signature),
            ],
            body,
        )
    };
    let (code, _) = status(&bridge, signed(now - 600, body)).await;
    assert_eq!(code, 401, "a stale timestamp");
    let mut forged = signed(now, body);
    *forged.body_mut() = r#"{"text": "forged"}"#.into();
    assert_eq!(status(&bridge, forged).await.0, 401);
    assert_eq!(status(&bridge, signed(now, body)).await.0, 202);
    let message = kit.next_delivered(Duration::from_secs(1)).await.unwrap();
    assert_eq!(message.foreign_id.as_str(), "signed/evt_1");
    assert_eq!(
        message.timestamp,
        Some(UNIX_EPOCH + Duration::from_secs(now as u64))
    );
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(128))]
    /// Whatever an authenticated sender posts is accepted (202) or refused with a 4xx that
    /// says why: never a 5xx, never a panic.
    #[test]
    fn any_body_is_accepted_or_refused_with_a_4xx(
        body in "\\PC{0,300}|\\{\"text\": \"[^\"\\\\]{0,40}\"(, \"(id|user|contact|x)\": (\"[a-z@.]{0,12}\"|[0-9]{1,3}|null|\\[\\]))*\\}",
        path in "/endpoints/(alerts|signed|nope|a/b)|/[a-z]{0,8}",
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let (code, answer) = runtime.block_on(async {
            let kit = TestCore::new("hooks.test");
            let bridge = bridge(&kit);
            status(&bridge, post(&path, &[TOKEN], &body)).await
        });
        proptest::prop_assert!(
            code == 202 || (400..500).contains(&code),
            "{code} {answer} for {path} {body}"
        );
        if code != 202 {
            proptest::prop_assert!(answer.get("error").is_some() || answer.is_null(), "{answer}");
        }
    }
}
