//! Buffering a JSON request body (it is kept whole so that a retry can send it again), with
//! memory that goes back to the operating system once the request is done.
//!
//! Collecting a body as it arrives keeps hyper's read buffers (up to ~400 KiB each, one after
//! another per connection) alive until the request ends. glibc's allocator serves the first
//! such buffers with `mmap` and, when one is freed, raises its mmap threshold above that size:
//! from then on buffers of that size come from its heaps, which keep the memory after it is
//! freed. Measured on the binary (`tests/memory.rs`): 50 connections holding 8 MiB − 1 byte
//! each took RSS from 14 MiB to 420 MiB, back to 21 MiB after the first round, but stayed at
//! 197 MiB and 322 MiB after the second and third.
//!
//! So a body that declares a `Content-Length` of [`MAP_AT`] bytes or more is copied, frame by
//! frame, into an anonymous memory map of exactly that size (hyper's read buffer is then free
//! to be reused for the next read): the map is not the allocator's, does not move its
//! threshold, and is unmapped when the last clone of the body is dropped. Smaller bodies, and
//! bodies without a declared length, are collected as before.
//!
//! Every buffered body is charged to one [`BodyBudget`] shared by all connections
//! (`--max-buffered-bytes`): a declared length is taken whole before the first byte is read,
//! a body without one is charged chunk by chunk as it arrives. The charge is held by the
//! body's bytes and given back when the last clone of them is dropped (the request is done,
//! retries included), or at once if the read fails or is abandoned (the client went away, the
//! body-read timeout passed). A body that cannot be charged is refused with
//! [`ReadError::OverBudget`] before more of it is read.

use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use oai_resilience::BoxError;

/// Declared lengths from this size on are read into a memory map: glibc's initial mmap
/// threshold, so that smaller bodies stay in the allocator as any small allocation does.
pub(crate) const MAP_AT: u64 = 128 * 1024;

/// Why a body could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// More than the limit (or than the declared length) arrived.
    TooLarge,
    /// The body failed (the client went away, or sent less than it declared).
    Body(BoxError),
    /// The bytes buffered across all connections would pass the [`BodyBudget`]'s cap.
    OverBudget,
}

/// The bytes of request bodies buffered across all connections, and their cap
/// (`--max-buffered-bytes`). Cheap to clone: clones share the count.
///
/// ```
/// use oai_gateway::gateway::BodyBudget;
///
/// let budget = BodyBudget::new(64 * 1024 * 1024);
/// assert_eq!((budget.used(), budget.cap(), budget.refused()), (0, 64 * 1024 * 1024, 0));
/// ```
#[derive(Debug, Clone)]
pub struct BodyBudget {
    inner: Arc<BudgetInner>,
}

#[derive(Debug)]
struct BudgetInner {
    cap: usize,
    used: AtomicUsize,
    refused: AtomicU64,
}

impl BodyBudget {
    /// A budget of `cap` bytes, none of them taken.
    pub fn new(cap: usize) -> Self {
        BodyBudget {
            inner: Arc::new(BudgetInner {
                cap,
                used: AtomicUsize::new(0),
                refused: AtomicU64::new(0),
            }),
        }
    }

    /// The cap, in bytes.
    pub fn cap(&self) -> usize {
        self.inner.cap
    }

    /// The bytes held now by bodies being read or buffered.
    pub fn used(&self) -> usize {
        self.inner.used.load(Ordering::Relaxed)
    }

    /// The bodies refused so far because the cap was reached.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// A charge of no bytes, to grow as a body arrives.
    fn charge(&self) -> Charge {
        Charge {
            budget: self.inner.clone(),
            n: 0,
        }
    }

    /// Takes `n` bytes, if the cap allows; else counts a refusal.
    fn take(&self, n: usize) -> Option<Charge> {
        let mut charge = self.charge();
        charge.grow(n).then_some(charge)
    }
}

/// Bytes taken from a [`BodyBudget`], given back when dropped.
#[derive(Debug)]
struct Charge {
    budget: Arc<BudgetInner>,
    n: usize,
}

impl Charge {
    /// Takes `n` more bytes, if the cap allows; else counts a refusal and takes nothing.
    fn grow(&mut self, n: usize) -> bool {
        let b = &self.budget;
        let taken = b
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|u| *u <= b.cap)
            })
            .is_ok();
        if taken {
            self.n += n;
        } else {
            b.refused.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.n, Ordering::AcqRel);
    }
}

/// A body's bytes together with their charge: the charge is given back when the last clone
/// of the [`Bytes`] made from it is dropped.
struct Held<T> {
    bytes: T,
    _charge: Charge,
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Held<T> {
    fn as_ref(&self) -> &[u8] {
        self.bytes.as_ref()
    }
}

fn held<T: AsRef<[u8]> + Send + 'static>(bytes: T, charge: Charge) -> Bytes {
    Bytes::from_owner(Held {
        bytes,
        _charge: charge,
    })
}

