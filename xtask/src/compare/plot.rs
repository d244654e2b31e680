//! The SVG bar chart of `make compare`: p50 and p99 latencies per implementation.

use std::fmt::Write as _;
use std::time::Duration;

use ldap_elector_tests::measure::{self, Machine};

use super::Outcome;

/// A grouped bar chart: p50 and p99 of graceful handover and crash failover per
/// implementation, one panel (own scale) each. Plain SVG rects and text.
pub(super) fn svg(outcomes: &[Outcome], machine: &Machine, runs: usize, date: &str) -> String {
    type Samples = fn(&Outcome) -> &[Duration];
    let panels: [(&str, Samples); 3] = [
        ("Graceful handover (SIGTERM)", |o| &o.graceful),
        ("Crash failover (kill -9)", |o| &o.crash),
        ("Failover on API partition", |o| &o.partition.samples),
    ];
    let colors = [("p50", "#4878d0"), ("p99", "#ee854a")];
    let (width, height) = (1200.0, 470.0);
    let (top, bottom, panel_w, gap) = (70.0, 360.0, 330.0, 60.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{width}" height="{height}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" font-size="16" font-weight="bold" text-anchor="middle">Leader election latency: ldap-elector vs client-go (lower is better)</text>"#,
        width / 2.0
    );
    for (i, (title, samples)) in panels.iter().enumerate() {
        let x0 = 60.0 + i as f64 * (panel_w + gap);
        let max = outcomes.iter().map(|o| measure::percentile(samples(o), 99).as_secs_f64()).fold(0.0, f64::max);
        let step = nice_step(max);
        let scale_max = (max / step).ceil().max(1.0) * step;
        let y = |v: f64| bottom - (v / scale_max) * (bottom - top);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="52" font-size="14" text-anchor="middle">{}</text>"#,
            x0 + panel_w / 2.0,
            esc(title)
        );
        let mut tick = 0.0;
        while tick <= scale_max + step / 2.0 {
            let _ = writeln!(
                s,
                r##"<line x1="{x0}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                x0 + panel_w,
                x0 - 6.0,
                y(tick) + 4.0,
                seconds(tick),
                y = y(tick)
            );
            tick += step;
        }
        let _ = writeln!(s, r#"<line x1="{x0}" x2="{x0}" y1="{top}" y2="{bottom}" stroke="black"/>"#);
        let group_w = panel_w / outcomes.len().max(1) as f64;
        let bar_w = (group_w * 0.3).min(50.0);
        for (j, o) in outcomes.iter().enumerate() {
            let center = x0 + group_w * (j as f64 + 0.5);
            for (k, (label, color)) in colors.iter().enumerate() {
                let v = measure::percentile(samples(o), if k == 0 { 50 } else { 99 }).as_secs_f64();
                let bx = center - bar_w + k as f64 * bar_w;
                let _ = writeln!(
                    s,
                    r#"<rect x="{bx:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{} {label}: {}</title></rect>"#,
                    y(v),
                    bar_w - 2.0,
                    (bottom - y(v)).max(0.5),
                    esc(o.name),
                    seconds(v)
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
                    bx + (bar_w - 2.0) / 2.0,
                    y(v) - 4.0,
                    seconds(v)
                );
            }
            let _ = writeln!(
                s,
                r##"<text x="{center:.1}" y="{}" font-size="10" text-anchor="middle">{}</text><text x="{center:.1}" y="{}" font-size="10" text-anchor="middle" fill="#555">{}</text>"##,
                bottom + 18.0,
                esc(o.name),
                bottom + 33.0,
                esc(o.timing)
            );
        }
    }
    for (k, (label, color)) in colors.iter().enumerate() {
        let x = width / 2.0 - 60.0 + k as f64 * 80.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{color}"/><text x="{}" y="{}">{label}</text>"#,
            bottom + 50.0,
            x + 16.0,
            bottom + 60.0
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">{runs} runs each; timing = lease duration / renew deadline / retry period; {}; {date}</text>"##,
        width / 2.0,
        height - 20.0,
        esc(&machine.to_string())
    );
    s.push_str("</svg>\n");
    s
}

/// A round axis step giving at most about five ticks up to `max`.
fn nice_step(max: f64) -> f64 {
    if max <= 0.0 {
        return 0.1;
    }
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| *s >= raw).unwrap_or(10.0 * magnitude)
}

fn seconds(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v < 1.0 {
        format!("{:.0} ms", v * 1000.0)
    } else {
        format!("{v:.1} s")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldap_elector_tests::measure::{Member, Partitions, SteadyState, Usage};

    fn outcome(name: &'static str, timing: &'static str, scale: u64) -> Outcome {
        let member = |pod: &str| Member {
            pod: pod.into(),
            requests_per_minute: 30.0,
            verbs: Default::default(),
            usage: Usage::default(),
            cpu_in_window: None,
        };
        let ms = |v: u64| (1..=20).map(|i| Duration::from_millis(v * scale + i * 10)).collect::<Vec<_>>();
        Outcome {
            name,
            timing,
            steady: SteadyState { window: Duration::from_secs(60), leader: member("a-0"), follower: member("a-1") },
            graceful: ms(50),
            crash: ms(8000),
            start2: ms(80),
            start5: ms(120),
            partition: Partitions { samples: ms(7000), stale: 0 },
            dual: Default::default(),
        }
    }

    /// The plot has one panel per latency and one bar group per implementation; set
    /// `COMPARE_SVG_PREVIEW=<file>` to look at it.
    #[test]
    fn plot_has_three_panels_and_a_bar_pair_per_implementation() {
        let outcomes = [
            outcome("ldap-elector", "8 s / 5 s / 2 s", 1),
            outcome("client-go defaults", "15 s / 10 s / 2 s", 2),
            outcome("client-go, our timings", "8 s / 5 s / 2 s", 1),
        ];
        let machine = Machine { cores: 2, model: "test CPU".into() };
        let plot = svg(&outcomes, &machine, 20, "2026-01-01");
        assert_eq!(plot.matches("<rect x=").count(), 3 * 3 * 2 + 2, "bars plus legend");
        assert!(plot.contains("Failover on API partition"));
        if let Ok(path) = std::env::var("COMPARE_SVG_PREVIEW") {
            std::fs::write(path, &plot).unwrap();
        }
    }
}
