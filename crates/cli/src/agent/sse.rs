//! Reading a server-sent event stream: `event:` and `data:` lines, an event ending at a blank
//! line, comments (the server's keep-alives) ignored.

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    pub name: String,
    pub data: String,
}

/// An event stream's bytes in, its events out.
#[derive(Default)]
pub(crate) struct Parser {
    buf: Vec<u8>,
    name: String,
    data: Vec<String>,
}

/// Longest line accepted: a command is small; more is a broken stream.
const MAX_LINE: usize = 16 << 20;

impl Parser {
    /// Feed bytes; returns the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Event>, String> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..end]);
            let line = line.strip_suffix('\r').unwrap_or(&line);
            if line.is_empty() {
                if !self.data.is_empty() {
                    events.push(Event {
                        name: std::mem::take(&mut self.name),
                        data: std::mem::take(&mut self.data).join("\n"),
                    });
                }
                self.name.clear();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.name = value.to_string(),
                "data" => self.data.push(value.to_string()),
                _ => {}
            }
        }
        if self.buf.len() > MAX_LINE {
            return Err(format!(
                "an event stream line is longer than {MAX_LINE} bytes"
            ));
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere_come_out_whole_and_comments_are_skipped() {
        let text = b": alive\n\nevent: command\ndata: {\"id\":1}\n\n:alive\n\nevent: command\r\ndata: a\r\ndata: b\r\n\r\n";
        for cut in 0..text.len() {
            let mut p = Parser::default();
            let mut got = p.feed(&text[..cut]).unwrap();
            got.extend(p.feed(&text[cut..]).unwrap());
            assert_eq!(
                got,
                vec![
                    Event {
                        name: "command".into(),
                        data: "{\"id\":1}".into()
                    },
                    Event {
                        name: "command".into(),
                        data: "a\nb".into()
                    },
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn an_endless_line_is_an_error() {
        let mut p = Parser::default();
        let long = vec![b'x'; MAX_LINE + 1];
        assert!(p.feed(&long).is_err());
    }
}
