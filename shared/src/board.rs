//! The talking board's layout: normalised coordinates (x right, y down, 0..1) of every
//! target the planchette can visit, laid out like a classic board: YES and NO in the top
//! corners, the alphabet in two arcs, the digits in a row, GOODBYE at the bottom, and REST
//! in the middle where the planchette waits.

use serde::Serialize;

#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct BoardSymbol {
    pub symbol: String,
    pub x: f64,
    pub y: f64,
}

#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Board {
    pub symbols: Vec<BoardSymbol>,
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

impl Board {
    pub fn classic() -> Self {
        let mut symbols = Vec::with_capacity(40);
        let mut put = |symbol: &str, x: f64, y: f64| {
            symbols.push(BoardSymbol {
                symbol: symbol.to_owned(),
                x: round3(x),
                y: round3(y),
            });
        };
        put("YES", 0.15, 0.12);
        put("NO", 0.85, 0.12);
        // Two gentle arcs: A–M above N–Z, each higher at the ends than in the middle.
        let arc = |row: &str, y_mid: f64, put: &mut dyn FnMut(&str, f64, f64)| {
            let letters: Vec<char> = row.chars().collect();
            let n = letters.len() as f64;
            for (i, letter) in letters.iter().enumerate() {
                let t = (i as f64 + 0.5) / n; // 0..1 across the row
                let x = 0.08 + 0.84 * t;
                let y = y_mid - 0.08 * (1.0 - (2.0 * t - 1.0).powi(2));
                put(&letter.to_string(), x, y);
            }
        };
        arc("ABCDEFGHIJKLM", 0.40, &mut put);
        arc("NOPQRSTUVWXYZ", 0.56, &mut put);
        for (i, digit) in "1234567890".chars().enumerate() {
            put(
                &digit.to_string(),
                0.2 + 0.6 * (i as f64 + 0.5) / 10.0,
                0.72,
            );
        }
        put("GOODBYE", 0.5, 0.88);
        put("REST", 0.5, 0.62);
        Self { symbols }
    }

    pub fn position(&self, symbol: &str) -> Option<(f64, f64)> {
        self.symbols
            .iter()
            .find(|s| s.symbol == symbol)
            .map(|s| (s.x, s.y))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_is_on_the_board_once() {
        let board = Board::classic();
        let mut expected: Vec<String> = ["YES", "NO", "GOODBYE", "REST"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        expected.extend(('A'..='Z').map(String::from));
        expected.extend(('0'..='9').map(String::from));
        assert_eq!(board.symbols.len(), expected.len());
        for symbol in &expected {
            let (x, y) = board
                .position(symbol)
                .unwrap_or_else(|| panic!("{symbol} missing"));
            assert!(
                (0.0..=1.0).contains(&x) && (0.0..=1.0).contains(&y),
                "{symbol}"
            );
        }
        // Reading order: A left of M, and the A–M arc above the N–Z arc.
        assert!(board.position("A").unwrap().0 < board.position("M").unwrap().0);
        assert!(board.position("G").unwrap().1 < board.position("T").unwrap().1);
    }
}
