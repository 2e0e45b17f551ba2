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
    let said = jabbridge_sdk::testkit::run_command(
        &*bridge,
        &admin,
        "assign-number",
        &values(&[("number", "555 000 2222"), ("owner", "Bob@x")]),
    )
    .await
    .expect("assigned");
    assert_eq!(said, "+15550002222 now belongs to bob@x.");
    kit.set_registration(
        "bob@x",
        jabbridge_sdk::RegistrationData::from_json(serde_json::json!({
            "number": "+15550002222",
            "provider": "twilio",
            "twilio": {"account_sid": "ACbob", "auth_token": "bob-token"},
        })),
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
        room: None,
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

/// Provider webhooks that are forged, unsigned, signed for something else, stale, oversized
/// or malformed: every one is refused with a 4xx naming the fault, and nothing reaches a
/// user or a report. Prints the counts.
#[tokio::test]
async fn the_webhook_corpus_is_refused_and_changes_nothing() {
    use base64::Engine;
    use ed25519_dalek::{Signer, SigningKey};
    let kit = TestCore::new("sms.test").with_public_url(PUBLIC);
    let signing = SigningKey::from_bytes(&[9u8; 32]);
    let public =
        base64::engine::general_purpose::STANDARD.encode(signing.verifying_key().to_bytes());
    let bridge = kit
        .build(
            crate::build,
            serde_json::json!({
                "provider": "twilio",
                "twilio": {"account_sid": "ACgateway", "auth_token": "gateway-token"},
                "telnyx": {"api_key": "KEY", "public_key": public},
            }),
        )
        .expect("a valid config");
    let text = vec![
        ("MessageSid", "SMx"),
        ("AccountSid", "ACgateway"),
        ("From", "+15557654321"),
        ("To", "+15550001111"),
        ("Body", "hi"),
        ("NumMedia", "0"),
    ];
    let mut cases: Vec<(String, HttpRequest)> = Vec::new();
    for path in ["/twilio/message", "/twilio/status"] {
        let mut unsigned = signed(path, &text, "gateway-token");
        unsigned.headers_mut().remove("x-twilio-signature");
        cases.push((format!("{path} unsigned"), unsigned));
        for token in ["", "guess", "gateway-token2", "GATEWAY-TOKEN"] {
            cases.push((
                format!("{path} signed with '{token}'"),
                signed(path, &text, token),
            ));
        }
        let mut garbled = signed(path, &text, "gateway-token");
        garbled
            .headers_mut()
            .insert("x-twilio-signature", http::HeaderValue::from_static("%%%"));
        cases.push((format!("{path} garbled signature"), garbled));
        // Signed, then each field changed, dropped, or one added.
        for index in 0..text.len() {
            let signature = crate::twilio::signature(
                "gateway-token",
                &format!("{PUBLIC}/bridges/sms.test{path}"),
                &text
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<Vec<_>>(),
            );
            for change in ["changed", "dropped", "added"] {
                let mut fields: Vec<(&str, &str)> = text.clone();
                match change {
                    "changed" => fields[index].1 = "tampered",
                    "dropped" => {
                        fields.remove(index);
                    }
                    _ => fields.push(("Extra", "1")),
                }
                let mut request = signed(path, &fields, "gateway-token");
                request.headers_mut().insert(
                    "x-twilio-signature",
                    http::HeaderValue::from_str(&signature).expect("a header"),
                );
                cases.push((
                    format!("{path} field {index} {change} after signing"),
                    request,
                ));
            }
        }
        // Signed, but no message id: refused as malformed.
        let no_id: Vec<(&str, &str)> = text[1..].to_vec();
        cases.push((
            format!("{path} without MessageSid"),
            signed(path, &no_id, "gateway-token"),
        ));
        let padding = "x".repeat(70 * 1024);
        let mut big = text.clone();
        big.push(("Padding", &padding));
        cases.push((
            format!("{path} over 64 KiB"),
            signed(path, &big, "gateway-token"),
        ));
        let mut get = signed(path, &text, "gateway-token");
        *get.method_mut() = http::Method::GET;
        cases.push((format!("{path} by GET"), get));
    }
    cases.push((
        "unknown path".into(),
        signed("/twilio/other", &text, "gateway-token"),
    ));
    cases.push((
        "unknown provider".into(),
        signed("/nexmo/message", &text, "gateway-token"),
    ));
    // Telnyx: unsigned, forged, stale or early, malformed.
    let event = |id: &str| {
        serde_json::json!({"data": {"event_type": "message.received", "id": "e1", "payload": {
            "id": id, "text": "hi", "from": {"phone_number": "+15557654321"},
            "to": [{"phone_number": "+15550001111"}], "media": [],
        }}})
        .to_string()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let telnyx = |body: &str, timestamp: Option<u64>, key: Option<&SigningKey>| {
        let mut builder = http::Request::builder()
            .method("POST")
            .uri("/telnyx/webhook")
            .header("content-type", "application/json");
        if let Some(timestamp) = timestamp {
            builder = builder.header("telnyx-timestamp", timestamp.to_string());
        }
        if let (Some(key), Some(timestamp)) = (key, timestamp) {
            let signed = format!("{timestamp}|{body}");
            let signature = base64::engine::general_purpose::STANDARD
                .encode(key.sign(signed.as_bytes()).to_bytes());
            builder = builder.header("telnyx-signature-ed25519", signature);
        }
        builder
            .body(body.to_owned().into_bytes().into())
            .expect("a request")
    };
    let other_key = SigningKey::from_bytes(&[3u8; 32]);
    for (skew, label) in [
        (-400i64, "400 s old"),
        (400, "400 s early"),
        (-86_400, "a day old"),
    ] {
        let timestamp = now.saturating_add_signed(skew);
        cases.push((
            format!("telnyx {label}"),
            telnyx(&event("T1"), Some(timestamp), Some(&signing)),
        ));
    }
    cases.push((
        "telnyx unsigned".into(),
        telnyx(&event("T2"), Some(now), None),
    ));
    cases.push((
        "telnyx without timestamp".into(),
        telnyx(&event("T3"), None, Some(&signing)),
    ));
    cases.push((
        "telnyx other key".into(),
        telnyx(&event("T4"), Some(now), Some(&other_key)),
    ));
    for body in [
        "",
        "{",
        "[]",
        "null",
        "{\"data\": 1}",
        "{\"data\": {\"payload\": {}}}",
    ] {
        cases.push((
            format!("telnyx body {body:?}"),
            telnyx(body, Some(now), Some(&signing)),
        ));
    }
    let count = cases.len();
    let mut statuses: std::collections::BTreeMap<u16, usize> = std::collections::BTreeMap::new();
    let mut wrong = Vec::new();
    for (name, request) in cases {
        let status = bridge.handle_http(request).await.status().as_u16();
        *statuses.entry(status).or_default() += 1;
        if !(400..500).contains(&status) {
            wrong.push(format!("{name}: {status}"));
        }
    }
    let delivered = kit.next_delivered(Duration::from_millis(100)).await;
    eprintln!(
        "malformed-input corpus (provider webhooks): {count} cases, statuses {statuses:?}, \
         {} not refused, {} delivered, {} reports, 0 crashes",
        wrong.len(),
        usize::from(delivered.is_some()),
        kit.reports().len()
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(delivered.is_none(), "{delivered:?}");
    assert!(kit.reports().is_empty());
}
