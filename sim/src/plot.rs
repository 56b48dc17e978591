//! PNG line plots with titles, axis labels and legends, shared by `arbor sim run --out` and `arbor plot`.
//!
//! Text is drawn with a font embedded in the binary (a Latin subset of DejaVu Sans, `sim/assets/`), so
//! rendering needs no system fonts or fontconfig. If text cannot be drawn all the same, the figure is
//! drawn again without any text rather than failing: a plot without labels beats no plot.
//!
//! The API is plain data: a [`LinePlot`] (one panel: title, axis labels, [`Series`]) and a [`Figure`]
//! (panels on a grid, pixel size) that [`Figure::save`] writes as PNG. Non-finite points are skipped
//! (a line is broken at them), and degenerate ranges are widened, so any input draws.
//!
//! The simulator's plots ([`write_plots`]): `busy.png`, GPU busy fraction over normalised run time, one
//! line per policy; `steps.png`, step time per step, same colours.

use crate::run::ScenarioResult;
use anyhow::{anyhow, Result};
use plotters::backend::RGBPixel;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::Path;
use std::sync::OnceLock;

/// Colours of series without an explicit one, in order (the "tab10" hues).
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(90, 90, 90),
];

/// A Latin/Greek subset of DejaVu Sans 2.37 (licence: `sim/assets/DejaVuSans-LICENSE.txt`).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");
/// The family name plotters asks for by default.
const FAMILY: &str = "sans-serif";

/// Register the embedded font once per process; false if it was rejected (text is then left out).
fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok())
}

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// A polyline through the points, in x order as given.
    Line,
    /// A filled dot per point.
    Dots,
    /// Both.
    LineDots,
}

/// One named series of (x, y) points.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub mark: Mark,
    /// Palette slot; `None`: the series' index in its panel.
    pub colour: Option<usize>,
    /// Line width in pixels (dots have radius `width + 1`).
    pub width: u32,
    /// Opacity in (0, 1]; faint lines put a raw signal under its smoothed version.
    pub opacity: f64,
}

impl Series {
    fn new(name: impl Into<String>, points: Vec<(f64, f64)>, mark: Mark) -> Self {
        Series { name: name.into(), points, mark, colour: None, width: 2, opacity: 1.0 }
    }
    /// A line series.
    pub fn line(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self::new(name, points, Mark::Line)
    }
    /// A series of dots.
    pub fn dots(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self::new(name, points, Mark::Dots)
    }
    /// A line with a dot at every point (sparse measurements such as evaluations).
    pub fn line_dots(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self::new(name, points, Mark::LineDots)
    }
    pub fn colour(mut self, slot: usize) -> Self {
        self.colour = Some(slot);
        self
    }
    pub fn width(mut self, px: u32) -> Self {
        self.width = px.max(1);
        self
    }
    pub fn opacity(mut self, a: f64) -> Self {
        self.opacity = if a.is_finite() { a.clamp(0.05, 1.0) } else { 1.0 };
        self
    }
    fn finite(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite())
    }
}

/// One panel: title, axis labels, series and optional fixed ranges.
#[derive(Debug, Clone, Default)]
pub struct LinePlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Fixed x range; `None`: the data's.
    pub x_range: Option<(f64, f64)>,
    /// Fixed y range; `None`: the data's, padded by 5%.
    pub y_range: Option<(f64, f64)>,
}

impl LinePlot {
    pub fn new(title: impl Into<String>, x_label: impl Into<String>, y_label: impl Into<String>) -> Self {
        LinePlot { title: title.into(), x_label: x_label.into(), y_label: y_label.into(), ..Default::default() }
    }
    pub fn series(mut self, s: Series) -> Self {
        self.series.push(s);
        self
    }
    pub fn x_range(mut self, lo: f64, hi: f64) -> Self {
        self.x_range = Some((lo, hi));
        self
    }
    pub fn y_range(mut self, lo: f64, hi: f64) -> Self {
        self.y_range = Some((lo, hi));
        self
    }
    /// True when some series has a finite point.
    pub fn has_data(&self) -> bool {
        self.series.iter().any(|s| s.finite().next().is_some())
    }

