//! The chart the README shows: one panel per headline metric, a bar per
//! server, drawn as SVG with plotters.

use std::path::Path;

use plotters::prelude::*;

/// One bar: its label, its value (none: failed or not measured) and the
/// text shown beside it.
pub struct Bar {
    pub label: String,
    pub value: Option<f64>,
    pub text: String,
    pub ours: bool,
}

/// One panel: a title and its bars.
pub struct Panel {
    pub title: String,
    pub bars: Vec<Bar>,
}

const WIDTH: u32 = 960;
const PANEL_HEIGHT: u32 = 170;
const OURS: RGBColor = RGBColor(0x1f, 0x6f, 0xb4);
const PEER: RGBColor = RGBColor(0x9a, 0x9a, 0x9a);

/// Draws `panels` in two columns into `path`.
pub fn draw(path: &Path, title: &str, panels: &[Panel]) -> Result<(), String> {
    let rows = panels.len().div_ceil(2) as u32;
    let height = 50 + rows * PANEL_HEIGHT;
    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    root.draw(&Text::new(title.to_string(), (16, 14), ("sans-serif", 20).into_font().color(&BLACK)))
        .map_err(|e| e.to_string())?;
    let body = root.margin(50, 0, 0, 0);
    let areas = body.split_evenly((rows as usize, 2));
    for (panel, area) in panels.iter().zip(areas.iter()) {
        draw_panel(area, panel).map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, plotters::coord::Shift>, panel: &Panel) -> Result<(), String> {
    let fail = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let (width, _) = area.dim_in_pixel();
    area.draw(&Text::new(panel.title.clone(), (16, 4), ("sans-serif", 15).into_font().color(&BLACK))).map_err(fail)?;
    let label_width = 130i32;
    let bar_space = width as i32 - label_width - 110;
    let max = panel.bars.iter().filter_map(|b| b.value).fold(0.0f64, f64::max);
    for (i, bar) in panel.bars.iter().enumerate() {
        let y = 30 + i as i32 * 30;
        let font = ("sans-serif", 13).into_font().color(&BLACK);
        area.draw(&Text::new(bar.label.clone(), (16, y + 4), font.clone())).map_err(fail)?;
        let length = match bar.value {
            Some(value) if max > 0.0 => ((value / max) * bar_space as f64).round().max(1.0) as i32,
            _ => 0,
        };
        let color = if bar.ours { OURS } else { PEER };
        if length > 0 {
            area.draw(&Rectangle::new([(label_width, y), (label_width + length, y + 20)], color.filled()))
                .map_err(fail)?;
        }
        area.draw(&Text::new(bar.text.clone(), (label_width + length + 6, y + 4), font)).map_err(fail)?;
    }
    Ok(())
}
