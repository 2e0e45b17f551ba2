//! Reading a server's lines with bounded memory: a line is at most
//! [`MAX_INCOMING`](crate::wire::MAX_INCOMING) bytes; of a longer one the first part is kept
//! (marked truncated) and the rest skipped up to its line end, so a server that sends
//! endless lines, or never ends one, costs a fixed buffer and never a crash.

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::wire::{MAX_INCOMING, decode};

/// Bytes asked of the socket at once, at most.
const CHUNK: usize = 4096;

/// A read this large means lines come fast: the buffer keeps its room.
const SMALL: usize = 512;

thread_local! {
    /// Where a calm connection's reads land first, copied out at once: a connection waiting
    /// for its next line holds no buffer of its own (a gateway has thousands waiting).
    static SCRATCH: std::cell::RefCell<Box<[u8; CHUNK]>> =
        std::cell::RefCell::new(Box::new([0; CHUNK]));
}

/// One line as read, decoded ([`decode`]: UTF-8, else Latin-1, which the connection reads
/// again in the user's encoding where they chose one), without its CR LF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Its text.
    pub text: String,
    /// Whether it was longer than [`MAX_INCOMING`] bytes, and only its start is here.
    pub truncated: bool,
    /// Whether it was read as Latin-1 (it is not UTF-8): its characters are its bytes, and
    /// can be read again in another encoding.
    pub latin1: bool,
}

/// Lines from a byte stream (a server's socket).
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    /// Bytes read; those before `start` were handed out already. Never more than
    /// [`MAX_INCOMING`] plus one chunk are kept.
    buffer: Vec<u8>,
    start: usize,
    /// Inside a line longer than [`MAX_INCOMING`], whose start was handed out: skip to its end.
    skipping: bool,
    /// Whether the last read was large: lines come fast, so the buffer keeps its room.
    busy: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// A reader of `inner`'s lines.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buffer: Vec::new(),
            start: 0,
            skipping: false,
            busy: false,
        }
    }

    /// The next line; `None` once the stream ended (a last line without its line end is
    /// still handed out). Empty lines are skipped.
    pub async fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            let pending = &self.buffer[self.start..];
            if let Some(end) = pending.iter().position(|&byte| byte == b'\n') {
                let line_start = self.start;
                self.start += end + 1;
                if std::mem::take(&mut self.skipping) {
                    continue;
                }
                // A line longer than the bound whose end came in the same read.
                let truncated = end > MAX_INCOMING;
                let line_end = line_start + end.min(MAX_INCOMING);
                match finish(&self.buffer[line_start..line_end], truncated) {
                    Some(line) => return Ok(Some(line)),
                    None => continue,
                }
            }
            // Only bytes of an unfinished line are left: keep them at the front.
            self.buffer.drain(..self.start);
            self.start = 0;
            if self.skipping {
                self.buffer.clear();
            } else if self.buffer.len() >= MAX_INCOMING {
                let line = finish(&self.buffer[..MAX_INCOMING], true);
                self.buffer.clear();
                self.skipping = true;
                if let Some(line) = line {
                    return Ok(Some(line));
                }
                continue;
            }
            let (read, room) = if self.buffer.is_empty() && !self.busy {
                // A burst is over, or the connection is calm: its memory goes back, and the
                // next read lands in the thread's scratch, copied into a buffer just its size.
                self.buffer = Vec::new();
                (self.read_calm().await?, CHUNK)
            } else {
                // Lines come fast, or a line is unfinished: read straight into the buffer
                // (no chunk on the task's stack), with room for a chunk.
                if self.buffer.capacity() - self.buffer.len() < SMALL {
                    self.buffer.reserve_exact(CHUNK);
                }
                let room = self.buffer.capacity() - self.buffer.len();
                let read = (&mut self.inner)
                    .take(CHUNK as u64)
                    .read_buf(&mut self.buffer)
                    .await?;
                (read, room)
            };
            self.busy = read >= SMALL || read == room;
            if read == 0 {
                let last = std::mem::take(&mut self.buffer);
                if std::mem::take(&mut self.skipping) {
                    return Ok(None);
                }
                return Ok(finish(&last, false));
            }
        }
    }

    /// One read into the thread's scratch, its bytes appended to the (empty) buffer.
    async fn read_calm(&mut self) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| {
            // Borrowed only within this poll, which calls nothing that reads lines: never
            // borrowed twice.
            SCRATCH.with_borrow_mut(|scratch| {
                let mut landed = tokio::io::ReadBuf::new(&mut scratch[..]);
                match std::pin::Pin::new(&mut self.inner).poll_read(cx, &mut landed) {
                    std::task::Poll::Ready(Ok(())) => {
                        self.buffer.extend_from_slice(landed.filled());
                        std::task::Poll::Ready(Ok(landed.filled().len()))
                    }
                    std::task::Poll::Ready(Err(error)) => std::task::Poll::Ready(Err(error)),
                    std::task::Poll::Pending => std::task::Poll::Pending,
                }
            })
        })
        .await
    }

    /// How many bytes the reader holds now (for tests of its bound).
    pub fn buffered(&self) -> usize {
        self.buffer.capacity()
    }
}

