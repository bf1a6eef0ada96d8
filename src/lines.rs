//! A program's output arriving in chunks (a container's log stream, a pipe), split into
//! lines as it comes, with the last ones kept for an error message.

/// Splits a program's stderr, arriving in chunks, into lines, and keeps the last ones.
#[derive(Debug, Default)]
pub struct Lines {
    partial: Vec<u8>,
    tail: std::collections::VecDeque<String>,
}

impl Lines {
    /// How many of the last lines are kept.
    const KEEP: usize = 40;

    /// Takes a chunk; hands each complete line to `line`.
    pub fn push(&mut self, chunk: &[u8], line: &(dyn Fn(&str) + Send + Sync)) {
        self.partial.extend_from_slice(chunk);
        while let Some(at) = self.partial.iter().position(|b| *b == b'\n') {
            let rest = self.partial.split_off(at + 1);
            let text = String::from_utf8_lossy(&self.partial[..at]).into_owned();
            self.partial = rest;
            self.keep(text, line);
        }
    }

    /// The last lines, the unfinished one included.
    pub fn finish(mut self, line: &(dyn Fn(&str) + Send + Sync)) -> String {
        if !self.partial.is_empty() {
            let text = String::from_utf8_lossy(&self.partial).into_owned();
            self.keep(text, line);
        }
        self.tail.into_iter().collect::<Vec<_>>().join("\n")
    }

    fn keep(&mut self, text: String, line: &(dyn Fn(&str) + Send + Sync)) {
        line(&text);
        if self.tail.len() == Self::KEEP {
            self.tail.pop_front();
        }
        self.tail.push_back(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_chunks_become_lines_and_the_last_ones_are_kept() {
        let seen = std::sync::Mutex::new(Vec::new());
        let line = |l: &str| seen.lock().unwrap().push(l.to_string());
        let mut lines = Lines::default();
        lines.push(b"one\ntw", &line);
        lines.push(b"o\n", &line);
        for i in 0..50 {
            lines.push(format!("l{i}\n").as_bytes(), &line);
        }
        lines.push(b"end", &line);
        let tail = lines.finish(&line);
        let seen = seen.into_inner().unwrap();
        assert_eq!(&seen[..2], ["one", "two"]);
        assert_eq!(seen.len(), 53);
        assert!(
            tail.starts_with("l11\n") && tail.ends_with("l49\nend"),
            "{tail}"
        );
    }
}
