//! Reading stanzas off the component stream with bounds on their shape: nesting depth,
//! attributes per element, elements and bytes per stanza.
//!
//! minidom's own builder (`xso::minidom_compat::ElementFromEvents`) nests one builder per
//! open element and hands every event down the whole chain: a stanza nested N deep costs
//! O(N²) and N stack frames, so 5,000 nested elements from any user overflowed a worker's
//! stack and aborted the daemon. [`Inbound`]'s builder keeps the open elements in a `Vec`
//! instead (no recursion), and once a stanza passes a limit it stops building and only
//! counts depth until the stanza ends. The stream stays up and the stanza is answered from
//! its top element's attributes.

use xmpp_parsers::minidom::Element;

use super::depth_guard::{MARKERS, TAG_LIMIT};
use xso::{
    Context, FromEventsBuilder, FromXml,
    error::{Error, FromEventsError},
};

/// Deepest nesting of elements in a stanza, the stanza itself counting as 1.
pub const MAX_DEPTH: usize = 64;
/// Most attributes on one element.
pub const MAX_ATTRIBUTES: usize = 64;
/// Most elements in one stanza.
pub const MAX_ELEMENTS: usize = 4096;
/// Most bytes of one stanza as it came on the wire, markup included. Servers' own limits are
/// lower (Prosody: 256 KiB for clients, 512 KiB for servers), so nothing a server forwards
/// in practice is refused for size alone.
pub const MAX_BYTES: usize = 1024 * 1024;

/// Which bound a stanza broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Nested deeper than [`MAX_DEPTH`].
    Depth,
    /// An element with more than [`MAX_ATTRIBUTES`] attributes.
    Attributes,
    /// More than [`MAX_ELEMENTS`] elements.
    Elements,
    /// More than [`MAX_BYTES`] bytes.
    Size,
    /// A start tag longer than [`TAG_LIMIT`] bytes (a huge name or attribute value), cut by
    /// the depth guard before the parser saw it.
    LongTag,
}

impl Limit {
    /// What the sender is told.
    pub fn describe(self) -> String {
        match self {
            Self::Depth => format!("the stanza is nested deeper than {MAX_DEPTH} elements"),
            Self::Attributes => {
                format!("an element of the stanza has more than {MAX_ATTRIBUTES} attributes")
            }
            Self::Elements => format!("the stanza has more than {MAX_ELEMENTS} elements"),
            Self::Size => format!("the stanza is larger than {} KiB", MAX_BYTES / 1024),
            Self::LongTag => format!(
                "an element of the stanza has a name or attribute value over {} bytes",
                TAG_LIMIT
            ),
        }
    }
}

/// One top-level element read from the stream.
#[derive(Debug)]
pub enum Inbound {
    /// Within every bound.
    Element(Element),
    /// Over a bound: only the top element's name, namespace and attributes were kept (no
    /// children), enough to answer it.
    Refused {
        /// The top element without its content.
        header: Element,
        /// The bound it broke.
        limit: Limit,
    },
}

/// Builds an [`Inbound`] from parser events without recursion.
pub struct InboundBuilder {
    /// The open elements, outermost first. Each holds only its closed children, which are at
    /// most [`MAX_DEPTH`] deep, so dropping them never recurses far either.
    open: Vec<Element>,
    elements: usize,
    bytes: usize,
    refused: Option<Refusal>,
}

struct Refusal {
    header: Element,
    limit: Limit,
    /// Elements still open in the refused stanza.
    depth: usize,
}

fn element(qname: rxml::QName, attrs: rxml::AttrMap) -> Element {
    let mut builder = Element::builder(qname.1, qname.0);
    for ((namespace, name), value) in attrs {
        builder = builder.attr_ns(namespace, name, value);
    }
    builder.build()
}

fn attribute_bytes(attrs: &rxml::AttrMap) -> usize {
    attrs
        .iter()
        .map(|((_, name), value)| name.len() + value.len())
        .sum()
}

impl InboundBuilder {
    fn new(qname: rxml::QName, attrs: rxml::AttrMap) -> Self {
        let mut builder = Self {
            open: Vec::with_capacity(4),
            elements: 1,
            bytes: attribute_bytes(&attrs),
            refused: None,
        };
        let too_many_attributes = attrs.len() > MAX_ATTRIBUTES;
        let too_big = builder.bytes > MAX_BYTES;
        builder.open.push(element(qname, attrs));
        if too_many_attributes {
            builder.refuse(Limit::Attributes, 1);
        } else if too_big {
            builder.refuse(Limit::Size, 1);
        }
        builder
    }

