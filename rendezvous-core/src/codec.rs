//! Framing: an unsigned-varint length prefix followed by a protobuf [`Message`].
//!
//! [`FrameDecoder`] takes input split at any byte and never buffers more than
//! one frame: the claimed length is checked against the limit as soon as the
//! prefix is complete, before anything is allocated for the body.

use bytes::{Bytes, BytesMut};
use prost::Message as _;

use crate::proto::{Message, MessageType};

/// The longest unsigned varint that can encode a `u64`.
const MAX_VARINT_LEN: usize = 10;

/// What a body buffer starts with; most requests fit.
const INITIAL_BODY_CAPACITY: usize = 1024;

/// Why a frame could not be read. Every variant is the remote peer's fault;
/// the adapter should end the stream it came from (and only that stream).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The length prefix claims more than the limit allows.
    #[error("frame of {claimed} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// What the prefix claims.
        claimed: u64,
        /// The limit in force.
        max: usize,
    },
    /// The length prefix is longer than any `u64` varint.
    #[error("length prefix is not a valid unsigned varint")]
    InvalidLengthPrefix,
    /// The stream ended inside a frame.
    #[error("stream ended {missing} bytes before the end of the frame")]
    Truncated {
        /// How many bytes were still expected (at least one).
        missing: usize,
    },
    /// The frame is not a valid protobuf `Message`.
    #[error("malformed protobuf message: {0}")]
    Malformed(#[from] prost::DecodeError),
}

/// Appends `message`, length-prefixed, to `dst`.
pub fn encode_frame(message: &Message, dst: &mut BytesMut) {
    let len = message.encoded_len();
    dst.reserve(len + MAX_VARINT_LEN);
    message
        .encode_length_delimited(dst)
        .expect("BytesMut grows on demand, so encoding cannot run out of space");
}

/// `message` as one length-prefixed frame.
pub fn frame(message: &Message) -> Bytes {
    let mut buf = BytesMut::new();
    encode_frame(message, &mut buf);
    buf.freeze()
}

/// Decodes the body of a frame (the bytes after the length prefix).
pub fn decode_message(body: &[u8]) -> Result<Message, CodecError> {
    Ok(Message::decode(body)?)
}

/// A [`Message`] with only its type field: decoding it steps over the
/// other fields without reading or copying them.
#[derive(Clone, PartialEq, prost::Message)]
struct TypeOnly {
    #[prost(enumeration = "MessageType", optional, tag = "1")]
    r#type: Option<i32>,
}

/// The type of the message in a frame body, read without decoding the rest
/// (omitted reads as `REGISTER`, as in [`Message::message_type`]); `None`
/// if the body is not a message or names a type this crate does not know.
/// A body whose type reads here may still fail [`decode_message`].
///
/// ```
/// use rendezvous_core::codec::{frame, peek_type};
/// use rendezvous_core::proto::{Message, MessageType};
///
/// let discover = Message { r#type: Some(MessageType::Discover as i32), ..Message::default() };
/// let body = frame(&discover).slice(1..); // after its one-byte length prefix
/// assert_eq!(peek_type(&body), Some(MessageType::Discover));
/// assert_eq!(peek_type(&[]), Some(MessageType::Register)); // proto3's default
/// assert_eq!(peek_type(&[0x08, 0x2a]), None); // type 42
/// assert_eq!(peek_type(&[0x2a, 0x05, 0x01]), None); // a field cut short
/// ```
pub fn peek_type(body: &[u8]) -> Option<MessageType> {
    let raw = TypeOnly::decode(body).ok()?.r#type.unwrap_or(0);
    MessageType::try_from(raw).ok()
}

/// Splits a byte stream into frame bodies.
///
/// ```
/// use rendezvous_core::codec::FrameDecoder;
///
/// let mut decoder = FrameDecoder::new(1024);
/// let mut input: &[u8] = &[3, b'a', b'b'];
/// assert_eq!(decoder.feed(&mut input), Ok(None)); // one byte short
/// let mut rest: &[u8] = &[b'c', 1];
/// assert_eq!(decoder.feed(&mut rest).unwrap().unwrap().as_ref(), b"abc");
/// assert_eq!(rest, &[1]); // the next frame's prefix is left for the next call
/// ```
#[derive(Debug)]
pub struct FrameDecoder {
    max_frame: usize,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Reading the prefix: the value so far and how many bytes it took.
    Prefix { value: u64, len: usize },
    /// Reading a body of known length.
    Body { buf: BytesMut, len: usize },
    /// A previous call failed; the stream is unusable.
    Failed,
}

impl FrameDecoder {
    /// A decoder that rejects frames whose body is longer than `max_frame`.
    pub fn new(max_frame: usize) -> Self {
        FrameDecoder { max_frame, state: State::Prefix { value: 0, len: 0 } }
    }

