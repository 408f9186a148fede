//! The comparison table (stdout, JSON, Markdown) and a hand-written SVG plot
//! (no plotting crate: plotters' bitmap backend cannot draw text without font
//! files or system font libraries).

use crate::stats::Stat;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub workload: String,
    pub figure: String,
    pub unit: String,
    pub router: Option<Stat>,
    pub peer_name: String,
    pub peer: Option<Stat>,
    pub lower_is_better: bool,
    pub ratio: Option<f64>,
}

impl Row {
    pub fn new(
        workload: &str,
        figure: &str,
        unit: &str,
        router: Option<Stat>,
        peer_name: &str,
        peer: Option<Stat>,
    ) -> Row {
        let lower = unit == "ms" || unit == "s";
        let ratio = match (router, peer) {
            (Some(r), Some(p)) if p.median > 0.0 => Some(r.median / p.median),
            _ => None,
        };
        Row {
            workload: workload.into(),
            figure: figure.into(),
            unit: unit.into(),
            router,
            peer_name: peer_name.into(),
            peer,
            lower_is_better: lower,
            ratio,
        }
    }
}

fn num(x: f64) -> String {
    if x.abs() >= 1000.0 {
        let s = format!("{:.0}", x);
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 && c != '-' {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

pub fn cell(s: &Option<Stat>) -> String {
    match s {
        None => "—".into(),
        Some(s) if s.n > 1 => format!("{} ({}–{})", num(s.median), num(s.min), num(s.max)),
        Some(s) => num(s.median),
    }
}

fn ratio(r: &Row) -> String {
    r.ratio.map(|x| format!("{x:.2}×")).unwrap_or_else(|| "—".into())
}

pub fn markdown(rows: &[Row], header: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{header}\n");
    let _ = writeln!(
        s,
        "| Workload | Figure | Unit | Router: median (min–max) | Peer | Peer: median (min–max) | Router / peer |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.workload,
            r.figure,
            r.unit,
            cell(&r.router),
            r.peer_name,
            cell(&r.peer),
            ratio(r)
        );
    }
    s
}

pub fn print(rows: &[Row]) {
    println!(
        "\n{:<11} {:<40} {:<5} {:>28}  {:<44} {:>28} {:>8}",
        "workload", "figure", "unit", "router", "peer", "peer value", "ratio"
    );
    for r in rows {
        println!(
            "{:<11} {:<40} {:<5} {:>28}  {:<44} {:>28} {:>8}",
            r.workload,
            r.figure,
            r.unit,
            cell(&r.router),
            r.peer_name,
            cell(&r.peer),
            ratio(r)
        );
    }
}

/// One line series for the throughput panel.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One group of bars for the latency panel: label and (series name, p50, p99).
pub struct Bars {
    pub label: String,
    pub values: Vec<(String, f64, f64)>,
}

const COLORS: [&str; 10] =
    ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// An SVG document of `w` x `h` on white, `title` at the top left.
fn svg_start(w: f64, h: f64, title: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="20" y="24" font-size="15">{}</text>"#,
        esc(title)
    );
    s
}

/// Two panels: throughput vs concurrent clients (log-spaced categories), and
/// p50 / p99 latency bars (p99 as the light bar behind the p50 bar).
pub fn svg(path: &Path, title: &str, series: &[Series], bars: &[Bars]) -> std::io::Result<()> {
    let (w, h) = (1100.0, 480.0);
    let mut s = svg_start(w, h, title);
    // Panel 1: throughput vs clients.
    let (x0, y0, pw, ph) = (70.0, 60.0, 420.0, 340.0);
    let xs: Vec<f64> = {
        let mut v: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).collect();
        v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
        v.dedup();
        v
    };
    let ymax = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(1.0, f64::max) * 1.1;
    let _ = writeln!(s, r#"<text x="{x0}" y="{}">Directory writes: ops/s vs concurrent clients</text>"#, y0 - 12.0);
    let _ = writeln!(s, r##"<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##);
    for i in 0..=5 {
        let v = ymax * f64::from(i) / 5.0;
        let y = y0 + ph - ph * f64::from(i) / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            x0 + pw,
            x0 - 5.0,
            y + 4.0,
            num(v)
        );
    }
    let xpos = |x: f64| -> f64 {
        let i = xs.iter().position(|v| *v == x).unwrap_or(0) as f64;
        x0 + 30.0 + (pw - 60.0) * if xs.len() > 1 { i / (xs.len() - 1) as f64 } else { 0.5 }
    };
    for x in &xs {
        let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">{x}</text>"#, xpos(*x), y0 + ph + 16.0);
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">concurrent clients</text>"#,
        x0 + pw / 2.0,
        y0 + ph + 34.0
    );
    for (i, se) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let pts: Vec<String> =
            se.points.iter().map(|(x, y)| format!("{:.1},{:.1}", xpos(*x), y0 + ph - ph * y / ymax)).collect();
        let _ = writeln!(s, r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"/>"#, pts.join(" "));
        for p in &pts {
            let (px, py) = p.split_once(',').expect("point");
            let _ = writeln!(s, r#"<circle cx="{px}" cy="{py}" r="3" fill="{c}"/>"#);
        }
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="10" height="10" fill="{c}"/><text x="{}" y="{}">{}</text>"#,
            x0 + 10.0,
            y0 + 10.0 + 16.0 * i as f64,
            x0 + 25.0,
            y0 + 19.0 + 16.0 * i as f64,
            esc(&se.name)
        );
    }
    // Panel 2: latency bars.
    let (x1, pw2) = (600.0, 460.0);
    let lmax =
        bars.iter().flat_map(|b| b.values.iter().map(|v| v.2.max(v.1))).filter(|v| v.is_finite()).fold(1.0, f64::max)
            * 1.1;
    let _ = writeln!(s, r#"<text x="{x1}" y="{}">Latency (ms): p50 solid, p99 light</text>"#, y0 - 12.0);
    let _ = writeln!(s, r##"<rect x="{x1}" y="{y0}" width="{pw2}" height="{ph}" fill="none" stroke="#888"/>"##);
    for i in 0..=5 {
        let v = lmax * f64::from(i) / 5.0;
        let y = y0 + ph - ph * f64::from(i) / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{x1}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            x1 + pw2,
            x1 - 5.0,
            y + 4.0,
            num(v)
        );
    }
    let groups = bars.len().max(1) as f64;
    let gw = pw2 / groups;
    let mut names: Vec<String> = Vec::new();
    for b in bars {
        for v in &b.values {
            if !names.contains(&v.0) {
                names.push(v.0.clone());
            }
        }
    }
    for (gi, b) in bars.iter().enumerate() {
        let n = b.values.len().max(1) as f64;
        let bw = (gw - 20.0) / n;
        for (vi, (name, p50, p99)) in b.values.iter().enumerate() {
            let c = COLORS[names.iter().position(|x| x == name).unwrap_or(0) % COLORS.len()];
            let bx = x1 + gi as f64 * gw + 10.0 + vi as f64 * bw;
            for (v, op) in [(p99, 0.35), (p50, 1.0)] {
                if v.is_finite() {
                    let hgt = ph * v / lmax;
                    let _ = writeln!(
                        s,
                        r#"<rect x="{bx:.1}" y="{:.1}" width="{:.1}" height="{hgt:.1}" fill="{c}" fill-opacity="{op}"/>"#,
                        y0 + ph - hgt,
                        bw - 2.0
                    );
                }
            }
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            x1 + gi as f64 * gw + gw / 2.0,
            y0 + ph + 16.0,
            esc(&b.label)
        );
    }
    for (i, name) in names.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="10" height="10" fill="{c}"/><text x="{}" y="{}">{}</text>"#,
            x1 + 10.0,
            y0 + 10.0 + 16.0 * i as f64,
            x1 + 25.0,
            y0 + 19.0 + 16.0 * i as f64,
            esc(name)
        );
    }
    s.push_str("</svg>\n");
    std::fs::write(path, s)
}

