//! Charts for the dashboard, drawn on the server as SVG (no script, no third-party code; the
//! strict Content-Security-Policy holds: colours come from classes in the stylesheet). Every
//! chart has a text alternative (`<title>` and `<desc>` naming the range, the totals and the
//! peak), a tooltip on every point or bar (an SVG `<title>`), the numbers behind it in a table
//! under a `<details>` toggle, and `data-*` attributes a test can compare with the report API.

use maud::{Markup, html};

/// The plot's size in SVG units (it scales to the page's width).
const W: f64 = 960.0;
const H: f64 = 280.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 40.0;

/// How a chart's numbers are written.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Whole numbers with thousands separators.
    Count,
    /// Two decimals (money, fractional conversions).
    Decimal,
}

impl Format {
    pub fn show(self, v: f64) -> String {
        match self {
            Format::Count => thousands(v.round() as i64),
            Format::Decimal => {
                let whole = v.trunc() as i64;
                let cents = ((v - v.trunc()).abs() * 100.0).round() as i64;
                let (whole, cents) = if cents == 100 { (whole + v.signum() as i64, 0) } else { (whole, cents) };
                let sign = if v < 0.0 && whole == 0 { "-" } else { "" };
                format!("{sign}{}.{cents:02}", thousands(whole))
            }
        }
    }
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// One line or one stack of a chart.
pub struct Line<'a> {
    pub name: &'a str,
    pub values: Vec<f64>,
}

/// The smallest "nice" number (1, 2 or 5 × 10^k) at or above `v`, for the axis' top.
fn nice(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= v - 1e-9 {
            return m * p;
        }
    }
    10.0 * p
}

fn x_of(i: usize, n: usize) -> f64 {
    LEFT + (i as f64 + 0.5) * (W - LEFT - RIGHT) / n.max(1) as f64
}

fn y_of(v: f64, top: f64) -> f64 {
    H - BOTTOM - (v / top).clamp(0.0, 1.0) * (H - TOP - BOTTOM)
}

/// The axis under the plot: gridlines with their values, and at most 12 bucket labels.
fn axes(labels: &[String], top: f64, format: Format) -> Markup {
    let n = labels.len();
    let step = n.div_ceil(12).max(1);
    html! {
        @for k in 0..=4 {
            @let v = top * k as f64 / 4.0;
            @let y = y_of(v, top);
            line.grid x1=(LEFT) x2=(W - RIGHT) y1=(y) y2=(y) {}
            text.tick x=(LEFT - 6.0) y=(y + 4.0) text-anchor="end" { (format.show(v)) }
        }
        @for (i, label) in labels.iter().enumerate() {
            @if i % step == 0 {
                text.tick x=(x_of(i, n)) y=(H - BOTTOM + 16.0) text-anchor="middle" { (short_label(label)) }
            }
        }
    }
}

/// `2026-12-01` → `12-01`; `2026-12-07 13:00` → `07 13h`.
fn short_label(label: &str) -> String {
    match label.split_once(' ') {
        Some((date, hour)) => format!("{} {}h", date.get(8..10).unwrap_or(date), hour.get(..2).unwrap_or(hour)),
        None => label.get(5..).unwrap_or(label).to_owned(),
    }
}

/// A sentence for screen readers: the range, each series' total and its peak.
fn describe(what: &str, labels: &[String], lines: &[Line<'_>], format: Format) -> String {
    let (first, last) = (labels.first().map_or("", String::as_str), labels.last().map_or("", String::as_str));
    let mut text = format!("{what} from {first} to {last}.");
    for l in lines {
        let total: f64 = l.values.iter().sum();
        let peak = l.values.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1));
        text.push_str(&format!(" {}: {} in all", l.name, format.show(total)));
        match peak {
            Some((i, v)) if *v > 0.0 => text.push_str(&format!(", most on {} ({}).", labels[i], format.show(*v))),
            _ => text.push('.'),
        }
    }
    text
}

