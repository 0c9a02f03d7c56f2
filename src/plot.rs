//! Figures of several panels (line series or labelled points) rendered to SVG with plotters:
//! what `ftl.plot` draws, such as the comparison's loss curves and trade-off scatters.

use plotters::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// each series a line over its points in order
    Lines,
    /// each series a marker per point, labelled with the series name
    Points,
}

#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

#[derive(Clone, Debug)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub kind: Kind,
    /// a log10 x axis (trainable share, memory: values spanning orders of magnitude)
    pub log_x: bool,
    pub series: Vec<Series>,
}

#[derive(Clone, Debug)]
pub struct Figure {
    pub title: String,
    pub panels: Vec<Panel>,
    /// panels per row
    pub columns: usize,
}

const PANEL_W: u32 = 560;
const PANEL_H: u32 = 400;

/// The series' colours, distinct for up to 12 series, then repeating.
fn colour(i: usize) -> RGBColor {
    const C: [(u8, u8, u8); 12] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
        (0, 0, 0),
        (255, 187, 120),
    ];
    let (r, g, b) = C[i % C.len()];
    RGBColor(r, g, b)
}

/// The finite range of `v`, padded by 5% (a single value gets a unit-wide range).
fn range(v: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = v
        .filter(|x| x.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { (hi - lo) * 0.05 } else { 0.5 };
    (lo - pad, hi + pad)
}

type DrawResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    p: &Panel,
) -> DrawResult<()>
where
    DB::ErrorType: 'static,
{
    let x_of = |x: f64| if p.log_x { x.log10() } else { x };
    let pts = |s: &Series| -> Vec<(f64, f64)> {
        s.points
            .iter()
            .map(|&(x, y)| (x_of(x), y))
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect()
    };
    let all: Vec<(f64, f64)> = p.series.iter().flat_map(pts).collect();
    let (x0, x1) = range(all.iter().map(|p| p.0));
    let (y0, y1) = range(all.iter().map(|p| p.1));
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(34)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    let log_x = p.log_x;
    let fmt_x = move |v: &f64| {
        if log_x {
            let x = 10f64.powf(*v);
            if !(0.01..100.0).contains(&x) {
                format!("{x:.1e}")
            } else {
                format!("{x:.2}")
            }
        } else {
            format!("{v}")
        }
    };
    chart
        .configure_mesh()
        .x_desc(&p.x_label)
        .y_desc(&p.y_label)
        .x_label_formatter(&fmt_x)
        .draw()?;
    for (i, s) in p.series.iter().enumerate() {
        let c = colour(i);
        let v = pts(s);
        match p.kind {
            Kind::Lines => {
                chart
                    .draw_series(LineSeries::new(v, c.stroke_width(2)))?
                    .label(&s.name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                    });
            }
            Kind::Points => {
                let name = s.name.clone();
                chart
                    .draw_series(v.into_iter().map(|pt| {
                        EmptyElement::at(pt)
                            + Circle::new((0, 0), 5, c.filled())
                            + Text::new(name.clone(), (7, -12), ("sans-serif", 11))
                    }))?
                    .label(&s.name)
                    .legend(move |(x, y)| Circle::new((x + 8, y), 5, c.filled()));
            }
        }
    }
    if p.kind == Kind::Lines {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 11))
            .draw()?;
    }
    Ok(())
}

/// The figure as an SVG document.
pub fn svg(f: &Figure) -> DrawResult<String> {
    let cols = f.columns.clamp(1, f.panels.len().max(1));
    let rows = f.panels.len().div_ceil(cols).max(1);
    let title_h = if f.title.is_empty() { 0 } else { 36 };
    let size = (PANEL_W * cols as u32, PANEL_H * rows as u32 + title_h);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        root.fill(&WHITE)?;
        let body = if f.title.is_empty() {
            root.clone()
        } else {
            root.titled(&f.title, ("sans-serif", 22))?
        };
        let areas = body.split_evenly((rows, cols));
        for (p, a) in f.panels.iter().zip(areas.iter()) {
            panel(a, p)?;
        }
        root.present()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_of_lines_and_points_render_and_skip_non_finite_values() {
        let f = Figure {
            title: "t".into(),
            columns: 2,
            panels: vec![
                Panel {
                    title: "loss".into(),
                    x_label: "step".into(),
                    y_label: "loss".into(),
                    kind: Kind::Lines,
                    log_x: false,
                    series: vec![Series {
                        name: "lora".into(),
                        points: vec![(1.0, 2.0), (2.0, f64::NAN), (3.0, 1.0)],
                    }],
                },
                Panel {
                    title: "accuracy".into(),
                    x_label: "trainable %".into(),
                    y_label: "accuracy".into(),
                    kind: Kind::Points,
                    log_x: true,
                    series: vec![
                        Series {
                            name: "full".into(),
                            points: vec![(100.0, 0.8)],
                        },
                        Series {
                            name: "ia3".into(),
                            points: vec![(0.01, 0.6)],
                        },
                    ],
                },
            ],
        };
        let s = svg(&f).unwrap();
        assert!(s.starts_with("<svg"), "{}", &s[..40]);
        // the texts drawn: legend entries and point labels
        let texts: Vec<&str> = s
            .split("<text")
            .skip(1)
            .filter_map(|t| t.split_once('>')?.1.split_once("</text>"))
            .map(|(body, _)| body.trim())
            .collect();
        for name in ["lora", "ia3", "full", "loss", "accuracy"] {
            assert!(texts.contains(&name), "no text {name} in {texts:?}");
        }
        assert!(!s.contains("NaN"));
    }
}