    fn ranges(&self) -> ((f64, f64), (f64, f64)) {
        let bounds = |f: fn((f64, f64)) -> f64| {
            let mut it = self.series.iter().flat_map(|s| s.finite().map(f));
            let first = it.next()?;
            Some(it.fold((first, first), |(lo, hi), v| (lo.min(v), hi.max(v))))
        };
        let x = self.x_range.or_else(|| bounds(|p| p.0)).unwrap_or((0.0, 1.0));
        let y = self
            .y_range
            .or_else(|| {
                let (lo, hi) = bounds(|p| p.1)?;
                let pad = (hi - lo) * 0.05;
                // All zeros (say, a KL that is exactly 0 on-policy): show 0..1 rather than a symmetric range.
                Some(if lo == 0.0 && hi == 0.0 { (-0.05, 1.0) } else { (lo - pad, hi + pad) })
            })
            .unwrap_or((0.0, 1.0));
        (proper(x), proper(y))
    }
}

/// A finite, non-empty interval: NaN/inf bounds fall back to (0, 1), equal bounds are widened.
fn proper((lo, hi): (f64, f64)) -> (f64, f64) {
    let (lo, hi) = if lo.is_finite() && hi.is_finite() { (lo.min(hi), lo.max(hi)) } else { (0.0, 1.0) };
    if hi - lo > 1e-12 * lo.abs().max(hi.abs()).max(1e-300) {
        (lo, hi)
    } else {
        let w = if lo == 0.0 { 0.5 } else { lo.abs() * 0.05 };
        (lo - w, hi + w)
    }
}

/// Panels on a grid (row-major), written as one PNG.
#[derive(Debug, Clone)]
pub struct Figure {
    pub panels: Vec<LinePlot>,
    pub cols: usize,
    /// Width and height in pixels.
    pub size: (u32, u32),
}

/// Pixels of a rendered figure: RGB, row-major, `size.0 * size.1 * 3` bytes.
pub struct Rendered {
    pub rgb: Vec<u8>,
    pub size: (u32, u32),
    /// False when text could not be drawn and the figure was drawn without it.
    pub text: bool,
}

impl Figure {
    /// A single-panel figure of `size` pixels.
    pub fn single(plot: LinePlot, size: (u32, u32)) -> Self {
        Figure { panels: vec![plot], cols: 1, size }
    }
    /// Panels on a grid with `cols` columns; each panel gets `panel_size` pixels.
    pub fn grid(panels: Vec<LinePlot>, cols: usize, panel_size: (u32, u32)) -> Self {
        let cols = cols.clamp(1, panels.len().max(1));
        let rows = panels.len().div_ceil(cols).max(1);
        let size = (panel_size.0.saturating_mul(cols as u32), panel_size.1.saturating_mul(rows as u32));
        Figure { panels, cols, size }
    }

    /// Draw into memory: with text if the font works, else (or if drawing text fails) without.
    pub fn render(&self) -> Result<Rendered> {
        if font_ready() {
            if let Ok(r) = self.render_with(true) {
                return Ok(r);
            }
        }
        self.render_with(false)
    }

    /// Draw with or without text (titles, tick labels, axis labels, legends).
    pub fn render_with(&self, text: bool) -> Result<Rendered> {
        let (w, h) = self.size;
        if w < 16 || h < 16 || w > 16384 || h > 16384 {
            return Err(anyhow!("figure size {w}x{h} px: each side must be in 16..=16384"));
        }
        let mut rgb = vec![255u8; w as usize * h as usize * 3];
        {
            let backend =
                BitMapBackend::<RGBPixel>::with_buffer_and_format(&mut rgb, (w, h)).map_err(|e| anyhow!("{e}"))?;
            let root = backend.into_drawing_area();
            root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
            let cols = self.cols.max(1);
            let rows = self.panels.len().div_ceil(cols).max(1);
            for (panel, area) in self.panels.iter().zip(root.split_evenly((rows, cols))) {
                draw_panel(panel, &area, text)?;
            }
            root.present().map_err(|e| anyhow!("{e}"))?;
        }
        Ok(Rendered { rgb, size: (w, h), text })
    }

    /// Render and write a PNG; returns whether text was drawn.
    pub fn save(&self, path: &Path) -> Result<bool> {
        let r = self.render()?;
        write_png(path, &r)?;
        Ok(r.text)
    }
}

