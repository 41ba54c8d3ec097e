use tokenizers::decoders::DecoderWrapper;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{DecodeStream, ModelWrapper};

use crate::error::TokenizerError;
use crate::tokenizer::Tokenizer;

type GenericStream<'a> = DecodeStream<
    'a,
    ModelWrapper,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

/// Incremental detokenizer for streaming generation: push ids one at a time and get back only text
/// that is complete UTF-8, so a character spread over several byte-level tokens (CJK, emoji) is
/// emitted once whole. The concatenation of all chunks plus [`StreamDecoder::flush`] equals
/// [`Tokenizer::decode`] of all ids.
pub struct StreamDecoder<'a> {
    inner: Inner<'a>,
}

enum Inner<'a> {
    /// Byte-level decoder (all Qwen2 tokenizers): exact, O(1) per token.
    ByteLevel {
        tok: &'a Tokenizer,
        skip_special: bool,
        pending: Vec<u8>,
    },
    /// Any other decoder: the `tokenizers` crate's prefix-diff stream.
    Generic(Box<GenericStream<'a>>),
}

impl<'a> StreamDecoder<'a> {
    pub fn new(tok: &'a Tokenizer, skip_special: bool) -> Self {
        let inner = if tok.has_byte_level_decoder() {
            Inner::ByteLevel {
                tok,
                skip_special,
                pending: Vec::new(),
            }
        } else {
            Inner::Generic(Box::new(tok.inner().decode_stream(skip_special)))
        };
        StreamDecoder { inner }
    }

    /// Add one id; returns the text it completes, if any. Unknown ids are skipped like in
    /// [`Tokenizer::decode`].
    pub fn push(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        match &mut self.inner {
            Inner::ByteLevel {
                tok,
                skip_special,
                pending,
            } => {
                if let Some(bytes) = tok.token_bytes(id, *skip_special) {
                    pending.extend_from_slice(&bytes);
                }
                Ok(take_complete(pending))
            }
            Inner::Generic(stream) => stream
                .step(id)
                .map_err(|e| TokenizerError::Decode(e.to_string())),
        }
    }

    /// End of stream: whatever is still buffered (an incomplete character becomes U+FFFD, as in
    /// [`Tokenizer::decode`]).
    pub fn flush(&mut self) -> Result<Option<String>, TokenizerError> {
        match &mut self.inner {
            Inner::ByteLevel { pending, .. } => {
                if pending.is_empty() {
                    return Ok(None);
                }
                let text = String::from_utf8_lossy(pending).into_owned();
                pending.clear();
                Ok(Some(text))
            }
            Inner::Generic(_) => Ok(None),
        }
    }
}

/// Remove and return the longest prefix of `pending` that decodes on its own: complete characters,
/// and invalid sequences (as U+FFFD, exactly like `String::from_utf8_lossy` on the whole text). An
/// incomplete character at the end stays buffered.
fn take_complete(pending: &mut Vec<u8>) -> Option<String> {
    let mut out = String::new();
    let mut start = 0;
    loop {
        match std::str::from_utf8(&pending[start..]) {
            Ok(s) => {
                out.push_str(s);
                start = pending.len();
                break;
            }
            Err(e) => {
                let valid = start + e.valid_up_to();
                out.push_str(std::str::from_utf8(&pending[start..valid]).unwrap_or_default());
                match e.error_len() {
                    Some(bad) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        start = valid + bad;
                    }
                    None => {
                        start = valid;
                        break;
                    }
                }
            }
        }
    }
    pending.drain(..start);
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::take_complete;

    #[test]
    fn take_complete_matches_lossy_decoding() {
        let text = "a€😀中\u{1F468}\u{200D}\u{1F469}";
        let mut bytes = text.as_bytes().to_vec();
        bytes.insert(3, 0xFF); // invalid byte in the middle
        bytes.push(0xE4); // truncated 3-byte char at the end
        let mut pending = Vec::new();
        let mut out = String::new();
        for &b in &bytes {
            pending.push(b);
            if let Some(s) = take_complete(&mut pending) {
                assert!(!s.is_empty());
                out.push_str(&s);
            }
        }
        assert_eq!(pending, vec![0xE4]);
        out.push_str(&String::from_utf8_lossy(&pending));
        assert_eq!(out, String::from_utf8_lossy(&bytes));
    }
}
