//! Line and area charts as SVG, rendered on the server.
//!
//! A chart has a time axis (the last `window_ms` up to `now_ms`), a value
//! axis with round gridlines and unit labels, one line per series (the
//! first also filled as an area) and a legend with each series' last value.
//! All text is escaped; nothing is styled inline: classes (`chart`,
//! `grid`, `axis`, `series-0`...) are styled in `static/app.css`, which the
//! strict CSP allows.

use std::fmt::Write as _;

/// The unit of a chart's values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unit {
    /// 0-100 %.
    Percent,
    /// Bytes per second, shown in binary units.
    BytesPerSecond,
}

impl Unit {
    /// `v` with its unit, short ("42 %", "1.5 MiB/s").
    pub fn format(self, v: f64) -> String {
        match self {
            Unit::Percent => format!("{v:.0} %"),
            Unit::BytesPerSecond => {
                const UNITS: [&str; 5] = ["B/s", "KiB/s", "MiB/s", "GiB/s", "TiB/s"];
                let mut value = v.max(0.0);
                let mut unit = 0;
                while value >= 1024.0 && unit < UNITS.len() - 1 {
                    value /= 1024.0;
                    unit += 1;
                }
                if unit == 0 || value >= 100.0 || value == value.trunc() {
                    format!("{value:.0} {}", UNITS[unit])
                } else {
                    format!("{value:.1} {}", UNITS[unit])
                }
            }
        }
    }
}

/// One line of a chart: (time in ms since the Unix epoch, value) points,
/// oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The legend's label ("received").
    pub label: String,
    /// The points.
    pub points: Vec<(i64, f64)>,
}

/// What to draw.
#[derive(Debug, Clone)]
pub struct Chart<'a> {
    /// The chart's accessible title ("CPU usage").
    pub title: &'a str,
    /// The values' unit.
    pub unit: Unit,
    /// The right edge of the time axis.
    pub now_ms: i64,
    /// How much time the chart shows.
    pub window_ms: i64,
    /// Points further apart than this are not joined (missed samples).
    pub gap_ms: i64,
    /// The series; the first is drawn as an area.
    pub series: &'a [Series],
}

/// Width and height of the drawing (the SVG scales to its box).
const W: f64 = 600.0;
const H: f64 = 180.0;
/// The plot area inside the axes' labels.
const LEFT: f64 = 64.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 22.0;

/// The time windows a chart may show, shortest first.
pub const WINDOWS_MIN: [i64; 4] = [5, 15, 30, 60];

/// The shortest window (ms) that shows `span_ms` of history, at most the
/// longest: a young history fills the chart instead of a sliver at its edge.
pub fn window_for(span_ms: i64) -> i64 {
    WINDOWS_MIN
        .iter()
        .map(|m| m * 60_000)
        .find(|w| *w >= span_ms)
        .unwrap_or(WINDOWS_MIN[WINDOWS_MIN.len() - 1] * 60_000)
}

/// Escapes text for SVG/HTML content and attribute values.
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

/// A round top for the value axis at or above `max` (1, 2 or 5 times a
/// power of ten, or of 1024 for bytes), and its number of steps.
pub fn nice_max(unit: Unit, max: f64) -> (f64, u32) {
    match unit {
        Unit::Percent => (100.0, 4),
        Unit::BytesPerSecond => {
            let max = if max.is_finite() && max > 0.0 { max } else { 1024.0 };
            let mut scale = 1.0;
            while max / scale >= 1024.0 {
                scale *= 1024.0;
            }
            let m = max / scale;
            let mut step = 10f64.powf(m.log10().floor());
            for f in [1.0, 2.0, 5.0, 10.0] {
                if m / (step * f) <= 5.0 {
                    step *= f;
                    break;
                }
            }
            let steps = (m / step).ceil().max(1.0);
            (steps * step * scale, steps as u32)
        }
    }
}

