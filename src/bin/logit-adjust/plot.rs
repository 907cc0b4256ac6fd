//! Pictures for the command line, as SVG (text is left to the viewer's
//! fonts): the learning curve of `train`.

use plotters::prelude::*;

/// A learning curve: the training loss on the left axis, the validation
/// balanced error of one or more runs on the right one, and the kept epoch.
pub struct LearningCurve<'a> {
    /// The title above the plot.
    pub title: &'a str,
    /// `(epoch, mean training loss)` of the kept run.
    pub loss: &'a [(f64, f64)],
    /// Per run: its legend and `(epoch, validation balanced error)` points.
    pub validation: &'a [(String, Vec<(f64, f64)>)],
    /// The kept epoch and what to say about it.
    pub chosen: Option<(usize, String)>,
    /// Evaluations before this epoch are not kept (shaded).
    pub warmup: Option<usize>,
}

const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];
const LOSS_COLOUR: RGBColor = RGBColor(90, 90, 90);

fn max_of(points: impl Iterator<Item = f64>) -> f64 {
    points.fold(0.0f64, f64::max)
}

impl LearningCurve<'_> {
    /// The picture as SVG text.
    pub fn svg(&self) -> Result<String, String> {
        let mut svg = String::new();
        self.draw(&mut svg)
            .map_err(|e| format!("drawing the learning curve: {e}"))?;
        Ok(svg)
    }

    fn draw(&self, svg: &mut String) -> Result<(), Box<dyn std::error::Error + '_>> {
        let root = SVGBackend::with_string(svg, (900, 520)).into_drawing_area();
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
        let mut chart = ChartBuilder::on(&root)
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
                LOSS_COLOUR.stroke_width(2),
            ))?
            .label("training loss (left axis)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], LOSS_COLOUR.stroke_width(2)));
        for (k, (name, points)) in self.validation.iter().enumerate() {
            let colour = COLOURS[k % COLOURS.len()];
            chart
                .draw_secondary_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(2),
                ))?
                .label(format!("{name} (right axis)"))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2))
                });
        }
        if let Some((epoch, what)) = &self.chosen {
            let x = *epoch as f64;
            let red = RGBColor(214, 39, 40);
            chart
                .draw_secondary_series(DashedLineSeries::new(
                    [(x, 0.0), (x, error_top)],
                    6,
                    4,
                    red.stroke_width(2),
                ))?
                .label(what.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], red.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
        root.present()?;
        Ok(())
    }
}
