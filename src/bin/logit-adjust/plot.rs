//! Pictures for the command line: `train`'s learning curve, `posthoc`'s tau
//! sweep and its per-class recall from head to tail. Each is drawn once
//! against plotters' backend trait, as SVG or, when the file name ends in
//! `.png`, as PNG (text set in the embedded DejaVu Sans, so no system font
//! is needed).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

const SIZE: (u32, u32) = (900, 520);
const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];
const GREY: RGBColor = RGBColor(90, 90, 90);
const RED: RGBColor = RGBColor(214, 39, 40);

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// A picture that draws itself on any plotters backend.
pub trait Picture {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB>;

    /// The file's bytes: PNG when `path` ends in `.png`, else SVG.
    fn render(&self, path: &Path) -> Result<Vec<u8>, String> {
        register_font()?;
        let err = |e: String| format!("drawing {}: {e}", path.display());
        let png = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("png"));
        if !png {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
                self.draw(&root).map_err(|e| err(e.to_string()))?;
                root.present().map_err(|e| err(e.to_string()))?;
            }
            return Ok(svg.into_bytes());
        }
        let mut rgb = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
            self.draw(&root).map_err(|e| err(e.to_string()))?;
            root.present().map_err(|e| err(e.to_string()))?;
        }
        encode_png(&rgb).map_err(|e| err(e.to_string()))
    }
}

fn encode_png(rgb: &[u8]) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, SIZE.0, SIZE.1);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Best);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(rgb)?;
    }
    Ok(out)
}

/// The embedded font, registered once for every family name used here.
fn register_font() -> Result<(), String> {
    static ONCE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| "the embedded font did not load".to_string())
    })
    .clone()
}

fn max_of(points: impl Iterator<Item = f64>) -> f64 {
    points.fold(0.0f64, f64::max)
}

fn line_legend(colour: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2))
}

/// A learning curve: the training loss on the left axis, the validation
/// balanced error of one or more runs on the right one, and the kept epoch.
pub struct LearningCurve<'a> {
    /// The title above the plot.
    pub title: &'a str,
    /// `(epoch, mean training loss)` of the kept run.
    pub loss: &'a [(f64, f64)],
    /// Per run: its legend and `(epoch, validation balanced error %)` points.
    pub validation: &'a [(String, Vec<(f64, f64)>)],
    /// The kept epoch and what to say about it.
    pub chosen: Option<(usize, String)>,
    /// Evaluations before this epoch are not kept (shaded).
    pub warmup: Option<usize>,
}

impl Picture for LearningCurve<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let last = max_of(self.loss.iter().map(|p| p.0)).max(1.0);
        let loss_top = 1.05 * max_of(self.loss.iter().map(|p| p.1)).max(1e-3);
        let error_top = (1.05
            * max_of(
                self.validation
                    .iter()
                    .flat_map(|(_, v)| v.iter().map(|p| p.1)),
            ))
        .clamp(1.0, 100.0);
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .right_y_label_area_size(if self.validation.is_empty() { 0 } else { 64 })
            .build_cartesian_2d(0.0..last, 0.0..loss_top)?
            .set_secondary_coord(0.0..last, 0.0..error_top);
        chart
            .configure_mesh()
            .x_desc("epoch")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_desc("mean training loss (nats)")
            .axis_desc_style(("sans-serif", 15))
            .draw()?;
        if !self.validation.is_empty() {
            chart
                .configure_secondary_axes()
                .y_desc("validation balanced error (%)")
                .y_label_formatter(&|y| format!("{y:.0}"))
                .axis_desc_style(("sans-serif", 15))
                .draw()?;
        }
        if let Some(w) = self.warmup.filter(|&w| w > 1) {
            let shade = RGBColor(200, 200, 200).mix(0.35);
            chart
                .draw_secondary_series(std::iter::once(Rectangle::new(
                    [(0.0, 0.0), (w as f64, error_top)],
                    shade.filled(),
                )))?
                .label(format!("warm-up: epochs before {w} not kept"))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 20, y + 5)], shade.filled())
                });
        }
        chart
            .draw_series(LineSeries::new(
                self.loss.iter().copied(),
                GREY.stroke_width(2),
            ))?
            .label("training loss (left axis)")
            .legend(line_legend(GREY));
        for (k, (name, points)) in self.validation.iter().enumerate() {
            let colour = COLOURS[k % COLOURS.len()];
            chart
                .draw_secondary_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(2),
                ))?
                .label(format!("{name} (right axis)"))
                .legend(line_legend(colour));
        }
        if let Some((epoch, what)) = &self.chosen {
            let x = *epoch as f64;
            chart
                .draw_secondary_series(DashedLineSeries::new(
                    [(x, 0.0), (x, error_top)],
                    6,
                    4,
                    RED.stroke_width(2),
                ))?
                .label(what.clone())
                .legend(line_legend(RED));
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)
    }
}