/// Encode `r` as PNG at `path`.
pub fn write_png(path: &Path, r: &Rendered) -> Result<()> {
    let mut backend = BitMapBackend::new(path, r.size);
    backend.blit_bitmap((0, 0), r.size, &r.rgb).map_err(|e| anyhow!("{e}"))?;
    backend.present().map_err(|e| anyhow!("cannot write {}: {e}", path.display()))
}

fn draw_panel<DB: DrawingBackend>(p: &LinePlot, area: &DrawingArea<DB, Shift>, text: bool) -> Result<()> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e}");
    let ((x0, x1), (y0, mut y1)) = p.ranges();
    let (aw, ah) = area.dim_in_pixel();
    let small = aw.min(ah) < 300;
    let (margin, margin_right, caption_px) = if small { (8, 14, 16) } else { (14, 24, 22) };
    let caption_h = if text && !p.title.is_empty() { caption_px + 10 } else { 0 };
    let (x_area, y_area) = match text {
        true => (if p.x_label.is_empty() { 24 } else { 44 }, if p.y_label.is_empty() { 56 } else { 76 }),
        false => (0, 0),
    };
    let legend = if text { legend_size(p) } else { None };
    if let (Some(lb), None) = (legend, p.y_range) {
        // Estimated plotting area; if every legend spot covers data, raise the top of the y range so that
        // a band as tall as the legend is free of data.
        let pw = aw.saturating_sub(margin + margin_right + y_area);
        let ph = ah.saturating_sub(2 * margin + x_area + caption_h);
        let (_, hits) = legend_corner(p, lb, (pw, ph), ((x0, x1), (y0, y1)));
        let fh = (lb.1 + 5.0) / ph.max(1) as f64;
        if hits > 0 && fh < 0.5 {
            y1 += (y1 - y0) * fh / (1.0 - fh);
        }
    }
    let mut builder = ChartBuilder::on(area);
    builder.margin(margin).margin_right(margin_right);
    if text {
        if !p.title.is_empty() {
            builder.caption(&p.title, (FAMILY, caption_px));
        }
        builder.x_label_area_size(x_area).y_label_area_size(y_area);
    }
    let mut chart = builder.build_cartesian_2d(x0..x1, y0..y1).map_err(err)?;
    let (x_fmt, y_fmt) = (|v: &f64| tick_label(*v, x1 - x0), |v: &f64| tick_label(*v, y1 - y0));
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(RGBColor(238, 238, 238)).bold_line_style(RGBColor(210, 210, 210));
    if text {
        mesh.x_desc(p.x_label.as_str())
            .y_desc(p.y_label.as_str())
            .label_style((FAMILY, 13))
            .axis_desc_style((FAMILY, 15))
            .x_labels(8)
            .y_labels(7)
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt);
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(err)?;

    let mut labelled = 0;
    for (i, s) in p.series.iter().enumerate() {
        let c = PALETTE[s.colour.unwrap_or(i) % PALETTE.len()].mix(s.opacity);
        let line = c.stroke_width(s.width);
        let mut named = false;
        if matches!(s.mark, Mark::Line | Mark::LineDots) {
            for run in finite_runs(&s.points) {
                let ann = chart.draw_series(LineSeries::new(run, line)).map_err(err)?;
                if !named && !s.name.is_empty() {
                    ann.label(s.name.as_str()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], line));
                    named = true;
                }
            }
        }
        if matches!(s.mark, Mark::Dots | Mark::LineDots) && s.finite().next().is_some() {
            let r = s.width + 1;
            let ann = chart.draw_series(s.finite().map(|q| Circle::new(q, r, c.filled()))).map_err(err)?;
            if !named && !s.name.is_empty() {
                ann.label(s.name.as_str()).legend(move |(x, y)| Circle::new((x + 11, y), r, c.filled()));
                named = true;
            }
        }
        labelled += named as usize;
    }
    if let (Some(lb), true) = (legend, labelled > 0) {
        let (position, _) = legend_corner(p, lb, chart.plotting_area().dim_in_pixel(), ((x0, x1), (y0, y1)));
        chart
            .configure_series_labels()
            .position(position)
            .label_font((FAMILY, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

/// A tick label with as many decimals as the axis span needs and no trailing zeros ("250", "0.25");
/// scientific notation for very small spans or very large values.
fn tick_label(v: f64, span: f64) -> String {
    let span = span.abs();
    if v == 0.0 || !v.is_finite() {
        return if v.is_finite() { "0".into() } else { format!("{v}") };
    }
    if span < 1e-3 || v.abs() >= 1e7 {
        let s = format!("{v:.2e}");
        return match s.split_once('e') {
            Some((m, e)) if m.contains('.') => format!("{}e{e}", m.trim_end_matches('0').trim_end_matches('.')),
            _ => s,
        };
    }
    let decimals = (2.0 - span.log10().floor()).clamp(0.0, 9.0) as usize;
    let s = format!("{v:.decimals$}");
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.') } else { &s };
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// Pixel size of the legend box plotters draws for `p`: text, a 30 px sample and 10 px margins,
/// about 17 px per line. `None` when no named series has data.
fn legend_size(p: &LinePlot) -> Option<(f64, f64)> {
    let font = (FAMILY, 13).into_font();
    let named: Vec<&Series> = p.series.iter().filter(|s| !s.name.is_empty() && s.finite().next().is_some()).collect();
    let text_w = named.iter().map(|s| font.box_size(&s.name).map(|b| b.0).unwrap_or(7 * s.name.len() as u32)).max()?;
    Some(((text_w + 50) as f64, (17 * named.len() + 20) as f64))
}

/// The legend's place: the corner (or top/bottom middle) whose box of `(bw, bh)` pixels (plus the
/// 5 px plotters leaves to the edge) covers the fewest data samples, and that count.
fn legend_corner(
    p: &LinePlot,
    (bw, bh): (f64, f64),
    (pw, ph): (u32, u32),
    ((x0, x1), (y0, y1)): ((f64, f64), (f64, f64)),
) -> (SeriesLabelPosition, usize) {
    use SeriesLabelPosition::*;
    let (fw, fh) = (((bw + 5.0) / pw.max(1) as f64).min(1.0), ((bh + 5.0) / ph.max(1) as f64).min(1.0));
    let norm = |(x, y): (f64, f64)| ((x - x0) / (x1 - x0), (y1 - y) / (y1 - y0));
    let mut samples = vec![];
    for s in &p.series {
        let pts: Vec<(f64, f64)> = s.finite().map(norm).collect();
        samples.extend(&pts);
        if s.mark != Mark::Dots {
            for w in pts.windows(2) {
                samples.extend((1..8).map(|k| {
                    let t = k as f64 / 8.0;
                    (w[0].0 + t * (w[1].0 - w[0].0), w[0].1 + t * (w[1].1 - w[0].1))
                }));
            }
        }
    }
    let candidates = [(UpperRight, 1.0, 0.0), (UpperLeft, 0.0, 0.0), (LowerRight, 1.0, 1.0), (LowerLeft, 0.0, 1.0)];
    let mut best = (UpperRight, usize::MAX);
    for (pos, cx, cy) in candidates.into_iter().chain([(UpperMiddle, 0.5, 0.0), (LowerMiddle, 0.5, 1.0)]) {
        let (xa, ya) = (cx * (1.0 - fw), cy * (1.0 - fh));
        let hits = samples.iter().filter(|&&(x, y)| x >= xa && x <= xa + fw && y >= ya && y <= ya + fh).count();
        if hits < best.1 {
            best = (pos, hits);
        }
    }
    best
}

/// Maximal runs of consecutive finite points (a line is broken where a value is missing).
fn finite_runs(points: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    let mut runs = vec![];
    let mut cur = vec![];
    for &p in points {
        if p.0.is_finite() && p.1.is_finite() {
            cur.push(p);
        } else if !cur.is_empty() {
            runs.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        runs.push(cur);
    }
    runs
}

/// GPU busy fraction over normalised run time, one line per policy.
fn busy_plot(r: &ScenarioResult) -> LinePlot {
    let plot = LinePlot::new(
        format!("{}: GPU busy fraction", r.scenario),
        "fraction of run time",
        "busy fraction of all GPUs",
    )
    .x_range(0.0, 1.0)
    .y_range(0.0, 1.05);
    r.policies.iter().fold(plot, |plot, p| {
        let n = p.busy_timeline.len().max(1) as f64;
        let pts = p.busy_timeline.iter().enumerate().map(|(i, &v)| ((i as f64 + 0.5) / n, v)).collect();
        plot.series(Series::line(p.policy.as_str(), pts).width(3))
    })
}

/// Step time per step, one line per policy.
fn steps_plot(r: &ScenarioResult) -> LinePlot {
    let y_max = r.policies.iter().flat_map(|p| p.step_times_s.iter().copied()).fold(0.0, f64::max) * 1.1;
    let plot = LinePlot::new(format!("{}: time per training step", r.scenario), "step", "step time (s)")
        .y_range(0.0, y_max.max(1e-9));
    r.policies.iter().fold(plot, |plot, p| {
        let pts = p.step_times_s.iter().enumerate().map(|(i, &v)| (i as f64 + 1.0, v)).collect();
        plot.series(Series::line(p.policy.as_str(), pts).width(2))
    })
}

/// Write `busy.png` and `steps.png` into `dir`.
pub fn write_plots(r: &ScenarioResult, dir: &Path) -> Result<()> {
    save(&busy_plot(r), &dir.join("busy.png"))?;
    save(&steps_plot(r), &dir.join("steps.png"))
}

fn save(plot: &LinePlot, path: &Path) -> Result<()> {
    if !Figure::single(plot.clone(), (900, 500)).save(path)? {
        eprintln!("warning: {}: text could not be drawn; the plot has no labels", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pixels in rows `y0..y1` and columns `x0..x1` darker than mid-grey on every channel (text and axes
    /// are near black; series colours are not).
    fn dark_in(r: &Rendered, (x0, x1): (u32, u32), (y0, y1): (u32, u32)) -> usize {
        let w = r.size.0 as usize;
        (y0 as usize..y1 as usize)
            .flat_map(|y| (x0 as usize..x1 as usize).map(move |x| y * w + x))
            .filter(|&i| r.rgb[3 * i..3 * i + 3].iter().all(|&c| c < 100))
            .count()
    }
    fn dark(r: &Rendered, y0: u32, y1: u32) -> usize {
        dark_in(r, (0, r.size.0), (y0, y1))
    }

    fn demo(title: &str) -> LinePlot {
        let pts: Vec<(f64, f64)> = (0..50).map(|i| (i as f64, (i as f64 / 7.0).sin())).collect();
        LinePlot::new(title, "step", "value").series(Series::line("sine", pts))
    }

    #[test]
    fn title_is_drawn_in_the_top_band() {
        let with = Figure::single(demo("A title"), (600, 400)).render().unwrap();
        assert!(with.text, "embedded font must register");
        let without = Figure::single(demo(""), (600, 400)).render().unwrap();
        // The caption is centred in the top ~36 px; without a title the middle of that band has no text.
        let band = |r: &Rendered| dark_in(r, (200, 400), (0, 36));
        assert!(band(&with) > 50, "title pixels: {}", band(&with));
        assert_eq!(band(&without), 0);
    }

    #[test]
    fn textless_fallback_draws_lines_but_no_text() {
        let f = Figure::single(demo("A title"), (600, 400));
        let plain = f.render_with(false).unwrap();
        assert!(!plain.text);
        assert_eq!(dark(&plain, 0, 14), 0);
        let blue = plain.rgb.chunks(3).filter(|p| p == &[31, 119, 180]).count();
        assert!(blue > 200, "series pixels: {blue}");
        // With text there are more dark pixels overall (tick labels, axis labels, legend).
        let full = f.render_with(true).unwrap();
        assert!(dark(&full, 0, 400) > dark(&plain, 0, 400) + 500);
    }

    #[test]
    fn degenerate_inputs_still_draw() {
        let nan = f64::NAN;
        let cases = [
            LinePlot::new("empty", "x", "y"),
            LinePlot::new("one point", "x", "y").series(Series::line_dots("p", vec![(3.0, 2.0)])),
            LinePlot::new("gaps", "x", "y").series(Series::line("g", vec![(0.0, 1.0), (1.0, nan), (2.0, 1.5)])),
            LinePlot::new("inf", "x", "y").series(Series::dots("i", vec![(f64::INFINITY, 1.0), (0.0, -1e300)])),
            LinePlot::new("bad range", "x", "y").y_range(nan, nan).x_range(5.0, 5.0),
        ];
        for p in cases {
            let r = Figure::single(p.clone(), (300, 200)).render().unwrap();
            assert_eq!(r.rgb.len(), 300 * 200 * 3, "{}", p.title);
        }
        assert!(Figure::single(demo("t"), (4, 4)).render().is_err());
        // Panels smaller than their label areas: drawn (with or without text), never a panic.
        let crowded = demo("a rather long title for a tiny panel").series(Series::dots("second", vec![(1.0, 0.5)]));
        for size in [(16, 16), (40, 30), (90, 60), (160, 100), (3000, 40)] {
            let r = Figure::grid(vec![crowded.clone(); 3], 2, size).render().unwrap();
            assert_eq!(r.rgb.len() as u32, r.size.0 * r.size.1 * 3);
        }
    }

    #[test]
    fn grid_sizes_and_ranges() {
        let f = Figure::grid(vec![demo("a"), demo("b"), demo("c")], 2, (300, 200));
        assert_eq!(f.size, (600, 400));
        assert_eq!(proper((2.0, 2.0)), (1.9, 2.1));
        assert_eq!(proper((0.0, 0.0)), (-0.5, 0.5));
        assert_eq!(proper((3.0, 1.0)), (1.0, 3.0));
        assert_eq!(proper((f64::NAN, 1.0)), (0.0, 1.0));
        assert_eq!(finite_runs(&[(0.0, 1.0), (1.0, f64::NAN), (2.0, 1.0), (3.0, 2.0)]).len(), 2);
        let labels: Vec<String> = [(250.0, 250.0), (0.25, 1.0), (2.0, 7.0), (-0.0, 1.0), (5e-5, 1e-4), (1234.5, 10.0)]
            .iter()
            .map(|&(v, span)| tick_label(v, span))
            .collect();
        assert_eq!(labels, ["250", "0.25", "2", "0", "5e-5", "1234.5"]);
    }

    /// (width, height) from a PNG's IHDR, after checking the signature.
    fn png_size(path: &Path) -> (u32, u32) {
        let b = std::fs::read(path).unwrap();
        assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&b[12..16], b"IHDR");
        (u32::from_be_bytes(b[16..20].try_into().unwrap()), u32::from_be_bytes(b[20..24].try_into().unwrap()))
    }

    #[test]
    fn write_plots_writes_labelled_busy_and_step_plots() {
        let sc = crate::scenario::Scenario::load(Path::new("scenarios/rlvr-small.toml")).unwrap();
        let r = crate::run::run_scenario(&sc, sc.seed).unwrap();
        let dir = std::env::temp_dir().join(format!("arbor-sim-plots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_plots(&r, &dir).unwrap();
        for name in ["busy.png", "steps.png"] {
            assert_eq!(png_size(&dir.join(name)), (900, 500), "{name}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
        // What write_plots draws, in memory: a title band with text, one legend entry per policy.
        let busy = Figure::single(busy_plot(&r), (900, 500)).render().unwrap();
        assert!(busy.text);
        assert!(dark_in(&busy, (250, 650), (0, 36)) > 100);
        assert_eq!(busy_plot(&r).series.len(), r.policies.len());
        assert!(busy_plot(&r).series.iter().zip(&r.policies).all(|(s, p)| s.name == p.policy));
    }

    #[test]
    fn legend_avoids_the_data() {
        // Data fills the upper right and the whole bottom band: the legend goes upper left.
        let pts = vec![(0.0, 0.0), (10.0, 0.0), (10.0, 10.0), (8.0, 10.0)];
        let p = LinePlot::new("t", "x", "y").series(Series::line("a long series name", pts));
        let lb = legend_size(&p).unwrap();
        let (pos, hits) = legend_corner(&p, lb, (600, 400), ((0.0, 10.0), (0.0, 10.0)));
        assert!(matches!(pos, SeriesLabelPosition::UpperLeft), "{pos:?}");
        assert_eq!(hits, 0);
        assert!(legend_size(&LinePlot::new("t", "x", "y").series(Series::line("empty", vec![]))).is_none());
    }

    #[test]
    fn png_round_trip_header() {
        let dir = std::env::temp_dir().join(format!("arbor-sim-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("demo.png");
        assert!(Figure::single(demo("png"), (320, 240)).save(&path).unwrap());
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&bytes[12..16], b"IHDR");
        assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), 320);
        assert_eq!(u32::from_be_bytes(bytes[20..24].try_into().unwrap()), 240);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(write_png(Path::new("/nonexistent-dir/x.png"), &Figure::single(demo(""), (20, 20)).render().unwrap())
            .is_err());
    }
}