/// x of time `t`.
fn x_of(c: &Chart<'_>, t: i64) -> f64 {
    let from = c.now_ms - c.window_ms;
    let f = (t - from) as f64 / c.window_ms.max(1) as f64;
    LEFT + f.clamp(0.0, 1.0) * (W - LEFT - RIGHT)
}

/// y of value `v` on an axis from 0 to `top`.
fn y_of(v: f64, top: f64) -> f64 {
    let f = if top > 0.0 { (v / top).clamp(0.0, 1.0) } else { 0.0 };
    H - BOTTOM - f * (H - TOP - BOTTOM)
}

/// The runs of a series that are drawn joined: inside the window, split
/// where two points are further apart than the gap.
fn runs<'p>(c: &Chart<'_>, points: &'p [(i64, f64)]) -> Vec<&'p [(i64, f64)]> {
    let from = c.now_ms - c.window_ms;
    let start = points.partition_point(|(t, _)| *t < from);
    let visible = &points[start..];
    let mut out = Vec::new();
    let mut begin = 0;
    for i in 1..=visible.len() {
        if i == visible.len() || visible[i].0 - visible[i - 1].0 > c.gap_ms {
            if begin < i {
                out.push(&visible[begin..i]);
            }
            begin = i;
        }
    }
    out
}

