//! The scorer on the real default model (`qwen2 pull`) and data (`qwen2 data pull`): prefix
//! reuse must not change a score, and an interrupted run resumes without recomputing.

use std::path::PathBuf;

use qwen2_core::{load, Precision};
use qwen2_eval::data::DataDir;
use qwen2_eval::loglik::{GenRequest, Pair, Scorer};
use qwen2_eval::{tasks, EvalConfig, Runner, Task};

fn home() -> PathBuf {
    std::env::var_os("QWEN2_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/qwen2")
        })
}

fn real_model() -> PathBuf {
    if let Some(p) = std::env::var_os("QWEN2_MODEL") {
        return PathBuf::from(p);
    }
    let p = home().join("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    assert!(
        p.exists(),
        "the real model is missing at {}: run `qwen2 pull` (scripts/test.sh does)",
        p.display()
    );
    p
}

fn data() -> DataDir {
    let root = home().join("data");
    assert!(
        qwen2_eval::data::is_pulled(&root),
        "run `qwen2 data pull` (scripts/test.sh does)"
    );
    DataDir::new(root)
}

#[test]
fn shared_prefix_scores_equal_fresh_scores() {
    let lm = load(&real_model(), Precision::Fast).unwrap();
    let tok = lm.tokenizer().unwrap();
    let d = data();
    let test = d.mmlu("test").unwrap();
    let dev = d.mmlu("dev").unwrap();
    // Two questions of one subject: the second reuses the first's five-shot prefix.
    let items = tasks::mmlu::items(&test[..2], &dev, 2);
    let mut shared = Scorer::new(&lm.model, tok, 4096, lm.eos_ids[0]);
    let mut worst = 0.0f64;
    for it in &items {
        let mut computed_after_first = None;
        for r in &it.requests {
            let a = shared.score(&r.context, &r.continuation).unwrap();
            // The four one-token answers share one model input: only the first runs it.
            let c = *computed_after_first.get_or_insert(shared.computed_tokens);
            assert_eq!(shared.computed_tokens, c, "an answer re-ran its context");
            let mut fresh = Scorer::new(&lm.model, tok, 4096, lm.eos_ids[0]);
            let b = fresh.score(&r.context, &r.continuation).unwrap();
            assert_eq!(fresh.reused_tokens, 0);
            assert_eq!(a.n_tokens, b.n_tokens);
            worst = worst.max((a.loglik - b.loglik).abs());
        }
    }
    // Same tokens, same positions; the only difference is how the prefill is split into
    // passes, and prompt rows are computed row by row: bitwise the same.
    assert!(
        worst == 0.0,
        "prefix reuse changed a log-likelihood by {worst}"
    );
    // The cache did its job: 7 of 8 requests reused a prefix, the second question most of it.
    assert!(
        shared.reused_tokens > shared.computed_tokens,
        "reused {} vs computed {}",
        shared.reused_tokens,
        shared.computed_tokens
    );
}