    /// Stops building: keeps the top element's attributes and drops the rest.
    fn refuse(&mut self, limit: Limit, depth: usize) {
        let mut open = std::mem::take(&mut self.open).into_iter();
        let Some(mut header) = open.next() else {
            return;
        };
        drop(header.take_nodes());
        if header.attrs().len() > MAX_ATTRIBUTES {
            // Keep only what an answer needs.
            let keep = ["from", "to", "id", "type"];
            let mut bare = Element::builder(header.name(), header.ns());
            for ((namespace, name), value) in header.attrs() {
                if namespace.is_none() && keep.contains(&name.as_str()) {
                    bare = bare.attr_ns(namespace.clone(), name.clone(), value.clone());
                }
            }
            let bare = bare.build();
            header = bare;
        }
        self.refused = Some(Refusal {
            header,
            limit,
            depth,
        });
    }

    fn finished_refusal(&mut self) -> Option<Inbound> {
        match &self.refused {
            Some(refusal) if refusal.depth == 0 => {
                self.refused.take().map(|refusal| Inbound::Refused {
                    header: refusal.header,
                    limit: refusal.limit,
                })
            }
            _ => None,
        }
    }
}

impl FromEventsBuilder for InboundBuilder {
    type Output = Inbound;

    fn feed(
        &mut self,
        event: rxml::Event,
        _context: &Context<'_>,
    ) -> Result<Option<Inbound>, Error> {
        if let Some(refusal) = self.refused.as_mut() {
            match event {
                rxml::Event::StartElement(..) => refusal.depth += 1,
                rxml::Event::EndElement(..) => refusal.depth = refusal.depth.saturating_sub(1),
                rxml::Event::Text(..) | rxml::Event::XmlDeclaration(..) => {}
            }
            return Ok(self.finished_refusal());
        }
        self.bytes = self.bytes.saturating_add(match &event {
            rxml::Event::StartElement(metrics, ..)
            | rxml::Event::EndElement(metrics)
            | rxml::Event::Text(metrics, _)
            | rxml::Event::XmlDeclaration(metrics, _) => metrics.len(),
        });
        let depth = self.open.len();
        match event {
            rxml::Event::StartElement(_, qname, attrs) => {
                self.elements += 1;
                let long_tag = qname.0.as_str() == MARKERS && qname.1.as_str() == "too-long";
                let limit = if long_tag {
                    Some(Limit::LongTag)
                } else if depth >= MAX_DEPTH {
                    Some(Limit::Depth)
                } else if attrs.len() > MAX_ATTRIBUTES {
                    Some(Limit::Attributes)
                } else if self.elements > MAX_ELEMENTS {
                    Some(Limit::Elements)
                } else if self.bytes > MAX_BYTES {
                    Some(Limit::Size)
                } else {
                    None
                };
                match limit {
                    Some(limit) => self.refuse(limit, depth + 1),
                    None => self.open.push(element(qname, attrs)),
                }
                Ok(None)
            }
            rxml::Event::Text(_, text) => {
                if self.bytes > MAX_BYTES {
                    self.refuse(Limit::Size, depth);
                } else if let Some(parent) = self.open.last_mut() {
                    parent.append_text(text);
                }
                Ok(None)
            }
            rxml::Event::EndElement(_) => {
                if self.bytes > MAX_BYTES {
                    self.refuse(Limit::Size, depth.saturating_sub(1));
                    return Ok(self.finished_refusal());
                }
                let Some(closed) = self.open.pop() else {
                    return Err(Error::Other("end of an element that was never opened"));
                };
                match self.open.last_mut() {
                    Some(parent) => {
                        parent.append_child(closed);
                        Ok(None)
                    }
                    None => Ok(Some(Inbound::Element(closed))),
                }
            }
            rxml::Event::XmlDeclaration(..) => Ok(None),
        }
    }
}

impl FromXml for Inbound {
    type Builder = InboundBuilder;

