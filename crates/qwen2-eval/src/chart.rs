//! A PNG bar chart of one or two runs' scores (`results.json` documents): one group of bars
//! per task and metric of the markdown table, one bar per run, with value labels and ±stderr
//! whiskers. Text is drawn with the 8×8 bitmap font of `font8x8`, so the chart needs no font
//! files and looks the same everywhere.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use crate::error::{Error, Result};

/// One run's scores: (task, metric) -> (value, stderr), in the table's order.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Shown in the legend.
    pub label: String,
    pub scores: BTreeMap<(String, String), (f64, Option<f64>)>,
    /// (task, metric) pairs that are the metric the model card reports, marked with `*`.
    pub primary: Vec<(String, String)>,
}

/// Metrics left out: perplexity is not a 0..1 score, one such bar would flatten the rest.
const UNCHARTED: [&str; 1] = ["perplexity"];

impl Run {
    /// The scores of a `results.json` document; an error when it holds no task results.
    pub fn from_results(doc: &Json, label: impl Into<String>) -> Result<Run> {
        let label = label.into();
        let tasks = doc
            .get("tasks")
            .and_then(Json::as_object)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Error::Invalid("no task results to chart (\"tasks\" is missing or empty)".into())
            })?;
        let mut scores = BTreeMap::new();
        let mut primary = Vec::new();
        for (task, r) in tasks {
            let Some(metrics) = r.get("metrics").and_then(Json::as_object) else {
                continue;
            };
            for (metric, m) in metrics {
                let Some(value) = m.get("value").and_then(Json::as_f64) else {
                    continue; // NaN is written as null: nothing to draw
                };
                if UNCHARTED.contains(&metric.as_str()) {
                    continue;
                }
                let key = (task.clone(), metric.clone());
                if r.get("primary").and_then(Json::as_str) == Some(metric) {
                    primary.push(key.clone());
                }
                let stderr = m.get("stderr").and_then(Json::as_f64);
                scores.insert(key, (value, stderr));
            }
        }
        if scores.is_empty() {
            return Err(Error::Invalid("its tasks have no scores to chart".into()));
        }
        Ok(Run {
            label,
            scores,
            primary,
        })
    }
}

// Layout, in pixels.
const FONT: u32 = 8;
const TITLE_SCALE: u32 = 2;
const PAD: u32 = 12;
/// Title line, legend line, and headroom for the value label of a full-height bar.
pub const PLOT_TOP: u32 = PAD + FONT * TITLE_SCALE + PAD + FONT + PAD + FONT + 6;
/// Height of the plot area (the axis from 0 to its maximum).
pub const PLOT_H: u32 = 300;
/// Room for the y-axis tick labels.
const LEFT: u32 = 5 * FONT;
const RIGHT: u32 = PAD;
pub const BAR_W: u32 = 44;
const BAR_GAP: u32 = 4;
const GROUP_GAP: u32 = 20;

const WHITE: [u8; 3] = [255, 255, 255];
const INK: [u8; 3] = [40, 40, 40];
const GRID: [u8; 3] = [225, 225, 225];
/// Bar colours of the first and second run.
pub const SERIES: [[u8; 3]; 2] = [[66, 114, 196], [237, 125, 49]];

/// The chart's size (wider if the legend needs it) for `groups` bar groups of `runs` bars whose longest x label has
/// `label_chars` characters, under a title of `title_chars`.
pub fn size(groups: usize, runs: usize, label_chars: usize, title_chars: usize) -> (u32, u32) {
    let group_w = runs as u32 * BAR_W + (runs as u32 - 1) * BAR_GAP + GROUP_GAP;
    let plot_w = LEFT + GROUP_GAP + groups as u32 * group_w + RIGHT;
    let scale = title_scale(plot_w, title_chars);
    let width = plot_w.max(2 * PAD + title_chars as u32 * FONT * scale);
    let height = PLOT_TOP + PLOT_H + PAD + label_chars as u32 * FONT + PAD;
    (width, height)
}

