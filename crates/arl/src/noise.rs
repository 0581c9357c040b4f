//! Training-time judge noise (`[judge.noise]`): the verdicts that drive training and selection
//! (rollout grading, the selectors' fixed batch) are flipped at given false-positive and
//! false-negative rates, to study the trainer under an LLM judge's errors with the exact rule
//! judge. Validation and test are always graded clean.
//!
//! A flip is a deterministic function of (run seed, example id, criterion index, response
//! text): the same response always gets the same noisy verdict, as from a cached judge, and a
//! resumed run is bit-identical. A verdict `m` in [0,1] (graded data) flips with probability
//! `m·fn + (1-m)·fp` and then reads `1 - m`; for 0/1 verdicts that is exactly `fp` / `fn`.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rubric::{Example, Verdict};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::cell::Cell;
use std::collections::BTreeMap;

/// `preset = "healthbench-gpt41"`: HealthBench's GPT-4.1 grader agrees with physicians at
/// macro F1 0.709 (HealthBench paper, section 8.1). Calibrated on the built-in task with the
/// default config (`arlrr train`, seed 0): see `PRESETS` for the measured figure.
pub const HEALTHBENCH_GPT41: &str = "healthbench-gpt41";

/// Named rates `(name, fp, fn)`.
///
/// healthbench-gpt41: fp = fn = 0.285. On the built-in task (about 38% of the training
/// verdicts "met") the noisy verdicts' macro F1 against the clean ones measured 0.708 with the
/// default config (`arlrr train`, seed 0, 45,480 verdicts), 0.706 and 0.709 with
/// configs/builtin-categorical.toml at 20 and 400 steps.
const PRESETS: &[(&str, f64, f64)] = &[(HEALTHBENCH_GPT41, 0.285, 0.285)];

/// `[judge.noise]`: a `preset`, and/or `fp` and `fn` (which override the preset's), and per
/// class `[judge.noise.classes.<class>]` with its own `fp` / `fn` (the rest inherit).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NoiseConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fp: Option<f64>,
    #[serde(rename = "fn", skip_serializing_if = "Option::is_none")]
    pub fn_: Option<f64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub classes: BTreeMap<String, RateConfig>,
}

/// False-positive rate (an unmet criterion read as met) and false-negative rate (met read as
/// unmet), each in [0, 1); absent = inherited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fp: Option<f64>,
    #[serde(rename = "fn", skip_serializing_if = "Option::is_none")]
    pub fn_: Option<f64>,
}

/// Resolved rates of one class.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    pub fp: f64,
    pub fn_: f64,
}

impl RateConfig {
    fn over(self, base: Rates) -> Rates {
        Rates {
            fp: self.fp.unwrap_or(base.fp),
            fn_: self.fn_.unwrap_or(base.fn_),
        }
    }

    fn check(&self, field: &str) -> anyhow::Result<()> {
        for (name, r) in [("fp", self.fp), ("fn", self.fn_)] {
            if let Some(r) = r.filter(|r| !(0.0..1.0).contains(r)) {
                anyhow::bail!("field `{field}.{name}`: must be in [0, 1), got {r}");
            }
        }
        Ok(())
    }
}

impl NoiseConfig {
    /// Checks what needs no class list: the preset's name and every rate's range.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.base()?;
        self.rates().check("judge.noise")?;
        for (name, r) in &self.classes {
            r.check(&format!("judge.noise.classes.{name}"))?;
        }
        Ok(())
    }

    fn rates(&self) -> RateConfig {
        RateConfig {
            fp: self.fp,
            fn_: self.fn_,
        }
    }

    fn base(&self) -> anyhow::Result<Rates> {
        let Some(name) = &self.preset else {
            return Ok(Rates::default());
        };
        match PRESETS.iter().find(|p| p.0 == name) {
            Some(&(_, fp, fn_)) => Ok(Rates { fp, fn_ }),
            None => {
                let names: Vec<&str> = PRESETS.iter().map(|p| p.0).collect();
                anyhow::bail!(
                    "field `judge.noise.preset`: unknown preset `{name}` (presets: {})",
                    names.join(", ")
                )
            }
        }
    }

    /// The noise of a run with these classes and seed; a class name that is not a meta-class
    /// is an error naming the field.
    pub fn resolve(&self, classes: &[String], seed: u64) -> anyhow::Result<Noise> {
        self.validate()?;
        if let Some(name) = self.classes.keys().find(|n| !classes.contains(n)) {
            anyhow::bail!(
                "field `judge.noise.classes.{name}`: not a meta-class (classes: {})",
                classes.join(", ")
            );
        }
        let all = self.rates().over(self.base()?);
        Ok(Noise {
            seed,
            rates: classes
                .iter()
                .map(|n| self.classes.get(n).map_or(all, |c| c.over(all)))
                .collect(),
            tally: Cell::default(),
        })
    }
}

