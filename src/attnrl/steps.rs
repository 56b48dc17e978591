//! Step segmentation (ALGORITHMS.md §1): a step ends just after a token whose text contains the separator.
//!
//! Separators are tried in fallback order, per response: the first separator that occurs in the text of at least
//! one of the response's tokens decides every boundary of that response; when none occurs anywhere (including an
//! empty separator list), every token is its own step. The last step always ends at the response end, so a
//! response without a trailing separator keeps its tail as a final step. A separator split across two tokens
//! ("\n" + "\n") does not count: the test is per token, as in the reference code.
//!
//! Bounds are offsets: `bounds[k]..bounds[k+1]` is step k. Response bounds start at 0 and end at the response
//! length T (an empty response has bounds `[0]` and no steps). [`sequence_step_bounds`] prepends the prompt as
//! pseudo-step 0 for the statistics pass over the full sequence.

/// Response-relative step bounds [0, e_1, …, T] of a response of `n_tokens` tokens, where `token_text(t)` is the
/// decoded text of response token t (called once per token) and `separators` are tried in order.
pub fn response_step_bounds<F, S>(n_tokens: usize, mut token_text: F, separators: &[String]) -> Vec<usize>
where
    F: FnMut(usize) -> S,
    S: AsRef<str>,
{
    // level[t] = index of the first separator contained in token t (separators.len() = none).
    let level: Vec<usize> = (0..n_tokens)
        .map(|t| {
            let text = token_text(t);
            let text = text.as_ref();
            separators.iter().position(|s| !s.is_empty() && text.contains(s.as_str())).unwrap_or(separators.len())
        })
        .collect();
    let chosen = level.iter().copied().min().unwrap_or(separators.len());
    let mut bounds = vec![0];
    for (t, &l) in level.iter().enumerate() {
        // No token matched a separator before `chosen`, so `level == chosen` is exactly "contains separators[chosen]";
        // with no separator found anywhere, every token ends a step.
        if l == chosen {
            bounds.push(t + 1);
        }
    }
    if *bounds.last().unwrap_or(&0) != n_tokens {
        bounds.push(n_tokens);
    }
    bounds
}

/// [`response_step_bounds`] over a slice of per-token texts.
pub fn response_step_bounds_from_texts<S: AsRef<str>>(token_texts: &[S], separators: &[String]) -> Vec<usize> {
    response_step_bounds(token_texts.len(), |t| token_texts[t].as_ref(), separators)
}

/// Full-sequence step bounds [0, P, P + e_1, …, P + T]: the prompt [0, P) is pseudo-step 0, then the response
/// steps shifted by the prompt length P. Input: response bounds as made by [`response_step_bounds`].
pub fn sequence_step_bounds(prompt_len: usize, response_bounds: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(response_bounds.len() + 1);
    out.push(0);
    out.extend(response_bounds.iter().map(|&b| prompt_len + b));
    if response_bounds.is_empty() {
        out.push(prompt_len);
    }
    out
}

/// Number of steps described by `bounds` (one fewer than the offsets; 0 for `[0]` or []).
pub fn step_count(bounds: &[usize]) -> usize {
    bounds.len().saturating_sub(1)
}

/// Check that `bounds` rise strictly from 0 to `len` (every step non-empty); `what` names the value in the error.
pub(crate) fn check_bounds(bounds: &[usize], len: usize, what: &str) -> crate::Result<()> {
    let ok = bounds.first() == Some(&0) && bounds.last() == Some(&len) && bounds.windows(2).all(|w| w[0] < w[1]);
    if ok || (len == 0 && bounds == [0]) {
        Ok(())
    } else {
        Err(crate::Error::shape(what, format!("{bounds:?} must rise strictly from 0 to the token count {len}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seps(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn double_newline_then_single_then_every_token() {
        let default = seps(&["\n\n", "\n"]);
        // "\n\n" occurs (token 2 and token 5): it decides; the single "\n" of token 3 is not a boundary.
        let t = ["a", "b", ".\n\n", "c\n", "d", "\n\n", "e"];
        assert_eq!(response_step_bounds_from_texts(&t, &default), vec![0, 3, 6, 7]);
        // No "\n\n" anywhere: fall back to "\n"; the response ends on a separator, so no extra tail step.
        let t = ["x", "\n", "y", "z\n"];
        assert_eq!(response_step_bounds_from_texts(&t, &default), vec![0, 2, 4]);
        // No separator at all: every token is a step.
        let t = ["1", "+", "2"];
        assert_eq!(response_step_bounds_from_texts(&t, &default), vec![0, 1, 2, 3]);
        assert_eq!(response_step_bounds_from_texts(&t, &[]), vec![0, 1, 2, 3]);
        // "\n" split over two tokens is not "\n\n".
        let t = ["a", "\n", "\n", "b"];
        assert_eq!(response_step_bounds_from_texts(&t, &default), vec![0, 2, 3, 4]);
        // Synthetic-task setting: only "\n".
        let t = ["a", "\n\n", "b", "\n", "c"];
        assert_eq!(response_step_bounds_from_texts(&t, &seps(&["\n"])), vec![0, 2, 4, 5]);
        // Empty response.
        assert_eq!(response_step_bounds_from_texts::<&str>(&[], &default), vec![0]);
    }

    #[test]
    fn closure_is_called_once_per_token_and_sequence_bounds_prepend_the_prompt() {
        let texts = ["a", "\n\n", "b"];
        let mut calls = 0;
        let b = response_step_bounds(
            3,
            |t| {
                calls += 1;
                texts[t].to_string()
            },
            &seps(&["\n\n", "\n"]),
        );
        assert_eq!(calls, 3);
        assert_eq!(b, vec![0, 2, 3]);
        assert_eq!(sequence_step_bounds(5, &b), vec![0, 5, 7, 8]);
        assert_eq!(sequence_step_bounds(5, &[0]), vec![0, 5]);
        assert_eq!(sequence_step_bounds(5, &[]), vec![0, 5]);
        assert_eq!(step_count(&b), 2);
        assert!(check_bounds(&b, 3, "b").is_ok());
        assert!(check_bounds(&[0], 0, "b").is_ok());
        assert!(check_bounds(&[0, 2, 2, 3], 3, "b").is_err());
        assert!(check_bounds(&[0, 2], 3, "b").is_err());
    }
}
