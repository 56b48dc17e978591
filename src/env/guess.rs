//! A built-in multi-turn task: guess the hidden number.
//!
//! The environment hides a number in [low, high] (drawn from the seed and the game id) and
//! answers every guess with "higher", "lower" or "correct". The episode ends at the right guess
//! (reward 1) or after `max_turns` guesses (reward 0). Binary search wins in ⌈log2(range)⌉ turns,
//! so a policy has to use the observations to win reliably.

use crate::env::{Env, EnvFailure, Turn};
use arbor_sim::rng::Rng as SimRng;

/// One game.
#[derive(Debug, Clone)]
pub struct GuessGame {
    pub low: i64,
    pub high: i64,
    pub max_turns: u32,
    secret: i64,
    turns: u32,
}

impl GuessGame {
    /// Game `game` of a run seeded `seed`.
    pub fn new(seed: u64, game: u64, low: i64, high: i64, max_turns: u32) -> Self {
        let span = (high - low + 1).max(1) as u64;
        let secret = low + SimRng::for_coords(seed ^ 0x6e55, &[game]).below(span) as i64;
        GuessGame { low, high, max_turns, secret, turns: 0 }
    }

    /// The hidden number (for tests and reports).
    pub fn secret(&self) -> i64 {
        self.secret
    }
}

/// The first integer in `text` (an optional minus sign, then digits).
pub fn first_integer(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let start = b.iter().position(|c| c.is_ascii_digit())?;
    let end = b[start..].iter().position(|c| !c.is_ascii_digit()).map_or(b.len(), |e| start + e);
    let neg = start > 0 && b[start - 1] == b'-';
    let v: i64 = text[start..end.min(start + 18)].parse().ok()?;
    Some(if neg { -v } else { v })
}

impl Env for GuessGame {
    fn reset(&mut self) -> Result<String, EnvFailure> {
        self.turns = 0;
        Ok(format!("Guess my number from {} to {}.\n", self.low, self.high))
    }

    fn step(&mut self, action: &str) -> Result<Turn, EnvFailure> {
        self.turns += 1;
        let out_of_turns = self.turns >= self.max_turns;
        let (observation, won) = match first_integer(action) {
            Some(g) if g == self.secret => (String::new(), true),
            Some(g) if g < self.secret => ("higher\n".to_string(), false),
            Some(_) => ("lower\n".to_string(), false),
            None => ("a number please\n".to_string(), false),
        };
        let done = won || out_of_turns;
        Ok(Turn { observation: if done { String::new() } else { observation }, done, reward: f32::from(u8::from(won)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_search_wins_and_the_answers_point_the_way() {
        for game in 0..50 {
            let mut g = GuessGame::new(3, game, 1, 16, 5);
            assert!(g.reset().unwrap().contains("1 to 16"));
            let (mut lo, mut hi) = (1, 16);
            let mut won = false;
            for _ in 0..5 {
                let guess = (lo + hi) / 2;
                let t = g.step(&format!("{guess}")).unwrap();
                if t.done {
                    won = t.reward == 1.0;
                    break;
                }
                match t.observation.as_str() {
                    "higher\n" => lo = guess + 1,
                    "lower\n" => hi = guess - 1,
                    o => panic!("unexpected {o:?}"),
                }
            }
            assert!(won, "game {game} (secret {}) not won by binary search", g.secret());
        }
    }

    #[test]
    fn games_end_after_max_turns_with_no_reward() {
        let mut g = GuessGame::new(1, 7, 1, 100, 3);
        g.reset().unwrap();
        let wrong = if g.secret() == 1 { "2" } else { "1" };
        assert!(!g.step(wrong).unwrap().done);
        assert!(!g.step("no idea").unwrap().done);
        let t = g.step(wrong).unwrap();
        assert!(t.done && t.reward == 0.0);
        assert_eq!(first_integer("x-12y"), Some(-12));
        assert_eq!(first_integer("none"), None);
    }

    #[test]
    fn secrets_are_seeded_and_cover_the_range() {
        let s: Vec<i64> = (0..400).map(|g| GuessGame::new(9, g, 1, 8, 4).secret()).collect();
        assert_eq!(s, (0..400).map(|g| GuessGame::new(9, g, 1, 8, 4).secret()).collect::<Vec<_>>());
        for v in 1..=8 {
            assert!(s.contains(&v), "{v} never hidden");
        }
    }
}