    /// Consumes bytes from the front of `input` until one frame is complete
    /// and returns its body, or consumes all of `input` and returns `None`.
    ///
    /// After an error the decoder stays failed: the stream must be dropped.
    pub fn feed(&mut self, input: &mut &[u8]) -> Result<Option<Bytes>, CodecError> {
        loop {
            match &mut self.state {
                State::Failed => return Err(CodecError::InvalidLengthPrefix),
                State::Prefix { value, len } => {
                    let Some((&byte, rest)) = input.split_first() else {
                        return Ok(None);
                    };
                    *input = rest;
                    if *len == MAX_VARINT_LEN - 1 && byte > 1 {
                        // The tenth byte may only carry the 64th bit.
                        self.state = State::Failed;
                        return Err(CodecError::InvalidLengthPrefix);
                    }
                    *value |= u64::from(byte & 0x7f) << (7 * *len);
                    *len += 1;
                    if byte & 0x80 != 0 {
                        if *len == MAX_VARINT_LEN {
                            self.state = State::Failed;
                            return Err(CodecError::InvalidLengthPrefix);
                        }
                        continue;
                    }
                    let claimed = *value;
                    let Some(body_len) = usize::try_from(claimed)
                        .ok()
                        .filter(|&body_len| body_len <= self.max_frame)
                    else {
                        self.state = State::Failed;
                        return Err(CodecError::FrameTooLarge { claimed, max: self.max_frame });
                    };
                    // Grow with what arrives: a claim costs nothing until
                    // the bytes behind it do.
                    let initial = body_len.min(INITIAL_BODY_CAPACITY);
                    self.state =
                        State::Body { buf: BytesMut::with_capacity(initial), len: body_len };
                }
                State::Body { buf, len } => {
                    let take = (*len - buf.len()).min(input.len());
                    buf.extend_from_slice(&input[..take]);
                    *input = &input[take..];
                    if buf.len() < *len {
                        return Ok(None);
                    }
                    let body = std::mem::take(buf).freeze();
                    self.state = State::Prefix { value: 0, len: 0 };
                    return Ok(Some(body));
                }
            }
        }
    }

    /// Call at the end of the stream: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), CodecError> {
        match &self.state {
            State::Prefix { len: 0, .. } => Ok(()),
            State::Prefix { .. } => Err(CodecError::Truncated { missing: 1 }),
            State::Body { buf, len } => Err(CodecError::Truncated { missing: len - buf.len() }),
            State::Failed => Err(CodecError::InvalidLengthPrefix),
        }
    }

    /// True when no partial frame is buffered.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Prefix { len: 0, .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Discover, MessageType};

    fn discover_frame() -> Bytes {
        frame(&Message {
            r#type: Some(MessageType::Discover as i32),
            discover: Some(Discover { ns: Some("chat".into()), limit: Some(5), cookie: None }),
            ..Default::default()
        })
    }

    #[test]
    fn a_frame_split_at_every_byte_decodes_the_same() {
        let frame = discover_frame();
        for split in 0..=frame.len() {
            let mut decoder = FrameDecoder::new(1024);
            let (a, b) = frame.split_at(split);
            let mut a = a;
            let first = decoder.feed(&mut a).unwrap();
            let body = match first {
                Some(body) => body,
                None => decoder.feed(&mut &b[..]).unwrap().unwrap(),
            };
            assert_eq!(body.as_ref(), &frame[1..]);
            assert!(decoder.is_idle());
        }
    }

    #[test]
    fn byte_by_byte_input_yields_every_frame_in_order() {
        let frame = discover_frame();
        let stream: Vec<u8> = frame.iter().chain(frame.iter()).copied().collect();
        let mut decoder = FrameDecoder::new(1024);
        let mut bodies = Vec::new();
        for byte in &stream {
            let mut one = std::slice::from_ref(byte);
            if let Some(body) = decoder.feed(&mut one).unwrap() {
                bodies.push(decode_message(&body).unwrap());
            }
        }
        assert_eq!(bodies.len(), 2);
        assert_eq!(bodies[0].message_type(), Ok(MessageType::Discover));
    }

    #[test]
    fn an_oversized_claim_is_rejected_before_any_allocation() {
        // Claims u64::MAX / 2 bytes; must fail on the prefix alone.
        let mut input: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        let mut decoder = FrameDecoder::new(4096);
        let err = decoder.feed(&mut input).unwrap_err();
        assert!(matches!(err, CodecError::FrameTooLarge { max: 4096, .. }), "{err:?}");
        assert!(decoder.feed(&mut &[0u8][..]).is_err(), "a failed decoder stays failed");
    }

    #[test]
    fn a_frame_of_exactly_the_limit_is_accepted() {
        let mut decoder = FrameDecoder::new(3);
        assert!(decoder.feed(&mut &[3, 1, 2, 3][..]).unwrap().is_some());
        assert!(matches!(
            decoder.feed(&mut &[4][..]),
            Err(CodecError::FrameTooLarge { claimed: 4, max: 3 })
        ));
    }

    #[test]
    fn an_endless_varint_is_rejected() {
        let mut decoder = FrameDecoder::new(usize::MAX);
        let mut input: &[u8] = &[0x80; 11];
        assert_eq!(decoder.feed(&mut input), Err(CodecError::InvalidLengthPrefix));
    }

    #[test]
    fn a_varint_overflowing_u64_is_rejected_not_wrapped() {
        let mut decoder = FrameDecoder::new(usize::MAX);
        let mut input: &[u8] = &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02];
        assert_eq!(decoder.feed(&mut input), Err(CodecError::InvalidLengthPrefix));
    }

    #[test]
    fn a_stream_ending_mid_frame_is_reported_as_truncated() {
        let mut decoder = FrameDecoder::new(1024);
        assert_eq!(decoder.finish(), Ok(()));
        decoder.feed(&mut &[5, 1, 2][..]).unwrap();
        assert_eq!(decoder.finish(), Err(CodecError::Truncated { missing: 3 }));
    }

    #[test]
    fn garbage_after_a_valid_prefix_is_a_protobuf_error_not_a_panic() {
        let body = [0xff, 0xff, 0xff];
        assert!(matches!(decode_message(&body), Err(CodecError::Malformed(_))));
    }
}
