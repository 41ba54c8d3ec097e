//! Stop strings over streamed text: text that could still turn into a stop string is held
//! back, so a client never sees part of a stop string; the stop string itself is dropped.

#[derive(Debug, PartialEq)]
pub enum StopOutcome {
    /// Text safe to emit now (may be empty).
    Text(String),
    /// A stop string appeared: the text before it; generation must end.
    Stopped(String),
    /// A capture marker (e.g. `<tool_call>`) appeared: the text before it, and the marker plus
    /// whatever followed it.
    Captured(String, String),
}

#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    markers: Vec<String>,
    held: String,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>, markers: Vec<String>) -> Self {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            markers: markers.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, chunk: &str) -> StopOutcome {
        self.held.push_str(chunk);
        // The earliest match wins; a stop string beats a marker at the same place.
        let first = |list: &[String]| {
            list.iter()
                .filter_map(|s| self.held.find(s.as_str()).map(|p| (p, s.len())))
                .min()
        };
        let stop = first(&self.stops);
        let marker = first(&self.markers);
        match (stop, marker) {
            (Some((p, _)), m) if m.is_none_or(|(mp, _)| p <= mp) => {
                let before = self.held[..p].to_owned();
                self.held.clear();
                return StopOutcome::Stopped(before);
            }
            (_, Some((mp, _))) => {
                let before = self.held[..mp].to_owned();
                let rest = self.held[mp..].to_owned();
                self.held.clear();
                return StopOutcome::Captured(before, rest);
            }
            _ => {}
        }
        let hold = self
            .stops
            .iter()
            .chain(&self.markers)
            .map(|s| longest_suffix_prefix(&self.held, s))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - hold;
        let out = self.held[..cut].to_owned();
        self.held.drain(..cut);
        StopOutcome::Text(out)
    }

    /// End of generation: the held-back text was not a stop string after all.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// Length of the longest proper prefix of `pat` that `text` ends with.
fn longest_suffix_prefix(text: &str, pat: &str) -> usize {
    (1..pat.len())
        .rev()
        .filter(|&k| pat.is_char_boundary(k))
        .find(|&k| text.ends_with(&pat[..k]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(m: &mut StopMatcher, chunks: &[&str]) -> (String, Option<StopOutcome>) {
        let mut out = String::new();
        for c in chunks {
            match m.push(c) {
                StopOutcome::Text(t) => out.push_str(&t),
                other => return (out, Some(other)),
            }
        }
        out.push_str(&m.finish());
        (out, None)
    }

    #[test]
    fn stop_split_over_chunks_is_never_emitted() {
        let mut m = StopMatcher::new(vec!["END".into()], vec![]);
        assert_eq!(m.push("abc E"), StopOutcome::Text("abc ".into()));
        assert_eq!(m.push("N"), StopOutcome::Text(String::new()));
        assert_eq!(m.push("Dxyz"), StopOutcome::Stopped(String::new()));
    }

    #[test]
    fn false_alarm_is_released() {
        let mut m = StopMatcher::new(vec!["END".into()], vec![]);
        let (out, stop) = feed(&mut m, &["a E", "NX", " E"]);
        assert_eq!(out, "a ENX E");
        assert!(stop.is_none());
    }

    #[test]
    fn earliest_stop_wins_and_multibyte_is_safe() {
        let mut m = StopMatcher::new(vec!["中文".into(), "b".into()], vec![]);
        assert_eq!(m.push("a中"), StopOutcome::Text("a".into()));
        assert_eq!(m.push("x中文 b"), StopOutcome::Stopped("中x".into()));
    }

    #[test]
    fn markers_capture_the_rest() {
        let mut m = StopMatcher::new(vec!["STOP".into()], vec!["<tool_call>".into()]);
        assert_eq!(m.push("hi <tool"), StopOutcome::Text("hi ".into()));
        assert_eq!(
            m.push("_call>{\"a\""),
            StopOutcome::Captured(String::new(), "<tool_call>{\"a\"".into())
        );
    }
}
