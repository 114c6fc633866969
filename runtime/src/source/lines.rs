//! Bytes to text lines, for the sources that read text: bounded in memory, decoded per line, so
//! one bad line is refused on its own and never takes the lines around it down with it.

/// The longest line a text source accepts; longer ones are refused (and not kept in memory).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// A line as a source hands it on.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line, without its `\n` or `\r\n`.
    Text(String),
    /// A line the source refuses; the reason names the line's number and shape, never its bytes
    /// (the input may be anything, secrets included, and refusals reach logs and status).
    Refused(String),
}

/// Splits a byte stream into lines across reads of any size: a line cut by a pause, or a
/// character whose bytes arrive in two reads, comes out whole.
#[derive(Debug)]
pub struct LineSplitter {
    partial: Vec<u8>,
    /// Set while the current line has outgrown the limit: its bytes are dropped up to its end.
    overlong: Option<usize>,
    /// Lines seen so far (1-based numbers in refusals).
    number: u64,
    max: usize,
}

impl Default for LineSplitter {
    fn default() -> Self {
        Self::new(MAX_LINE_BYTES)
    }
}

impl LineSplitter {
    /// A splitter refusing lines longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            partial: Vec::new(),
            overlong: None,
            number: 0,
            max: max.max(1),
        }
    }

    /// Bytes held for a line not yet ended.
    pub fn pending_bytes(&self) -> usize {
        self.partial.len()
    }

    /// Takes the next bytes; complete lines go to `out`.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut impl FnMut(Line)) {
        while !bytes.is_empty() {
            let end = bytes.iter().position(|b| *b == b'\n');
            let (chunk, rest, complete) = match end {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            bytes = rest;
            match &mut self.overlong {
                Some(len) => *len += chunk.len(),
                None if self.partial.len() + chunk.len() > self.max => {
                    self.overlong = Some(self.partial.len() + chunk.len());
                    self.partial = Vec::new();
                }
                None => self.partial.extend_from_slice(chunk),
            }
            if complete {
                self.finish_line(out);
            }
        }
    }

    /// The end of the input: a last line without a newline is a line too.
    pub fn finish(&mut self, out: &mut impl FnMut(Line)) {
        if !self.partial.is_empty() || self.overlong.is_some() {
            self.finish_line(out);
        }
    }

    /// Drops a line cut off by a lost connection; it is refused, as it is incomplete.
    pub fn abandon(&mut self, out: &mut impl FnMut(Line)) {
        if !self.partial.is_empty() || self.overlong.is_some() {
            self.number += 1;
            let len = self.overlong.take().unwrap_or(self.partial.len());
            self.partial = Vec::new();
            out(Line::Refused(format!(
                "line {}: cut off after {len} bytes when the connection was lost",
                self.number
            )));
        }
    }

    fn finish_line(&mut self, out: &mut impl FnMut(Line)) {
        self.number += 1;
        if let Some(len) = self.overlong.take() {
            out(Line::Refused(format!(
                "line {}: {len} bytes, longer than the {} byte limit",
                self.number, self.max
            )));
            return;
        }
        let mut bytes = std::mem::take(&mut self.partial);
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        match String::from_utf8(bytes) {
            Ok(text) => out(Line::Text(text)),
            Err(e) => {
                let at = e.utf8_error().valid_up_to();
                let len = e.as_bytes().len();
                out(Line::Refused(format!(
                    "line {}: not UTF-8 text (an invalid byte at offset {at} of {len})",
                    self.number
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]], max: usize) -> Vec<Line> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, &mut |l| out.push(l));
        }
        s.finish(&mut |l| out.push(l));
        out
    }

    fn text(s: &str) -> Line {
        Line::Text(s.to_string())
    }

    #[test]
    fn lines_survive_any_cut_of_the_bytes() {
        let input = "héllo wörld\r\nsecond 日本\n\nlast".as_bytes();
        for cut in 0..input.len() {
            let got = split(&[&input[..cut], &input[cut..]], 100);
            assert_eq!(
                got,
                vec![
                    text("héllo wörld"),
                    text("second 日本"),
                    text(""),
                    text("last")
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_bad_line_is_refused_alone_and_not_quoted() {
        let got = split(&[b"good\nsecret\xff\xfe\nalso good\n"], 100);
        assert_eq!(got[0], text("good"));
        assert_eq!(got[2], text("also good"));
        let Line::Refused(why) = &got[1] else {
            panic!("not refused: {got:?}");
        };
        assert!(why.starts_with("line 2: not UTF-8"), "{why}");
        assert!(!why.contains("secret"), "{why}");
    }

    #[test]
    fn overlong_lines_are_refused_without_being_kept() {
        let mut s = LineSplitter::new(10);
        let mut out = Vec::new();
        s.feed(b"short\n0123456789", &mut |l| out.push(l));
        s.feed(b"abcdef", &mut |l| out.push(l));
        assert_eq!(s.pending_bytes(), 0, "an overlong line is not held");
        s.feed(b"ghij\nok\n", &mut |l| out.push(l));
        assert_eq!(
            out,
            vec![
                text("short"),
                Line::Refused("line 2: 20 bytes, longer than the 10 byte limit".into()),
                text("ok")
            ]
        );
        // Exactly at the limit is fine.
        assert_eq!(split(&[b"0123456789\n"], 10), vec![text("0123456789")]);
    }

    #[test]
    fn a_line_cut_by_a_lost_connection_is_refused() {
        let mut s = LineSplitter::new(10);
        let mut out = Vec::new();
        s.feed(b"one\ntw", &mut |l| out.push(l));
        s.abandon(&mut |l| out.push(l));
        s.feed(b"three\n", &mut |l| out.push(l));
        assert_eq!(
            out,
            vec![
                text("one"),
                Line::Refused("line 2: cut off after 2 bytes when the connection was lost".into()),
                text("three")
            ]
        );
    }
}
