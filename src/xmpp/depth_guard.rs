//! A byte filter in front of the XML parser that cuts out elements nested too deep, so that
//! the parser never sees them.
//!
//! rxml (the parser under tokio-xmpp) resolves each element's namespace by walking up every
//! open element until one declares it: an element N deep costs O(N), a stanza nested N deep
//! O(N²). It has no depth option. 90,000 nested `<a>` fit in one 256 KiB client stanza and
//! would keep the link's task busy for seconds. This filter reads the stream with a small
//! lexer (tags, quoted attribute values, comments, CDATA, processing instructions) that only
//! counts depth. An element that would open deeper than the limit is replaced, with all it
//! contains, by one empty marker element, which is itself past the stanza's depth bound, so
//! [`super::bounded`] refuses the stanza from its top element as usual. Everything within
//! the limit passes byte for byte, untouched.
//!
//! rxml also ends the whole stream (`restricted xml: long name or reference`) at an element
//! name, attribute name or attribute value over 8 KiB, which any user could send. So start
//! tags are held back until they end: one over [`TAG_LIMIT`] bytes is replaced, with what it
//! contains, by another marker, for which [`super::bounded`] refuses the stanza.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What stands in for an element cut for its depth.
const MARKER: &[u8] = b"<too-deep xmlns='urn:x-jabbridge:limits'/>";
/// What stands in for an element cut for its start tag's length.
const LONG_MARKER: &[u8] = b"<too-long xmlns='urn:x-jabbridge:limits'/>";
/// The namespace of the markers.
pub const MARKERS: &str = "urn:x-jabbridge:limits";
/// The longest start tag passed on, in bytes: every name and attribute value in it stays
/// under rxml's 8 KiB token limit.
pub const TAG_LIMIT: usize = 8000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Character data between tags.
    Text,
    /// Just after `<`: what follows says which kind of markup this is.
    Open,
    /// Inside a start tag, outside quotes; `slash` if the last byte was `/`.
    StartTag { slash: bool },
    /// Inside a quoted attribute value.
    Quoted { quote: u8 },
    /// Inside `</…>`.
    EndTag,
    /// Just after `<!`.
    Bang,
    /// After `<!-`.
    BangDash,
    /// Inside `<!-- … -->`; `dashes` seen in a row.
    Comment { dashes: u8 },
    /// Inside `<![CDATA[ … ]]>`; `brackets` seen in a row.
    CData { brackets: u8 },
    /// Inside `<? … ?>`; `question` if the last byte was `?`.
    Instruction { question: bool },
    /// Inside another `<! … >` (a DTD, which XMPP forbids; the parser refuses it).
    Declaration,
}

/// Tracks depth over a byte stream and drops what is nested deeper than `limit`.
#[derive(Debug)]
pub struct DepthLexer {
    state: State,
    /// Elements open now (the stream's root counts).
    depth: usize,
    /// Start tags that would open deeper than this are cut.
    limit: usize,
    /// While cutting: the depth at which the cut element opened.
    cutting_from: Option<usize>,
    /// The start tag being read, held back until it ends (or is too long).
    tag: Vec<u8>,
    /// Whether bytes go to `tag` rather than out.
    holding: bool,
}

impl DepthLexer {
    /// A lexer that lets at most `limit` elements be open at once.
    pub fn new(limit: usize) -> Self {
        Self {
            state: State::Text,
            depth: 0,
            limit,
            cutting_from: None,
            tag: Vec::new(),
            holding: false,
        }
    }

