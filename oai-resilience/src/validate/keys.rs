//! The keys both checkers and the tables compare: byte equality tuned for short keys, and the
//! names whose values record the facts the cross-field rules read. Below everything else in
//! `validate/` (it imports nothing), so the tables' lookups (`schema.rs`) use it as well.

/// String equality: lengths first, then whole words, the last one overlapping the one before
/// (keys and enum values are short: no byte loop, no call to `memcmp`).
#[inline(always)]
pub(crate) fn same(a: &str, b: &str) -> bool {
    same_bytes(a.as_bytes(), b.as_bytes())
}

/// `same` on bytes.
#[inline]
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    fn word<const W: usize>(s: &[u8], at: usize) -> [u8; W] {
        let mut w = [0; W];
        w.copy_from_slice(&s[at..at + W]);
        w
    }
    // Within a length class, one combined comparison (no branch on the first word).
    let w2 = |s: &[u8], at| u16::from_ne_bytes(word::<2>(s, at));
    let w4 = |s: &[u8], at| u32::from_ne_bytes(word::<4>(s, at));
    let w8 = |s: &[u8], at| u64::from_ne_bytes(word::<8>(s, at));
    match n {
        0 => true,
        1 => a[0] == b[0],
        2..=3 => (w2(a, 0) ^ w2(b, 0)) | (w2(a, n - 2) ^ w2(b, n - 2)) == 0,
        4..=7 => (w4(a, 0) ^ w4(b, 0)) | (w4(a, n - 4) ^ w4(b, n - 4)) == 0,
        8..=16 => (w8(a, 0) ^ w8(b, 0)) | (w8(a, n - 8) ^ w8(b, n - 8)) == 0,
        _ => {
            let mut i = 0;
            while i + 8 < n {
                if word::<8>(a, i) != word::<8>(b, i) {
                    return false;
                }
                i += 8;
            }
            word::<8>(a, n - 8) == word::<8>(b, n - 8)
        }
    }
}

/// The top-level parameters the cross-field rules read (`cross.rs`): only these are recorded.
pub(crate) const FACT_KEYS: [&str; 11] = [
    "top_logprobs",
    "logprobs",
    "audio",
    "stream_options",
    "stream",
    "best_of",
    "n",
    "previous_response_id",
    "conversation",
    "background",
    "output_format",
];

/// The property names whose values record facts: the top-level `FACT_KEYS`, `messages` and
/// `modalities`, and a chat message's `role`, `tool_call_id` and `tool_calls`.
pub(crate) const RECORDING_NAMES: [&str; FACT_KEYS.len() + 5] = {
    let mut names = [""; FACT_KEYS.len() + 5];
    let mut i = 0;
    while i < FACT_KEYS.len() {
        names[i] = FACT_KEYS[i];
        i += 1;
    }
    names[i] = "messages";
    names[i + 1] = "modalities";
    names[i + 2] = "role";
    names[i + 3] = "tool_call_id";
    names[i + 4] = "tool_calls";
    names
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_is_string_equality() {
        let base: String = (0..40).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        for n in 0..=40 {
            let a = &base[..n];
            assert!(same(a, a));
            assert!(!same(a, &base[..n.saturating_sub(1)]) || n == 0);
            for at in 0..n {
                let mut b = a.as_bytes().to_vec();
                b[at] = b'#';
                let b = String::from_utf8(b).unwrap();
                assert!(!same(a, &b), "{a} vs {b}");
            }
        }
        assert!(same("é", "é") && !same("é", "è"));
    }
}
