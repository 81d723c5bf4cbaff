//! Line charts with axes, ticks, labels and a legend: the loss curve of a run (`loss.png`)
//! and any other curve (FID against steps, ...). Drawn with `plotters` into a bitmap, with
//! DejaVu Sans compiled in, so a plot looks the same on every machine and needs no system
//! fonts.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::images::{ImageError, encode_png};

/// One curve of a [`Chart`].
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Name in the legend.
    pub name: String,
    /// `(x, y)` points, in drawing order. Points that are not finite (and, on a log-scale
    /// y axis, points with y <= 0) are left out.
    pub points: Vec<(f64, f64)>,
    /// Line colour (RGB).
    pub color: [u8; 3],
    /// Line width in pixels.
    pub width: u32,
}

/// Scale of the y axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum YScale {
    /// Linear.
    #[default]
    Linear,
    /// Logarithmic (base 10).
    Log,
}

/// A line chart: title, axis labels, a y scale and any number of series.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// Caption above the plot.
    pub title: String,
    /// Label of the x axis.
    pub x_label: String,
    /// Label of the y axis.
    pub y_label: String,
    /// Scale of the y axis.
    pub y_scale: YScale,
    /// Curves, drawn in order (the last on top).
    pub series: Vec<Series>,
    /// Size in pixels, `(width, height)`.
    pub size: (u32, u32),
}

impl Chart {
    /// An empty 800 x 450 chart with linear axes.
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            y_scale: YScale::Linear,
            series: Vec::new(),
            size: (800, 450),
        }
    }

    /// Adds a curve.
    #[must_use]
    pub fn with_series(
        mut self,
        name: impl Into<String>,
        points: Vec<(f64, f64)>,
        color: [u8; 3],
    ) -> Self {
        self.series.push(Series {
            name: name.into(),
            points,
            color,
            width: 2,
        });
        self
    }

    /// Sets the y scale.
    #[must_use]
    pub fn with_y_scale(mut self, y_scale: YScale) -> Self {
        self.y_scale = y_scale;
        self
    }

    /// The drawable points of every series (finite; y > 0 on a log scale).
    fn kept(&self) -> Vec<Vec<(f64, f64)>> {
        let log = self.y_scale == YScale::Log;
        self.series
            .iter()
            .map(|s| {
                s.points
                    .iter()
                    .copied()
                    .filter(|(x, y)| x.is_finite() && y.is_finite() && (!log || *y > 0.0))
                    .collect()
            })
            .collect()
    }

    /// The axis ranges covering every drawable point, never empty.
    fn ranges(&self, kept: &[Vec<(f64, f64)>]) -> ((f64, f64), (f64, f64)) {
        let all = || kept.iter().flatten();
        let fold = |f: fn(&(f64, f64)) -> f64| {
            all()
                .map(f)
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                    (lo.min(v), hi.max(v))
                })
        };
        let (mut x0, mut x1) = fold(|p| p.0);
        let (mut y0, mut y1) = fold(|p| p.1);
        if !x0.is_finite() {
            (x0, x1) = (0.0, 1.0);
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        match self.y_scale {
            YScale::Log => {
                if !y0.is_finite() {
                    (y0, y1) = (0.01, 1.0);
                }
                // A little headroom: a factor of 10^0.05 on each side.
                (y0, y1) = (y0 / 1.122, y1 * 1.122);
            }
            YScale::Linear => {
                if !y0.is_finite() {
                    (y0, y1) = (0.0, 1.0);
                }
                let pad = ((y1 - y0) * 0.05).max(1e-9 * y1.abs().max(1.0));
                (y0, y1) = (y0 - pad, y1 + pad);
            }
        }
        ((x0, x1), (y0, y1))
    }

    /// Renders the chart into an RGB buffer, `width * height * 3` bytes.
    ///
    /// # Errors
    /// [`ImageError::Encode`] when plotters fails (a font that cannot be read).
    pub fn render(&self) -> Result<Vec<u8>, ImageError> {
        register_font()?;
        let (w, h) = self.size;
        let mut buf = vec![255u8; w as usize * h as usize * 3];
        let err = |e: String| ImageError::Encode {
            path: "(chart)".into(),
            reason: e,
        };
        {
            let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
            self.draw(&root).map_err(err)?;
            root.present().map_err(|e| err(e.to_string()))?;
        }
        Ok(buf)
    }

    /// Renders the chart to a PNG file, atomically.
    ///
    /// # Errors
    /// [`ImageError`] for a failed rendering, encoding or write.
    pub fn save_png(&self, path: &Path) -> Result<(), ImageError> {
        let (w, h) = self.size;
        let buf = self.render()?;
        let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| ImageError::Encode {
            path: path.display().to_string(),
            reason: "the chart buffer does not match its size".into(),
        })?;
        encode_png(&img.into(), path)
    }

    fn draw(&self, root: &DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), String> {
        let kept = self.kept();
        let ((x0, x1), (y0, y1)) = self.ranges(&kept);
        let mut builder = ChartBuilder::on(root);
        builder
            .caption(&self.title, ("sans-serif", 20))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(70);
        // The two y scales have different coordinate types: one body, instantiated twice.
        macro_rules! body {
            ($chart:expr) => {{
                let mut chart = $chart.map_err(|e| e.to_string())?;
                let x_fmt = |v: &f64| tick_label(*v, x1 - x0);
                let y_fmt = |v: &f64| match self.y_scale {
                    YScale::Linear => tick_label(*v, y1 - y0),
                    YScale::Log => tick_label(*v, v.abs()),
                };
                chart
                    .configure_mesh()
                    .x_labels(10)
                    .y_labels(10)
                    .x_label_formatter(&x_fmt)
                    .y_label_formatter(&y_fmt)
                    .x_desc(self.x_label.as_str())
                    .y_desc(self.y_label.as_str())
                    .axis_desc_style(("sans-serif", 16))
                    .label_style(("sans-serif", 13))
                    .light_line_style(RGBColor(235, 235, 235))
                    .draw()
                    .map_err(|e| e.to_string())?;
                for (s, pts) in self.series.iter().zip(kept) {
                    let color = RGBColor(s.color[0], s.color[1], s.color[2]);
                    let style = color.stroke_width(s.width);
                    chart
                        .draw_series(LineSeries::new(pts, style))
                        .map_err(|e| e.to_string())?
                        .label(s.name.as_str())
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(3))
                        });
                }
                if self.series.iter().any(|s| !s.name.is_empty()) {
                    chart
                        .configure_series_labels()
                        .position(SeriesLabelPosition::UpperRight)
                        .label_font(("sans-serif", 14))
                        .background_style(WHITE.mix(0.85))
                        .border_style(BLACK)
                        .draw()
                        .map_err(|e| e.to_string())?;
                }
            }};
        }
        match self.y_scale {
            YScale::Linear => body!(builder.build_cartesian_2d(x0..x1, y0..y1)),
            YScale::Log => {
                let (bold, light) = log_ticks(y0, y1);
                body!(
                    builder.build_cartesian_2d(
                        x0..x1,
                        (y0..y1)
                            .log_scale()
                            .with_key_points(bold)
                            .with_light_points(light)
                    )
                )
            }
        }
        Ok(())
    }
}