    fn from_events(
        qname: rxml::QName,
        attrs: rxml::AttrMap,
        _context: &Context<'_>,
    ) -> Result<InboundBuilder, FromEventsError> {
        Ok(InboundBuilder::new(qname, attrs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xmpp::depth_guard::DepthLexer;

    /// The parser's events for `xml`, passed through the depth guard first, as the link
    /// reads (the stanza counts as the stream's first level there, so one level less here).
    fn events(xml: &str) -> Vec<rxml::Event> {
        let mut guarded = Vec::new();
        DepthLexer::new(MAX_DEPTH + 1).filter(xml.as_bytes(), &mut guarded);
        let mut reader = rxml::Reader::new(guarded.as_slice());
        let mut events = Vec::new();
        while let Some(event) = reader.read().expect("well-formed") {
            events.push(event);
        }
        events
    }

    /// Feeds `xml` into an [`InboundBuilder`], as the stream does.
    fn read(xml: &str) -> Inbound {
        let context = Context::empty();
        let mut events = events(xml).into_iter();
        let Some(rxml::Event::StartElement(_, qname, attrs)) = events.next() else {
            panic!("no element");
        };
        let mut builder = Inbound::from_events(qname, attrs, &context).expect("builder");
        for event in events {
            if let Some(inbound) = builder.feed(event, &context).expect("feed") {
                return inbound;
            }
        }
        panic!("the element never ended");
    }

    fn nested(depth: usize) -> String {
        format!(
            "<message xmlns='jabber:component:accept' from='a@b/c' to='x@gw' id='n1'>{}{}</message>",
            "<a>".repeat(depth),
            "</a>".repeat(depth)
        )
    }

    #[test]
    fn a_stanza_within_bounds_is_read_whole() {
        let xml = "<message xmlns='jabber:component:accept' from='a@b/c' to='x@gw' type='chat'>\
                   <body>hi &amp; bye</body><x xmlns='urn:x'><y z='1'/></x></message>";
        let Inbound::Element(element) = read(xml) else {
            panic!("refused");
        };
        // What minidom's own (recursive) builder makes of the same events.
        let context = Context::empty();
        let mut events = events(xml).into_iter();
        let Some(rxml::Event::StartElement(_, qname, attrs)) = events.next() else {
            panic!("no element");
        };
        let mut builder = Element::from_events(qname, attrs, &context).expect("builder");
        let expected = events
            .find_map(|event| builder.feed(event, &context).expect("feed"))
            .expect("an element");
        // Equal as XML (minidom's keeps "hi " and "& bye" as two text nodes; we merge them).
        let written = |element: &Element| {
            let mut bytes = Vec::new();
            element.write_to(&mut bytes).expect("writes");
            String::from_utf8(bytes).expect("UTF-8")
        };
        assert_eq!(written(&element), written(&expected));
        assert_eq!(
            element
                .get_child("body", "jabber:component:accept")
                .map(Element::text)
                .as_deref(),
            Some("hi & bye")
        );
    }

    #[test]
    fn nesting_at_the_bound_is_read_and_beyond_it_refused() {
        // The message itself is depth 1.
        assert!(matches!(read(&nested(MAX_DEPTH - 1)), Inbound::Element(_)));
        let Inbound::Refused { header, limit } = read(&nested(MAX_DEPTH)) else {
            panic!("not refused");
        };
        assert_eq!(limit, Limit::Depth);
        assert_eq!(header.name(), "message");
        assert_eq!(header.attr("id"), Some("n1"));
        assert_eq!(header.children().count(), 0);
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion_or_quadratic_parsing() {
        // 200,000 levels: minidom's builder would overflow the stack, and rxml alone would
        // take minutes; with the depth guard in front it is milliseconds.
        let Inbound::Refused { limit, .. } = read(&nested(200_000)) else {
            panic!("not refused");
        };
        assert_eq!(limit, Limit::Depth);
    }

    #[test]
    fn many_elements_attributes_and_bytes_are_refused() {
        let flat = format!(
            "<iq xmlns='jabber:component:accept' type='get' id='i'>{}</iq>",
            "<a/>".repeat(MAX_ELEMENTS)
        );
        assert!(matches!(
            read(&flat),
            Inbound::Refused {
                limit: Limit::Elements,
                ..
            }
        ));
        let attributes: String = (0..=MAX_ATTRIBUTES).map(|n| format!(" a{n}='v'")).collect();
        let wide =
            format!("<presence xmlns='jabber:component:accept' id='p'><x{attributes}/></presence>");
        assert!(matches!(
            read(&wide),
            Inbound::Refused {
                limit: Limit::Attributes,
                ..
            }
        ));
        let root_wide =
            format!("<presence xmlns='jabber:component:accept' id='p' from='a@b'{attributes}/>");
        let Inbound::Refused { header, limit } = read(&root_wide) else {
            panic!("not refused");
        };
        assert_eq!(limit, Limit::Attributes);
        assert_eq!(header.attr("from"), Some("a@b"));
        assert_eq!(header.attrs().len(), 2);
        let big = format!(
            "<message xmlns='jabber:component:accept' id='m'><body>{}</body></message>",
            "x".repeat(MAX_BYTES + 1)
        );
        assert!(matches!(
            read(&big),
            Inbound::Refused {
                limit: Limit::Size,
                ..
            }
        ));
    }
}