    /// Appends to `out` what of `input` the parser may see.
    pub fn filter(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len());
        for &byte in input {
            let cutting = self.cutting_from.is_some();
            let mut emit = !cutting;
            self.state = match self.state {
                State::Text => {
                    if byte == b'<' {
                        // Held back until the next byte says whether it opens an element.
                        emit = false;
                        State::Open
                    } else {
                        State::Text
                    }
                }
                State::Open => {
                    let next = match byte {
                        b'/' => State::EndTag,
                        b'!' => State::Bang,
                        b'?' => State::Instruction { question: false },
                        _ => State::StartTag { slash: false },
                    };
                    if next == (State::StartTag { slash: false })
                        && !cutting
                        && self.depth >= self.limit
                    {
                        self.cutting_from = Some(self.depth);
                        out.extend_from_slice(MARKER);
                        emit = false;
                    } else if !cutting && next == (State::StartTag { slash: false }) {
                        // A start tag: held back until it ends.
                        self.tag.clear();
                        self.tag.push(b'<');
                        self.holding = true;
                    } else if !cutting {
                        out.push(b'<');
                    }
                    next
                }
                State::StartTag { slash } => match byte {
                    b'"' | b'\'' => State::Quoted { quote: byte },
                    b'/' => State::StartTag { slash: true },
                    b'>' => {
                        if !slash {
                            self.depth += 1;
                        } else if self.cutting_from == Some(self.depth) {
                            // The cut element was empty (`<a/>`): it ends here.
                            self.cutting_from = None;
                        }
                        State::Text
                    }
                    _ => State::StartTag { slash: false },
                },
                State::Quoted { quote } => {
                    if byte == quote {
                        State::StartTag { slash: false }
                    } else {
                        State::Quoted { quote }
                    }
                }
                State::EndTag => {
                    if byte == b'>' {
                        self.depth = self.depth.saturating_sub(1);
                        if self.cutting_from == Some(self.depth) {
                            self.cutting_from = None;
                        }
                        State::Text
                    } else {
                        State::EndTag
                    }
                }
                State::Bang => match byte {
                    b'-' => State::BangDash,
                    // `<![CDATA[`: the parser checks the rest of the keyword.
                    b'[' => State::CData { brackets: 0 },
                    b'>' => State::Text,
                    _ => State::Declaration,
                },
                State::BangDash => State::Comment { dashes: 0 },
                State::Comment { dashes } => match byte {
                    b'-' => State::Comment {
                        dashes: (dashes + 1).min(2),
                    },
                    b'>' if dashes >= 2 => State::Text,
                    _ => State::Comment { dashes: 0 },
                },
                State::CData { brackets } => match byte {
                    b']' => State::CData {
                        brackets: (brackets + 1).min(2),
                    },
                    b'>' if brackets >= 2 => State::Text,
                    _ => State::CData { brackets: 0 },
                },
                State::Instruction { question } => match byte {
                    b'?' => State::Instruction { question: true },
                    b'>' if question => State::Text,
                    _ => State::Instruction { question: false },
                },
                State::Declaration => {
                    if byte == b'>' {
                        State::Text
                    } else {
                        State::Declaration
                    }
                }
            };
            if emit && self.holding {
                self.tag.push(byte);
                if self.state == State::Text {
                    // The start tag ended within the limit.
                    out.extend_from_slice(&self.tag);
                    self.holding = false;
                } else if self.tag.len() > TAG_LIMIT {
                    // Too long for the parser: the element goes, with what it contains. Its
                    // depth is counted from here as for any cut element.
                    self.holding = false;
                    self.tag.clear();
                    out.extend_from_slice(LONG_MARKER);
                    self.cutting_from = Some(self.depth);
                }
            } else if emit {
                out.push(byte);
            }
        }
    }
}

/// A stream whose reads pass through a [`DepthLexer`]; writes pass through untouched.
pub struct DepthGuard<Io> {
    inner: Io,
    lexer: DepthLexer,
    /// Filtered bytes not yet handed to the reader, from `position`.
    filtered: Vec<u8>,
    position: usize,
    scratch: Box<[u8]>,
}

impl<Io> DepthGuard<Io> {
    /// Guards `inner`, letting at most `limit` elements be open at once (the stream's root
    /// counts).
    pub fn new(inner: Io, limit: usize) -> Self {
        Self {
            inner,
            lexer: DepthLexer::new(limit),
            filtered: Vec::new(),
            position: 0,
            scratch: vec![0; 16 * 1024].into_boxed_slice(),
        }
    }

