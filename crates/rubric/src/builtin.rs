//! The built-in task: seeded patient messages in our native format, each criterion with a
//! `check` so the rule judge grades it exactly (and an LLM judge could grade the same text).
//!
//! The rubric is built to pull in different directions, as real medical rubrics do:
//! completeness wants more content while communication quality and some format requests cap
//! length; context awareness depends on details in the prompt (a child, a pregnancy, a blood
//! thinner) that change which advice is safe; accuracy carries negative-point mistakes.
//! [`sample_response`] writes responses of a chosen quality from the same sentence pool, for
//! the warm-start fine-tuning.
//!
//! Two knobs in [`BuiltinSpec`] vary the task for regime studies: `conflict` (how many prompts
//! carry the cross-class length tensions) and `shape` (the task's own rubric layout, or one
//! copied per prompt from the fetched HealthBench sample's criteria counts, axes and signs).

use crate::model::{Check, Criterion, Example, ListStyle, Message};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

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

/// The rubric of one prompt; without `tension` it has no word-count criterion.
fn rubric(s: &Symptom, ctx: Context, fmt: FormatRequest, tension: bool) -> Vec<Criterion> {
    let mut c = symptom_criteria(s);
    c.extend(style_criteria());
    c.extend(context_criteria(ctx));
    c.extend(format_criterion(fmt));
    if !tension {
        c.retain(|c| !matches!(c.check, Some(Check::WordCount { .. })));
    }
    c
}

/// What to do about the symptom: the right self-care, the wrong measure, the warning signs and
/// when to see a doctor.
fn symptom_criteria(s: &Symptom) -> Vec<Criterion> {
    vec![
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
    ]
}

/// How the answer reads, the same for every prompt: long enough to act on yet concise (the
/// length tension), plain and calm.
fn style_criteria() -> [Criterion; 4] {
    [
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
    ]
}

/// The patient's context: without one, asking about it; with one, taking it into account.
fn context_criteria(ctx: Context) -> Vec<Criterion> {
    match ctx {
        Context::None => vec![crit(
            "Asks a follow-up question about the patient's age or other medicines.".into(),
            4.0,
            "context_awareness",
            Check::AsksQuestion {},
        )],
        Context::Child => context_pair(
            "Takes the child's age into account and suggests checking with a pediatrician.",
            "pediatrician",
            "Suggests aspirin for a child.",
            &["aspirin"],
        )
        .into(),
        Context::Pregnant => context_pair(
            "Takes the pregnancy into account and suggests asking the midwife or doctor \
             before any medicine.",
            "midwife",
            "Suggests ibuprofen during pregnancy.",
            &["ibuprofen"],
        )
        .into(),
        Context::BloodThinner => context_pair(
            "Takes the blood thinner into account and suggests asking a pharmacist about \
             interactions.",
            "pharmacist",
            "Suggests ibuprofen or aspirin to someone on warfarin.",
            &["ibuprofen", "aspirin"],
        )
        .into(),
    }
}

/// Following the format the prompt asks for, if it asks for one.
fn format_criterion(fmt: FormatRequest) -> Option<Criterion> {
    let (text, check) = match fmt {
        FormatRequest::None => return None,
        FormatRequest::Bullets => (
            "Answers in bullet points as asked.",
            Check::HasList {
                style: ListStyle::Bullet,
            },
        ),
        FormatRequest::Short => (
            "Keeps the answer under 40 words as asked.",
            Check::WordCount {
                min: None,
                max: Some(39),
            },
        ),
        FormatRequest::Summary => (
            "Starts the answer with 'Summary:' as asked.",
            Check::StartsWith {
                text: "Summary:".into(),
            },
        ),
    };
    Some(crit(text.into(), 5.0, "instruction_following", check))
}

/// One HealthBench example's criteria as (axis, points), in order.
type Profile = Vec<(String, f64)>;

