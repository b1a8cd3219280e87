//! Building blocks of the pages, as maud markup: every value spliced into a template is
//! escaped by maud (text and attributes alike); nothing here marks data as already escaped.
//! The page frame, badges, times (exact in a `<time datetime>` the script shows in the
//! browser's time zone, relative ones it keeps ticking) and durations.

use chrono::{DateTime, SecondsFormat, Utc};
use maud::{html, Markup, DOCTYPE};

/// What a run page's `<body>` tells its script.
#[derive(Debug, Clone, Default)]
pub struct BodyData {
    /// `data-*` attributes (names without the prefix), values escaped by maud.
    pub attrs: Vec<(&'static str, String)>,
    /// Links the header shows after "Operation runs": `(href, label)`.
    pub nav: Vec<(&'static str, &'static str)>,
}

/// A whole page titled `title` around `content`.
pub fn page(title: &str, body: &BodyData, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · operation runs" }
                link rel="stylesheet" href="/assets/viewer.css";
                script src="/assets/viewer.js" defer {}
            }
            body data-page=(title) data-run-id=[attr(body, "run-id")]
                data-live=[attr(body, "live")] data-last-sequence=[attr(body, "last-sequence")]
                data-counts=[attr(body, "counts")] data-failures=[attr(body, "failures")]
                data-status=[attr(body, "status")] data-updated-at=[attr(body, "updated-at")]
                data-started-at=[attr(body, "started-at")]
                data-expected-seconds=[attr(body, "expected-seconds")] {
                header {
                    a href="/runs" { "Operation runs" }
                    @for (href, label) in &body.nav { " · " a href=(href) { (label) } }
                }
                main { (content) }
            }
        }
    }
}

fn attr<'a>(body: &'a BodyData, name: &str) -> Option<&'a str> {
    body.attrs
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_str())
}

/// A badge for a status or outcome value, with `id` when given.
pub fn badge(kind: &str, value: &str, id: Option<&str>) -> Markup {
    let class = format!("badge {kind}-{value}");
    html! { span class=(class) id=[id] { (value) } }
}

/// `at` in RFC 3339 (seconds, UTC): what `<time datetime>` carries.
pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// "12 s ago", "3 min ago", "5 h ago", "2 d ago".
pub fn ago(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!("{} ago", short_duration((now - at).num_seconds().max(0)))
}

/// "12 s", "3 min", "5 h", "2 d": the coarse unit only.
pub fn short_duration(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 86_400 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

/// "45 s", "4 min 12 s", "1 h 5 min", "2 d 3 h": two units at most.
pub fn duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min {} s", s / 60, s % 60),
        s if s < 86_400 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        s => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// A relative time ("3 min ago") that the script keeps ticking; its title is the exact time.
pub fn relative_time(at: DateTime<Utc>, now: DateTime<Utc>) -> Markup {
    let exact = rfc3339(at);
    html! { time datetime=(exact) title=(exact) data-relative { (ago(at, now)) } }
}

/// An exact time, shown in UTC until the script writes it in the browser's time zone, with the
/// relative time beside it.
pub fn exact_time(at: DateTime<Utc>, now: DateTime<Utc>) -> Markup {
    let exact = rfc3339(at);
    html! {
        time datetime=(exact) data-local { (at.format("%Y-%m-%d %H:%M:%S UTC").to_string()) }
        " (" (relative_time(at, now)) ")"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_spliced_into_markup_is_escaped_in_text_and_in_attributes() {
        let hostile = "<script>alert(\"x\" & 'y')</script>";
        let markup = badge("status", hostile, Some(hostile)).into_string();
        assert!(!markup.contains("<script>"), "{markup}");
        assert!(markup.contains("&lt;script&gt;alert(&quot;x&quot; &amp; 'y')&lt;/script&gt;"));
        let framed = page(hostile, &BodyData::default(), html! { (hostile) }).into_string();
        assert!(!framed.contains(hostile), "{framed}");
    }

    #[test]
    fn durations_read_in_at_most_two_units() {
        assert_eq!(duration(45), "45 s");
        assert_eq!(duration(252), "4 min 12 s");
        assert_eq!(duration(3900), "1 h 5 min");
        assert_eq!(duration(183_600), "2 d 3 h");
        assert_eq!(short_duration(840), "14 min");
    }
}