/// A table of one workload with one row per system (stdout and Markdown).
#[derive(Clone, Debug, Serialize)]
pub struct Table {
    pub title: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: &str, columns: &[&str]) -> Table {
        Table { title: title.into(), columns: columns.iter().map(|c| c.to_string()).collect(), rows: Vec::new() }
    }

    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    pub fn markdown(&self) -> String {
        let mut s =
            format!("### {}\n\n| {} |\n|{}\n", self.title, self.columns.join(" | "), "---|".repeat(self.columns.len()));
        for r in &self.rows {
            let _ = writeln!(s, "| {} |", r.join(" | "));
        }
        s
    }

    pub fn print(&self) {
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                    .chain([self.columns[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        println!("\n{}", self.title);
        let line = |cells: &[String]| {
            let parts: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c}{}", " ".repeat(w.saturating_sub(c.chars().count()))))
                .collect();
            println!("  {}", parts.join("  "));
        };
        line(&self.columns);
        for r in &self.rows {
            line(r);
        }
    }
}

/// A table cell: median (min–max) of a figure, `—` when absent.
pub fn stat_cell(s: Option<Stat>) -> String {
    cell(&s)
}

/// A plain number cell.
pub fn num_cell(x: Option<f64>) -> String {
    x.filter(|x| x.is_finite()).map_or_else(|| "—".into(), num)
}

/// One panel of a line plot.
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

/// Line plots, one panel per row of the image, x and y linear from 0.
pub fn line_svg(path: &Path, title: &str, panels: &[Panel]) -> std::io::Result<()> {
    let (w, ph, top) = (1250.0, 260.0, 50.0);
    let h = top + panels.len() as f64 * (ph + 80.0);
    let mut s = svg_start(w, h, title);
    for (pi, p) in panels.iter().enumerate() {
        let (x0, y0, pw) = (80.0, top + 20.0 + pi as f64 * (ph + 80.0), 640.0);
        let pts =
            || p.series.iter().flat_map(|s| s.points.iter().copied()).filter(|(x, y)| x.is_finite() && y.is_finite());
        let xmax = pts().map(|p| p.0).fold(0.0, f64::max).max(1e-9);
        let ymax = pts().map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.1;
        let _ = writeln!(s, r#"<text x="{x0}" y="{}">{}</text>"#, y0 - 8.0, esc(&p.title));
        let _ = writeln!(s, r##"<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##);
        for i in 0..=5 {
            let f = f64::from(i) / 5.0;
            let y = y0 + ph - ph * f;
            let x = x0 + pw * f;
            let _ = writeln!(
                s,
                r##"<line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
                x0 + pw,
                x0 - 5.0,
                y + 4.0,
                num(ymax * f)
            );
            let _ =
                writeln!(s, r#"<text x="{x}" y="{}" text-anchor="middle">{}</text>"#, y0 + ph + 16.0, num(xmax * f));
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            x0 + pw / 2.0,
            y0 + ph + 34.0,
            esc(&p.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text x="20" y="{}" transform="rotate(-90 20 {})" text-anchor="middle">{}</text>"#,
            y0 + ph / 2.0,
            y0 + ph / 2.0,
            esc(&p.y_label)
        );
        for (i, se) in p.series.iter().enumerate() {
            let c = COLORS[i % COLORS.len()];
            let line: Vec<String> = se
                .points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .map(|(x, y)| format!("{:.1},{:.1}", x0 + pw * x / xmax, y0 + ph - ph * y / ymax))
                .collect();
            let _ = writeln!(s, r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"/>"#, line.join(" "));
            if line.len() <= 12 {
                for pt in &line {
                    let (px, py) = pt.split_once(',').expect("point");
                    let _ = writeln!(s, r#"<circle cx="{px}" cy="{py}" r="3" fill="{c}"/>"#);
                }
            }
            let _ = writeln!(
                s,
                r#"<rect x="{}" y="{}" width="10" height="10" fill="{c}"/><text x="{}" y="{}">{}</text>"#,
                x0 + pw + 15.0,
                y0 + 10.0 + 16.0 * i as f64,
                x0 + pw + 30.0,
                y0 + 19.0 + 16.0 * i as f64,
                esc(&se.name)
            );
        }
    }
    s.push_str("</svg>\n");
    std::fs::write(path, s)
}

/// The current time as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
