//! Where each listener hears the spirit. Seats sit evenly around the board: seat 0 at the
//! bottom centre, the others following clockwise as the board is drawn (x right, y down),
//! each facing the centre. The voice comes from the planchette. For a listener at seat
//! `s` of `n` (angle θ = 2π·s/n from the bottom), with the board's centre C = (0.5, 0.5)
//! and radius R = 0.5:
//!
//! - the seat is at L = C + R·(−sin θ, cos θ), facing f = (sin θ, −cos θ), with its right
//!   hand towards r = (cos θ, sin θ);
//! - `pan` = clamp(((P − C) · r) / R, −1, 1) for the planchette at P: the source's
//!   left/right offset as the listener faces the board. A source on the line through the
//!   seat and the centre is centred, and opposite seats hear exactly opposite pans;
//! - `gain` = 1 / (1 + |P − L|): 1 at the listener's own edge, ½ at the far side of the
//!   board from them.

use std::f64::consts::PI;

use serde::{Deserialize, Serialize};

#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PanPoint {
    /// Milliseconds from the start of the answer (the same clock as the planchette).
    pub at_ms: u64,
    /// -1 full left … 1 full right.
    pub pan: f64,
    /// 0 … 1.
    pub gain: f64,
}

const CENTRE: (f64, f64) = (0.5, 0.5);
const RADIUS: f64 = 0.5;

/// Where seat `seat` of `seats` sits, and its right hand.
fn seat_frame(seat: u32, seats: u32) -> ((f64, f64), (f64, f64)) {
    let theta = 2.0 * PI * f64::from(seat) / f64::from(seats.max(1));
    let (sin, cos) = theta.sin_cos();
    let at = (CENTRE.0 - RADIUS * sin, CENTRE.1 + RADIUS * cos);
    (at, (cos, sin))
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// The pan and gain of a source at `(x, y)` for the listener at `seat` of `seats`.
pub fn pan_at(seat: u32, seats: u32, x: f64, y: f64) -> (f64, f64) {
    let (at, right) = seat_frame(seat, seats);
    let lateral = (x - CENTRE.0) * right.0 + (y - CENTRE.1) * right.1;
    let pan = (lateral / RADIUS).clamp(-1.0, 1.0);
    let distance = ((x - at.0).powi(2) + (y - at.1).powi(2)).sqrt();
    let gain = (1.0 / (1.0 + distance)).clamp(0.0, 1.0);
    // -0.0 reads oddly in JSON.
    (round3(pan) + 0.0, round3(gain))
}

/// The listener's track for planchette points `(at_ms, x, y)`.
pub fn track(seat: u32, seats: u32, points: &[(u64, f64, f64)]) -> Vec<PanPoint> {
    points
        .iter()
        .map(|&(at_ms, x, y)| {
            let (pan, gain) = pan_at(seat, seats, x, y);
            PanPoint { at_ms, pan, gain }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_seats_hear_a_source_as_they_face_it() {
        // A source at the right edge of the board (as drawn).
        let (x, y) = (1.0, 0.5);
        assert_eq!(
            pan_at(0, 4, x, y).0,
            1.0,
            "seat 0, at the bottom: to the right"
        );
        assert_eq!(
            pan_at(2, 4, x, y).0,
            -1.0,
            "seat 2, at the top: to the left"
        );
        assert_eq!(
            pan_at(1, 4, x, y).0,
            0.0,
            "seat 1, on the left: straight ahead"
        );
        assert_eq!(
            pan_at(3, 4, x, y).0,
            0.0,
            "seat 3, on the right: it is theirs"
        );
        // Nearer is louder.
        assert!(pan_at(3, 4, x, y).1 > pan_at(1, 4, x, y).1);
        assert_eq!(pan_at(3, 4, x, y).1, 1.0);
        assert_eq!(pan_at(1, 4, x, y).1, 0.5);
    }

    #[test]
    fn opposite_seats_hear_opposite_pans_and_ranges_hold() {
        let sources = [
            (0.1, 0.2),
            (0.5, 0.5),
            (0.93, 0.61),
            (0.0, 1.0),
            (0.77, 0.05),
        ];
        for seats in [2, 4, 6, 8, 12] {
            for seat in 0..seats / 2 {
                for &(x, y) in &sources {
                    let (pan, gain) = pan_at(seat, seats, x, y);
                    let (opposite, _) = pan_at(seat + seats / 2, seats, x, y);
                    assert!((pan + opposite).abs() < 1e-9, "{seat}/{seats} at {x},{y}");
                    assert!((-1.0..=1.0).contains(&pan));
                    assert!((0.0..=1.0).contains(&gain));
                }
            }
        }
        // The centre of the board is straight ahead for everyone.
        for seat in 0..12 {
            assert_eq!(pan_at(seat, 12, 0.5, 0.5).0, 0.0);
        }
    }

    #[test]
    fn a_twelve_seat_table_goes_round_clockwise() {
        // Seat 3 of 12 sits at the left edge, facing right: a source at the top is to its
        // left; seat 9, at the right edge facing left, has it to its right.
        assert_eq!(pan_at(3, 12, 0.5, 0.0).0, -1.0);
        assert_eq!(pan_at(9, 12, 0.5, 0.0).0, 1.0);
        let points = track(0, 12, &[(0, 0.0, 0.5), (350, 1.0, 0.5)]);
        assert_eq!(points[0].pan, -1.0);
        assert_eq!(points[1].pan, 1.0);
        assert_eq!(points[1].at_ms, 350);
    }
}
