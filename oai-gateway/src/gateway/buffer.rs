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

use std::pin::pin;

use bytes::{Buf, Bytes};
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
}

/// Reads `body` whole: at most `limit` bytes; `declared` is its `Content-Length`, already
/// checked against `limit`.
pub(crate) async fn read_body<B>(
    body: B,
    limit: usize,
    declared: Option<u64>,
) -> Result<Bytes, ReadError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let len = match declared {
        Some(n) if n >= MAP_AT && n <= limit as u64 => n as usize,
        _ => {
            return match Limited::new(body, limit).collect().await {
                Ok(collected) => Ok(collected.to_bytes()),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ReadError::TooLarge),
                Err(e) => Err(ReadError::Body(e)),
            }
        }
    };
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
    Ok(Bytes::from_owner(map))
}
