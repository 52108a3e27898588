//! Small helpers that several of loraforge's I/O crates need and that belong to none of them.
//! Only std and tokio; nothing of loraforge's own.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// The next line of `reader` without its `\n` (or `\r\n`), decoded lossily and cut at `max`
/// bytes (the rest of a longer line is dropped, never buffered); `None` at the end of the stream
/// or on a read error. Reading a child's output with it never stalls the child on a long line
/// or on bytes that are not UTF-8.
pub async fn next_line(reader: &mut (impl AsyncBufRead + Unpin), max: usize) -> Option<String> {
    let mut line = Vec::new();
    let mut read_any = false;
    loop {
        let buf = reader.fill_buf().await.ok()?;
        if buf.is_empty() {
            return read_any.then(|| String::from_utf8_lossy(&line).into_owned());
        }
        read_any = true;
        let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        let room = max.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = done.unwrap_or(buf.len());
        reader.consume(used);
        if done.is_some() {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Some(String::from_utf8_lossy(&line).into_owned());
        }
    }
}

/// A transport error's text for logs and run records: what went wrong ("timed out", "could not
/// connect", "request failed") and every cause, without the URL (a provider's URL may carry a
/// key or a signature).
#[cfg(feature = "reqwest")]
pub fn http_error_text(error: reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let error = error.without_url();
    let mut text = format!("{kind}: {error}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use tokio::io::BufReader;

    use super::*;

    #[tokio::test]
    async fn lines_are_split_and_bounded() {
        const MAX: usize = 64;
        let long = "x".repeat(MAX + 10);
        let input = format!("one\r\n{long}\ntwo\n\u{fffd}bad \u{e9}\nlast without newline");
        let mut bytes = input.into_bytes();
        // A byte that is not UTF-8 in the fourth line.
        let at = bytes.iter().position(|b| *b == b'b').unwrap() - 3;
        bytes[at] = 0xff;
        let mut r = BufReader::with_capacity(7, bytes.as_slice());
        assert_eq!(next_line(&mut r, MAX).await.as_deref(), Some("one"));
        assert_eq!(next_line(&mut r, MAX).await.map(|l| l.len()), Some(MAX));
        assert_eq!(next_line(&mut r, MAX).await.as_deref(), Some("two"));
        assert!(
            next_line(&mut r, MAX)
                .await
                .is_some_and(|l| l.ends_with("bad \u{e9}"))
        );
        assert_eq!(
            next_line(&mut r, MAX).await.as_deref(),
            Some("last without newline")
        );
        assert_eq!(next_line(&mut r, MAX).await, None);
    }
}