/// The run's noise: rates per class index, and a tally of the verdicts it read.
#[derive(Debug)]
pub struct Noise {
    seed: u64,
    rates: Vec<Rates>,
    tally: Cell<Confusion>,
}

impl Noise {
    /// The noisy reading of `response`'s verdicts (of `example`'s criteria, `class_of` their
    /// classes): each graded one flipped or kept, a failed one kept as it is; tallies clean
    /// against noisy.
    pub fn apply(
        &self,
        example: &Example,
        class_of: &[usize],
        response: &str,
        verdicts: &[Verdict],
    ) -> Vec<Verdict> {
        let mut h = Sha256::new();
        h.update(b"arlrr judge noise\0");
        h.update(self.seed.to_le_bytes());
        h.update((example.id.len() as u64).to_le_bytes());
        h.update(example.id.as_bytes());
        h.update(response.as_bytes());
        // one uniform draw per criterion index, whether or not it is graded
        let mut draws = ChaCha8Rng::from_seed(h.finalize().into());
        let n = verdicts.iter().map(|v| v.criterion + 1).max().unwrap_or(0);
        let draws: Vec<f64> = (0..n).map(|_| draws.gen()).collect();
        let mut tally = self.tally.get();
        let noisy = verdicts
            .iter()
            .map(|v| {
                let Some(m) = v.value() else {
                    return v.clone();
                };
                let r = self.rates[class_of[v.criterion]];
                let noisy = if draws[v.criterion] < m * r.fn_ + (1.0 - m) * r.fp {
                    1.0 - m
                } else {
                    m
                };
                tally.add(m, noisy);
                v.with_value(noisy)
            })
            .collect();
        self.tally.set(tally);
        noisy
    }

    /// The tally since the last call, and a fresh one.
    pub fn take(&self) -> Confusion {
        self.tally.take()
    }
}

/// Clean against noisy verdicts ("met" = positive); a verdict `m` in [0,1] counts as `m` met
/// and `1 - m` unmet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Confusion {
    /// Met read as met.
    pub tp: f64,
    /// Unmet read as met.
    pub fp: f64,
    /// Met read as unmet.
    #[serde(rename = "fn")]
    pub fn_: f64,
    /// Unmet read as unmet.
    pub tn: f64,
}

impl Confusion {
    pub fn add(&mut self, clean: f64, noisy: f64) {
        self.tp += clean * noisy;
        self.fp += (1.0 - clean) * noisy;
        self.fn_ += clean * (1.0 - noisy);
        self.tn += (1.0 - clean) * (1.0 - noisy);
    }

    pub fn plus(self, o: Confusion) -> Confusion {
        Confusion {
            tp: self.tp + o.tp,
            fp: self.fp + o.fp,
            fn_: self.fn_ + o.fn_,
            tn: self.tn + o.tn,
        }
    }

    pub fn verdicts(&self) -> f64 {
        self.tp + self.fp + self.fn_ + self.tn
    }

    /// Mean of the F1 of "met" and of "unmet", as HealthBench (section 8.1) scores a grader
    /// against physicians; `None` when either class never occurs.
    pub fn macro_f1(&self) -> Option<f64> {
        let f1 = |hit: f64| {
            let d = 2.0 * hit + self.fp + self.fn_;
            (d > 0.0).then(|| 2.0 * hit / d)
        };
        Some((f1(self.tp)? + f1(self.tn)?) / 2.0)
    }
}