/// A tick label for `v` on an axis spanning `span`: two significant digits of the span, no
/// trailing zeros (`200`, `0.25`, `0.03`).
fn tick_label(v: f64, span: f64) -> String {
    let digits = if span > 0.0 && span.is_finite() {
        (1.0 - span.log10().floor()).clamp(0.0, 12.0) as usize
    } else {
        2
    };
    let s = format!("{v:.digits$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    if s == "-0" { "0".into() } else { s }
}

/// Tick values of a log axis over `[lo, hi]` (`0 < lo < hi`): labelled ticks at 1, 2 and 5
/// times the powers of ten inside (every integer multiple when that gives fewer than three),
/// unlabelled grid lines at the other integer multiples.
fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
    let in_range = |m: &[f64]| -> Vec<f64> {
        let (k0, k1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        (k0..=k1)
            .flat_map(|k| m.iter().map(move |&m| m * 10f64.powi(k)))
            .filter(|v| (lo..=hi).contains(v))
            .collect()
    };
    let all = in_range(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    let mut bold = in_range(&[1.0, 2.0, 5.0]);
    if bold.len() < 3 {
        bold.clone_from(&all);
    }
    let light = all.into_iter().filter(|v| !bold.contains(v)).collect();
    (bold, light)
}

/// Registers DejaVu Sans as plotters' "sans-serif" once per process.
fn register_font() -> Result<(), ImageError> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(ImageError::Encode {
            path: "(chart)".into(),
            reason: "the bundled DejaVu Sans font could not be read".into(),
        })
    }
}

/// The moving average of `points`' y over the previous `window` points (the first points
/// average what there is).
pub fn moving_average(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let window = window.max(1);
    let mut sum = 0.0;
    points
        .iter()
        .enumerate()
        .map(|(i, &(x, y))| {
            sum += y;
            if i >= window {
                sum -= points[i - window].1;
            }
            (x, sum / (i + 1).min(window) as f64)
        })
        .collect()
}

