//! Escaping: every piece of text that did not come from this module's own
//! templates goes through [`escape`] (element content and quoted attributes
//! alike) or [`url_param`] (a query parameter's value).

use std::fmt::Write as _;

use serde_json::Value;

/// Characters of a payload shown inline before it is cut.
pub const INLINE_CHARS_MAX: usize = 120;

/// `text` safe inside element content and inside a quoted attribute value.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` encoded as one query parameter value (`a b&c` -> `a+b%26c`).
pub fn url_param(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A query string (`?k=v&…`) from pairs; pairs with an empty value are left out.
pub fn query(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (key, value) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        let sep = if out.is_empty() { '?' } else { '&' };
        let _ = write!(out, "{sep}{key}={}", url_param(value));
    }
    out
}

/// Compact JSON of `value`, cut at [`INLINE_CHARS_MAX`] characters, escaped.
pub fn short_json(value: &Value) -> String {
    escape(&cut(&value.to_string(), INLINE_CHARS_MAX))
}

/// Pretty-printed JSON of `value`, escaped.
pub fn pretty_json(value: &Value) -> String {
    escape(&serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string()))
}

/// `text` cut at `chars_max` characters, with `…` when cut.
pub fn cut(text: &str, chars_max: usize) -> String {
    if text.chars().count() <= chars_max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(chars_max).collect();
    out.push('…');
    out
}

/// A duration in milliseconds for people: `850ms`, `1.2s`, `3m 4s`, `2h 5m`.
pub fn duration_ms(ms: u64) -> String {
    const SECOND_MS: u64 = 1_000;
    const MINUTE_MS: u64 = 60 * SECOND_MS;
    const HOUR_MS: u64 = 60 * MINUTE_MS;
    const DAY_MS: u64 = 24 * HOUR_MS;
    match ms {
        ms if ms < SECOND_MS => format!("{ms}ms"),
        ms if ms < 10 * SECOND_MS => format!("{:.1}s", ms as f64 / SECOND_MS as f64),
        ms if ms < MINUTE_MS => format!("{}s", ms / SECOND_MS),
        ms if ms < HOUR_MS => format!("{}m {}s", ms / MINUTE_MS, ms % MINUTE_MS / SECOND_MS),
        ms if ms < DAY_MS => format!("{}h {}m", ms / HOUR_MS, ms % HOUR_MS / MINUTE_MS),
        ms => format!("{}d {}h", ms / DAY_MS, ms % DAY_MS / HOUR_MS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralizes_markup_and_attribute_quotes() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
    }

    #[test]
    fn query_encodes_values_and_skips_empty_ones() {
        let q = query(&[("id", "a b&c=<d>"), ("run", ""), ("view", "full")]);
        assert_eq!(q, "?id=a+b%26c%3D%3Cd%3E&view=full");
    }

    #[test]
    fn durations_read_in_the_largest_useful_unit() {
        assert_eq!(duration_ms(850), "850ms");
        assert_eq!(duration_ms(1_250), "1.2s");
        assert_eq!(duration_ms(184_000), "3m 4s");
        assert_eq!(duration_ms(7_500_000), "2h 5m");
    }

    #[test]
    fn cut_marks_what_it_cut() {
        assert_eq!(cut("abcdef", 3), "abc…");
        assert_eq!(cut("abc", 3), "abc");
    }
}
