//! Line charts (plotters) as SVG text and PNG/SVG files: log-scale gradient norms, loss
//! curves with clip/skip marks and baselines. Text is set in DejaVu Sans, compiled in, so no
//! system fonts are needed.

use crate::charlm::fsio;
use crate::error::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

const SIZE: (u32, u32) = (820, 460);
const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
];

/// One line, with optional marked points (e.g. clipped updates).
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// (x, y) points, in order.
    pub points: Vec<(f64, f64)>,
    /// Points to mark with a circle, with their legend text.
    pub marks: Vec<(f64, f64)>,
}

/// A line chart.
#[derive(Clone, Debug, Default)]
pub struct Chart {
    /// Title above the plot.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Logarithmic y axis (non-positive values are left out).
    pub log_y: bool,
    /// The lines.
    pub series: Vec<Series>,
    /// Horizontal reference lines (value, label), drawn dashed.
    pub hlines: Vec<(f64, String)>,
    /// Put the legend at the lower right instead of the upper right.
    pub legend_below: bool,
}

impl Chart {
    /// Every point of every line as CSV (`series,x,y`, then `marked` 1 for a marked point), so
    /// each curve a report draws can be read as numbers.
    pub fn csv(&self) -> String {
        let mut out = String::from("series,x,y,marked\n");
        for s in &self.series {
            let name = csv_field(&s.name);
            for &(x, y) in &s.points {
                out.push_str(&format!("{name},{x},{y},0\n"));
            }
            for &(x, y) in &s.marks {
                out.push_str(&format!("{name},{x},{y},1\n"));
            }
        }
        for (y, label) in &self.hlines {
            out.push_str(&format!("{},,{y},0\n", csv_field(label)));
        }
        out
    }
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

fn fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

fn err(e: impl std::fmt::Display) -> Error {
    Error::Config(format!("cannot draw the chart: {e}"))
}

impl Chart {
    fn visible(&self, y: f64) -> bool {
        y.is_finite() && (!self.log_y || y > 0.0)
    }

    fn ranges(&self) -> ((f64, f64), (f64, f64)) {
        let pts = self.series.iter().flat_map(|s| s.points.iter().copied());
        let refs = self.hlines.iter().map(|&(y, _)| (f64::NAN, y));
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for (x, y) in pts.chain(refs).filter(|p| self.visible(p.1)) {
            if x.is_finite() {
                (x0, x1) = (x0.min(x), x1.max(x));
            }
            (y0, y1) = (y0.min(y), y1.max(y));
        }
        if x0 > x1 {
            (x0, x1) = (0.0, 1.0);
        }
        if y0 > y1 {
            (y0, y1) = (if self.log_y { 0.1 } else { 0.0 }, 1.0);
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        if self.log_y {
            // Log charts are drawn as log10(y) on a linear axis labelled 1eN: plotters' own log
            // axis drops its labels over very wide ranges (vanishing gradients span 40 decades).
            let (a, b) = (y0.log10().floor(), y1.log10().ceil().max(y0.log10().floor() + 1.0));
            ((x0, x1), (a, b))
        } else {
            let pad = ((y1 - y0) * 0.05).max(1e-9);
            ((x0, x1), (y0 - pad, y1 + pad))
        }
    }

    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<()> {
        root.fill(&WHITE).map_err(err)?;
        let ((x0, x1), (y0, y1)) = self.ranges();
        let mut b = ChartBuilder::on(&root);
        b.caption(&self.title, ("sans-serif", 20)).margin(12).x_label_area_size(42).y_label_area_size(70);
        let ty = |y: f64| if self.log_y { y.log10() } else { y };
        {
            {
                let mut chart = b.build_cartesian_2d(x0..x1, y0..y1).map_err(err)?;
                let x_fmt = |v: &f64| if (x1 - x0) >= 10.0 { format!("{v:.0}") } else { format!("{v:.2}") };
                let y_fmt = |v: &f64| {
                    if self.log_y {
                        if (v - v.round()).abs() < 1e-9 { format!("1e{}", v.round()) } else { String::new() }
                    } else {
                        let s = format!("{v:.3}");
                        s.trim_end_matches('0').trim_end_matches('.').to_string()
                    }
                };
                chart
                    .configure_mesh()
                    .y_labels(12)
                    .x_label_formatter(&x_fmt)
                    .y_label_formatter(&y_fmt)
                    .x_desc(&self.x_label)
                    .y_desc(&self.y_label)
                    .label_style(("sans-serif", 13))
                    .light_line_style(RGBColor(235, 235, 235))
                    .draw()
                    .map_err(err)?;
                for (k, s) in self.series.iter().enumerate() {
                    let color = PALETTE[k % PALETTE.len()];
                    let pts: Vec<(f64, f64)> =
                        s.points.iter().copied().filter(|p| self.visible(p.1)).map(|(x, y)| (x, ty(y))).collect();
                    chart
                        .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                        .map_err(err)?
                        .label(s.name.clone())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
                    let marks: Vec<(f64, f64)> =
                        s.marks.iter().copied().filter(|p| self.visible(p.1)).map(|(x, y)| (x, ty(y))).collect();
                    if !marks.is_empty() {
                        chart
                            .draw_series(marks.into_iter().map(|p| Circle::new(p, 3, color.mix(0.6).filled())))
                            .map_err(err)?;
                    }
                }
                // Reference lines on top of the curves, so a curve running along one never hides it.
                for (y, label) in &self.hlines {
                    let y = ty(*y);
                    let style = ShapeStyle::from(&RGBColor(30, 30, 30)).stroke_width(2);
                    chart
                        .draw_series(DashedLineSeries::new(vec![(x0, y), (x1, y)], 8, 5, style))
                        .map_err(err)?
                        .label(label.clone())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
                }
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.85))
                    .border_style(RGBColor(200, 200, 200))
                    .label_font(("sans-serif", 13))
                    .position(if self.legend_below {
                        SeriesLabelPosition::LowerRight
                    } else {
                        SeriesLabelPosition::UpperRight
                    })
                    .draw()
                    .map_err(err)?;
            }
        }
        root.present().map_err(err)?;
        Ok(())
    }