/// Renders the chart as an `<svg>` element.
pub fn render(c: &Chart<'_>) -> String {
    let max = c
        .series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|(t, _)| *t >= c.now_ms - c.window_ms)
        .map(|(_, v)| *v)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let (top, steps) = nice_max(c.unit, max);
    let title = escape(c.title);
    let mut svg = String::with_capacity(4096);
    let _ = write!(
        svg,
        "<svg class=\"chart\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{title}\"><title>{title}</title>"
    );
    // Value gridlines and labels.
    svg.push_str("<g class=\"grid\">");
    for i in 0..=steps {
        let v = top * f64::from(i) / f64::from(steps);
        let y = y_of(v, top);
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\"></line>\
             <text class=\"axis\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            escape(&c.unit.format(v))
        );
    }
    // Time ticks: whole minutes before now (sixths of the window when
    // that gives whole minutes, else fifths).
    let parts: i64 = if (c.window_ms / 60_000) % 6 == 0 { 6 } else { 5 };
    for i in 0..=parts {
        let t = c.now_ms - c.window_ms + c.window_ms * i / parts;
        let x = x_of(c, t);
        let seconds = (c.now_ms - t) / 1000;
        let label = if i == parts {
            "now".to_string()
        } else if seconds % 60 == 0 {
            format!("−{} min", seconds / 60)
        } else {
            format!("−{seconds} s")
        };
        let anchor = match i {
            0 => "start",
            i if i == parts => "end",
            _ => "middle",
        };
        let _ = write!(
            svg,
            "<line class=\"tick\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"></line>\
             <text class=\"axis\" x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{}</text>",
            TOP,
            H - BOTTOM,
            H - 6.0,
            escape(&label)
        );
    }
    svg.push_str("</g>");

    let mut any = false;
    for (i, s) in c.series.iter().enumerate() {
        let class = format!("series-{}", i % 4);
        for run in runs(c, &s.points) {
            any = true;
            let mut line = String::new();
            for (j, (t, v)) in run.iter().enumerate() {
                let _ = write!(
                    line,
                    "{}{:.1},{:.1}",
                    if j == 0 { "M" } else { " L" },
                    x_of(c, *t),
                    y_of(*v, top)
                );
            }
            if i == 0 && run.len() > 1 {
                let base = y_of(0.0, top);
                let _ = write!(
                    svg,
                    "<path class=\"area {class}\" d=\"{line} L{:.1},{base:.1} L{:.1},{base:.1} Z\"></path>",
                    x_of(c, run[run.len() - 1].0),
                    x_of(c, run[0].0)
                );
            }
            let _ = write!(svg, "<path class=\"line {class}\" d=\"{line}\"></path>");
        }
        if let Some((t, v)) = s.points.last().filter(|(t, _)| *t >= c.now_ms - c.window_ms) {
            let _ = write!(
                svg,
                "<circle class=\"dot {class}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\"></circle>",
                x_of(c, *t),
                y_of(*v, top)
            );
        }
    }
    if !any {
        let _ = write!(
            svg,
            "<text class=\"empty\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">Collecting data…</text>",
            LEFT + (W - LEFT - RIGHT) / 2.0,
            (H - BOTTOM + TOP) / 2.0
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A strip of columns, one per value (0-100 %), each with a tooltip
/// (`labels[i]: v %`): the busy share of each CPU. Empty input gives an
/// empty string.
pub fn columns(title: &str, labels: &[String], percents: &[f64]) -> String {
    if percents.is_empty() {
        return String::new();
    }
    const COL: f64 = 10.0;
    const HEIGHT: f64 = 24.0;
    let width = COL * percents.len() as f64;
    let title = escape(title);
    let mut svg = format!(
        "<svg class=\"columns\" viewBox=\"0 0 {width} {HEIGHT}\" preserveAspectRatio=\"none\" role=\"img\" \
         aria-label=\"{title}\"><title>{title}</title>"
    );
    for (i, v) in percents.iter().enumerate() {
        let v = if v.is_finite() { v.clamp(0.0, 100.0) } else { 0.0 };
        let h = (v / 100.0 * HEIGHT).max(0.5);
        let x = COL * i as f64;
        let label = escape(labels.get(i).map_or("", String::as_str));
        let _ = write!(
            svg,
            "<rect class=\"column-track\" x=\"{:.1}\" y=\"0\" width=\"{:.1}\" height=\"{HEIGHT}\"></rect>\
             <rect class=\"column {}\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\"><title>{label}: {}</title></rect>",
            x + 1.0,
            COL - 2.0,
            crate::views::level(v),
            x + 1.0,
            HEIGHT - h,
            COL - 2.0,
            Unit::Percent.format(v)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The legend of a chart: each series' label, colour class and last value.
pub fn legend(unit: Unit, series: &[Series]) -> Vec<LegendItem> {
    series
        .iter()
        .enumerate()
        .map(|(i, s)| LegendItem {
            label: s.label.clone(),
            class: format!("series-{}", i % 4),
            last: s
                .points
                .last()
                .map_or_else(|| "–".to_string(), |(_, v)| unit.format(*v)),
        })
        .collect()
}

/// One entry of a chart's legend.
#[derive(Debug, Clone, PartialEq)]
pub struct LegendItem {
    /// The series' label.
    pub label: String,
    /// Its colour class ("series-0").
    pub class: String,
    /// Its last value with unit, or "–".
    pub last: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_000_000_000;

    fn chart<'a>(unit: Unit, series: &'a [Series]) -> Chart<'a> {
        Chart {
            title: "CPU <usage> & \"load\"",
            unit,
            now_ms: NOW,
            window_ms: 3_600_000,
            gap_ms: 15_000,
            series,
        }
    }

    fn series(points: Vec<(i64, f64)>) -> Series {
        Series {
            label: "busy".into(),
            points,
        }
    }

    #[test]
    fn scales_time_and_values_into_the_plot_area() {
        let c = chart(Unit::Percent, &[]);
        assert_eq!(x_of(&c, NOW), W - RIGHT);
        assert_eq!(x_of(&c, NOW - 3_600_000), LEFT);
        assert_eq!(x_of(&c, NOW - 7_200_000), LEFT, "older points are clamped to the edge");
        assert_eq!(y_of(0.0, 100.0), H - BOTTOM);
        assert_eq!(y_of(100.0, 100.0), TOP);
        assert_eq!(y_of(250.0, 100.0), TOP);
        assert_eq!(nice_max(Unit::Percent, 3.0), (100.0, 4));
        assert_eq!(nice_max(Unit::BytesPerSecond, 0.0), (1024.0, 1));
        assert_eq!(nice_max(Unit::BytesPerSecond, 700.0), (800.0, 4));
        let (top, steps) = nice_max(Unit::BytesPerSecond, 3.3 * 1024.0 * 1024.0);
        assert_eq!((top, steps), (4.0 * 1024.0 * 1024.0, 4));
        assert_eq!(Unit::BytesPerSecond.format(1536.0), "1.5 KiB/s");
        assert_eq!(Unit::BytesPerSecond.format(2.0 * 1024.0 * 1024.0), "2 MiB/s");
        assert_eq!(Unit::Percent.format(42.4), "42 %");
        assert_eq!(window_for(0), 300_000);
        assert_eq!(window_for(300_001), 900_000);
        assert_eq!(window_for(10 * 3_600_000), 3_600_000);
        let short = render(&Chart {
            window_ms: window_for(20_000),
            ..chart(Unit::Percent, &[])
        });
        assert!(
            short.contains("−5 min") && short.contains("−1 min") && short.contains(">now<"),
            "{short}"
        );
    }

    #[test]
    fn draws_the_sampled_points_and_breaks_lines_at_gaps() {
        let s = [series(vec![
            (NOW - 40_000, 10.0),
            (NOW - 35_000, 50.0),
            (NOW - 30_000, 100.0),
            // 30 s missing (more than the 15 s gap): a new run
            (NOW, 0.0),
        ])];
        let svg = render(&chart(Unit::Percent, &s));
        let y = |v: f64| format!("{:.1}", y_of(v, 100.0));
        assert!(svg.contains(&format!(",{} L", y(10.0))), "{svg}");
        assert!(svg.contains(&format!(
            "{:.1},{}",
            x_of(&chart(Unit::Percent, &s), NOW - 30_000),
            y(100.0)
        )));
        assert_eq!(svg.matches("class=\"line series-0\"").count(), 2, "{svg}");
        assert_eq!(
            svg.matches("class=\"area series-0\"").count(),
            1,
            "one-point runs have no area"
        );
        assert!(svg.contains("100 %") && svg.contains("now") && svg.contains("−60 min"));
        assert!(!svg.contains("style="));
        assert!(!svg.contains("Collecting data"));
    }

    #[test]
    fn empty_and_one_point_series() {
        let svg = render(&chart(Unit::BytesPerSecond, &[series(vec![])]));
        assert!(svg.contains("Collecting data"), "{svg}");
        assert!(!svg.contains("<path"));
        let svg = render(&chart(Unit::BytesPerSecond, &[series(vec![(NOW, 5.0)])]));
        assert!(svg.contains("<circle class=\"dot series-0\""), "{svg}");
        assert!(!svg.contains("class=\"area"), "{svg}");
        assert!(!svg.contains("NaN"));
        let old = render(&chart(Unit::Percent, &[series(vec![(NOW - 7_200_000, 5.0)])]));
        assert!(
            old.contains("Collecting data"),
            "points outside the window are not drawn"
        );
        let l = legend(Unit::Percent, &[series(vec![]), series(vec![(NOW, 12.0)])]);
        assert_eq!((l[0].last.as_str(), l[1].last.as_str()), ("–", "12 %"));
        assert_eq!(l[1].class, "series-1");
    }

    #[test]
    fn columns_one_per_value_with_tooltips() {
        assert_eq!(columns("x", &[], &[]), "");
        let labels = vec!["cpu0".to_string(), "cpu<1>".to_string()];
        let svg = columns("Per CPU", &labels, &[100.0, f64::NAN]);
        assert_eq!(svg.matches("<rect class=\"column ").count(), 2, "{svg}");
        assert!(svg.contains("<title>cpu0: 100 %</title>"), "{svg}");
        assert!(svg.contains("<title>cpu&lt;1&gt;: 0 %</title>"), "{svg}");
        assert!(svg.contains("class=\"column crit\""), "{svg}");
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn text_is_escaped() {
        let svg = render(&chart(Unit::Percent, &[]));
        assert!(
            svg.contains("<title>CPU &lt;usage&gt; &amp; &quot;load&quot;</title>"),
            "{svg}"
        );
        assert!(!svg.contains("<usage>"));
        assert_eq!(escape("a'b"), "a&#39;b");
    }
}
