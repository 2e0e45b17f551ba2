//! Stanzas as the component stream's bytes. The link encodes every stanza it writes with one
//! [`StanzaEncoder`] into its own buffer, and keeps what waits for the server's
//! acknowledgement as those bytes; a stanza sent to many is encoded once as a [`Template`]
//! (a room message is written as one directly, [`TemplateWriter`]), and each recipient's copy
//! is its bytes with their `to` and `id` put in: no element tree to clone, encode and drop
//! per copy.

use rxml::writer::{Encoder, SimpleNamespaces};
use rxml::{Item, Namespace, NcNameStr};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::ns::COMPONENT as NS_COMPONENT;
use xso::AsXml;

use super::xml_safe::{Unwritable, is_xml_char, make_writable};

/// Encodes stanzas as they are written inside the component stream (whose header,
/// declaring [`NS_COMPONENT`], tokio-xmpp wrote): a stanza in that namespace declares none,
/// its payloads declare theirs.
pub struct StanzaEncoder(Encoder<SimpleNamespaces>);

impl Default for StanzaEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl StanzaEncoder {
    /// An encoder inside a stream's root element.
    pub fn new() -> Self {
        let mut encoder = Encoder::new();
        // The root's bytes go nowhere: the stream header went out already.
        let mut header = Vec::new();
        if let Ok(name) = <&NcNameStr>::try_from("stream") {
            let root = Item::ElementHeadStart(Namespace::from(NS_COMPONENT), name);
            let _ = encoder.encode(root, &mut header);
            let _ = encoder.encode(Item::ElementHeadEnd, &mut header);
        }
        Self(encoder)
    }

    /// Appends `stanza`'s bytes to `out`. On an error `out` is as it was, and the encoder
    /// must not be used again (its nesting is lost): make a new one.
    pub fn encode(&mut self, stanza: &Element, out: &mut Vec<u8>) -> Result<(), Unwritable> {
        let start = out.len();
        let mut encode = || -> Result<(), String> {
            let items = stanza.as_xml_iter().map_err(|error| error.to_string())?;
            for item in items {
                let item = item.map_err(|error| error.to_string())?;
                self.0
                    .encode(item.as_rxml_item(), out)
                    .map_err(|error| error.to_string())?;
            }
            Ok(())
        };
        encode().map_err(|error| {
            out.truncate(start);
            Unwritable(error)
        })
    }
}

/// One stanza's bytes, ready for the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded(Box<[u8]>);

impl Encoded {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Keeps `bytes` as one stanza's (what [`StanzaEncoder::encode`] appended).
    pub fn new(bytes: &[u8]) -> Self {
        Self(bytes.into())
    }

    /// The stanza read back (for the in-process harness, which looks at elements).
    pub fn to_element(&self) -> Result<Element, String> {
        let mut text = format!("<stream xmlns='{NS_COMPONENT}'>");
        text.push_str(&String::from_utf8_lossy(&self.0));
        text.push_str("</stream>");
        let root: Element = text.parse().map_err(|error| format!("{error}"))?;
        root.children()
            .next()
            .cloned()
            .ok_or_else(|| "no stanza".to_owned())
    }
}

thread_local! {
    /// The templates' encoder, one per thread: back inside its root after each stanza.
    static TEMPLATES: std::cell::RefCell<StanzaEncoder> = std::cell::RefCell::new(StanzaEncoder::new());
}

/// A stanza encoded once (made writable first), without a `to` and an `id`: each
/// [`Template::copy`] puts in its own.
#[derive(Debug, Clone)]
pub struct Template {
    /// The stanza's bytes.
    bytes: Vec<u8>,
    /// Where its start tag's name ends: the copies' attributes go there.
    name_end: usize,
    /// The `id` it had, which copies carry unless given another.
    id: Option<Box<str>>,
}