#[test]
fn batched_scores_are_bitwise_the_one_by_one_scores() {
    let lm = load(&real_model(), Precision::Fast).unwrap();
    let tok = lm.tokenizer().unwrap();
    let d = data();
    let test = d.mmlu("test").unwrap();
    let dev = d.mmlu("dev").unwrap();
    // Three questions on each side of a subject boundary (the batch is cut there: each run
    // computes its own few-shot prefix once), then ARC-Challenge items, whose four endings
    // of several tokens branch from their item's context.
    let cut = test
        .iter()
        .position(|x| x.subject != test[0].subject)
        .unwrap();
    let mut items = tasks::mmlu::items(&test[cut - 3..cut + 3], &dev, 2);
    let arc_test = d.arc_challenge_test().unwrap();
    let arc_train = d.arc_challenge_train().unwrap();
    items.extend(tasks::arc::items(&arc_test[..3], &arc_train, 1, 1234));
    let mut batched = Scorer::new(&lm.model, tok, 4096, lm.eos_ids[0]);
    let groups: Vec<Vec<Pair>> = items
        .iter()
        .map(|it| {
            it.requests
                .iter()
                .map(|r| batched.encode_pair(&r.context, &r.continuation).unwrap())
                .collect()
        })
        .collect();
    let got = batched.score_batch(&groups).unwrap();
    assert_eq!(got.len(), groups.len());
    let mut single = Scorer::new(&lm.model, tok, 4096, lm.eos_ids[0]);
    for (g, scores) in groups.iter().zip(&got) {
        assert_eq!(scores.len(), g.len());
        for ((ctx, cont), b) in g.iter().zip(scores) {
            let a = single.score_tokens(ctx, cont).unwrap();
            // Prompt rows are computed row by row, whatever shares their pass.
            assert_eq!(a, *b, "batched and single scores differ");
        }
    }
    // Batching recomputed no few-shot prefix (hundreds of tokens): at most the first words
    // of a question that its predecessor happens to share beyond the run's common prefix.
    assert!(
        batched.computed_tokens <= single.computed_tokens + 2 * items.len(),
        "batched computed {} tokens, one by one {}",
        batched.computed_tokens,
        single.computed_tokens
    );
    // A request without a continuation is refused, not scored.
    let bad = vec![vec![(groups[0][0].0.clone(), Vec::new())]];
    assert!(batched.score_batch(&bad).is_err());
    // Nothing to score is nothing scored.
    assert!(batched.score_batch(&[]).unwrap().is_empty());
}