/// Large type for a title that fits above the bars, else normal type (the chart widens to
/// fit it rather than cut it).
fn title_scale(plot_w: u32, title_chars: usize) -> u32 {
    if 2 * PAD + title_chars as u32 * FONT * TITLE_SCALE <= plot_w {
        TITLE_SCALE
    } else {
        1
    }
}

/// The axis maximum: 1 for scores, more when a value (plus its stderr) is above 1.
fn axis_max(runs: &[Run]) -> f64 {
    let top = runs
        .iter()
        .flat_map(|r| r.scores.values())
        .map(|(v, se)| v + se.unwrap_or(0.0))
        .fold(1.0f64, f64::max);
    (top * 5.0).ceil() / 5.0
}

/// The chart as PNG bytes: `runs` (one or two) side by side under `title`.
pub fn render_png(title: &str, runs: &[Run]) -> Result<Vec<u8>> {
    if runs.is_empty() || runs.len() > SERIES.len() {
        return Err(Error::Invalid(format!(
            "a chart shows one or two runs, not {}",
            runs.len()
        )));
    }
    let keys: Vec<&(String, String)> = {
        let mut k: Vec<_> = runs.iter().flat_map(|r| r.scores.keys()).collect();
        k.sort();
        k.dedup();
        k
    };
    let labels: Vec<String> = keys
        .iter()
        .map(|k| {
            let star = runs.iter().any(|r| r.primary.contains(k));
            format!("{} {}{}", k.0, k.1, if star { "*" } else { "" })
        })
        .collect();
    let label_chars = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let (w, h) = size(keys.len(), runs.len(), label_chars, title.chars().count());
    // Wider when the legend (long run labels) does not fit.
    let legend_w: u32 = runs
        .iter()
        .map(|r| FONT + 4 + (r.label.chars().count() as u32 + 3) * FONT)
        .sum();
    let w = w.max(PAD + legend_w);
    let mut c = Canvas::new(w, h);
    let max = axis_max(runs);
    let base = PLOT_TOP + PLOT_H; // y of the value 0
    let y_of = |v: f64| base - ((v.clamp(0.0, max) / max) * PLOT_H as f64).round() as u32;

    let scale = title_scale(w, title.chars().count());
    c.text(
        PAD,
        PAD + FONT * (TITLE_SCALE - scale) / 2,
        title,
        scale,
        INK,
    );
    // Legend.
    let mut x = PAD;
    let ly = PAD + FONT * TITLE_SCALE + PAD;
    for (i, r) in runs.iter().enumerate() {
        c.fill(x, ly, FONT, FONT, SERIES[i]);
        c.text(x + FONT + 4, ly, &r.label, 1, INK);
        x += FONT + 4 + (r.label.chars().count() as u32 + 3) * FONT;
    }
    // Y axis: grid lines and labels every 0.2.
    let steps = (max / 0.2).round() as u32;
    for s in 0..=steps {
        let v = s as f64 * 0.2;
        let y = y_of(v);
        c.fill(LEFT, y, w - LEFT - RIGHT, 1, GRID);
        c.text(
            LEFT - 4 * FONT,
            y.saturating_sub(FONT / 2),
            &format!("{v:.1}"),
            1,
            INK,
        );
    }
    c.fill(LEFT, PLOT_TOP, 1, PLOT_H + 1, INK);
    c.fill(LEFT, base, w - LEFT - RIGHT, 1, INK);
    // Bars.
    let group_w = runs.len() as u32 * (BAR_W + BAR_GAP) - BAR_GAP + GROUP_GAP;
    for (g, (key, label)) in keys.iter().zip(&labels).enumerate() {
        let gx = LEFT + GROUP_GAP + g as u32 * group_w;
        for (i, r) in runs.iter().enumerate() {
            let Some(&(v, se)) = r.scores.get(*key) else {
                continue;
            };
            let bx = gx + i as u32 * (BAR_W + BAR_GAP);
            let top = y_of(v);
            c.fill(bx, top, BAR_W, base - top, SERIES[i]);
            let mut label_y = top;
            if let Some(se) = se.filter(|s| *s > 0.0) {
                let (hi, lo) = (y_of(v + se), y_of(v - se));
                let mid = bx + BAR_W / 2;
                c.fill(mid, hi, 1, lo - hi + 1, INK);
                c.fill(mid - 4, hi, 9, 1, INK);
                c.fill(mid - 4, lo, 9, 1, INK);
                label_y = label_y.min(hi);
            }
            let text = format!("{v:.3}");
            let tw = text.chars().count() as u32 * FONT;
            c.text(
                (bx + BAR_W / 2).saturating_sub(tw / 2),
                label_y.saturating_sub(FONT + 3),
                &text,
                1,
                INK,
            );
        }
        // The x label, reading upwards, centred under the group.
        let bars_w = group_w - GROUP_GAP;
        c.text_up(gx + bars_w / 2 - FONT / 2, base + PAD, label, INK);
    }
    c.png()
}

