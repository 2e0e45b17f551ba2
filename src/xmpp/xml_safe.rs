//! XML-safe text: the one place where what goes out on the link is made writable.
//!
//! XML 1.0 forbids most C0 controls (everything below U+0020 but tab, LF and CR) and
//! U+FFFE/U+FFFF. Such characters arrive from foreign networks every day (ANSI colour codes
//! in a CI job's message, a provider's error text, an IRC formatting code), and the XML
//! writer refuses the whole stanza, which used to end the link and, since the stanza was
//! retried first on every reconnect, wedge the bridge for good. Every outgoing stanza passes
//! through [`make_writable`] just before it is written: forbidden characters are dropped
//! (as Biboumi does), wherever they are — bodies, error texts, status texts, nicks, form
//! values, subjects, attribute values.
//!
//! A stanza sent to many recipients (a room message fanned out) is made writable once, as a
//! [`Writable`], and its copies differ only in attributes cleaned as they are set: the link
//! writes those without walking them again.

use xmpp_parsers::minidom::{
    Element, Node,
    rxml::{Namespace, NcName},
};

/// A stanza known to be writable: [`make_writable`] passed on it once. It stays writable
/// with the attributes [`Writable::into_with`] sets, since they are cleaned. (Copies for
/// many recipients are [`super::encode::Template`]s.)
#[derive(Debug, Clone)]
pub struct Writable(Element);

impl Writable {
    /// Makes `stanza` writable, or says why it cannot be.
    pub fn new(mut stanza: Element) -> Result<Writable, Unwritable> {
        make_writable(&mut stanza)?;
        Ok(Writable(stanza))
    }