#[test]
fn run_writes_records_and_resumes() {
    let lm = load(&real_model(), Precision::Fast).unwrap();
    let d = data();
    let out = std::env::temp_dir().join(format!("qwen2-eval-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let cfg = EvalConfig {
        shots: Some(1),
        limit: Some(3),
        seed: 1234,
        chat: false,
        fewshot_as_multiturn: true,
        limit_per_subtask: None,
        max_gen_tokens: Some(64),
        ctx: 4096,
        model_id: "test".into(),
    };
    let runner = Runner {
        model: &lm,
        data: &d,
        cfg: &cfg,
        out_dir: &out,
    };
    let first = runner.run(Task::ArcChallenge, &mut |_, _| {}).unwrap();
    assert_eq!(first.n, 3);
    assert!(first.tokens_computed > 0);
    let lines = std::fs::read_to_string(out.join("arc_challenge.samples.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 3);
    let rec: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(rec["loglik"].as_array().unwrap().len(), 4);
    // Rerun: every item is on record, nothing is computed, the scores are the same.
    let again = runner.run(Task::ArcChallenge, &mut |_, _| {}).unwrap();
    assert_eq!(again.tokens_computed, 0);
    assert_eq!(again.metrics, first.metrics);
    // Other settings into the same folder are refused, not mixed.
    let cfg2 = EvalConfig {
        seed: 7,
        ..cfg.clone()
    };
    let r2 = Runner {
        model: &lm,
        data: &d,
        cfg: &cfg2,
        out_dir: &out,
    };
    assert!(r2.run(Task::ArcChallenge, &mut |_, _| {}).is_err());
    // LAMBADA: one continuation per item, so a record's accuracy is whether greedy decoding
    // produces it (lm-eval's acc), and it names no predicted choice.
    let lam = runner.run(Task::Lambada, &mut |_, _| {}).unwrap();
    let lines = std::fs::read_to_string(out.join("lambada.samples.jsonl")).unwrap();
    let mut greedy = 0.0;
    for line in lines.lines() {
        let rec: serde_json::Value = serde_json::from_str(line).unwrap();
        let g = f64::from(u8::from(rec["is_greedy"][0].as_bool().unwrap()));
        assert_eq!(rec["acc"].as_f64(), Some(g), "{rec}");
        assert!(
            rec.get("pred").is_none() && rec.get("acc_norm").is_none(),
            "{rec}"
        );
        greedy += g;
    }
    assert_eq!(lam.metrics["acc"].value, greedy / 3.0);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn greedy_matches_the_engine_generate() {
    // Our generation loop (with its prefix cache) against qwen2-core's `generate` at
    // temperature 0: the same text for a GSM8K prompt, and a second prompt sharing the
    // exemplars reuses them.
    let lm = load(&real_model(), Precision::Fast).unwrap();
    let tok = lm.tokenizer().unwrap();
    let docs = data().gsm8k_test().unwrap();
    let mut scorer = Scorer::new(&lm.model, tok, 4096, lm.eos_ids[0]);
    for doc in &docs[..2] {
        let prompt = tasks::gsm8k::prompt(doc, 1);
        let ours = scorer.greedy(&prompt, 24, &[], &lm.eos_ids).unwrap();
        let ids = tok.encode(&prompt).unwrap();
        let mut cache = lm.model.new_cache(4096);
        let params = qwen2_core::GenerateParams {
            max_new_tokens: 24,
            sampling: qwen2_core::SamplingParams::default(),
            stop: Vec::new(),
            eos_ids: lm.eos_ids.clone(),
        };
        let theirs =
            qwen2_core::generate(&lm.model, tok, &mut cache, &ids, &params, &mut |_| true).unwrap();
        assert_eq!(ours, theirs.text, "prompt {:?}", doc.question);
    }
    // The second prompt starts with the same exemplar (about 90 tokens).
    let exemplar = tok
        .encode(&tasks::gsm8k::prompt(&docs[0], 1))
        .unwrap()
        .len()
        - tok
            .encode(&tasks::gsm8k::doc_to_text(&docs[0].question))
            .unwrap()
            .len();
    assert!(
        scorer.reused_tokens + 2 >= exemplar,
        "the exemplar prefix was not reused ({} of {exemplar})",
        scorer.reused_tokens
    );
}

#[test]
fn batched_generations_are_the_engine_generations() {
    // Ten GSM8K prompts in one `greedy_batch` (more than run at once, so finished sequences
    // are replaced mid-batch), with different limits and, for some, a stop string: each text
    // is what qwen2-core's `generate` gives alone at temperature 0, cut at the stop.
    let lm = load(&real_model(), Precision::Fast).unwrap();
    let tok = lm.tokenizer().unwrap();
    let docs = data().gsm8k_test().unwrap();
    let prompts: Vec<String> = docs[..10]
        .iter()
        .map(|d| tasks::gsm8k::prompt(d, 1))
        .collect();
    let stop: &[&str] = &["."];
    let reqs: Vec<GenRequest<'_>> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| GenRequest {
            prompt: p,
            max_new: 6 + 3 * i,
            stop: if i % 3 == 0 { stop } else { &[] },
        })
        .collect();
    let mut scorer = Scorer::new(&lm.model, tok, 4096, lm.eos_ids[0]);
    let ours = scorer.greedy_batch(&reqs, &lm.eos_ids).unwrap();
    assert_eq!(ours.len(), reqs.len());
    let mut stopped = 0;
    for (r, ours) in reqs.iter().zip(&ours) {
        let ids = tok.encode(r.prompt).unwrap();
        let mut cache = lm.model.new_cache(4096);
        let params = qwen2_core::GenerateParams {
            max_new_tokens: r.max_new,
            sampling: qwen2_core::SamplingParams::default(),
            stop: Vec::new(),
            eos_ids: lm.eos_ids.clone(),
        };
        let mut theirs =
            qwen2_core::generate(&lm.model, tok, &mut cache, &ids, &params, &mut |_| true)
                .unwrap()
                .text;
        if let Some(cut) = r.stop.iter().filter_map(|s| theirs.find(s)).min() {
            theirs.truncate(cut);
            stopped += 1;
        }
        assert_eq!(ours, &theirs, "max_new {}", r.max_new);
    }
    assert!(
        stopped > 0,
        "no stop string was met: the test checks nothing about stops"
    );
    // The shared exemplar was computed once, then copied for each sequence.
    assert!(
        scorer.reused_tokens >= 9 * 50,
        "reused {}",
        scorer.reused_tokens
    );
}
