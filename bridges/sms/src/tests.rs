//! The bridge's webhook handling through the SDK's test kit: which account's signature is
//! accepted, whom a text reaches, and what a status callback reports.

use std::time::Duration;

use jabbridge_sdk::testkit::TestCore;
use jabbridge_sdk::{
    Bridge, DeliveryReport, FormValues, HttpRequest, MessageId, UserJid, http, serde_json,
};

const PUBLIC: &str = "https://gw.example.org";

fn bridge(kit: &TestCore) -> std::sync::Arc<dyn Bridge> {
    kit.build(
        crate::build,
        serde_json::json!({
            "provider": "twilio",
            "twilio": {"account_sid": "ACgateway", "auth_token": "gateway-token"},
        }),
    )
    .expect("a valid config")
}

fn signed(path: &str, params: &[(&str, &str)], token: &str) -> HttpRequest {
    let owned: Vec<(String, String)> = params
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    let url = format!("{PUBLIC}/bridges/sms.test{path}");
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter())
        .finish();
    http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/x-www-form-urlencoded")
        .header(
            "x-twilio-signature",
            crate::twilio::signature(token, &url, &owned),
        )
        .body(body.into_bytes().into())
        .expect("a request")
}

fn values(pairs: &[(&str, &str)]) -> FormValues {
    FormValues(
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect(),
    )
}

#[tokio::test]
async fn a_self_service_number_is_verified_with_its_owners_account() {
    let kit = TestCore::new("sms.test").with_public_url(PUBLIC);
    let bridge = bridge(&kit);
    let admin = UserJid::new("admin@x");
    let said = bridge
        .run_command(
            &admin,
            "assign-number",
            &values(&[("number", "555 000 2222"), ("owner", "Bob@x")]),
        )
        .await
        .expect("assigned");
    assert_eq!(said, "+15550002222 now belongs to bob@x.");
    kit.set_registration(
        "bob@x",
        serde_json::json!({
            "number": "+15550002222",
            "provider": "twilio",
            "twilio": {"account_sid": "ACbob", "auth_token": "bob-token"},
        }),
    );
    let text = [
        ("MessageSid", "SM1"),
        ("AccountSid", "ACbob"),
        ("From", "+15557654321"),
        ("To", "+15550002222"),
        ("Body", "hi bob"),
        ("NumMedia", "0"),
    ];
    let forged = bridge
        .handle_http(signed("/twilio/message", &text, "guess"))
        .await;
    assert_eq!(forged.status(), http::StatusCode::FORBIDDEN);
    assert!(
        kit.next_delivered(Duration::from_millis(50))
            .await
            .is_none(),
        "a forged text is not delivered"
    );
    let answer = bridge
        .handle_http(signed("/twilio/message", &text, "bob-token"))
        .await;
    assert_eq!(answer.status(), http::StatusCode::OK);
    let delivered = kit
        .next_delivered(Duration::from_secs(1))
        .await
        .expect("delivered to the owner");
    assert_eq!(delivered.user.as_str(), "bob@x");
    assert_eq!(delivered.contact.as_str(), "+15557654321");
    assert_eq!(delivered.text, "hi bob");
    assert_eq!(delivered.foreign_id.as_str(), "SM1");
    // A status callback signed only by bob's own account may report on bob's messages
    // only: the core is told to check the sender.
    let status = [
        ("MessageSid", "SMbob1"),
        ("AccountSid", "ACbob"),
        ("From", "+15550002222"),
        ("To", "+15557654321"),
        ("MessageStatus", "delivered"),
    ];
    let answer = bridge
        .handle_http(signed("/twilio/status", &status, "bob-token"))
        .await;
    assert_eq!(answer.status(), http::StatusCode::OK);
    assert_eq!(kit.report_senders(), vec![Some(UserJid::new("bob@x"))]);
}

#[tokio::test]
async fn status_callbacks_become_reports_and_steps_on_the_way_do_not() {
    let kit = TestCore::new("sms.test").with_public_url(PUBLIC);
    let bridge = bridge(&kit);
    let status = |status: &'static str| {
        [
            ("MessageSid", "SM9"),
            ("AccountSid", "ACgateway"),
            ("From", "+15550001111"),
            ("To", "+15557654321"),
            ("MessageStatus", status),
            ("ErrorCode", "30003"),
        ]
    };
    for step in ["queued", "sent"] {
        let answer = bridge
            .handle_http(signed("/twilio/status", &status(step), "gateway-token"))
            .await;
        assert_eq!(answer.status(), http::StatusCode::OK);
    }
    assert!(kit.reports().is_empty());
    bridge
        .handle_http(signed("/twilio/status", &status("failed"), "gateway-token"))
        .await;
    let reports = kit.reports();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].0, MessageId::new("SM9"));
    // Signed by the gateway's own account: about any user's message.
    assert_eq!(kit.report_senders(), vec![None]);
    let DeliveryReport::Failed(reason) = &reports[0].1 else {
        panic!("not a failure: {reports:?}");
    };
    assert!(
        reason.contains("30003") && reason.contains("unreachable destination handset"),
        "{reason}"
    );
}

#[tokio::test]
async fn texts_go_only_to_allowed_countries_and_short_codes_only_when_enabled() {
    let kit = TestCore::new("sms.test").with_public_url(PUBLIC);
    let only_us = bridge(&kit);
    let message = |contact: &str| jabbridge_sdk::OutgoingMessage {
        id: MessageId::new("m1"),
        user: UserJid::new("alice@x"),
        contact: jabbridge_sdk::ForeignId::new(contact),
        text: "hi".into(),
        attachments: Vec::new(),
        accepted_at: std::time::SystemTime::now(),
        registration: None,
        replaces: None,
    };
    let refusal = |sent: Result<jabbridge_sdk::SendOutcome, jabbridge_sdk::SendError>| match sent {
        Err(jabbridge_sdk::SendError::Permanent { reason }) => reason,
        other => panic!("not refused for good: {other:?}"),
    };
    let abroad = refusal(only_us.send_message(message("+442079460958")).await);
    assert!(
        abroad.contains("(GB) are not allowed") && abroad.contains("US"),
        "{abroad}"
    );
    let short = refusal(only_us.send_message(message("12345")).await);
    assert!(short.contains("short codes"), "{short}");
    // A US number passes this check (and fails later: alice has no number of her own).
    let home = refusal(only_us.send_message(message("+15557654321")).await);
    assert!(!home.contains("not allowed"), "{home}");

    let wider = kit
        .build(
            crate::build,
            serde_json::json!({
                "provider": "twilio",
                "twilio": {"account_sid": "ACgateway", "auth_token": "gateway-token"},
                "countries": ["us", "GB"],
                "short_codes": true,
            }),
        )
        .expect("a valid config");
    for contact in ["+442079460958", "12345"] {
        let reason = refusal(wider.send_message(message(contact)).await);
        assert!(
            !reason.contains("not allowed") && !reason.contains("short codes"),
            "{reason}"
        );
    }
    let unknown = kit.build(
        crate::build,
        serde_json::json!({"provider": "twilio", "countries": ["Narnia"]}),
    );
    assert!(unknown.is_err());
}
