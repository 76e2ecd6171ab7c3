//! [`UsageBody`]: a response body that passes every frame on at once and scans a copy for the
//! `usage` object.

use std::fmt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::{usage_from_json, TokenUsage, UsageSlot};

/// The largest JSON body, or event-stream event, that is scanned; a larger one is passed on
/// unread.
pub(super) const SCAN_LIMIT: usize = 8 * 1024 * 1024;

/// How a body is scanned.
pub(super) enum Scan {
    /// A JSON answer: its bytes, parsed at the end.
    Json(Vec<u8>),
    /// An event stream: each event's data, parsed as it ends.
    Sse(SseScanner),
    /// Nothing to scan (not JSON or SSE, nobody listening, usage found, or gave up).
    Off,
}

pin_project! {
    /// A response body that yields every frame of `B` as it comes and reads the `usage`
    /// object from a copy on the way. See the [module docs](super).
    pub struct UsageBody<B> {
        #[pin]
        inner: B,
        scan: Scan,
        slot: Option<UsageSlot>,
        checked: bool,
    }
}

impl<B: fmt::Debug> fmt::Debug for UsageBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scan = match &self.scan {
            Scan::Json(_) => "json",
            Scan::Sse(_) => "event-stream",
            Scan::Off => "off",
        };
        f.debug_struct("UsageBody")
            .field("inner", &self.inner)
            .field("scan", &scan)
            .finish()
    }
}

impl<B> UsageBody<B> {
    /// `inner` passed through unscanned.
    pub fn passthrough(inner: B) -> Self {
        UsageBody {
            inner,
            scan: Scan::Off,
            slot: None,
            checked: true,
        }
    }

