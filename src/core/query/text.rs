//! Tokenising and edit distance for `text` filters and text indexes.

/// Splits text into lowercase tokens of letters and digits.
pub fn tokenize(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric()).filter(|t| !t.is_empty()).map(str::to_lowercase)
}

/// Whether `a` and `b` (as chars) are within `max` edits (insert, delete, substitute).
///
/// Banded dynamic programming: O(len * (2 * max + 1)), with an early exit once every cell
/// of a row exceeds `max`.
pub fn levenshtein_within(a: &[char], b: &[char], max: usize) -> bool {
    if a.len().abs_diff(b.len()) > max {
        return false;
    }
    if max == 0 {
        return a == b;
    }
    let (a, b) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    let inf = max + 1;
    let mut prev: Vec<usize> = (0..=b.len()).map(|j| j.min(inf)).collect();
    let mut cur = vec![inf; b.len() + 1];
    for i in 1..=a.len() {
        let lo = i.saturating_sub(max).max(1);
        let hi = (i + max).min(b.len());
        cur.fill(inf);
        cur[0] = i.min(inf);
        let mut row_min = cur[0];
        for j in lo..=hi {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let v = (prev[j - 1] + cost).min(prev[j] + 1).min(cur[j - 1] + 1).min(inf);
            cur[j] = v;
            row_min = row_min.min(v);
        }
        if row_min > max {
            return false;
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()] <= max
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lev(a: &str, b: &str, d: usize) -> bool {
        let a: Vec<char> = a.chars().collect();
        let b: Vec<char> = b.chars().collect();
        levenshtein_within(&a, &b, d)
    }

    #[test]
    fn tokens_are_lowercase_words() {
        let t: Vec<String> = tokenize("Dragon-slayer of  Élan, 2nd!").collect();
        assert_eq!(t, ["dragon", "slayer", "of", "élan", "2nd"]);
    }

    #[test]
    fn edit_distance_bounds() {
        assert!(lev("dragon", "dragon", 0));
        assert!(lev("dragon", "dragn", 1));
        assert!(!lev("dragon", "dragn", 0));
        assert!(lev("dragon", "drgaon", 2));
        assert!(!lev("dragon", "drgaon", 1));
        assert!(lev("", "ab", 2));
        assert!(!lev("", "abc", 2));
        assert!(lev("kitten", "sitting", 3));
        assert!(!lev("kitten", "sitting", 2));
    }
}