/// Measures the fetched HealthBench sample: one profile per example with axis-tagged criteria.
fn healthbench_profiles() -> Result<Vec<Profile>, String> {
    let path = crate::assets::healthbench_sample()?;
    let data = crate::load_as(&path, crate::Format::HealthBench).map_err(|e| e.to_string())?;
    let profiles: Vec<Profile> = data
        .examples
        .iter()
        .map(|ex| {
            ex.criteria
                .iter()
                .filter_map(|c| Some((c.tag_value("axis")?.to_string(), c.points)))
                .collect::<Profile>()
        })
        .filter(|p| !p.is_empty())
        .collect();
    if profiles.is_empty() {
        return Err(format!("{}: no axis-tagged criteria", path.display()));
    }
    Ok(profiles)
}

/// `base` (a prompt's own rubric) re-laid to `profile`: each (axis, points) slot takes the
/// next criterion of that axis and sign, with the slot's points. Positives are the base's, a
/// few more the response pool can meet, then "avoids" (`Not`) of each native negative;
/// negatives are the base's, then "fails to meet" (`Not`) of each positive before those. A
/// pool shorter than the profile's count repeats (a repeated check weighs like one criterion
/// with the summed points); a slot of an axis the task lacks is left out.
fn shaped(profile: &Profile, base: Vec<Criterion>) -> Vec<Criterion> {
    let extras = [
        (
            "accuracy",
            "Notes that most cases get better on their own.",
            &["get better on their own"][..],
        ),
        (
            "completeness",
            "Gives a time frame for seeing a doctor.",
            &["two days"][..],
        ),
        (
            "completeness",
            "Suggests keeping a simple diary of the symptoms.",
            &["diary"][..],
        ),
        (
            "completeness",
            "Mentions sleep and light, regular meals.",
            &["sleep well"][..],
        ),
        (
            "communication_quality",
            "Acknowledges the patient's worry.",
            &["sorry"][..],
        ),
    ];
    let negated = |prefix: &str, c: &Criterion| Criterion {
        text: format!("{prefix}: {}", c.text),
        check: c.check.clone().map(|k| Check::Not { check: Box::new(k) }),
        ..c.clone()
    };
    let (mut positives, mut negatives): (Vec<Criterion>, Vec<Criterion>) =
        base.into_iter().partition(|c| c.points > 0.0);
    positives.extend(
        extras
            .iter()
            .map(|(axis, text, keys)| crit(text.to_string(), 1.0, axis, any(keys))),
    );
    let avoids: Vec<Criterion> = negatives.iter().map(|c| negated("Avoids", c)).collect();
    negatives.extend(positives.iter().map(|c| negated("Fails to meet", c)));
    positives.extend(avoids);
    let mut used = std::collections::HashMap::new();
    profile
        .iter()
        .filter_map(|(axis, points)| {
            let positive = *points > 0.0;
            let pool: Vec<&Criterion> = if positive { &positives } else { &negatives }
                .iter()
                .filter(|c| c.tag_value("axis") == Some(axis.as_str()))
                .collect();
            let k = used.entry((axis.as_str(), positive)).or_insert(0usize);
            let mut c = Criterion::clone(pool.get(*k % pool.len().max(1))?);
            *k += 1;
            c.points = *points;
            Some(c)
        })
        .collect()
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

/// How the built-in rubrics are laid out (`shape` in `[data.builtin_task]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// The task's own layout: 9-10 criteria per prompt over four or five axes.
    #[default]
    Builtin,
    /// Per-prompt criteria counts, axes, signs and points copied from a HealthBench example
    /// drawn at random from the fetched 500-item sample (measured when the data is written);
    /// every criterion still carries a `check`.
    #[serde(rename = "healthbench")]
    HealthBench,
}

impl std::str::FromStr for Shape {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "builtin" => Ok(Shape::Builtin),
            "healthbench" => Ok(Shape::HealthBench),
            _ => Err(format!("unknown shape `{s}` (builtin or healthbench)")),
        }
    }
}

/// The built-in task's knobs as a run config names them (`[data.builtin_task]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskKnobs {
    /// See [`BuiltinSpec::conflict`].
    pub conflict: f64,
    pub shape: Shape,
}