impl Template {
    /// Encodes `stanza` (made writable) as the template of its copies.
    pub fn new(mut stanza: Element) -> Result<Template, Unwritable> {
        make_writable(&mut stanza)?;
        let attributes = stanza.attrs_mut();
        let id = attributes.remove(Namespace::none(), "id");
        attributes.remove(Namespace::none(), "to");
        let mut bytes = Vec::new();
        TEMPLATES.with_borrow_mut(|encoder| {
            encoder.encode(&stanza, &mut bytes).inspect_err(|_| {
                *encoder = StanzaEncoder::new();
            })
        })?;
        let name = stanza.name().as_bytes();
        let name_end = 1 + name.len();
        if bytes.first() != Some(&b'<') || bytes.get(1..name_end) != Some(name) {
            return Err(Unwritable("the stanza did not encode as expected".into()));
        }
        Ok(Template {
            bytes,
            name_end,
            id: id.map(String::into_boxed_str),
        })
    }

    /// The copy to `to`, with `id` or else the template's own.
    pub fn copy(&self, to: &str, id: Option<&str>) -> Encoded {
        let id = id.or(self.id.as_deref());
        let mut out = Vec::with_capacity(self.bytes.len() + to.len() + 16 + id.map_or(0, str::len));
        out.extend_from_slice(&self.bytes[..self.name_end]);
        attribute(&mut out, "to", to);
        if let Some(id) = id {
            attribute(&mut out, "id", id);
        }
        out.extend_from_slice(&self.bytes[self.name_end..]);
        Encoded(out.into())
    }
}

/// A [`Template`] written directly, for the stanza written most (a room message, to each
/// occupant): no element tree built, made writable and encoded. Names are the caller's
/// constants; attribute values and text are escaped, and cleaned of what XML forbids as
/// [`make_writable`] would clean them.
pub struct TemplateWriter {
    bytes: Vec<u8>,
    name_end: usize,
    id: Box<str>,
    /// The elements open, innermost last.
    open: Vec<&'static str>,
    /// Whether the innermost start tag is still open (attributes may follow).
    in_tag: bool,
}

impl TemplateWriter {
    /// A stanza named `name`, in the stream's namespace, whose copies carry `id` unless
    /// given another.
    pub fn new(name: &'static str, id: &str) -> Self {
        let mut bytes = Vec::with_capacity(512);
        bytes.push(b'<');
        bytes.extend_from_slice(name.as_bytes());
        TemplateWriter {
            name_end: bytes.len(),
            bytes,
            id: id.into(),
            open: vec![name],
            in_tag: true,
        }
    }

    /// An attribute of the element opened last (before any child or text of it).
    pub fn attr(&mut self, name: &'static str, value: &str) -> &mut Self {
        debug_assert!(self.in_tag, "an attribute after content");
        attribute(&mut self.bytes, name, value);
        self
    }

    /// Opens a child element, in `namespace` or else in its parent's.
    pub fn start(&mut self, name: &'static str, namespace: Option<&str>) -> &mut Self {
        self.close_tag();
        self.bytes.push(b'<');
        self.bytes.extend_from_slice(name.as_bytes());
        if let Some(namespace) = namespace {
            attribute(&mut self.bytes, "xmlns", namespace);
        }
        self.open.push(name);
        self.in_tag = true;
        self
    }

    /// Text inside the element opened last.
    pub fn text(&mut self, text: &str) -> &mut Self {
        self.close_tag();
        escape(&mut self.bytes, text, false);
        self
    }

    /// Closes the element opened last.
    pub fn end(&mut self) -> &mut Self {
        if let Some(name) = self.open.pop() {
            if self.in_tag {
                self.bytes.extend_from_slice(b"/>");
            } else {
                self.bytes.extend_from_slice(b"</");
                self.bytes.extend_from_slice(name.as_bytes());
                self.bytes.push(b'>');
            }
            self.in_tag = false;
        }
        self
    }

    /// The template, with every element still open closed.
    pub fn finish(mut self) -> Template {
        while !self.open.is_empty() {
            self.end();
        }
        Template {
            bytes: self.bytes,
            name_end: self.name_end,
            id: Some(self.id),
        }
    }

    fn close_tag(&mut self) {
        if self.in_tag {
            self.bytes.push(b'>');
            self.in_tag = false;
        }
    }
}

/// Appends ` name='value'`, the value escaped for single quotes and without the characters
/// XML forbids.
fn attribute(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(b' ');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"='");
    escape(out, value, true);
    out.push(b'\'');
}

