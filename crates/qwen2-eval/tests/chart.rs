//! The scores chart: a PNG that decodes, of the documented size, whose bars are as tall as
//! the scores say (pixel columns sampled), two runs side by side, and a clear error for a
//! results.json without tasks.

use qwen2_eval::chart::{render_png, size, Run, BAR_W, PLOT_H, PLOT_TOP, SERIES};
use serde_json::json;

fn results() -> serde_json::Value {
    json!({
        "model": {"name": "m"},
        "tasks": {
            "a": {"primary": "acc", "n": 10, "metrics": {"acc": {"value": 0.25, "stderr": 0.05}}},
            "b": {"primary": "acc_norm", "n": 10, "metrics": {
                "acc": {"value": 0.5, "stderr": null},
                "acc_norm": {"value": 1.0, "stderr": null}}},
            "lambada": {"primary": "bits_per_byte", "n": 10, "metrics": {
                "perplexity": {"value": 20.0, "stderr": null},
                "bits_per_byte": {"value": 0.75, "stderr": null}}}
        }
    })
}

/// (width, height, RGB pixels).
fn decode(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let dec = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

/// For each run of adjacent columns holding `rgb` in the plot area (below the legend):
/// (first column, pixels of `rgb` in the column 2 px inside it).
fn bars(w: u32, h: u32, px: &[u8], rgb: [u8; 3]) -> Vec<(u32, u32)> {
    let count = |x: u32| {
        (PLOT_TOP..h)
            .filter(|&y| {
                let i = 3 * (y * w + x) as usize;
                px[i..i + 3] == rgb
            })
            .count() as u32
    };
    let mut out = Vec::new();
    let mut x = 0;
    while x < w {
        if count(x) > 0 {
            let start = x;
            while x < w && count(x) > 0 {
                x += 1;
            }
            out.push((start, x - start));
        } else {
            x += 1;
        }
    }
    // Run width -> the count sampled inside the bar.
    out.into_iter()
        .map(|(start, width)| {
            assert_eq!(width, BAR_W, "a bar is {BAR_W} px wide");
            (start, count(start + 2))
        })
        .collect()
}

#[test]
fn one_run_bars_match_the_scores() {
    let run = Run::from_results(&results(), "m").unwrap();
    let title = "m - 2026-11-27";
    let png = render_png(title, &[run]).unwrap();
    let (w, h, px) = decode(&png);
    // 4 groups (perplexity left out), longest label "lambada bits_per_byte*" (22 chars).
    assert_eq!((w, h), size(4, 1, 22, title.len()));
    assert_eq!(
        (w, h),
        (40 + 20 + 4 * (44 + 20) + 12, 74 + 300 + 12 + 22 * 8 + 12)
    );
    // The bars, in table order: a/acc, b/acc, b/acc_norm, lambada/bits_per_byte; the axis
    // goes from 0 to 1 over PLOT_H px.
    let b: Vec<u32> = bars(w, h, &px, SERIES[0])
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    let want: Vec<u32> = [0.25, 0.5, 1.0, 0.75]
        .iter()
        .map(|v| (v * PLOT_H as f64).round() as u32)
        .collect();
    assert_eq!(b, want);
    assert!(bars(w, h, &px, SERIES[1]).is_empty(), "one run, one colour");
}

#[test]
fn two_runs_side_by_side() {
    let a = Run::from_results(&results(), "a").unwrap();
    let mut other = results();
    other["tasks"]["a"]["metrics"]["acc"]["value"] = json!(0.5);
    other["tasks"].as_object_mut().unwrap().remove("lambada");
    let b = Run::from_results(&other, "b").unwrap();
    let png = render_png("a vs b", &[a, b]).unwrap();
    let (w, h, px) = decode(&png);
    assert_eq!((w, h), size(4, 2, 22, 6));
    let first = bars(w, h, &px, SERIES[0]);
    let second = bars(w, h, &px, SERIES[1]);
    assert_eq!(
        first.iter().map(|b| b.1).collect::<Vec<_>>(),
        [75, 150, 300, 225]
    );
    // b has no lambada: three bars, each right next to a's in its group.
    assert_eq!(
        second.iter().map(|b| b.1).collect::<Vec<_>>(),
        [150, 150, 300]
    );
    for (x, y) in first.iter().zip(&second) {
        assert_eq!(y.0, x.0 + BAR_W + 4);
    }
}

#[test]
fn no_tasks_is_a_clear_error() {
    let e = Run::from_results(&json!({"tasks": {}}), "x/results.json").unwrap_err();
    assert!(e.to_string().contains("no task results to chart"), "{e}");
    assert!(Run::from_results(&json!({"model": {}}), "y").is_err());
    assert!(render_png("t", &[]).is_err());
}
