//! Incremental detokenization: turns a growing list of tokens into text pieces without ever
//! emitting half of a multi-byte character (byte-level BPE splits characters across tokens).

use unfed_model::TextTokenizer;

/// Emits the new text each token adds, holding back incomplete characters.
#[derive(Debug, Default)]
pub struct TextStream {
    tokens: Vec<u32>,
    /// Start of the window that is decoded each time (tokens before it are settled).
    prefix: usize,
    /// Length of the window's text already emitted.
    emitted: usize,
}

impl TextStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a token; returns the text that is now complete, if any.
    pub fn push(&mut self, tok: &TextTokenizer, id: u32) -> unfed_model::Result<Option<String>> {
        self.tokens.push(id);
        let text = tok.decode(&self.tokens[self.prefix..])?;
        if text.len() <= self.emitted
            || text.ends_with('\u{FFFD}')
            || !text.is_char_boundary(self.emitted)
        {
            return Ok(None);
        }
        let piece = text[self.emitted..].to_string();
        // Keep the last token in the window: some tokenizers decode a token differently at the
        // start of a sequence (a leading space), so never decode a token on its own.
        self.prefix = self.tokens.len() - 1;
        self.emitted = tok.decode(&self.tokens[self.prefix..])?.len();
        Ok(Some(piece))
    }

    /// Whatever is left at the end (an incomplete character shows as U+FFFD).
    pub fn finish(&mut self, tok: &TextTokenizer) -> unfed_model::Result<Option<String>> {
        let text = tok.decode(&self.tokens[self.prefix..])?;
        Ok(
            (text.len() > self.emitted && text.is_char_boundary(self.emitted))
                .then(|| text[self.emitted..].to_string()),
        )
    }
}