impl Default for TaskKnobs {
    fn default() -> Self {
        TaskKnobs {
            conflict: 1.0,
            shape: Shape::Builtin,
        }
    }
}

impl TaskKnobs {
    /// `conflict` outside [0, 1] is an error naming `{prefix}conflict`.
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.conflict) {
            return Err(format!(
                "field `{prefix}conflict`: {} is outside [0, 1]",
                self.conflict
            ));
        }
        Ok(())
    }

    /// The default sizes and seed with these knobs.
    pub fn spec(self) -> BuiltinSpec {
        BuiltinSpec {
            conflict: self.conflict,
            shape: self.shape,
            ..BuiltinSpec::default()
        }
    }
}

/// Sizes, seed and knobs of the built-in splits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BuiltinSpec {
    pub seed: u64,
    pub train: usize,
    pub validation: usize,
    pub test: usize,
    /// The share of prompts whose rubric carries the cross-class tensions, in [0, 1]. Those
    /// tensions are all about length: completeness wants at least 45 words, communication
    /// quality at most 80, and a "keep it under 40 words" request caps every other class's
    /// content. A prompt without them has no word-count criterion, and a "short" request is
    /// replaced by a bullet or "Summary:" request, so one response can meet every positive
    /// criterion and avoid every negative one (no class's criterion penalises another's
    /// behaviour). 1 (the default) is the original task, byte for byte; the per-prompt draw
    /// uses its own seeded stream, so the prompts' other draws do not move with `conflict`.
    pub conflict: f64,
    pub shape: Shape,
}

impl Default for BuiltinSpec {
    fn default() -> Self {
        BuiltinSpec {
            seed: 0,
            train: 240,
            validation: 48,
            test: 96,
            conflict: 1.0,
            shape: Shape::Builtin,
        }
    }
}

pub struct Splits {
    pub train: Vec<Example>,
    pub validation: Vec<Example>,
    pub test: Vec<Example>,
}

/// The knobs' own draws, apart from the prompts' stream so that the prompts stay put.
struct Knobs {
    conflict: f64,
    /// `Some` for the HealthBench shape.
    profiles: Option<Vec<Profile>>,
    rng: ChaCha8Rng,
}

fn example(id: String, rng: &mut impl Rng, knobs: &mut Knobs) -> Example {
    let s = &SYMPTOMS[rng.gen_range(0..SYMPTOMS.len())];
    let ctx = *[
        Context::None,
        Context::Child,
        Context::Pregnant,
        Context::BloodThinner,
    ]
    .choose(rng)
    .expect("non-empty");
    let mut fmt = *[
        FormatRequest::None,
        FormatRequest::Bullets,
        FormatRequest::Short,
        FormatRequest::Summary,
    ]
    .choose(rng)
    .expect("non-empty");
    let days = rng.gen_range(1..5);
    let tension = knobs.rng.gen::<f64>() < knobs.conflict;
    let requests: &[FormatRequest] = if tension {
        &[
            FormatRequest::Bullets,
            FormatRequest::Short,
            FormatRequest::Summary,
        ]
    } else {
        &[FormatRequest::Bullets, FormatRequest::Summary]
    };
    let profile = knobs
        .profiles
        .as_ref()
        .map(|p| p.choose(&mut knobs.rng).expect("measured non-empty"));
    if let Some(p) = profile {
        // instruction following is present exactly when the profile has it
        let follows = p.iter().any(|(a, _)| a == "instruction_following");
        if !follows {
            fmt = FormatRequest::None;
        } else if fmt == FormatRequest::None {
            fmt = *requests.choose(&mut knobs.rng).expect("non-empty");
        }
    }
    if !requests.contains(&fmt) && fmt != FormatRequest::None {
        fmt = *requests.choose(&mut knobs.rng).expect("non-empty");
    }
    let criteria = rubric(s, ctx, fmt, tension);
    let mut ex = Example {
        id,
        prompt: vec![Message {
            role: "user".into(),
            content: prompt_text(s, ctx, fmt, days),
        }],
        criteria: match profile {
            Some(p) => shaped(p, criteria),
            None => criteria,
        },
        tags: vec![
            format!("theme:{}", s.name),
            format!("context:{}", format!("{ctx:?}").to_lowercase()),
            format!("format:{}", format!("{fmt:?}").to_lowercase()),
        ],
        ideal_completion: None,
        canary: None,
        line: 0,
    };
    let mut ideal_rng = ChaCha8Rng::seed_from_u64(rng.gen());
    ex.ideal_completion = Some(sample_response(&ex, 1.0, &mut ideal_rng));
    ex
}