    pub(super) fn scanning(inner: B, scan: Scan, slot: UsageSlot) -> Self {
        UsageBody {
            inner,
            scan,
            slot: Some(slot),
            checked: false,
        }
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The wrapped body, unwrapped (what was not scanned yet is not scanned).
    pub fn into_inner(self) -> B {
        self.inner
    }
}

/// Reports `usage` (if any) and stops scanning.
fn found(scan: &mut Scan, slot: &Option<UsageSlot>, usage: Option<TokenUsage>) {
    if let (Some(u), Some(slot)) = (usage, slot) {
        *scan = Scan::Off;
        slot.report(u);
    }
}

impl<B> Body for UsageBody<B>
where
    B: Body,
    B::Data: Buf,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if !*this.checked {
            // The listeners are in place once the response has passed the layers above.
            *this.checked = true;
            if !this.slot.as_ref().is_some_and(UsageSlot::is_listened) {
                *this.scan = Scan::Off;
            }
        }
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    match this.scan {
                        Scan::Json(buf) => {
                            if buf.len() + data.remaining() > SCAN_LIMIT {
                                *this.scan = Scan::Off;
                            } else {
                                extend(buf, data);
                            }
                        }
                        Scan::Sse(sse) => {
                            let usage = sse.feed_buf(data);
                            found(this.scan, this.slot, usage);
                        }
                        Scan::Off => {}
                    }
                }
            }
            // A failed body reports nothing.
            Some(Err(_)) => *this.scan = Scan::Off,
            None => {}
        }
        // A consumer may stop at `is_end_stream` without polling for the end.
        if frame.is_none() || this.inner.is_end_stream() {
            if let Scan::Json(buf) = std::mem::replace(this.scan, Scan::Off) {
                found(this.scan, this.slot, usage_from_json(&buf));
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Appends every chunk of `data` (without consuming it) to `buf`.
fn extend(buf: &mut Vec<u8>, data: &impl Buf) {
    if data.chunk().len() == data.remaining() {
        buf.extend_from_slice(data.chunk());
        return;
    }
    let mut slices = [std::io::IoSlice::new(&[]); 64];
    let n = data.chunks_vectored(&mut slices);
    let copied: usize = slices[..n].iter().map(|s| s.len()).sum();
    for s in &slices[..n] {
        buf.extend_from_slice(s);
    }
    if copied < data.remaining() {
        // More chunks than slices: the scan would see a gap; give it up.
        buf.clear();
        buf.extend_from_slice(b"-");
    }
}

/// Reads an event stream incrementally: lines, `data:` fields, events ending at a blank
/// line. Only the line and the event being read are kept, each at most [`SCAN_LIMIT`].
#[derive(Debug, Default)]
pub(super) struct SseScanner {
    line: Vec<u8>,
    data: Vec<u8>,
    /// The current line or event is over the limit: skip it.
    line_too_long: bool,
    event_too_long: bool,
}

impl SseScanner {
    fn feed_buf(&mut self, data: &impl Buf) -> Option<TokenUsage> {
        if data.chunk().len() == data.remaining() {
            return self.feed(data.chunk());
        }
        let mut copy = Vec::with_capacity(data.remaining());
        extend(&mut copy, data);
        self.feed(&copy)
    }

    /// Scans `bytes`; the usage of the first event that carries one, if one ended here.
    pub(super) fn feed(&mut self, mut bytes: &[u8]) -> Option<TokenUsage> {
        while !bytes.is_empty() {
            let (part, rest, ended) = match memchr::memchr(b'\n', bytes) {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            bytes = rest;
            if !self.line_too_long {
                if self.line.len() + part.len() > SCAN_LIMIT {
                    self.line_too_long = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(part);
                }
            }
            if !ended {
                break;
            }
            let too_long = std::mem::take(&mut self.line_too_long);
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if too_long {
                self.event_too_long = true;
            } else if line.is_empty() {
                if let Some(u) = self.dispatch() {
                    return Some(u);
                }
            } else if let Some(value) = line.strip_prefix(b"data:") {
                let value = value.strip_prefix(b" ").unwrap_or(value);
                if self.data.len() + value.len() + 1 > SCAN_LIMIT {
                    self.event_too_long = true;
                    self.data.clear();
                } else if !self.event_too_long {
                    if !self.data.is_empty() {
                        self.data.push(b'\n');
                    }
                    self.data.extend_from_slice(value);
                }
            }
            line.clear();
            self.line = line;
        }
        None
    }

    /// An event ended: its usage, if its data has one.
    fn dispatch(&mut self) -> Option<TokenUsage> {
        let too_long = std::mem::take(&mut self.event_too_long);
        let usage = (!too_long && memchr::memmem::find(&self.data, b"\"usage\"").is_some())
            .then(|| usage_from_json(&self.data))
            .flatten();
        self.data.clear();
        usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n\
        data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\n\
        data: [DONE]\n\n";

    #[test]
    fn the_scanner_finds_usage_whatever_the_chunking() {
        let bytes = CHAT.as_bytes();
        for size in [1, 2, 3, 7, 64, bytes.len()] {
            let mut s = SseScanner::default();
            let found: Vec<_> = bytes.chunks(size).filter_map(|c| s.feed(c)).collect();
            assert_eq!(found, vec![TokenUsage::new(9, 2)], "chunks of {size}");
        }
        // CRLF line ends, and a data field split over two lines.
        let crlf = "data: {\"usage\":\r\ndata: {\"input_tokens\":1,\"output_tokens\":4}}\r\n\r\n";
        assert_eq!(
            SseScanner::default().feed(crlf.as_bytes()),
            Some(TokenUsage::new(1, 4))
        );
    }

    #[test]
    fn the_scanner_ignores_cut_malformed_and_oversized_events() {
        let mut s = SseScanner::default();
        // An event without its blank line is not complete.
        assert_eq!(
            s.feed(b"data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n"),
            None
        );
        let mut s = SseScanner::default();
        assert_eq!(s.feed(b"data: {\"usage\": {oops}\n\n"), None);
        assert_eq!(s.feed(b"event: ping\n: comment\n\n"), None);
        // A line over the limit is skipped with its event; the next event is read.
        let mut s = SseScanner::default();
        let long = vec![b'x'; SCAN_LIMIT + 1];
        assert_eq!(s.feed(b"data: \"usage\""), None);
        assert_eq!(s.feed(&long), None);
        assert_eq!(s.feed(b"\n\n"), None);
        assert_eq!(
            s.feed(b"data: {\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3}}\n\n"),
            Some(TokenUsage::new(2, 3))
        );
    }

    #[test]
    fn extend_copies_every_chunk_of_a_chained_buffer() {
        let chained = bytes::Bytes::from_static(b"ab").chain(bytes::Bytes::from_static(b"cd"));
        let mut out = Vec::new();
        extend(&mut out, &chained);
        assert_eq!(out, b"abcd");
    }
}
