//! The planchette's path: where it goes, and when, to spell an answer on the board.

use serde::Serialize;

use crate::board::Board;

#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PathPoint {
    pub symbol: String,
    pub x: f64,
    pub y: f64,
    /// Milliseconds from the start of the answer; never decreasing.
    pub at_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// Time on each symbol.
    pub symbol_ms: u64,
    /// The extra pause when a word gap sends the planchette back to REST.
    pub gap_ms: u64,
}

/// `YES`, `NO` or `GOODBYE` when the whole answer is exactly that word (any case, trailing
/// punctuation ignored).
pub fn special_target(answer: &str) -> Option<&'static str> {
    let word = answer
        .trim()
        .trim_end_matches(|c: char| c.is_ascii_punctuation())
        .to_ascii_uppercase();
    match word.as_str() {
        "YES" => Some("YES"),
        "NO" => Some("NO"),
        "GOODBYE" => Some("GOODBYE"),
        _ => None,
    }
}

/// Spells text piece by piece, so the points for each streamed piece continue where the
/// last piece stopped. Letters and digits are spelled upper-cased; other characters are
/// skipped; a word gap returns to REST.
pub struct PathBuilder<'a> {
    board: &'a Board,
    pace: Pace,
    next_at: u64,
    spelled_any: bool,
    in_gap: bool,
    /// When the last point was placed.
    last_at: u64,
    /// When the current word gap was heard.
    gap_at: u64,
}

impl<'a> PathBuilder<'a> {
    pub fn new(board: &'a Board, pace: Pace) -> Self {
        Self {
            board,
            pace,
            next_at: 0,
            spelled_any: false,
            in_gap: false,
            last_at: 0,
            gap_at: 0,
        }
    }

    fn point(&mut self, symbol: &str) -> Option<PathPoint> {
        let (x, y) = self.board.position(symbol)?;
        Some(PathPoint {
            symbol: symbol.to_owned(),
            x,
            y,
            at_ms: self.next_at,
        })
    }

    pub fn push(&mut self, text: &str) -> Vec<PathPoint> {
        let mut points = Vec::new();
        for c in text.chars() {
            if c.is_whitespace() {
                self.in_gap = self.spelled_any;
                continue;
            }
            let upper = c.to_ascii_uppercase();
            if !upper.is_ascii_alphanumeric() {
                continue;
            }
            if self.in_gap {
                points.extend(self.point("REST"));
                self.next_at += self.pace.gap_ms;
                self.in_gap = false;
            }
            points.extend(self.point(&upper.to_string()));
            self.last_at = self.next_at;
            self.next_at += self.pace.symbol_ms;
            self.spelled_any = true;
        }
        points
    }

    /// As [`push`](Self::push), but each character at the time it is heard (ms from the
    /// start of the answer): letters where they are spoken, REST where the space is. Later
    /// paced pieces carry on after the last heard letter.
    pub fn push_timed(&mut self, heard: &[(char, u64)]) -> Vec<PathPoint> {
        let mut points = Vec::new();
        for &(c, at) in heard {
            if c.is_whitespace() {
                if self.spelled_any && !self.in_gap {
                    self.gap_at = at;
                }
                self.in_gap = self.spelled_any;
                continue;
            }
            let upper = c.to_ascii_uppercase();
            if !upper.is_ascii_alphanumeric() {
                continue;
            }
            let floor = points.last().map_or(self.last_at, |p: &PathPoint| p.at_ms);
            if self.in_gap {
                self.next_at = self.gap_at.max(floor);
                points.extend(self.point("REST"));
                self.in_gap = false;
            }
            let floor = points.last().map_or(self.last_at, |p: &PathPoint| p.at_ms);
            self.next_at = at.max(floor);
            points.extend(self.point(&upper.to_string()));
            self.last_at = self.next_at;
            self.next_at += self.pace.symbol_ms;
            self.spelled_any = true;
        }
        points
    }

    /// The single point for an answer that is exactly YES, NO or GOODBYE.
    pub fn target(&mut self, symbol: &str) -> Vec<PathPoint> {
        let point = self.point(symbol);
        self.next_at += self.pace.symbol_ms;
        self.spelled_any = true;
        point.into_iter().collect()
    }
}

/// The whole path for a finished answer.
pub fn path(board: &Board, pace: Pace, answer: &str) -> Vec<PathPoint> {
    let mut builder = PathBuilder::new(board, pace);
    match special_target(answer) {
        Some(target) => builder.target(target),
        None => builder.push(answer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACE: Pace = Pace {
        symbol_ms: 300,
        gap_ms: 500,
    };

    fn symbols(points: &[PathPoint]) -> Vec<&str> {
        points.iter().map(|p| p.symbol.as_str()).collect()
    }

    #[test]
    fn spells_letters_and_digits_with_rests_between_words() {
        let board = Board::classic();
        let points = path(&board, PACE, "Born in 1891, dear.");
        assert_eq!(
            symbols(&points),
            [
                "B", "O", "R", "N", "REST", "I", "N", "REST", "1", "8", "9", "1", "REST", "D", "E",
                "A", "R"
            ]
        );
        assert!(points.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        assert_eq!(points[0].at_ms, 0);
        assert_eq!(points[4].at_ms, 1200, "REST after four letters");
        assert_eq!(points[5].at_ms, 1700, "the gap pauses");
        assert_eq!((points[0].x, points[0].y), board.position("B").unwrap());
    }

    #[test]
    fn yes_no_and_goodbye_go_to_their_targets() {
        let board = Board::classic();
        for (answer, target) in [("yes", "YES"), ("No.", "NO"), ("  GoodBye!! ", "GOODBYE")] {
            let points = path(&board, PACE, answer);
            assert_eq!(symbols(&points), [target], "{answer}");
        }
        assert_eq!(
            symbols(&path(&board, PACE, "yes indeed"))[..3],
            ["Y", "E", "S"]
        );
        assert_eq!(special_target("noble"), None);
    }

    #[test]
    fn heard_letters_are_placed_when_heard() {
        let board = Board::classic();
        let mut builder = PathBuilder::new(&board, PACE);
        let heard: Vec<(char, u64)> = "No, 12".chars().zip([0, 180, 300, 420, 600, 790]).collect();
        let points = builder.push_timed(&heard);
        let timed: Vec<(&str, u64)> = points
            .iter()
            .map(|p| (p.symbol.as_str(), p.at_ms))
            .collect();
        assert_eq!(
            timed,
            [("N", 0), ("O", 180), ("REST", 420), ("1", 600), ("2", 790)]
        );
        // A paced piece after it carries on from the last heard letter.
        let more = builder.push(" ok");
        assert_eq!(more[0].symbol, "REST");
        assert_eq!(more[0].at_ms, 790 + PACE.symbol_ms);
        // The symbols are those of the unheard path.
        let mut all = points.clone();
        all.extend(more);
        assert_eq!(symbols(&all), symbols(&path(&board, PACE, "No, 12 ok")));
    }

    #[test]
    fn pieces_continue_the_same_path() {
        let board = Board::classic();
        let mut builder = PathBuilder::new(&board, PACE);
        let mut pieces = builder.push("The tide");
        pieces.extend(builder.push(" turns"));
        pieces.extend(builder.push("  at dawn"));
        assert_eq!(pieces, path(&board, PACE, "The tide turns  at dawn"));
    }
}
