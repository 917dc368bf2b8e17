//! A small server-sent events reader: `data:` payloads out of a byte stream, whether the
//! server separates events with `\n\n` (OpenAI) or `\r\n\r\n` (Gemini).

use futures_util::{Stream, StreamExt};

pub struct SseReader<S> {
    stream: S,
    buffer: Vec<u8>,
    done: bool,
}

/// The stream broke (connection reset, body error) before it ended cleanly.
#[derive(Debug, thiserror::Error)]
#[error("the event stream broke: {0}")]
pub struct SseError(pub String);

impl<S, B, E> SseReader<S>
where
    S: Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: std::fmt::Display,
{
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            buffer: Vec::new(),
            done: false,
        }
    }

    /// The next event's data (its `data:` lines joined by newlines), or `None` when the
    /// stream has ended.
    pub async fn next_data(&mut self) -> Result<Option<String>, SseError> {
        loop {
            if let Some((end, skip)) = event_end(&self.buffer) {
                let event: Vec<u8> = self.buffer.drain(..end + skip).take(end).collect();
                if let Some(data) = data_of(&event) {
                    return Ok(Some(data));
                }
                continue;
            }
            if self.done {
                if self.buffer.is_empty() {
                    return Ok(None);
                }
                let event = std::mem::take(&mut self.buffer);
                return Ok(data_of(&event));
            }
            match self.stream.next().await {
                Some(Ok(bytes)) => self.buffer.extend_from_slice(bytes.as_ref()),
                Some(Err(err)) => return Err(SseError(err.to_string())),
                None => self.done = true,
            }
        }
    }
}

/// Where the first event ends, and how long its blank-line separator is.
fn event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let lf = buffer.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn data_of(event: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(event);
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect();
    if lines.is_empty() {
        None
    } else {
        Some(lines.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn all(chunks: Vec<&'static str>) -> Vec<String> {
        let stream =
            futures_util::stream::iter(chunks.into_iter().map(|c| Ok::<_, String>(c.as_bytes())));
        let mut reader = SseReader::new(stream);
        let mut out = Vec::new();
        while let Some(data) = reader.next_data().await.unwrap() {
            out.push(data);
        }
        out
    }

    #[tokio::test]
    async fn reads_both_separators_across_chunk_boundaries() {
        assert_eq!(
            all(vec!["data: {\"a\":1}\r\n\r\ndata: {\"b\"", ":2}\r\n\r\n"]).await,
            ["{\"a\":1}", "{\"b\":2}"]
        );
        assert_eq!(
            all(vec![
                "data: one\n\n: comment\n\ndata: two\n",
                "\ndata: [DONE]\n\n"
            ])
            .await,
            ["one", "two", "[DONE]"]
        );
        assert_eq!(
            all(vec!["data: tail without blank line"]).await,
            ["tail without blank line"]
        );
    }
}
