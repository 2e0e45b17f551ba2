//! The ceiling of `scripts/bench`: an XEP-0114 component that only echoes, with no store,
//! no queue and no checks. It answers a XEP-0077 registration with an empty result and every
//! chat message with a body by a chat message shaped like the echo bridge's reply (from the
//! same contact to the sender's bare JID, the text after a prefix, an id and a XEP-0359
//! origin-id), so that the XMPP server and the client do the same work for both.
//!
//! Usage: `NULL_SECRET=… null_component HOST:PORT DOMAIN [PREFIX]` (prefix "echo: "). Runs
//! until the server closes the stream.

use std::borrow::Cow;
use std::time::Duration;

use futures::{FutureExt, SinkExt, StreamExt};
use tokio::io::BufStream;
use tokio::net::TcpStream;
use tokio_xmpp::xmlstream::{ReadError, StreamHeader, Timeouts, XmlStream, initiate_stream};
use xmpp_parsers::{
    component::Handshake,
    iq::Iq,
    jid::Jid,
    message::{Id, Lang, Message},
    minidom::Element,
    ns,
    stanza_error::{DefinedCondition, ErrorType, StanzaError},
    stanza_id::OriginId,
};

type Stream = XmlStream<BufStream<TcpStream>, Element>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut arguments = std::env::args().skip(1);
    let usage = "usage: NULL_SECRET=… null_component HOST:PORT DOMAIN [PREFIX]";
    let server = arguments.next().ok_or(usage)?;
    let domain = arguments.next().ok_or(usage)?;
    let prefix = arguments.next().unwrap_or_else(|| "echo: ".into());
    let secret = std::env::var("NULL_SECRET").map_err(|_| usage)?;

    let tcp = TcpStream::connect(&server).await?;
    // The server leaves Nagle on: without this, back-to-back stanzas wait for delayed ACKs.
    tcp.set_nodelay(true)?;
    let idle = Duration::from_secs(3600);
    let timeouts = Timeouts {
        read_timeout: idle,
        response_timeout: idle,
    };
    let header = StreamHeader {
        to: Some(Cow::Borrowed(domain.as_str())),
        from: None,
        id: None,
    };
    let mut pending = initiate_stream(BufStream::new(tcp), ns::COMPONENT, header, timeouts).await?;
    let stream_id = pending.take_header().id.ok_or("no stream id: refused")?;
    let mut stream: Stream = pending.skip_features();
    let handshake = Handshake::from_stream_id_and_password(stream_id.into_owned(), &secret);
    stream.send(&handshake).await?;
    match stream.next().await {
        Some(Ok(element)) if element.is("handshake", ns::COMPONENT) => {}
        other => return Err(format!("handshake refused: {other:?}").into()),
    }
    eprintln!("null component {domain} connected");

    let mut sent: u64 = 0;
    loop {
        // Write replies in batches: flush only when no stanza is waiting to be read.
        let item = match stream.next().now_or_never() {
            Some(item) => item,
            None => {
                SinkExt::<&Element>::flush(&mut stream).await?;
                stream.next().await
            }
        };
        let element = match item {
            Some(Ok(element)) => element,
            Some(Err(ReadError::SoftTimeout | ReadError::ParseError(_))) => continue,
            Some(Err(_)) | None => break,
        };
        if let Some(reply) = answer(&element, &prefix, &mut sent) {
            stream.feed(&reply).await?;
        }
    }
    Ok(())
}

/// The reply to a stanza, if it gets one.
fn answer(stanza: &Element, prefix: &str, sent: &mut u64) -> Option<Element> {
    let from: Jid = stanza.attr("from")?.parse().ok()?;
    let to: Jid = stanza.attr("to")?.parse().ok()?;
    match stanza.name() {
        "message" if stanza.attr("type") == Some("chat") => {
            let body = stanza.get_child("body", ns::COMPONENT)?.text();
            *sent += 1;
            let id = format!("null-{sent}");
            let mut reply = Message::chat(Some(Jid::from(from.to_bare())))
                .with_body(Lang::default(), format!("{prefix}{body}"))
                .with_payload(OriginId { id: id.clone() });
            reply.from = Some(to);
            reply.id = Some(Id(id));
            Some(reply.into())
        }
        "iq" if matches!(stanza.attr("type"), Some("get" | "set")) => {
            let id = stanza.attr("id").unwrap_or_default();
            let reply = if stanza.get_child("query", ns::REGISTER).is_some() {
                Iq::empty_result(from, id)
            } else {
                let error = StanzaError::new(
                    ErrorType::Cancel,
                    DefinedCondition::ServiceUnavailable,
                    "en",
                    "the null component only echoes",
                );
                Iq::from_error(id, error).with_to(from)
            };
            Some(reply.with_from(to).into())
        }
        _ => None,
    }
}
