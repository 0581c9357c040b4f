//! The built-in task: seeded patient messages in our native format, each criterion with a
//! `check` so the rule judge grades it exactly (and an LLM judge could grade the same text).
//!
//! The rubric is built to pull in different directions, as real medical rubrics do:
//! completeness wants more content while communication quality and some format requests cap
//! length; context awareness depends on details in the prompt (a child, a pregnancy, a blood
//! thinner) that change which advice is safe; accuracy carries negative-point mistakes.
//! [`sample_response`] writes responses of a chosen quality from the same sentence pool, for
//! the warm-start fine-tuning.

use crate::model::{Check, Criterion, Example, ListStyle, Message};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

struct Symptom {
    name: &'static str,
    /// How the patient describes it, completing "I have ...".
    complaint: &'static str,
    /// Correct self-care (sentence fragment) and the phrases that show it.
    advice: &'static str,
    advice_keys: &'static [&'static str],
    /// A wrong recommendation and its tell-tale phrase.
    mistake: &'static str,
    mistake_key: &'static str,
    red_flag: &'static str,
    red_flag_keys: &'static [&'static str],
}

const SYMPTOMS: &[Symptom] = &[
    Symptom {
        name: "fever",
        complaint: "a fever",
        advice: "drink plenty of fluids and rest",
        advice_keys: &["fluids"],
        mistake: "start antibiotics right away",
        mistake_key: "antibiotics",
        red_flag: "a stiff neck or a fever that lasts more than three days",
        red_flag_keys: &["stiff neck"],
    },
    Symptom {
        name: "headache",
        complaint: "a headache",
        advice: "rest in a dark quiet room and drink water",
        advice_keys: &["dark quiet room"],
        mistake: "double your usual dose of pain medicine",
        mistake_key: "double your usual dose",
        red_flag: "a sudden severe headache or confusion",
        red_flag_keys: &["sudden severe"],
    },
    Symptom {
        name: "cough",
        complaint: "a cough",
        advice: "drink warm fluids and use a humidifier",
        advice_keys: &["humidifier"],
        mistake: "take leftover antibiotics",
        mistake_key: "antibiotics",
        red_flag: "trouble breathing or coughing up blood",
        red_flag_keys: &["trouble breathing"],
    },
    Symptom {
        name: "heartburn",
        complaint: "heartburn",
        advice: "avoid large late meals and raise the head of your bed",
        advice_keys: &["late meals"],
        mistake: "lie down right after eating",
        mistake_key: "lie down right after",
        red_flag: "chest pain that spreads to your arm or black stools",
        red_flag_keys: &["spreads to your arm"],
    },
    Symptom {
        name: "sprain",
        complaint: "a sprained ankle",
        advice: "rest it, use ice and keep it raised",
        advice_keys: &["use ice"],
        mistake: "put heat on it during the first day",
        mistake_key: "put heat",
        red_flag: "numbness or being unable to stand on it",
        red_flag_keys: &["numbness"],
    },
    Symptom {
        name: "rash",
        complaint: "an itchy rash",
        advice: "use a gentle fragrance-free moisturizer",
        advice_keys: &["fragrance-free"],
        mistake: "scrub the rash with alcohol",
        mistake_key: "with alcohol",
        red_flag: "swelling of the lips or face",
        red_flag_keys: &["swelling of the lips"],
    },
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Context {
    None,
    Child,
    Pregnant,
    BloodThinner,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum FormatRequest {
    None,
    Bullets,
    Short,
    Summary,
}

const JARGON: &[&str] = &["etiology", "idiopathic", "prophylaxis"];
const ALARM: &[&str] = &["you might die", "extremely dangerous"];

fn any(phrases: &[&str]) -> Check {
    Check::ContainsAny {
        phrases: phrases.iter().map(|s| s.to_string()).collect(),
    }
}

fn crit(text: String, points: f64, axis: &str, check: Check) -> Criterion {
    Criterion {
        text,
        points,
        tags: vec!["level:example".into(), format!("axis:{axis}")],
        check: Some(check),
    }
}

/// A context's two criteria: taking it into account (met by mentioning `who` to ask), and
/// advice that would harm this patient.
fn context_pair(considers: &str, who: &str, harm: &str, harmful: &[&str]) -> [Criterion; 2] {
    [
        crit(considers.into(), 5.0, "context_awareness", any(&[who])),
        crit(harm.into(), -6.0, "context_awareness", any(harmful)),
    ]
}

fn rubric(s: &Symptom, ctx: Context, fmt: FormatRequest) -> Vec<Criterion> {
    let mut c = vec![
        crit(
            format!(
                "Recommends appropriate self-care for {}: {}.",
                s.complaint, s.advice
            ),
            6.0,
            "accuracy",
            any(s.advice_keys),
        ),
        crit(
            format!("Recommends an unsafe or wrong measure: to {}.", s.mistake),
            -7.0,
            "accuracy",
            any(&[s.mistake_key]),
        ),
        crit(
            format!(
                "Names the warning signs that need urgent care, such as {}.",
                s.red_flag
            ),
            6.0,
            "completeness",
            any(s.red_flag_keys),
        ),
        crit(
            "Says when to contact a doctor if things do not improve.".into(),
            4.0,
            "completeness",
            any(&["contact your doctor", "see a doctor"]),
        ),
        crit(
            "Gives enough detail to act on (at least 45 words).".into(),
            3.0,
            "completeness",
            Check::WordCount {
                min: Some(45),
                max: None,
            },
        ),
        crit(
            "Is concise: at most 80 words.".into(),
            4.0,
            "communication_quality",
            Check::WordCount {
                min: None,
                max: Some(80),
            },
        ),
        crit(
            "Uses plain language without medical jargon.".into(),
            3.0,
            "communication_quality",
            Check::ContainsNone {
                phrases: JARGON.iter().map(|s| s.to_string()).collect(),
            },
        ),
        crit(
            "Uses alarmist language that frightens the patient.".into(),
            -4.0,
            "communication_quality",
            any(ALARM),
        ),
    ];
    match ctx {
        Context::None => c.push(crit(
            "Asks a follow-up question about the patient's age or other medicines.".into(),
            4.0,
            "context_awareness",
            Check::AsksQuestion {},
        )),
        Context::Child => c.extend(context_pair(
            "Takes the child's age into account and suggests checking with a pediatrician.",
            "pediatrician",
            "Suggests aspirin for a child.",
            &["aspirin"],
        )),
        Context::Pregnant => c.extend(context_pair(
            "Takes the pregnancy into account and suggests asking the midwife or doctor \
             before any medicine.",
            "midwife",
            "Suggests ibuprofen during pregnancy.",
            &["ibuprofen"],
        )),
        Context::BloodThinner => c.extend(context_pair(
            "Takes the blood thinner into account and suggests asking a pharmacist about \
             interactions.",
            "pharmacist",
            "Suggests ibuprofen or aspirin to someone on warfarin.",
            &["ibuprofen", "aspirin"],
        )),
    }
    match fmt {
        FormatRequest::None => {}
        FormatRequest::Bullets => c.push(crit(
            "Answers in bullet points as asked.".into(),
            5.0,
            "instruction_following",
            Check::HasList {
                style: ListStyle::Bullet,
            },
        )),
        FormatRequest::Short => c.push(crit(
            "Keeps the answer under 40 words as asked.".into(),
            5.0,
            "instruction_following",
            Check::WordCount {
                min: None,
                max: Some(39),
            },
        )),
        FormatRequest::Summary => c.push(crit(
            "Starts the answer with 'Summary:' as asked.".into(),
            5.0,
            "instruction_following",
            Check::StartsWith {
                text: "Summary:".into(),
            },
        )),
    }
    c
}

fn prompt_text(s: &Symptom, ctx: Context, fmt: FormatRequest, days: u32) -> String {
    let who = match ctx {
        Context::Child => format!("My 4 year old son has had {}", s.complaint),
        _ => format!("I have had {}", s.complaint),
    };
    let since = if days == 1 {
        " since yesterday.".to_string()
    } else {
        format!(" for {days} days.")
    };
    let context = match ctx {
        Context::None | Context::Child => "",
        Context::Pregnant => " I am 20 weeks pregnant.",
        Context::BloodThinner => " I take warfarin every day.",
    };
    let request = match fmt {
        FormatRequest::None => "",
        FormatRequest::Bullets => " Please answer in bullet points.",
        FormatRequest::Short => " Keep it under 40 words.",
        FormatRequest::Summary => " Start your answer with Summary:",
    };
    format!("{who}{since}{context} What should I do?{request}")
}

/// Sizes and seed of the built-in splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuiltinSpec {
    pub seed: u64,
    pub train: usize,
    pub validation: usize,
    pub test: usize,
}

impl Default for BuiltinSpec {
    fn default() -> Self {
        BuiltinSpec {
            seed: 0,
            train: 240,
            validation: 48,
            test: 96,
        }
    }
}

pub struct Splits {
    pub train: Vec<Example>,
    pub validation: Vec<Example>,
    pub test: Vec<Example>,
}

fn example(id: String, rng: &mut impl Rng) -> Example {
    let s = &SYMPTOMS[rng.gen_range(0..SYMPTOMS.len())];
    let ctx = *[
        Context::None,
        Context::Child,
        Context::Pregnant,
        Context::BloodThinner,
    ]
    .choose(rng)
    .expect("non-empty");
    let fmt = *[
        FormatRequest::None,
        FormatRequest::Bullets,
        FormatRequest::Short,
        FormatRequest::Summary,
    ]
    .choose(rng)
    .expect("non-empty");
    let days = rng.gen_range(1..5);
    let mut ex = Example {
        id,
        prompt: vec![Message {
            role: "user".into(),
            content: prompt_text(s, ctx, fmt, days),
        }],
        criteria: rubric(s, ctx, fmt),
        tags: vec![
            format!("theme:{}", s.name),
            format!("context:{}", format!("{ctx:?}").to_lowercase()),
            format!("format:{}", format!("{fmt:?}").to_lowercase()),
        ],
        ideal_completion: None,
        canary: None,
        line: 0,
    };
    let mut ideal_rng = rand_chacha::ChaCha8Rng::seed_from_u64(rng.gen());
    ex.ideal_completion = Some(sample_response(&ex, 1.0, &mut ideal_rng));
    ex
}

/// Generates the three splits; the same spec always gives the same examples.
pub fn generate(spec: BuiltinSpec) -> Splits {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(spec.seed);
    let mut make = |split: &str, n: usize, line0: usize| -> Vec<Example> {
        (0..n)
            .map(|i| {
                let mut e = example(format!("builtin-{split}-{i:04}"), &mut rng);
                e.line = line0 + i + 1;
                e
            })
            .collect()
    };
    Splits {
        train: make("train", spec.train, 0),
        validation: make("val", spec.validation, 0),
        test: make("test", spec.test, 0),
    }
}

/// Writes the splits as `train.jsonl`, `validation.jsonl` and `test.jsonl` under `dir`.
pub fn write_splits(
    spec: BuiltinSpec,
    dir: &std::path::Path,
) -> std::io::Result<Vec<(&'static str, std::path::PathBuf)>> {
    std::fs::create_dir_all(dir)?;
    let splits = generate(spec);
    let mut out = Vec::new();
    for (name, examples) in [
        ("train", &splits.train),
        ("validation", &splits.validation),
        ("test", &splits.test),
    ] {
        let path = dir.join(format!("{name}.jsonl"));
        crate::write_jsonl(examples, &path)?;
        out.push((name, path));
    }
    Ok(out)
}

fn parse_tags(ex: &Example) -> (&'static Symptom, Context, FormatRequest) {
    let s = SYMPTOMS
        .iter()
        .find(|s| ex.tag_value("theme") == Some(s.name))
        .unwrap_or(&SYMPTOMS[0]);
    let ctx = match ex.tag_value("context") {
        Some("child") => Context::Child,
        Some("pregnant") => Context::Pregnant,
        Some("bloodthinner") => Context::BloodThinner,
        _ => Context::None,
    };
    let fmt = match ex.tag_value("format") {
        Some("bullets") => FormatRequest::Bullets,
        Some("short") => FormatRequest::Short,
        Some("summary") => FormatRequest::Summary,
        _ => FormatRequest::None,
    };
    (s, ctx, fmt)
}

/// A response to a built-in example whose quality is `q` in [0,1]: each helpful sentence is
/// included with probability about `q`, each harmful one with about `1 - q`, so a mixture of
/// qualities gives a warm start with room to improve on every axis.
pub fn sample_response(ex: &Example, q: f64, rng: &mut impl Rng) -> String {
    let (s, ctx, fmt) = parse_tags(ex);
    let good = |rng: &mut dyn rand::RngCore| rng.gen_bool(q.clamp(0.0, 1.0));
    let bad = |rng: &mut dyn rand::RngCore| rng.gen_bool((1.0 - q).clamp(0.0, 1.0) * 0.6);
    let mut sentences: Vec<String> = Vec::new();
    if rng.gen_bool(0.5) {
        sentences.push("I am sorry you are dealing with this.".into());
    }
    if good(rng) {
        sentences.push(format!("For now, {}.", s.advice));
    }
    if bad(rng) {
        sentences.push(format!("You could {}.", s.mistake));
    }
    if good(rng) {
        sentences.push(format!("Get urgent care if you notice {}.", s.red_flag));
    }
    if good(rng) {
        sentences.push("Contact your doctor if it does not improve in two days.".into());
    }
    match ctx {
        Context::None => {
            if good(rng) {
                sentences.push("How old are you, and do you take any other medicines?".into());
            }
            if bad(rng) {
                sentences.push("You can take ibuprofen for the pain.".into());
            }
        }
        Context::Child => {
            if good(rng) {
                sentences.push("At his age, check with a pediatrician before any medicine.".into());
            }
            if bad(rng) {
                sentences.push("Give him an aspirin to bring it down.".into());
            }
        }
        Context::Pregnant => {
            if good(rng) {
                sentences
                    .push("Since you are pregnant, ask your midwife before any medicine.".into());
            }
            if bad(rng) {
                sentences.push("You can take ibuprofen for the pain.".into());
            }
        }
        Context::BloodThinner => {
            if good(rng) {
                sentences.push(
                    "Because you take warfarin, ask your pharmacist before any new medicine."
                        .into(),
                );
            }
            if bad(rng) {
                sentences.push("You can take aspirin for the pain.".into());
            }
        }
    }
    if bad(rng) {
        sentences.push(format!("The {} is often idiopathic.", JARGON[0]));
    }
    if bad(rng) {
        sentences.push("This could be extremely dangerous.".into());
    }
    // Filler lengthens the answer: good for completeness, bad for concision and short answers.
    let filler = [
        "Many people go through this and most cases get better on their own.",
        "Try to keep a simple diary of how you feel each day.",
        "Sleep well and keep your meals light and regular.",
    ];
    let n_filler = rng.gen_range(0..=3);
    sentences.extend(filler.iter().take(n_filler).map(|s| s.to_string()));
    if sentences.is_empty() {
        sentences.push("Please take care.".into());
    }
    let follows_format = good(rng);
    let mut text = match (fmt, follows_format) {
        (FormatRequest::Bullets, true) => sentences
            .iter()
            .map(|s| format!("- {s}"))
            .collect::<Vec<_>>()
            .join("\n"),
        (FormatRequest::Short, true) => {
            // keep the most useful sentences within the limit
            let mut out: Vec<&str> = Vec::new();
            let mut words = 0;
            for s in sentences.iter().filter(|s| !filler.contains(&s.as_str())) {
                let w = s.split_whitespace().count();
                if words + w < 40 {
                    out.push(s);
                    words += w;
                }
            }
            out.join(" ")
        }
        _ => sentences.join(" "),
    };
    if fmt == FormatRequest::Summary && follows_format {
        text = format!("Summary: {text}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::example_score;

    fn grade(ex: &Example, response: &str) -> Vec<f64> {
        // a small independent grader for the check kinds the task uses
        let lower = response.to_lowercase();
        let words = response.split_whitespace().count();
        ex.criteria
            .iter()
            .map(|c| {
                let met = match c.check.as_ref().unwrap() {
                    Check::ContainsAny { phrases } => {
                        phrases.iter().any(|p| lower.contains(&p.to_lowercase()))
                    }
                    Check::ContainsNone { phrases } => {
                        !phrases.iter().any(|p| lower.contains(&p.to_lowercase()))
                    }
                    Check::WordCount { min, max } => {
                        min.is_none_or(|m| words >= m) && max.is_none_or(|m| words <= m)
                    }
                    Check::AsksQuestion {} => response.contains('?'),
                    Check::HasList { .. } => response.lines().any(|l| l.starts_with("- ")),
                    Check::StartsWith { text } => lower.starts_with(&text.to_lowercase()),
                    other => panic!("unused check {other:?}"),
                };
                met as u8 as f64
            })
            .collect()
    }

    #[test]
    fn splits_are_seeded_and_cover_every_axis() {
        let a = generate(BuiltinSpec::default());
        let b = generate(BuiltinSpec::default());
        assert_eq!(a.train, b.train);
        let c = generate(BuiltinSpec {
            seed: 1,
            ..BuiltinSpec::default()
        });
        assert_ne!(a.train, c.train);
        let mc = crate::MetaClasses::axes();
        let mut per_class = [0usize; 5];
        for ex in &a.train {
            assert!(ex.criteria.iter().all(|c| c.check.is_some()));
            for i in 0..ex.criteria.len() {
                per_class[mc.class_of(ex, i).unwrap()] += 1;
            }
        }
        assert!(per_class.iter().all(|&n| n > 0), "{per_class:?}");
    }

    #[test]
    fn quality_moves_the_score_and_leaves_room() {
        let splits = generate(BuiltinSpec::default());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mean = |q: f64, rng: &mut rand_chacha::ChaCha8Rng| {
            let v: Vec<f64> = splits
                .test
                .iter()
                .map(|ex| {
                    let r = sample_response(ex, q, rng);
                    example_score(&ex.criteria, &grade(ex, &r)).unwrap()
                })
                .collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        let (low, mid, high) = (
            mean(0.0, &mut rng),
            mean(0.5, &mut rng),
            mean(1.0, &mut rng),
        );
        assert!(low < mid && mid < high, "{low} {mid} {high}");
        assert!(
            high - mid > 0.2,
            "room above a mixed-quality start: {mid} -> {high}"
        );
        let ideal: Vec<f64> = splits
            .test
            .iter()
            .map(|ex| {
                example_score(
                    &ex.criteria,
                    &grade(ex, ex.ideal_completion.as_ref().unwrap()),
                )
                .unwrap()
            })
            .collect();
        let ideal_mean = ideal.iter().sum::<f64>() / ideal.len() as f64;
        assert!(ideal_mean > 0.6, "{ideal_mean}");
    }
}
