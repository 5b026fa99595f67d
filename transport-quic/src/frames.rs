//! Length-prefixed frames on QUIC streams: `u32` little-endian length, then the frame.

use async_trait::async_trait;
use bytes::Bytes;
use replication_core::transport::{FrameReceiver, FrameSender, TransportError};

/// The sending half of a channel: one QUIC send stream.
pub struct QuicFrameSender {
    stream: quinn::SendStream,
    max_frame_size: usize,
}

impl QuicFrameSender {
    /// Wraps a send stream.
    pub fn new(stream: quinn::SendStream, max_frame_size: usize) -> QuicFrameSender {
        QuicFrameSender {
            stream,
            max_frame_size,
        }
    }
}

#[async_trait]
impl FrameSender for QuicFrameSender {
    async fn send(&mut self, frame: Bytes) -> Result<(), TransportError> {
        if frame.len() > self.max_frame_size {
            return Err(TransportError::FrameTooLarge {
                size: frame.len(),
                limit: self.max_frame_size,
            });
        }
        let length = Bytes::copy_from_slice(&(frame.len() as u32).to_le_bytes());
        self.stream
            .write_all_chunks(&mut [length, frame])
            .await
            .map_err(|e| TransportError::Closed(e.to_string()))
    }
}

/// Reassembles frames from a byte stream: the decoding half, independent of QUIC so that it
/// can be fed arbitrary bytes in tests.
#[derive(Debug)]
pub struct FrameDecoder {
    max_frame_size: usize,
    header: [u8; 4],
    header_filled: usize,
    body: Vec<u8>,
    body_filled: usize,
}

impl FrameDecoder {
    /// A decoder refusing frames over `max_frame_size`.
    pub fn new(max_frame_size: usize) -> FrameDecoder {
        FrameDecoder {
            max_frame_size,
            header: [0; 4],
            header_filled: 0,
            body: Vec::new(),
            body_filled: 0,
        }
    }

    /// Where the next bytes should go (never empty).
    pub fn buffer(&mut self) -> &mut [u8] {
        if self.header_filled < 4 {
            &mut self.header[self.header_filled..]
        } else {
            &mut self.body[self.body_filled..]
        }
    }

    /// Records that `n` bytes were written into [`FrameDecoder::buffer`]; returns a complete
    /// frame when there is one.
    ///
    /// # Errors
    /// [`TransportError::FrameTooLarge`] when a header announces an oversized frame.
    pub fn advance(&mut self, n: usize) -> Result<Option<Bytes>, TransportError> {
        if self.header_filled < 4 {
            self.header_filled += n;
            if self.header_filled < 4 {
                return Ok(None);
            }
            let size = u32::from_le_bytes(self.header) as usize;
            if size > self.max_frame_size {
                return Err(TransportError::FrameTooLarge {
                    size,
                    limit: self.max_frame_size,
                });
            }
            self.body = vec![0; size];
            self.body_filled = 0;
        } else {
            self.body_filled += n;
        }
        if self.body_filled == self.body.len() {
            self.header_filled = 0;
            return Ok(Some(Bytes::from(std::mem::take(&mut self.body))));
        }
        Ok(None)
    }

    /// Whether a frame is partly received.
    pub fn in_frame(&self) -> bool {
        self.header_filled > 0
    }
}

/// The receiving half of a channel: one QUIC receive stream.
pub struct QuicFrameReceiver {
    stream: quinn::RecvStream,
    decoder: FrameDecoder,
}

impl QuicFrameReceiver {
    /// Wraps a receive stream.
    pub fn new(stream: quinn::RecvStream, max_frame_size: usize) -> QuicFrameReceiver {
        QuicFrameReceiver {
            stream,
            decoder: FrameDecoder::new(max_frame_size),
        }
    }
}

#[async_trait]
impl FrameReceiver for QuicFrameReceiver {
    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        loop {
            // A zero-length frame has an empty body: complete it without reading.
            if self.decoder.header_filled == 4
                && self.decoder.body.is_empty()
                && let Some(frame) = self.decoder.advance(0)?
            {
                return Ok(Some(frame));
            }
            // `read` is cancel safe and the decoder keeps partial frames, so `recv` is too.
            let read = self
                .stream
                .read(self.decoder.buffer())
                .await
                .map_err(|e| TransportError::Closed(e.to_string()))?;
            match read {
                Some(n) => {
                    let frame = self.decoder.advance(n).inspect_err(|_| {
                        let _ = self.stream.stop(quinn::VarInt::from_u32(2));
                    })?;
                    if let Some(frame) = frame {
                        return Ok(Some(frame));
                    }
                }
                None if self.decoder.in_frame() => {
                    return Err(TransportError::Closed(
                        "stream ended inside a frame (truncated)".into(),
                    ));
                }
                None => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn feed(decoder: &mut FrameDecoder, mut bytes: &[u8]) -> Result<Vec<Bytes>, TransportError> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            if decoder.header_filled == 4 && decoder.body.is_empty() {
                frames.extend(decoder.advance(0)?);
                continue;
            }
            let buffer = decoder.buffer();
            let n = buffer.len().min(bytes.len());
            buffer[..n].copy_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            frames.extend(decoder.advance(n)?);
        }
        Ok(frames)
    }

    #[test]
    fn frames_reassemble_across_arbitrary_splits() {
        let mut stream = Vec::new();
        for frame in [&b"one"[..], b"", b"three!"] {
            stream.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            stream.extend_from_slice(frame);
        }
        for split in 1..stream.len() {
            let mut decoder = FrameDecoder::new(64);
            let mut frames = feed(&mut decoder, &stream[..split]).unwrap();
            frames.extend(feed(&mut decoder, &stream[split..]).unwrap());
            if decoder.header_filled == 4 && decoder.body.is_empty() {
                frames.extend(decoder.advance(0).unwrap());
            }
            let texts: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
            assert_eq!(texts, vec![&b"one"[..], b"", b"three!"], "split at {split}");
        }
    }

    #[test]
    fn oversized_frames_are_refused_before_allocation() {
        let mut decoder = FrameDecoder::new(1024);
        let error = feed(&mut decoder, &u32::MAX.to_le_bytes()).unwrap_err();
        assert!(
            matches!(error, TransportError::FrameTooLarge { size, limit: 1024 } if size == u32::MAX as usize)
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let mut decoder = FrameDecoder::new(1 << 16);
            let _ = feed(&mut decoder, &bytes);
        }
    }
}