/// Reads `body` whole: at most `limit` bytes; `declared` is its `Content-Length`, already
/// checked against `limit`. The bytes are charged to `budget` (see the [module docs](self)).
pub(crate) async fn read_body<B>(
    body: B,
    limit: usize,
    declared: Option<u64>,
    budget: &BodyBudget,
) -> Result<Bytes, ReadError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let len = match declared {
        Some(0) => return Ok(Bytes::new()),
        Some(n) if n <= limit as u64 => n as usize,
        Some(_) => return Err(ReadError::TooLarge),
        None if body.is_end_stream() => return Ok(Bytes::new()),
        None => return read_undeclared(body, limit, budget).await,
    };
    let charge = budget.take(len).ok_or(ReadError::OverBudget)?;
    if (len as u64) < MAP_AT {
        return match Limited::new(body, limit).collect().await {
            Ok(collected) => Ok(held(collected.to_bytes(), charge)),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ReadError::TooLarge),
            Err(e) => Err(ReadError::Body(e)),
        };
    }
    let mut map = memmap2::MmapMut::map_anon(len).map_err(|e| ReadError::Body(e.into()))?;
    let mut filled = 0;
    let mut body = pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Body(e.into()))?;
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        while data.has_remaining() {
            let chunk = data.chunk();
            let end = filled + chunk.len();
            if end > len {
                return Err(ReadError::TooLarge);
            }
            map[filled..end].copy_from_slice(chunk);
            filled = end;
            let n = chunk.len();
            data.advance(n);
        }
    }
    if filled < len {
        return Err(ReadError::Body(
            format!("the body ended after {filled} of its {len} bytes").into(),
        ));
    }
    let map = map
        .make_read_only()
        .map_err(|e| ReadError::Body(e.into()))?;
    Ok(held(map, charge))
}

/// A body without a declared length (chunked): charged chunk by chunk as it arrives.
async fn read_undeclared<B>(body: B, limit: usize, budget: &BodyBudget) -> Result<Bytes, ReadError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut charge = budget.charge();
    let mut buf = BytesMut::new();
    let mut body = pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Body(e.into()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let n = data.len();
        if buf.len() + n > limit {
            return Err(ReadError::TooLarge);
        }
        if !charge.grow(n) {
            return Err(ReadError::OverBudget);
        }
        buf.extend_from_slice(&data);
    }
    Ok(held(buf.freeze(), charge))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    /// A body that sends `parts` as separate frames, then ends, or fails (`fail`: the client
    /// went away).
    struct Chunks(std::vec::IntoIter<&'static [u8]>, bool);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
            let fail = self.1;
            std::task::Poll::Ready(match self.0.next() {
                Some(p) => Some(Ok(http_body::Frame::data(Bytes::from_static(p)))),
                None if fail => Some(Err(std::io::ErrorKind::ConnectionReset.into())),
                None => None,
            })
        }
    }

    fn chunks(parts: &[&'static [u8]]) -> Chunks {
        Chunks(Vec::from(parts).into_iter(), false)
    }

    #[tokio::test]
    async fn bodies_hold_their_charge_until_their_bytes_are_dropped() {
        let budget = BodyBudget::new(10);
        let a = read_body(
            Full::new(Bytes::from_static(b"123456")),
            8,
            Some(6),
            &budget,
        )
        .await
        .unwrap();
        assert_eq!((&a[..], budget.used()), (&b"123456"[..], 6));
        let copy = a.clone();
        // 6 + 6 > 10: refused before reading.
        let over = read_body(
            Full::new(Bytes::from_static(b"abcdef")),
            8,
            Some(6),
            &budget,
        )
        .await;
        assert!(matches!(over, Err(ReadError::OverBudget)));
        assert_eq!((budget.used(), budget.refused()), (6, 1));
        drop(a);
        assert_eq!(budget.used(), 6, "a clone still holds the bytes");
        drop(copy);
        assert_eq!(budget.used(), 0);
        // A body that fails mid-way gives its charge back.
        let cut = Chunks(vec![&b"12"[..]].into_iter(), true);
        let cut = read_body(cut, 8, Some(6), &budget).await;
        assert!(matches!(cut, Err(ReadError::Body(_))), "{cut:?}");
        assert_eq!(budget.used(), 0);
        // Empty bodies take nothing.
        let empty = read_body(Full::new(Bytes::new()), 8, None, &budget)
            .await
            .unwrap();
        assert!(empty.is_empty());
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn undeclared_bodies_are_charged_as_they_arrive() {
        let budget = BodyBudget::new(10);
        let held = read_body(chunks(&[b"1234", b"5678"]), 16, None, &budget)
            .await
            .unwrap();
        assert_eq!((&held[..], budget.used()), (&b"12345678"[..], 8));
        // 8 taken: the second chunk of 2 + 2 passes 10.
        let over = read_body(chunks(&[b"ab", b"cd"]), 16, None, &budget).await;
        assert!(matches!(over, Err(ReadError::OverBudget)));
        assert_eq!(
            budget.used(),
            8,
            "the refused body gave back what it had taken"
        );
        drop(held);
        let too_large = read_body(chunks(&[b"1234", b"5678"]), 6, None, &budget).await;
        assert!(matches!(too_large, Err(ReadError::TooLarge)));
        assert_eq!(budget.used(), 0);
    }
}
