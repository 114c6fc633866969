//! Text that quotes what users wrote, fit for places with size limits.

/// `text` cut to at most `limit` bytes on a character boundary, ending in `...` when cut: for
/// messages that quote user text or reach places with size limits (status, events).
pub fn shorten(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let mut end = limit.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}