    /// The chart as an SVG document.
    pub fn svg(&self) -> Result<String> {
        fonts();
        let mut s = String::new();
        self.draw(SVGBackend::with_string(&mut s, SIZE).into_drawing_area())?;
        Ok(s)
    }

    /// Writes `STEM.svg` and `STEM.png`, each atomically.
    pub fn save(&self, stem: &Path) -> Result<()> {
        fonts();
        fsio::write_atomic(&stem.with_extension("svg"), self.svg()?.as_bytes())?;
        let png = stem.with_extension("png");
        // The PNG encoder picks its format from the extension: the temp name ends in .png.
        let tmp = fsio::temp_path(&png)?.with_extension("tmp.png");
        if let Err(e) = self.draw(BitMapBackend::new(&tmp, SIZE).into_drawing_area()) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        fsio::commit(&tmp, &png)
    }
}

/// A confusion matrix as a heat map: rows the true classes, columns the predicted ones, each
/// cell shaded by its share of its row (recall) and labelled with its count.
#[derive(Clone, Debug, Default)]
pub struct Confusion {
    /// Title above the matrix.
    pub title: String,
    /// The class names, in row (and column) order.
    pub classes: Vec<String>,
    /// counts[true][predicted].
    pub counts: Vec<Vec<usize>>,
}

impl Confusion {
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<()> {
        root.fill(&WHITE).map_err(err)?;
        let c = self.classes.len().max(1);
        let (w, h) = root.dim_in_pixel();
        let (left, top, bottom) = (140i32, 50i32, 60i32);
        let cell = (((w as i32 - left - 20).min(h as i32 - top - bottom)) / c as i32).max(4);
        let title = ("sans-serif", 17).into_font();
        root.draw(&Text::new(self.title.clone(), (10, 12), title)).map_err(err)?;
        let label = ("sans-serif", 13).into_font();
        for (i, row) in self.counts.iter().enumerate() {
            let total: usize = row.iter().sum();
            for (j, &n) in row.iter().enumerate() {
                let share = if total == 0 { 0.0 } else { n as f64 / total as f64 };
                // White through blue with the row share.
                let shade = |full: u8| (255.0 - share * (255.0 - full as f64)).round() as u8;
                let color = RGBColor(shade(31), shade(119), shade(180));
                let (x0, y0) = (left + j as i32 * cell, top + i as i32 * cell);
                root.draw(&Rectangle::new([(x0, y0), (x0 + cell, y0 + cell)], color.filled())).map_err(err)?;
                root.draw(&Rectangle::new([(x0, y0), (x0 + cell, y0 + cell)], RGBColor(200, 200, 200))).map_err(err)?;
                if n > 0 && cell >= 18 {
                    let ink = if share > 0.5 { WHITE } else { BLACK };
                    let text =
                        Text::new(n.to_string(), (x0 + cell / 2 - 6, y0 + cell / 2 - 7), label.clone().color(&ink));
                    root.draw(&text).map_err(err)?;
                }
            }
            let name = Text::new(
                self.classes.get(i).cloned().unwrap_or_default(),
                (10, top + i as i32 * cell + cell / 2 - 7),
                label.clone(),
            );
            root.draw(&name).map_err(err)?;
        }
        for (j, name) in self.classes.iter().enumerate() {
            let x = left + j as i32 * cell + cell / 2 - 6;
            root.draw(&Text::new(name.clone(), (x, top + c as i32 * cell + 6), label.clone())).map_err(err)?;
        }
        let axis = "predicted class (columns) against true class (rows); shade: share of the row".to_string();
        root.draw(&Text::new(axis, (left, top + c as i32 * cell + 30), label)).map_err(err)?;
        root.present().map_err(err)?;
        Ok(())
    }

    /// Writes the matrix to `path` as PNG (or SVG by its extension), atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        fonts();
        let c = self.classes.len().max(1) as u32;
        let size = ((160 + 46 * c.max(4)).max(640), 110 + 46 * c.max(4));
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg")) {
            let mut s = String::new();
            self.draw(SVGBackend::with_string(&mut s, size).into_drawing_area())?;
            return fsio::write_atomic(path, s.as_bytes());
        }
        let tmp = fsio::temp_path(path)?.with_extension("tmp.png");
        if let Err(e) = self.draw(BitMapBackend::new(&tmp, size).into_drawing_area()) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        fsio::commit(&tmp, path)
    }
}