/// Plots a run's loss (L_simple, or its weighted form with Min-SNR): `(step, loss)` points and
/// their moving average, log-scale y, to a PNG.
///
/// # Errors
/// [`ImageError`] for a failed rendering, encoding or write.
pub fn plot_loss(points: &[(u64, f64)], path: &Path) -> Result<(), ImageError> {
    let raw: Vec<(f64, f64)> = points
        .iter()
        .filter(|p| p.1.is_finite() && p.1 > 0.0)
        .map(|&(s, l)| (s as f64, l))
        .collect();
    // Average log-loss, as the eye reads a log axis.
    let logs: Vec<(f64, f64)> = raw.iter().map(|&(s, l)| (s, l.ln())).collect();
    let smooth = moving_average(&logs, (raw.len() / 50).max(1))
        .into_iter()
        .map(|(s, l)| (s, l.exp()))
        .collect();
    Chart::new("training loss", "step", "loss (log scale)")
        .with_y_scale(YScale::Log)
        .with_series("loss", raw, [150, 180, 230])
        .with_series("moving average", smooth, [200, 30, 30])
        .save_png(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pixels of `buf` (RGB, width `w`) in the rectangle `[x0, x1) x [y0, y1)` for which
    /// `pred` holds.
    fn count(
        buf: &[u8],
        w: u32,
        (x0, x1, y0, y1): (u32, u32, u32, u32),
        pred: impl Fn(&[u8]) -> bool,
    ) -> usize {
        let mut n = 0;
        for y in y0..y1 {
            for x in x0..x1 {
                let i = (y * w + x) as usize * 3;
                n += usize::from(pred(&buf[i..i + 3]));
            }
        }
        n
    }

    #[test]
    fn tick_labels_and_log_ticks_are_round() {
        assert_eq!(tick_label(200.0, 2200.0), "200");
        assert_eq!(tick_label(0.25, 0.5), "0.25");
        assert_eq!(tick_label(0.2, 1.0), "0.2");
        assert_eq!(tick_label(0.03, 0.03), "0.03");
        assert_eq!(tick_label(1.0, 1.0), "1");
        assert_eq!(tick_label(-0.0001, 1.0), "0");
        let (bold, light) = log_ticks(0.02, 1.1);
        assert_eq!(bold.len(), 6, "{bold:?}"); // 0.02 0.05 0.1 0.2 0.5 1
        for (got, want) in bold.iter().zip([0.02, 0.05, 0.1, 0.2, 0.5, 1.0]) {
            assert!((got - want).abs() < 1e-12 * want, "{bold:?}");
        }
        assert_eq!(light.len(), 12, "{light:?}"); // 0.03 .. 0.09, 0.3, 0.4, 0.6 .. 0.9
        // A narrow range falls back to every integer multiple.
        let (bold, _) = log_ticks(0.025, 0.055);
        assert_eq!(bold.len(), 3, "{bold:?}"); // 0.03 0.04 0.05
    }

    #[test]
    fn moving_average_is_exact() {
        let p: Vec<(f64, f64)> = [1.0, 3.0, 5.0, 7.0]
            .iter()
            .enumerate()
            .map(|(i, &y)| (i as f64, y))
            .collect();
        let m = moving_average(&p, 2);
        assert_eq!(m, vec![(0.0, 1.0), (1.0, 2.0), (2.0, 4.0), (3.0, 6.0)]);
        assert_eq!(moving_average(&p, 0)[3], (3.0, 7.0));
    }

    #[test]
    fn a_loss_plot_has_labelled_axes_and_both_curves() {
        // A decaying loss with noise, as a run writes it.
        let pts: Vec<(u64, f64)> = (0..500u64)
            .map(|s| {
                (
                    s * 10,
                    0.03 + 0.9
                        * (-(s as f64) / 40.0).exp()
                        * (1.0 + 0.3 * ((s * 7919 % 13) as f64 / 13.0)),
                )
            })
            .collect();
        let dir = std::env::temp_dir().join(format!("ddpm-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("loss.png");
        plot_loss(&pts, &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (800, 450));
        let (w, h) = img.dimensions();
        let buf = img.into_raw();
        let dark = |p: &[u8]| p.iter().all(|&c| c < 100);
        // Tick labels and the axis description left of the plot, and below it.
        assert!(count(&buf, w, (0, 80, 40, h - 50), dark) > 200, "y labels");
        assert!(count(&buf, w, (90, w, h - 44, h), dark) > 200, "x labels");
        // The moving average (red) and the raw loss (light blue) are drawn.
        let red = |p: &[u8]| p[0] > 180 && p[1] < 60 && p[2] < 60;
        let blue = |p: &[u8]| p[0] == 150 && p[1] == 180 && p[2] == 230;
        assert!(count(&buf, w, (0, w, 0, h), red) > 500);
        assert!(count(&buf, w, (0, w, 0, h), blue) > 500);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn degenerate_inputs_still_draw_axes() {
        for pts in [
            vec![],
            vec![(5u64, 0.1)],
            vec![(1, f64::NAN), (2, 0.0), (3, -1.0)],
        ] {
            let buf = Chart::new("t", "step", "loss")
                .with_y_scale(YScale::Log)
                .with_series(
                    "loss",
                    pts.iter().map(|&(s, l)| (s as f64, l)).collect(),
                    [0, 0, 255],
                )
                .render()
                .unwrap();
            let dark = |p: &[u8]| p.iter().all(|&c| c < 100);
            assert!(count(&buf, 800, (0, 800, 0, 450), dark) > 300);
        }
    }
}