/// An RGB image being drawn on.
struct Canvas {
    w: u32,
    h: u32,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: u32, h: u32) -> Canvas {
        Canvas {
            w,
            h,
            px: WHITE.repeat((w * h) as usize),
        }
    }

    fn set(&mut self, x: u32, y: u32, rgb: [u8; 3]) {
        if x < self.w && y < self.h {
            let i = 3 * (y * self.w + x) as usize;
            self.px[i..i + 3].copy_from_slice(&rgb);
        }
    }

    fn fill(&mut self, x: u32, y: u32, w: u32, h: u32, rgb: [u8; 3]) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, rgb);
            }
        }
    }

    /// 8×8 glyph of `ch` (printable ASCII; others as `?`): row-major, bit 0 leftmost.
    fn glyph(ch: char) -> [u8; 8] {
        let i = if ch.is_ascii() && !ch.is_ascii_control() {
            ch as usize
        } else {
            '?' as usize
        };
        font8x8::legacy::BASIC_LEGACY[i]
    }

    /// Left to right, top-left corner at (x, y).
    fn text(&mut self, x: u32, y: u32, s: &str, scale: u32, rgb: [u8; 3]) {
        for (n, ch) in s.chars().enumerate() {
            let g = Self::glyph(ch);
            for (gy, row) in g.iter().enumerate() {
                for gx in 0..8 {
                    if row >> gx & 1 == 1 {
                        let px = x + (n as u32 * 8 + gx) * scale;
                        self.fill(px, y + gy as u32 * scale, scale, scale, rgb);
                    }
                }
            }
        }
    }

    /// Rotated a quarter turn anticlockwise (reading bottom to top), first character at
    /// the top: the text's top-left corner at (x, y) after rotation.
    fn text_up(&mut self, x: u32, y: u32, s: &str, rgb: [u8; 3]) {
        let n = s.chars().count() as u32;
        for (i, ch) in s.chars().enumerate() {
            let g = Self::glyph(ch);
            for (gy, row) in g.iter().enumerate() {
                for gx in 0..8u32 {
                    if row >> gx & 1 == 1 {
                        // Unrotated (u, v) = (i*8 + gx, gy) maps to (v, len - 1 - u).
                        let u = i as u32 * 8 + gx;
                        self.set(x + gy as u32, y + n * 8 - 1 - u, rgb);
                    }
                }
            }
        }
    }

    fn png(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, self.w, self.h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let err = |e: png::EncodingError| Error::Invalid(format!("PNG encoding: {e}"));
        let mut wr = enc.write_header().map_err(err)?;
        wr.write_image_data(&self.px).map_err(err)?;
        wr.finish().map_err(err)?;
        Ok(out)
    }
}

/// The UTC date `YYYY-MM-DD` of a Unix time (days to civil date, proleptic Gregorian).
pub fn utc_date(unix_secs: u64) -> String {
    let z = (unix_secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_795_700_000), "2026-11-26");
    }
}