/// Appends `value` escaped for an attribute in single quotes, or for text; without the
/// characters XML forbids. A carriage return (and in an attribute, a tab or a line feed) is
/// written as a reference, which a parser keeps as it is instead of normalising it.
fn escape(out: &mut Vec<u8>, value: &str, in_attribute: bool) {
    let mut plain = 0;
    for (index, character) in value.char_indices() {
        let escaped: &[u8] = match character {
            '&' => b"&amp;",
            '<' => b"&lt;",
            '>' => b"&gt;",
            '\r' => b"&#xd;",
            '\'' if in_attribute => b"&apos;",
            '"' if in_attribute => b"&quot;",
            '\t' if in_attribute => b"&#x9;",
            '\n' if in_attribute => b"&#xa;",
            other if !is_xml_char(other) => b"",
            _ => continue,
        };
        out.extend_from_slice(&value.as_bytes()[plain..index]);
        out.extend_from_slice(escaped);
        plain = index + character.len_utf8();
    }
    out.extend_from_slice(&value.as_bytes()[plain..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Element {
        Element::builder("message", NS_COMPONENT)
            .attr(rxml::NcName::try_from("type").expect("name"), "groupchat")
            .attr(rxml::NcName::try_from("id").expect("name"), "origin-1")
            .append(Element::builder("body", NS_COMPONENT).append("a\u{1}<b> & 'c'"))
            .append(
                Element::builder("stanza-id", "urn:xmpp:sid:0")
                    .attr(rxml::NcName::try_from("id").expect("name"), "s1"),
            )
            .build()
    }

    #[test]
    fn a_stanza_declares_only_the_namespaces_the_stream_has_not() {
        let mut out = Vec::new();
        let mut encoder = StanzaEncoder::new();
        let mut stanza = message();
        make_writable(&mut stanza).expect("writable");
        encoder.encode(&stanza, &mut out).expect("encoded");
        encoder.encode(&stanza, &mut out).expect("encoded twice");
        let text = String::from_utf8(out.clone()).expect("utf-8");
        assert!(text.starts_with("<message "), "{text}");
        assert!(!text.contains(NS_COMPONENT), "{text}");
        assert_eq!(text.matches("xmlns='urn:xmpp:sid:0'").count(), 2, "{text}");
        // What XML forbids is refused, and nothing of it is left in the buffer.
        let refused = StanzaEncoder::new().encode(&message(), &mut out);
        assert!(refused.is_err());
        assert_eq!(out, text.as_bytes());
    }

    #[test]
    fn copies_carry_their_own_to_and_id_escaped_and_read_back_as_the_stanza() {
        let template = Template::new(message()).expect("template");
        let copy = template
            .copy("a'b@example.org/r<1>&\u{2}", None)
            .to_element()
            .expect("parses");
        assert_eq!(copy.attr("to"), Some("a'b@example.org/r<1>&"));
        assert_eq!(copy.attr("id"), Some("origin-1"));
        assert_eq!(copy.attr("type"), Some("groupchat"));
        assert_eq!(copy.ns(), NS_COMPONENT);
        let body = copy.get_child("body", NS_COMPONENT).expect("body");
        // Cleaned of what XML forbids once, when the template was made.
        assert_eq!(body.text(), "a<b> & 'c'");
        assert!(copy.has_child("stanza-id", "urn:xmpp:sid:0"));

        let own = template.copy("b@example.org", Some("mine\n")).to_element();
        let own = own.expect("parses");
        assert_eq!(own.attr("id"), Some("mine\n"));
        assert_eq!(own.attr("to"), Some("b@example.org"));
    }

    #[test]
    fn a_template_without_an_id_makes_copies_without_one() {
        let mut stanza = message();
        stanza.attrs_mut().remove(Namespace::none(), "id");
        let copy = Template::new(stanza).expect("template").copy("c@d", None);
        let copy = copy.to_element().expect("parses");
        assert_eq!(copy.attr("id"), None);
        assert_eq!(copy.attr("to"), Some("c@d"));
    }
}