/// A line from its bytes without the LF: the CR goes, empty lines are none. A truncated
/// line loses the start of a UTF-8 character its cut fell in, so that the rest still reads
/// as UTF-8.
fn finish(bytes: &[u8], truncated: bool) -> Option<Line> {
    let mut bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    if truncated
        && let Err(error) = std::str::from_utf8(bytes)
        && error.error_len().is_none()
    {
        bytes = &bytes[..error.valid_up_to()];
    }
    if bytes.is_empty() {
        return None;
    }
    let text = decode(bytes, None);
    let latin1 = matches!(text, std::borrow::Cow::Owned(_));
    Some(Line {
        text: text.into_owned(),
        truncated,
        latin1,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    async fn lines(bytes: &[u8]) -> Vec<Line> {
        let mut reader = LineReader::new(bytes);
        let mut lines = Vec::new();
        while let Some(line) = reader.next_line().await.unwrap() {
            lines.push(line);
        }
        lines
    }

    fn plain(text: &str) -> Line {
        Line {
            text: text.into(),
            truncated: false,
            latin1: false,
        }
    }

    #[tokio::test]
    async fn lines_end_with_crlf_or_lf_and_empty_ones_are_skipped() {
        assert_eq!(
            lines(b"PING a\r\n\r\nPING b\nPING c").await,
            [plain("PING a"), plain("PING b"), plain("PING c")]
        );
        // Not UTF-8: read as Latin-1, and marked so (a channel may read it again).
        assert_eq!(
            lines(b":x PRIVMSG #c :caf\xe9\r\n").await,
            [Line {
                latin1: true,
                ..plain(":x PRIVMSG #c :café")
            }]
        );
    }

    #[tokio::test]
    async fn an_endless_line_costs_a_bounded_buffer_and_the_next_line_still_comes() {
        let mut bytes = vec![b'x'; 1 << 20];
        bytes.extend_from_slice(b"\r\nPING after\r\n");
        let mut reader = LineReader::new(bytes.as_slice());
        let first = reader.next_line().await.unwrap().unwrap();
        assert!(first.truncated);
        assert_eq!(first.text.len(), MAX_INCOMING);
        let next = reader.next_line().await.unwrap().unwrap();
        assert_eq!(next, plain("PING after"));
        assert!(
            reader.buffered() <= MAX_INCOMING + 2 * CHUNK,
            "{}",
            reader.buffered()
        );
        assert_eq!(reader.next_line().await.unwrap(), None);
        // A cut inside a UTF-8 character leaves the text UTF-8, one character short.
        // (MAX_INCOMING is odd: the cut falls between the two bytes of an "é".)
        let cut = lines("é".repeat(MAX_INCOMING).as_bytes()).await;
        assert_eq!(cut[0].text, "é".repeat(MAX_INCOMING / 2));
        // Over the bound with its line end in the same read: still cut and marked.
        let mut near = vec![b'z'; MAX_INCOMING + 100];
        near.extend_from_slice(b"\n");
        let mut reader = LineReader::new(near.as_slice());
        let cut = reader.next_line().await.unwrap().unwrap();
        assert!(cut.truncated);
        assert_eq!(cut.text.len(), MAX_INCOMING);
        // A stream that never ends its line: one truncated start, then the end.
        assert_eq!(lines(&vec![b'y'; 3 * MAX_INCOMING]).await.len(), 1);
    }

    #[tokio::test]
    async fn a_calm_connection_gives_a_bursts_buffer_back() {
        let (mut server, client) = tokio::io::duplex(64 * 1024);
        let mut reader = LineReader::new(client);
        let burst = ":s 353 me = #c :nick nick nick nick nick nick nick nick\r\n".repeat(200);
        tokio::io::AsyncWriteExt::write_all(&mut server, burst.as_bytes())
            .await
            .unwrap();
        for _ in 0..200 {
            reader.next_line().await.unwrap().unwrap();
        }
        assert!(reader.buffered() > SMALL, "{}", reader.buffered());
        tokio::io::AsyncWriteExt::write_all(&mut server, b"PING calm\r\n")
            .await
            .unwrap();
        assert_eq!(reader.next_line().await.unwrap(), Some(plain("PING calm")));
        // Waiting for the next line, the reader holds no buffer.
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(20), reader.next_line()).await;
        assert!(waited.is_err());
        assert_eq!(reader.buffered(), 0);
        // And the next lines still come, a partial one completed by a later read.
        tokio::io::AsyncWriteExt::write_all(&mut server, b"PING one\r\nPING tw")
            .await
            .unwrap();
        assert_eq!(reader.next_line().await.unwrap(), Some(plain("PING one")));
        tokio::io::AsyncWriteExt::write_all(&mut server, b"o\r\n")
            .await
            .unwrap();
        assert_eq!(reader.next_line().await.unwrap(), Some(plain("PING two")));
    }

    proptest! {
        /// Any bytes, in any chunking, read into lines that fit the bound, without a panic.
        #[test]
        fn any_bytes_read_into_bounded_lines(bytes in proptest::collection::vec(any::<u8>(), 0..30_000)) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let read = runtime.block_on(lines(&bytes));
            for line in read {
                prop_assert!(!line.text.contains('\n'));
                prop_assert!(line.text.chars().count() <= MAX_INCOMING);
            }
        }
    }
}