    /// The stanza with these attributes set (or replaced), each value cleaned.
    pub fn into_with(self, attributes: &[(&'static str, &str)]) -> Writable {
        let mut stanza = self.0;
        for (name, value) in attributes {
            let mut value = String::from(*value);
            clean(&mut value);
            if let Ok(name) = NcName::try_from(*name) {
                stanza.set_attr(Namespace::none().clone(), name, value);
            }
        }
        Writable(stanza)
    }

    /// The stanza.
    pub fn into_inner(self) -> Element {
        self.0
    }
}

/// Whether XML 1.0 allows `character` in text and attribute values.
pub fn is_xml_char(character: char) -> bool {
    matches!(character,
        '\u{9}' | '\u{A}' | '\u{D}'
        | '\u{20}'..='\u{D7FF}'
        | '\u{E000}'..='\u{FFFD}'
        | '\u{10000}'..='\u{10FFFF}')
}

/// Whether `text` holds a character XML forbids. A byte scan: it only has to look closer at
/// control bytes and at the lead byte of U+FFFE/U+FFFF.
fn needs_cleaning(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().any(|(index, &byte)| match byte {
        b'\t' | b'\n' | b'\r' => false,
        0..=0x1F => true,
        0xEF => matches!(bytes.get(index + 1..index + 3), Some([0xBF, 0xBE | 0xBF])),
        _ => false,
    })
}

/// Drops the characters XML forbids from `text`, in place; how many were dropped.
pub fn clean(text: &mut String) -> usize {
    if !needs_cleaning(text) {
        return 0;
    }
    let before = text.chars().count();
    text.retain(is_xml_char);
    before - text.chars().count()
}

/// Why a stanza cannot be written even after cleaning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the stanza cannot be written as XML: {0}")]
pub struct Unwritable(pub String);

/// Makes `stanza` writable: drops forbidden characters from every text node and attribute
/// value, and checks element names. Walks the tree with an explicit stack (stanzas we build
/// are shallow, but nothing here should depend on that). Returns how many characters were
/// dropped.
pub fn make_writable(stanza: &mut Element) -> Result<usize, Unwritable> {
    let mut dropped = 0;
    let mut pending: Vec<&mut Element> = vec![stanza];
    while let Some(element) = pending.pop() {
        if <&rxml::NcNameStr>::try_from(element.name()).is_err() {
            return Err(Unwritable(format!(
                "{:?} is not an element name",
                element.name()
            )));
        }
        for (_, value) in element.attrs_mut().iter_mut() {
            dropped += clean(value);
        }
        for node in element.nodes_mut() {
            match node {
                Node::Text(text) => dropped += clean(text),
                Node::Element(child) => pending.push(child),
            }
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writable_stanza_and_the_attributes_set_on_it_are_clean() {
        let namespace = "jabber:component:accept";
        let template = Element::builder("message", namespace)
            .append(Element::builder("body", namespace).append("a\u{1}b"))
            .build();
        let stanza = Writable::new(template)
            .expect("writable")
            .into_with(&[("to", "x\u{1}@y/r"), ("id", "i\u{2}d")])
            .into_inner();
        assert_eq!(stanza.attr("to"), Some("x@y/r"));
        assert_eq!(stanza.attr("id"), Some("id"));
        let body = stanza.children().next().expect("body");
        assert_eq!(body.text(), "ab");
    }

    #[test]
    fn forbidden_characters_are_found_and_dropped() {
        for (raw, expected) in [
            ("colour \u{1b}[31mred", "colour [31mred"),
            ("a\u{0}b\u{8}c\u{b}d\u{c}e\u{1f}f", "abcdef"),
            ("keep\ttabs\nand\rbreaks", "keep\ttabs\nand\rbreaks"),
            ("no\u{fffe}n\u{ffff}o", "nono"),
            (
                "fine \u{fffd} \u{e000} \u{10ffff} é",
                "fine \u{fffd} \u{e000} \u{10ffff} é",
            ),
        ] {
            let mut text = raw.to_owned();
            let dropped = clean(&mut text);
            assert_eq!(text, expected, "{raw:?}");
            assert_eq!(dropped, raw.chars().count() - expected.chars().count());
        }
    }

    #[test]
    fn the_byte_scan_agrees_with_the_character_rule() {
        // Every BMP character and a few beyond, one at a time between two letters.
        for code in (0u32..0x11000).chain([0x1F600, 0x10FFFF]) {
            let Some(character) = char::from_u32(code) else {
                continue;
            };
            let text = format!("a{character}b");
            assert_eq!(
                needs_cleaning(&text),
                !is_xml_char(character),
                "U+{code:04X}"
            );
        }
    }

    #[test]
    fn every_text_and_attribute_of_a_stanza_is_cleaned_and_then_writes() {
        let mut stanza = Element::builder("message", "jabber:component:accept")
            .attr(rxml::NcName::try_from("from").unwrap(), "x\u{1}@gw")
            .append(
                Element::builder("body", "jabber:component:accept")
                    .append("colour \u{1b}[31mred")
                    .build(),
            )
            .append(
                Element::builder("error", "jabber:component:accept")
                    .append(
                        Element::builder("text", "urn:ietf:params:xml:ns:xmpp-stanzas")
                            .append("provider said \u{7}")
                            .build(),
                    )
                    .build(),
            )
            .build();
        assert_eq!(make_writable(&mut stanza), Ok(3));
        let mut written = Vec::new();
        stanza.write_to(&mut written).expect("writes");
        let written = String::from_utf8(written).unwrap();
        assert!(written.contains("colour [31mred"), "{written}");
        assert!(written.contains("from='x@gw'"), "{written}");
        assert!(written.contains("provider said <"), "{written}");
    }

    proptest::proptest! {
        /// Whatever text and attribute values a stanza carries, once made writable it
        /// serialises, and parses back with the same text minus what XML forbids.
        #[test]
        fn any_text_becomes_writable(text in "\\PC{0,60}|[\\x00-\\x1f\\u{fffe}\\u{ffff}a]{0,20}", id in "\\PC{0,20}") {
            let mut stanza = Element::builder("message", "jabber:component:accept")
                .attr(xmpp_parsers::minidom::rxml::NcName::try_from("id").expect("a name"), id.clone())
                .append(Element::builder("body", "jabber:component:accept").append(text.clone()))
                .build();
            make_writable(&mut stanza).expect("writable");
            let xml = String::from(&stanza);
            let back: Element = xml.parse().expect("parses back");
            let expected: String = text.chars().filter(|c| is_xml_char(*c)).collect();
            let body = back.get_child("body", "jabber:component:accept").map(Element::text);
            proptest::prop_assert_eq!(body.unwrap_or_default(), expected);
        }
    }
}
