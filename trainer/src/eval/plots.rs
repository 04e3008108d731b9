//! PNG plots of reports (plotters, text drawn with the vendored DejaVu Sans).

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

static FONT: Once = Once::new();

fn register_font() {
    FONT.call_once(|| {
        // The font is a constant asset of this crate; a failure here would
        // show as missing text, never as a crash.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            include_bytes!("../../assets/DejaVuSans.ttf"),
        );
    });
}

fn err(path: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: cannot draw: {e}", path.display())
}

/// Qualitative colours for classes and plates.
fn colour(i: usize) -> RGBColor {
    const P: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    P[i % P.len()]
}

/// Accuracy against inference batch size: AdaBN per batch, AdaBN per
/// plate, and running statistics as a flat reference.
pub fn adabn_curve(
    path: &Path,
    sizes: &[usize],
    per_batch: &[f64],
    per_plate: &[f64],
    running: f64,
) -> Result<(), String> {
    register_font();
    let root = BitMapBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let n = sizes.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption("Accuracy against inference batch size", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.3f64..(n as f64 - 0.7), 0f64..1f64)
        .map_err(|e| err(path, e))?;
    let labels: Vec<String> = sizes.iter().map(|s| s.to_string()).collect();
    chart
        .configure_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| labels.get(x.round() as usize).cloned().unwrap_or_default())
        .x_desc("batch size")
        .y_desc("accuracy")
        .draw()
        .map_err(|e| err(path, e))?;
    let series: [(&str, Vec<f64>, RGBColor); 3] = [
        ("AdaBN, per batch", per_batch.to_vec(), colour(3)),
        ("AdaBN, per plate", per_plate.to_vec(), colour(0)),
        ("training statistics", vec![running; n], colour(7)),
    ];
    for (name, ys, c) in series {
        chart
            .draw_series(LineSeries::new(
                ys.iter().enumerate().map(|(i, y)| (i as f64, *y)),
                c.stroke_width(2),
            ))
            .map_err(|e| err(path, e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart
            .draw_series(
                ys.iter()
                    .enumerate()
                    .map(|(i, y)| Circle::new((i as f64, *y), 3, c.filled())),
            )
            .map_err(|e| err(path, e))?;
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight, path)?;
    root.present().map_err(|e| err(path, e))
}

/// Two panels of the same 2-D projection, coloured by class and by plate.
pub fn projection(
    path: &Path,
    points: &[[f32; 2]],
    classes: (&[usize], &[String]),
    plates: (&[usize], &[String]),
) -> Result<(), String> {
    register_font();
    let root = BitMapBackend::new(path, (1100, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let (lx, hx) = bounds(points.iter().map(|p| p[0]));
    let (ly, hy) = bounds(points.iter().map(|p| p[1]));
    let panels = root.split_evenly((1, 2));
    for (panel, (title, (groups, names))) in panels
        .iter()
        .zip([("by class", classes), ("by plate", plates)])
    {
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("Embedding PCA, {title}"), ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d(lx..hx, ly..hy)
            .map_err(|e| err(path, e))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .draw()
            .map_err(|e| err(path, e))?;
        for (g, name) in names.iter().enumerate() {
            let c = colour(g);
            chart
                .draw_series(
                    points
                        .iter()
                        .zip(groups.iter())
                        .filter(|(_, k)| **k == g)
                        .map(|(p, _)| Circle::new((p[0], p[1]), 3, c.mix(0.7).filled())),
                )
                .map_err(|e| err(path, e))?
                .label(name.clone())
                .legend(move |(x, y)| Circle::new((x + 6, y), 4, c.filled()));
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight, path)?;
    }
    root.present().map_err(|e| err(path, e))
}

/// Grouped bars: one group per level, one bar per method (missing values skipped).
pub fn level_bars(
    path: &Path,
    title: &str,
    levels: &[&str],
    methods: &[(String, Vec<Option<f64>>)],
) -> Result<(), String> {
    register_font();
    let root = BitMapBackend::new(path, (900, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let groups = levels.len();
    let m = methods.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..groups as f64, 0f64..1f64)
        .map_err(|e| err(path, e))?;
    let names: Vec<String> = levels.iter().map(|s| s.to_string()).collect();
    chart
        .configure_mesh()
        .x_labels(groups * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.01 {
                names.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("macro-F1")
        .draw()
        .map_err(|e| err(path, e))?;
    for (k, (name, values)) in methods.iter().enumerate() {
        let c = colour(k);
        let width = 0.8 / m;
        chart
            .draw_series(values.iter().enumerate().filter_map(|(g, v)| {
                v.map(|v| {
                    let x0 = g as f64 + 0.1 + k as f64 * width;
                    Rectangle::new([(x0, 0.0), (x0 + width * 0.9, v)], c.filled())
                })
            }))
            .map_err(|e| err(path, e))?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight, path)?;
    root.present().map_err(|e| err(path, e))
}

/// The series legend every plot uses: framed, on a translucent white box.
fn legend<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
    path: &Path,
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(path, e))
}

fn bounds(v: impl Iterator<Item = f32>) -> (f32, f32) {
    let (lo, hi) = v.fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    if !lo.is_finite() || !hi.is_finite() || hi <= lo {
        return (-1.0, 1.0);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}