    /// The guarded stream (the link writes to its socket through it).
    pub fn get_ref(&self) -> &Io {
        &self.inner
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for DepthGuard<Io> {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.position < this.filtered.len() {
                let ready = &this.filtered[this.position..];
                let taken = ready.len().min(buffer.remaining());
                buffer.put_slice(&ready[..taken]);
                this.position += taken;
                return Poll::Ready(Ok(()));
            }
            let mut scratch = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.inner).poll_read(context, &mut scratch))?;
            let read = scratch.filled();
            if read.is_empty() {
                return Poll::Ready(Ok(()));
            }
            this.filtered.clear();
            this.position = 0;
            this.lexer.filter(read, &mut this.filtered);
            // All of it may have been cut: then read on.
        }
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for DepthGuard<Io> {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(context, buffer)
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(context)
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Filters `input` fed in chunks of `chunk` bytes.
    fn filter(input: &str, limit: usize, chunk: usize) -> String {
        let mut lexer = DepthLexer::new(limit);
        let mut out = Vec::new();
        for piece in input.as_bytes().chunks(chunk) {
            lexer.filter(piece, &mut out);
        }
        String::from_utf8(out).expect("UTF-8 in, UTF-8 out")
    }

    const MARK: &str = "<too-deep xmlns='urn:x-jabbridge:limits'/>";
    const LONG: &str = "<too-long xmlns='urn:x-jabbridge:limits'/>";

    #[test]
    fn start_tags_too_long_for_the_parser_are_cut_with_their_content() {
        let long = "x".repeat(TAG_LIMIT);
        let input = format!("<s><m id='1'><a v='{long}'><b/>text</a><c n=\"{long}\"/><ok/></m>");
        let expected = format!("<s><m id='1'>{LONG}{LONG}<ok/></m>");
        for chunk in [1, 100, 9000, 100_000] {
            assert_eq!(filter(&input, 10, chunk), expected, "chunk {chunk}");
        }
        let input = format!(
            "<s><{long} a='1'><x/></{long}><ok a='{}'/>",
            "y".repeat(100)
        );
        let expected = format!("<s>{LONG}<ok a='{}'/>", "y".repeat(100));
        assert_eq!(filter(&input, 10, 4096), expected);
        // Just within the limit: untouched.
        let fits = format!("<s><a v='{}'/>", "z".repeat(TAG_LIMIT - 12));
        assert_eq!(filter(&fits, 10, 333), fits);
    }

    #[test]
    fn markup_within_the_limit_passes_untouched() {
        let input = "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
                     xmlns:stream='http://etherx.jabber.org/streams' id='x'>\
                     <message to='a&gt;b' from=\"c'd\"><body>1 &lt; 2 > 0 </body>\
                     <x a='/>' b=\"<\"/><!-- <a><b> --><![CDATA[<a><b>]]></message>\
                     <iq type='get'><query xmlns='q'/></iq>";
        for chunk in [1, 2, 3, 7, 4096] {
            assert_eq!(filter(input, 3, chunk), input, "chunk {chunk}");
        }
    }

    #[test]
    fn elements_past_the_limit_become_one_marker() {
        let input = "<s><m><a><b x='>'><c/>text</b></a><a/></m><m><a>ok</a></m>";
        let expected = format!("<s><m><a>{MARK}</a><a/></m><m><a>ok</a></m>");
        // Open elements allowed: s, m, a. `b` would be the fourth.
        for chunk in [1, 5, 4096] {
            assert_eq!(filter(input, 3, chunk), expected, "chunk {chunk}");
        }
        // `<a/>` at depth 3 is cut too: it would open a third element under s/m.
        let expected = format!("<s><m>{MARK}{MARK}</m><m>{MARK}</m>");
        assert_eq!(filter(input, 2, 4096), expected);
    }

    #[test]
    fn a_deep_stanza_leaves_the_stream_balanced_and_parseable() {
        let depth = 10_000;
        let input = format!(
            "<stream:stream xmlns='jabber:component:accept' \
             xmlns:stream='http://etherx.jabber.org/streams'><message id='deep'>{}{}</message>\
             <message id='next'/>",
            "<a>".repeat(depth),
            "</a>".repeat(depth)
        );
        let out = filter(&input, 8, 1000);
        assert!(out.len() < 300, "{out}");
        let mut reader = rxml::Reader::new(out.as_bytes());
        let mut ends = 0;
        let mut starts = 0;
        while let Ok(Some(event)) = reader.read() {
            match event {
                rxml::Event::StartElement(..) => starts += 1,
                rxml::Event::EndElement(..) => ends += 1,
                _ => {}
            }
        }
        // stream, message, 6 a's, the marker, and the next message; all but the stream end.
        assert_eq!((starts, ends), (10, 9), "{out}");
    }

    /// A tree of elements and text, as XML.
    fn tree() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            "[a-z ]{0,6}",
            Just("<e/>".to_owned()),
            Just("&lt;".to_owned())
        ];
        leaf.prop_recursive(12, 64, 4, |inner| {
            ("[a-z]{1,3}", proptest::collection::vec(inner, 0..4)).prop_map(|(name, children)| {
                format!("<{name} a='&gt;x'>{}</{name}>", children.concat())
            })
        })
    }

    proptest::proptest! {
        /// Whatever bytes arrive, however the network splits them, the guard neither panics
        /// nor depends on the split.
        #[test]
        fn any_input_filters_the_same_in_any_chunks(
            input in "[<>/a-z'\"=!\\[\\]?-]{0,200}",
            chunk in 1usize..40,
        ) {
            proptest::prop_assert_eq!(filter(&input, 4, chunk), filter(&input, 4, 4096));
        }

        /// A tree no deeper than the limit passes untouched, and a deeper one leaves the
        /// stream well-formed.
        #[test]
        fn trees_pass_or_are_cut_well_formed(xml in tree(), chunk in 1usize..50) {
            let input = format!("<s>{xml}</s>");
            let out = filter(&input, 6, chunk);
            let mut reader = rxml::Reader::new(out.as_bytes());
            let mut depth: usize = 0;
            let mut deepest = 0;
            loop {
                match reader.read() {
                    Ok(Some(rxml::Event::StartElement(..))) => {
                        depth += 1;
                        deepest = deepest.max(depth);
                    }
                    Ok(Some(rxml::Event::EndElement(..))) => depth -= 1,
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(error) => proptest::prop_assert!(false, "{error}: {out}"),
                }
            }
            proptest::prop_assert!(deepest <= 7, "{out}");
            if !out.contains("too-deep") {
                proptest::prop_assert_eq!(out, input);
            }
        }
    }
}