/// A legend in HTML (swatches coloured by class).
fn legend(lines: &[Line<'_>]) -> Markup {
    html! {
        ul.legend aria-hidden="true" {
            @for (i, l) in lines.iter().enumerate() { li { span class=(format!("sw c{}", i % 8)) {} (l.name) } }
        }
    }
}

/// The numbers behind a chart, one row per bucket, under a toggle.
fn numbers(id: &str, labels: &[String], lines: &[Line<'_>], format: Format) -> Markup {
    html! {
        details.numbers {
            summary { "Numbers" }
            div.scroll {
                table id=(format!("{id}-table")) {
                    thead { tr { th { "Bucket" } @for l in lines { th { (l.name) } } } }
                    tbody {
                        @for (i, label) in labels.iter().enumerate() {
                            tr { td { (label) } @for l in lines { td.n { (format.show(l.values.get(i).copied().unwrap_or(0.0))) } } }
                        }
                    }
                    tfoot { tr { th { "Total" } @for l in lines { td.n { (format.show(l.values.iter().sum())) } } } }
                }
            }
        }
    }
}

/// A chart's frame: the SVG with its text alternative and axes around `plot`, the legend, the
/// numbers.
fn figure(
    id: &str,
    title: &str,
    labels: &[String],
    series: &[Line<'_>],
    format: Format,
    top: f64,
    plot: Markup,
) -> Markup {
    let desc = describe(title, labels, series, format);
    html! {
        figure.chart {
            svg id=(id) class="chart" xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {W} {H}"))
                role="img" aria-labelledby=(format!("{id}-title {id}-desc")) {
                title id=(format!("{id}-title")) { (title) }
                desc id=(format!("{id}-desc")) { (desc) }
                (axes(labels, top, format))
                (plot)
            }
            (legend(series))
            (numbers(id, labels, series, format))
        }
    }
}

/// A line chart: one line per series, a point per bucket.
pub fn lines(id: &str, title: &str, labels: &[String], lines: &[Line<'_>], format: Format) -> Markup {
    let n = labels.len();
    let top = nice(lines.iter().flat_map(|l| l.values.iter().copied()).fold(0.0, f64::max));
    let plot = html! {
        @for (s, l) in lines.iter().enumerate() {
            @let points: Vec<String> = l.values.iter().enumerate()
                .map(|(i, v)| format!("{:.1},{:.1}", x_of(i, n), y_of(*v, top))).collect();
            polyline class=(format!("line c{}", s % 8)) points=(points.join(" ")) {}
            @for (i, v) in l.values.iter().enumerate() {
                circle class=(format!("pt c{}", s % 8)) cx=(format!("{:.1}", x_of(i, n))) cy=(format!("{:.1}", y_of(*v, top)))
                    r=(if n > 60 { "2" } else { "3.5" }) data-series=(l.name) data-label=(labels[i]) data-value=(v) {
                    title { (labels[i]) " · " (l.name) ": " (format.show(*v)) }
                }
            }
        }
    };
    figure(id, title, labels, lines, format, top, plot)
}

/// A stacked bar chart: one bar per bucket, one segment per series.
pub fn stacked(id: &str, title: &str, labels: &[String], stacks: &[Line<'_>], format: Format) -> Markup {
    let n = labels.len();
    let totals: Vec<f64> =
        (0..n).map(|i| stacks.iter().map(|s| s.values.get(i).copied().unwrap_or(0.0)).sum()).collect();
    let top = nice(totals.iter().copied().fold(0.0, f64::max));
    let band = (W - LEFT - RIGHT) / n.max(1) as f64;
    let bar = (band * 0.7).max(1.0);
    // (bucket, series, value, what is under it); no segment for a zero.
    let mut segments = Vec::new();
    for i in 0..n {
        let mut base = 0.0;
        for (s, l) in stacks.iter().enumerate() {
            let v = l.values.get(i).copied().unwrap_or(0.0);
            if v > 0.0 {
                segments.push((i, s, v, base));
                base += v;
            }
        }
    }
    let plot = html! {
        @for (i, s, v, base) in &segments {
            @let (y0, y1) = (y_of(*base, top), y_of(base + v, top));
            rect class=(format!("seg c{}", s % 8)) x=(format!("{:.1}", x_of(*i, n) - bar / 2.0)) y=(format!("{:.1}", y1))
                width=(format!("{bar:.1}")) height=(format!("{:.1}", (y0 - y1).max(0.5)))
                data-series=(stacks[*s].name) data-label=(labels[*i]) data-value=(v) {
                title { (labels[*i]) " · " (stacks[*s].name) ": " (format.show(*v)) " of " (format.show(totals[*i])) }
            }
        }
    };
    figure(id, title, labels, stacks, format, top, plot)
}

/// Horizontal bars with their values (a funnel, paths, rules): (label, value, note).
pub fn bars(id: &str, title: &str, rows: &[(String, f64, String)], format: Format) -> Markup {
    let top = rows.iter().map(|r| r.1).fold(0.0, f64::max).max(1e-9);
    let row_h = 30.0;
    let height = (rows.len() as f64 * row_h + 8.0).max(row_h);
    let (label_w, value_w) = (300.0, 150.0);
    html! {
        svg id=(id) class="chart bars" xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {W} {height}"))
            role="img" aria-labelledby=(format!("{id}-title")) {
            title id=(format!("{id}-title")) { (title) }
            @for (i, (label, v, note)) in rows.iter().enumerate() {
                @let y = 4.0 + i as f64 * row_h;
                @let w = (v / top) * (W - label_w - value_w);
                text.tick x=(label_w - 8.0) y=(y + 19.0) text-anchor="end" { (clip(label, 44)) }
                rect class="seg c0" x=(label_w) y=(y + 4.0) width=(format!("{:.1}", w.max(1.0))) height=(row_h - 8.0)
                    data-label=(label) data-value=(v) { title { (label) ": " (format.show(*v)) " " (note) } }
                text.tick x=(label_w + w + 6.0) y=(y + 19.0) { (format.show(*v)) " " (note) }
            }
        }
    }
}

/// At most `n` characters, with an ellipsis when cut.
pub fn clip(text: &str, n: usize) -> String {
    if text.chars().count() <= n {
        return text.to_owned();
    }
    let mut s: String = text.chars().take(n.saturating_sub(1)).collect();
    s.push('…');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_for_people() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(-1000), "-1,000");
        assert_eq!(Format::Decimal.show(1234.5), "1,234.50");
        assert_eq!(Format::Decimal.show(0.999), "1.00");
        assert_eq!(Format::Decimal.show(-0.5), "-0.50");
        assert_eq!(Format::Count.show(2.0), "2");
    }

    #[test]
    fn axis_tops_are_round() {
        assert_eq!(nice(0.0), 1.0);
        assert_eq!(nice(7.0), 10.0);
        assert_eq!(nice(12.0), 20.0);
        assert_eq!(nice(45.0), 50.0);
        assert_eq!(nice(100.0), 100.0);
        assert_eq!(short_label("2026-12-01"), "12-01");
        assert_eq!(short_label("2026-12-07 13:00"), "07 13h");
    }

    #[test]
    fn a_chart_has_its_numbers_and_a_text_alternative() {
        let labels = vec!["2026-12-01".to_owned(), "2026-12-02".to_owned()];
        let svg = lines("t", "Events", &labels, &[Line { name: "<b>x</b>", values: vec![3.0, 5.0] }], Format::Count)
            .into_string();
        assert!(
            svg.contains(
                "Events from 2026-12-01 to 2026-12-02. &lt;b&gt;x&lt;/b&gt;: 8 in all, most on 2026-12-02 (5)."
            )
        );
        assert!(svg.contains("data-value=\"5\"") && svg.contains("<td class=\"n\">8</td>"), "{svg}");
        assert!(!svg.contains("<b>"));
        let bars =
            stacked("s", "Installs", &labels, &[Line { name: "organic", values: vec![0.0, 2.0] }], Format::Count)
                .into_string();
        assert_eq!(bars.matches("<rect").count(), 1, "no segment for a zero");
    }
}
