//! HTML building blocks of the pages: escaping (every value from data goes through
//! [`escape`]), the page frame, badges and relative times.

use chrono::{DateTime, Utc};

/// `s` with `& < > " '` replaced by entities: safe in text and in quoted attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
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

/// A whole page: `title` is escaped here, `body` must already be HTML built from escaped values.
/// `body_attrs` are attributes of `<body>` (already escaped).
pub fn page(title: &str, body_attrs: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · operation runs</title>\
         <link rel=\"stylesheet\" href=\"/assets/viewer.css\">\
         <script src=\"/assets/viewer.js\" defer></script></head>\
         <body{body_attrs}><header><a href=\"/runs\">Operation runs</a></header><main>{body}</main></body></html>\n",
        escape(title)
    )
}

/// A badge for a status or outcome value.
pub fn badge(kind: &str, value: &str) -> String {
    let v = escape(value);
    format!("<span class=\"badge {kind}-{v}\" data-{kind}>{v}</span>")
}

/// "12 s ago", "3 min ago", "5 h ago", "2 d ago" inside a `<time>` carrying the exact time.
pub fn relative_time(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - at).num_seconds().max(0);
    let text = match secs {
        s if s < 60 => format!("{s} s ago"),
        s if s < 3600 => format!("{} min ago", s / 60),
        s if s < 86_400 => format!("{} h ago", s / 3600),
        s => format!("{} d ago", s / 86_400),
    };
    let exact = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    format!(
        "<time datetime=\"{0}\" title=\"{0}\">{1}</time>",
        escape(&exact),
        escape(&text)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_special_character_is_escaped() {
        assert_eq!(
            escape("<script>alert('x' & \"y\")</script>"),
            "&lt;script&gt;alert(&#39;x&#39; &amp; &quot;y&quot;)&lt;/script&gt;"
        );
    }
}