/// A line through `points` with a dot at each, in the legend as `name`.
fn marked_line<'a, DB: DrawingBackend + 'a, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    points: &[(f64, f64)],
    colour: RGBColor,
    name: &str,
) -> DrawResult<DB>
where
    X: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>,
{
    chart
        .draw_series(LineSeries::new(
            points.iter().copied(),
            colour.stroke_width(2),
        ))?
        .label(name)
        .legend(line_legend(colour));
    chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
    Ok(())
}

fn legend<'a, DB: DrawingBackend + 'a, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    at: SeriesLabelPosition,
) -> DrawResult<DB>
where
    X: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>,
{
    chart
        .configure_series_labels()
        .position(at)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
}

/// A tau sweep: balanced error, worst-class recall and the shot groups'
/// recall (all in %) against tau, the chosen tau marked.
pub struct Sweep<'a> {
    pub title: &'a str,
    /// Per curve: its legend and one value (%) per tau, `None` where absent.
    pub curves: &'a [(String, Vec<Option<f64>>)],
    pub taus: &'a [f64],
    /// The chosen tau and what to say about it.
    pub chosen: (f64, String),
}

impl Picture for Sweep<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let lo = self
            .taus
            .iter()
            .cloned()
            .fold(f64::INFINITY, f64::min)
            .min(self.chosen.0);
        let hi = self
            .taus
            .iter()
            .cloned()
            .fold(f64::NEG_INFINITY, f64::max)
            .max(self.chosen.0);
        let pad = ((hi - lo) * 0.03).max(0.05);
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d((lo - pad)..(hi + pad), 0.0..100.0)?;
        chart
            .configure_mesh()
            .x_desc("tau (strength of the correction, dimensionless)")
            .y_desc("error or recall (%)")
            .y_label_formatter(&|y| format!("{y:.0}"))
            .axis_desc_style(("sans-serif", 15))
            .draw()?;
        for (k, (name, values)) in self.curves.iter().enumerate() {
            let colour = COLOURS[k % COLOURS.len()];
            let points: Vec<(f64, f64)> = self
                .taus
                .iter()
                .zip(values)
                .filter_map(|(&t, v)| v.map(|v| (t, v)))
                .collect();
            if points.is_empty() {
                continue;
            }
            marked_line(&mut chart, &points, colour, name)?;
        }
        let (tau, what) = &self.chosen;
        chart
            .draw_series(DashedLineSeries::new(
                [(*tau, 0.0), (*tau, 100.0)],
                6,
                4,
                RED.stroke_width(2),
            ))?
            .label(what.clone())
            .legend(line_legend(RED));
        legend(&mut chart, SeriesLabelPosition::UpperRight)
    }
}

/// Per-class recall from head to tail (classes sorted by training count,
/// most first), for two taus, with the training count on a log-scale
/// second axis.
pub struct Classes<'a> {
    pub title: &'a str,
    /// Training counts, in head-to-tail order.
    pub counts: &'a [f64],
    /// Per series: its legend and the recall (%) of each class in that order.
    pub recalls: &'a [(String, Vec<Option<f64>>)],
}

impl Picture for Classes<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let c = self.counts.len().max(1) as f64;
        let top = max_of(self.counts.iter().copied()).max(1.0) * 2.0;
        let bottom = self
            .counts
            .iter()
            .copied()
            .filter(|&n| n > 0.0)
            .fold(top, f64::min)
            .max(0.5)
            / 2.0;
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .right_y_label_area_size(72)
            .build_cartesian_2d(-0.5..(c - 0.5), 0.0..100.0)?
            .set_secondary_coord(-0.5..(c - 0.5), (bottom..top).log_scale());
        chart
            .configure_mesh()
            .x_desc("class rank by training count (0 = most examples)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_desc("per-class recall (%)")
            .y_label_formatter(&|y| format!("{y:.0}"))
            .axis_desc_style(("sans-serif", 15))
            .draw()?;
        chart
            .configure_secondary_axes()
            .y_desc("training examples (log scale)")
            .y_label_formatter(&|y| format!("{y:.0}"))
            .axis_desc_style(("sans-serif", 15))
            .draw()?;
        let counts: Vec<(f64, f64)> = self
            .counts
            .iter()
            .enumerate()
            .map(|(k, &n)| (k as f64, n.max(bottom)))
            .collect();
        chart
            .draw_secondary_series(LineSeries::new(counts, GREY.stroke_width(2)))?
            .label("training examples (right axis)")
            .legend(line_legend(GREY));
        for (k, (name, values)) in self.recalls.iter().enumerate() {
            let colour = COLOURS[k % COLOURS.len()];
            let points: Vec<(f64, f64)> = values
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.map(|v| (i as f64, v)))
                .collect();
            marked_line(&mut chart, &points, colour, name)?;
        }
        legend(&mut chart, SeriesLabelPosition::LowerLeft)
    }
}