/// One step's `judge_noise` in metrics.jsonl: the step's tally and macro F1, and the macro F1
/// of every training verdict of the run so far.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NoiseStats {
    #[serde(flatten)]
    pub step: Confusion,
    pub macro_f1: Option<f64>,
    pub cumulative_macro_f1: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Example {
        Example {
            id: "p1".into(),
            prompt: vec![],
            criteria: vec![],
            tags: vec![],
            ideal_completion: None,
            canary: None,
            line: 1,
        }
    }

    /// 400 verdicts of value `clean`, without the one of criterion `skip`.
    fn verdicts(clean: f64, skip: Option<usize>) -> Vec<Verdict> {
        (0..400)
            .filter(|&c| Some(c) != skip)
            .map(|criterion| Verdict {
                criterion,
                outcome: Ok(clean),
                explanation: String::new(),
                judge: "rules".into(),
                cached: false,
                attempts: 0,
            })
            .collect()
    }

    /// The value of each criterion's verdict (`None`: none or failed), by criterion index.
    fn values(verdicts: &[Verdict]) -> Vec<Option<f64>> {
        let mut out = vec![None; 400];
        for v in verdicts {
            out[v.criterion] = v.value();
        }
        out
    }

    fn parse(text: &str) -> NoiseConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn flips_are_a_function_of_seed_example_criterion_and_text() {
        let ex = example();
        let class_of = vec![0; 400];
        let noise = parse("fp = 0.2\nfn = 0.4")
            .resolve(&["a".into()], 7)
            .unwrap();
        let read = |noise: &Noise, text: &str, clean: f64| {
            values(&noise.apply(&ex, &class_of, text, &verdicts(clean, None)))
        };
        let a = read(&noise, "some answer", 1.0);
        assert_eq!(
            a,
            read(&noise, "some answer", 1.0),
            "same response, same verdicts"
        );
        assert_ne!(a, read(&noise, "another answer", 1.0));
        let other_seed = parse("fp = 0.2\nfn = 0.4")
            .resolve(&["a".into()], 8)
            .unwrap();
        assert_ne!(a, read(&other_seed, "some answer", 1.0));
        let flipped = |v: &[Option<f64>], clean: f64| {
            v.iter().filter(|x| **x != Some(clean)).count() as f64 / v.len() as f64
        };
        assert!((flipped(&a, 1.0) - 0.4).abs() < 0.08, "fn rate");
        let b = read(&noise, "some answer", 0.0);
        assert!((flipped(&b, 0.0) - 0.2).abs() < 0.08, "fp rate");
        // not graded stays not graded, and does not shift the other criteria's draws
        let v = values(&noise.apply(&ex, &class_of, "some answer", &verdicts(1.0, Some(3))));
        assert_eq!(v[3], None);
        assert_eq!(v[4..], a[4..]);
        // a failed verdict stays failed and is not read either
        let mut failing = verdicts(1.0, None);
        failing[5].outcome = Err(rubric::JudgeFailure::Other("timeout".into()));
        let v = noise.apply(&ex, &class_of, "some answer", &failing);
        assert_eq!(v[5], failing[5]);
        assert_eq!(values(&v)[6..], a[6..]);
        let t = noise.take();
        assert_eq!(t.verdicts(), 6.0 * 400.0 - 2.0, "every graded verdict read");
        assert_eq!(noise.take(), Confusion::default());
    }

    #[test]
    fn a_sample_of_the_criteria_reads_as_in_the_full_set() {
        // `objective.subsample` grades a few criteria: each must read as it would among all
        let ex = example();
        let class_of = vec![0; 400];
        let noise = parse("fp = 0.3\nfn = 0.3")
            .resolve(&["a".into()], 7)
            .unwrap();
        let all = verdicts(1.0, None);
        let full = values(&noise.apply(&ex, &class_of, "some answer", &all));
        let picked = [3, 17, 250, 399];
        let sample: Vec<Verdict> = picked.iter().map(|&c| all[c].clone()).collect();
        let read = values(&noise.apply(&ex, &class_of, "some answer", &sample));
        for c in 0..400 {
            let want = if picked.contains(&c) { full[c] } else { None };
            assert_eq!(read[c], want, "criterion {c}");
        }
        assert!(
            picked.iter().any(|&c| full[c] == Some(0.0)),
            "a flip among them"
        );
    }

    #[test]
    fn macro_f1_is_the_mean_of_met_and_unmet_f1() {
        let mut c = Confusion::default();
        for (clean, noisy, n) in [(1.0, 1.0, 6), (0.0, 1.0, 2), (1.0, 0.0, 1), (0.0, 0.0, 3)] {
            for _ in 0..n {
                c.add(clean, noisy);
            }
        }
        // met: 2·6/(12+3) = 0.8; unmet: 2·3/(6+3) = 2/3
        assert!((c.macro_f1().unwrap() - (0.8 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        let mut all_met = Confusion::default();
        all_met.add(1.0, 1.0);
        assert_eq!(all_met.macro_f1(), None);
    }

    #[test]
    fn bad_rates_presets_and_classes_name_the_field() {
        let classes: Vec<String> = vec!["accuracy".into(), "completeness".into()];
        let err = |text: &str| parse(text).resolve(&classes, 0).unwrap_err().to_string();
        assert!(err("fp = 1.0").contains("field `judge.noise.fp`: must be in [0, 1)"));
        assert!(err("fn = -0.1").contains("field `judge.noise.fn`"));
        let e = err("[classes.accuracy]\nfn = 2");
        assert!(e.contains("field `judge.noise.classes.accuracy.fn`"), "{e}");
        let e = err("[classes.acuracy]\nfp = 0.1");
        assert!(
            e.contains("field `judge.noise.classes.acuracy`: not a meta-class")
                && e.contains("completeness"),
            "{e}"
        );
        let e = err("preset = \"gpt5\"");
        assert!(
            e.contains("judge.noise.preset") && e.contains(HEALTHBENCH_GPT41),
            "{e}"
        );
        let n = parse("preset = \"healthbench-gpt41\"\nfp = 0.1\n[classes.completeness]\nfn = 0.5")
            .resolve(&classes, 0)
            .unwrap();
        let (_, fp, fn_) = PRESETS[0];
        assert_eq!(n.rates[0], Rates { fp: 0.1, fn_ });
        assert_eq!(n.rates[1], Rates { fp: 0.1, fn_: 0.5 });
        assert_ne!(fp, 0.1);
    }
}