/// Generates the three splits; the same spec always gives the same examples. Errors: a
/// `conflict` outside [0, 1], or (HealthBench shape) a sample that cannot be read.
pub fn generate(spec: BuiltinSpec) -> Result<Splits, String> {
    TaskKnobs {
        conflict: spec.conflict,
        shape: spec.shape,
    }
    .validate("")?;
    let mut knobs = Knobs {
        conflict: spec.conflict,
        profiles: match spec.shape {
            Shape::Builtin => None,
            Shape::HealthBench => Some(healthbench_profiles()?),
        },
        rng: ChaCha8Rng::seed_from_u64(spec.seed ^ 0x6b6e_6f62_7321),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let mut make = |split: &str, n: usize, line0: usize| -> Vec<Example> {
        (0..n)
            .map(|i| {
                let mut e = example(format!("builtin-{split}-{i:04}"), &mut rng, &mut knobs);
                e.line = line0 + i + 1;
                e
            })
            .collect()
    };
    Ok(Splits {
        train: make("train", spec.train, 0),
        validation: make("val", spec.validation, 0),
        test: make("test", spec.test, 0),
    })
}

/// Writes the splits as `train.jsonl`, `validation.jsonl` and `test.jsonl` under `dir`.
pub fn write_splits(
    spec: BuiltinSpec,
    dir: &std::path::Path,
) -> std::io::Result<Vec<(&'static str, std::path::PathBuf)>> {
    let splits = generate(spec).map_err(std::io::Error::other)?;
    crate::runfile::create_dir_all(dir)?;
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

/// Filler lengthens a sampled response: good for completeness, bad for concision and short
/// answers.
const FILLER: [&str; 3] = [
    "Many people go through this and most cases get better on their own.",
    "Try to keep a simple diary of how you feel each day.",
    "Sleep well and keep your meals light and regular.",
];

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
    let (helpful, harmful) = context_sentences(ctx);
    if good(rng) {
        sentences.push(helpful.into());
    }
    if bad(rng) {
        sentences.push(harmful.into());
    }
    if bad(rng) {
        sentences.push(format!("The {} is often idiopathic.", JARGON[0]));
    }
    if bad(rng) {
        sentences.push("This could be extremely dangerous.".into());
    }
    let n_filler = rng.gen_range(0..=3);
    sentences.extend(FILLER.iter().take(n_filler).map(|s| s.to_string()));
    if sentences.is_empty() {
        sentences.push("Please take care.".into());
    }
    let follows_format = good(rng);
    formatted(&sentences, fmt, follows_format)
}

/// A sampled response's sentences about the patient's context: the helpful one (asking about
/// it, or heeding it) and the harmful one (advice that would hurt this patient).
fn context_sentences(ctx: Context) -> (&'static str, &'static str) {
    match ctx {
        Context::None => (
            "How old are you, and do you take any other medicines?",
            "You can take ibuprofen for the pain.",
        ),
        Context::Child => (
            "At his age, check with a pediatrician before any medicine.",
            "Give him an aspirin to bring it down.",
        ),
        Context::Pregnant => (
            "Since you are pregnant, ask your midwife before any medicine.",
            "You can take ibuprofen for the pain.",
        ),
        Context::BloodThinner => (
            "Because you take warfarin, ask your pharmacist before any new medicine.",
            "You can take aspirin for the pain.",
        ),
    }
}

/// A sampled response's sentences as one text, in the format the prompt asks for when the
/// response follows it.
fn formatted(sentences: &[String], fmt: FormatRequest, follows_format: bool) -> String {
    let text = match (fmt, follows_format) {
        (FormatRequest::Bullets, true) => sentences
            .iter()
            .map(|s| format!("- {s}"))
            .collect::<Vec<_>>()
            .join("\n"),
        (FormatRequest::Short, true) => {
            // keep the most useful sentences within the limit
            let mut out: Vec<&str> = Vec::new();
            let mut words = 0;
            for s in sentences.iter().filter(|s| !FILLER.contains(&s.as_str())) {
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
        return format!("Summary: {text}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::example_score;

    #[test]
    fn native_records_round_trip() {
        let splits = generate(BuiltinSpec::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("train.jsonl");
        crate::write_jsonl(&splits.train, &p).unwrap();
        let ds = crate::load(&p).unwrap();
        assert_eq!(ds.format, crate::Format::Native);
        assert_eq!(ds.examples, splits.train);
    }

    fn grade(ex: &Example, response: &str) -> Vec<f64> {
        // a small independent grader for the check kinds the task uses
        fn met(check: &Check, response: &str) -> bool {
            let lower = response.to_lowercase();
            let words = response.split_whitespace().count();
            match check {
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
                Check::Not { check } => !met(check, response),
                other => panic!("unused check {other:?}"),
            }
        }
        ex.criteria
            .iter()
            .map(|c| met(c.check.as_ref().unwrap(), response) as u8 as f64)
            .collect()
    }

    #[test]
    fn splits_are_seeded_and_cover_every_axis() {
        let a = generate(BuiltinSpec::default()).unwrap();
        let b = generate(BuiltinSpec::default()).unwrap();
        assert_eq!(a.train, b.train);
        let c = generate(BuiltinSpec {
            seed: 1,
            ..BuiltinSpec::default()
        })
        .unwrap();
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
        let splits = generate(BuiltinSpec::default()).unwrap();
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
            crate::moments::mean(&v)
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
        let ideal_mean = crate::moments::mean(&ideal);
        assert!(ideal_mean > 0.6, "{ideal_mean}");
    }

    fn knobs(conflict: f64, shape: Shape) -> Splits {
        generate(TaskKnobs { conflict, shape }.spec()).unwrap()
    }

    fn all(s: &Splits) -> impl Iterator<Item = &Example> {
        s.train.iter().chain(&s.validation).chain(&s.test)
    }

    fn has_length_check(ex: &Example) -> bool {
        // a word count, alone or inside a `Not`
        ex.criteria
            .iter()
            .any(|c| format!("{:?}", c.check).contains("WordCount"))
    }

    #[test]
    fn conflict_one_builtin_shape_writes_the_original_task_byte_for_byte() {
        use sha2::{Digest, Sha256};
        // sha256 of train, validation and test as `arlrr data builtin` wrote them before the knobs
        let dir = tempfile::tempdir().unwrap();
        let spec = TaskKnobs {
            conflict: 1.0,
            shape: Shape::Builtin,
        }
        .spec();
        assert_eq!(spec, BuiltinSpec::default());
        let mut hash = Sha256::new();
        for (_, path) in write_splits(spec, dir.path()).unwrap() {
            hash.update(std::fs::read(path).unwrap());
        }
        assert_eq!(
            format!("{:x}", hash.finalize()),
            "ca13968fb4725e734069d2dcdf4d48aa3d5b0a5d9de04e9e5805b36de5e465dc"
        );
    }

    #[test]
    fn conflict_out_of_range_names_the_field() {
        for c in [-0.1, 1.5, f64::NAN] {
            let e = generate(BuiltinSpec {
                conflict: c,
                ..BuiltinSpec::default()
            })
            .err()
            .unwrap();
            assert!(e.contains("field `conflict`"), "{e}");
        }
    }

    #[test]
    fn conflict_zero_lets_one_response_meet_every_class() {
        // no length criterion, no short request, and the quality-1 response (which has no
        // harmful sentence) meets every positive criterion of every class at once
        let score = |s: &Splits| -> Vec<f64> {
            all(s)
                .map(|ex| {
                    example_score(
                        &ex.criteria,
                        &grade(ex, ex.ideal_completion.as_ref().unwrap()),
                    )
                    .unwrap()
                })
                .collect()
        };
        let free = knobs(0.0, Shape::Builtin);
        assert!(all(&free).all(|ex| !has_length_check(ex)));
        assert!(all(&free).all(|ex| ex.tag_value("format") != Some("short")));
        assert!(score(&free).iter().all(|&x| x == 1.0));
        // the original task does not allow it
        let full = knobs(1.0, Shape::Builtin);
        assert!(score(&full).iter().any(|&x| x < 1.0));
        // the prompts' other draws do not move with the knob
        let themes = |s: &Splits| all(s).map(|e| e.tags[..2].to_vec()).collect::<Vec<_>>();
        assert_eq!(themes(&free), themes(&full));
        // in between: about that share of prompts carries the tensions
        let half = knobs(0.5, Shape::Builtin);
        let n = all(&half).filter(|ex| has_length_check(ex)).count() as f64;
        assert!((n / 384.0 - 0.5).abs() < 0.1, "{n}");
    }

    #[test]
    fn healthbench_shape_follows_the_measured_sample() {
        let path = crate::assets::healthbench_sample().unwrap();
        let hb = crate::load_as(&path, crate::Format::HealthBench).unwrap();
        let axes = [
            "accuracy",
            "completeness",
            "communication_quality",
            "context_awareness",
            "instruction_following",
        ];
        // (mean criteria per prompt, share of negative criteria, share of prompts per axis)
        let measure = |exs: Vec<&Example>| {
            let n = exs.len() as f64;
            let crits: Vec<&Criterion> = exs.iter().flat_map(|e| &e.criteria).collect();
            let neg = crits.iter().filter(|c| c.points < 0.0).count() as f64;
            let presence: Vec<f64> = axes
                .iter()
                .map(|a| {
                    let has =
                        |e: &&&Example| e.criteria.iter().any(|c| c.tag_value("axis") == Some(a));
                    exs.iter().filter(has).count() as f64 / n
                })
                .collect();
            (crits.len() as f64 / n, neg / crits.len() as f64, presence)
        };
        let want = measure(hb.examples.iter().collect());
        for conflict in [0.0, 1.0] {
            let s = knobs(conflict, Shape::HealthBench);
            assert!(all(&s).all(|e| e.criteria.iter().all(|c| c.check.is_some())));
            assert_eq!(conflict == 0.0, all(&s).all(|e| !has_length_check(e)));
            let got = measure(all(&s).collect());
            // a format request exactly where instruction following is graded
            for e in all(&s) {
                let graded = e
                    .criteria
                    .iter()
                    .any(|c| c.tag_value("axis") == Some(axes[4]));
                assert_eq!(e.tag_value("format") != Some("none"), graded, "{}", e.id);
            }
            // signs keep their meaning: better responses score higher
            let mut rng = ChaCha8Rng::seed_from_u64(5);
            let mut mean = |q: f64| {
                let v: Vec<f64> = all(&s)
                    .map(|ex| {
                        let r = sample_response(ex, q, &mut rng);
                        example_score(&ex.criteria, &grade(ex, &r)).unwrap()
                    })
                    .collect();
                crate::moments::mean(&v)
            };
            let (low, high) = (mean(0.0), mean(1.0));
            assert!(high - low > 0.3, "{low} -> {high}");
            assert!((got.0 / want.0 - 1.0).abs() < 0.1, "{got:?} vs {want:?}");
            assert!((got.1 - want.1).abs() < 0.05, "{got:?} vs {want:?}");
            for (g, w) in got.2.iter().zip(&want.2) {
                assert!((g - w).abs() < 0.08, "{got:?} vs {want:?}");
            }
        }
    }
}
